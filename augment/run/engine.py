"""The engine seam: how units of work reach workers when the engine is Ray (`--engine ray`).

The stages (augment.jobs) plan their units (learning groups, shard units) in the driver, exactly as one process
would, and hand the pending ones to the functions here; every unit's output is a function of the unit alone,
so the bytes do not depend on which worker did which unit, on the cluster's size or on retries.

- `ray_session`: joins the cluster in `--ray-address` or $RAY_ADDRESS, else starts a local one bound to
  127.0.0.1 (no dashboard, usage stats off) and stops it at the end.
- `run_tasks`: one Ray task per unit (learning: a group of classes), at most `ray_workers` at once, each
  retried up to `retries` times when its worker process dies (a Python exception is not retried: it is a bug
  or bad input and is raised in the driver).
- `run_actor_pool`: a pool of actors that each load the models once and take many units, one at a time, as
  they become idle (generation: Ray Data's batch-inference pattern, written on Ray core: a unit is a whole
  shard, so Data's blocks add nothing, and Data's actor restarts are set only through `ray_remote_args`,
  deprecated in Ray 2.60 and unbounded by default); a dead actor is restarted (as often as a long run needs)
  and its unit redone, up to `retries` times.

A unit past its retries raises `augment.errors.EngineError` (the CLI: one line, exit 1) and cancels the rest; an
error raised on a worker (UserError, StorageError) reaches the driver as itself.

Ray is an optional extra (`pip install 'augment[ray]'`); asking for it without is one line, exit 2.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from augment.errors import EngineError, UserError

RAY_EXTRA = "pip install 'augment[ray]'"
# Ray binds a node to the machine's routable address even when told 127.0.0.1 (ray/_private/services.py
# resolve_ip_for_localhost), unless clusters are off as on macOS: a cluster started here for one machine stays
# on loopback. Also the tests' cluster (augment.testing.ray_cluster).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray: {RAY_EXTRA}", "engine") from None
    return ray


def preflight(workers) -> None:
    """What `--engine ray` needs, checked before any work: Ray importable, the cluster's address answering."""
    require_ray()
    address = workers.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _reachable(address)


@contextlib.contextmanager
def ray_session(workers) -> Iterator[Any]:
    """Ray, initialised for this run: joined to `workers.ray_address`, else $RAY_ADDRESS, else a new local
    cluster on 127.0.0.1 that is shut down on exit. A cluster that cannot be reached is a UserError."""
    ray = require_ray()
    if ray.is_initialized():  # the caller's own session (a notebook, a Ray job): use it, leave it running
        yield ray
        return
    address = workers.ray_address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": "warning"}
    with contextlib.ExitStack() as stack:
        try:
            if address:
                _reachable(address)
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(address=address, **kwargs)
            else:
                stack.enter_context(loopback_only())
                ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise UserError(f"could not start or join {where}: {detail}", "ray_address") from None
        try:
            yield ray
        finally:
            ray.shutdown()


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While Ray starts a cluster here, its node stays on 127.0.0.1: Ray's switch is read from the environment
    when ray is imported (ray/_private/ray_constants.py ENABLE_RAY_CLUSTER), so the module's value is set too
    when ray is imported already; both are put back afterwards."""
    import ray._private.ray_constants as constants

    saved = {k: os.environ.get(k) for k in LOOPBACK}
    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ.update(LOOPBACK)
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        _restore(saved)
        constants.ENABLE_RAY_CLUSTER = before


def _restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _reachable(address: str, timeout: float = 10.0) -> None:
    """A GCS address (host:port) that accepts a TCP connection within `timeout` seconds, else a UserError now
    (Ray itself retries an unreachable address for minutes)."""
    import socket

    if "://" in address or address in ("auto", "local"):  # ray://host:port, auto, local: Ray's own checks
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"the Ray address must be host:port, got {address!r}", "ray_address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"the Ray cluster at {address} does not answer ({e.strerror or e})", "ray_address") from None


DEFAULT_RETRIES = 3


def retries(workers) -> int:
    return DEFAULT_RETRIES if workers.retries is None else workers.retries


def resources(ray, workers) -> tuple[float, int]:
    """(GPUs per task or actor, tasks or actors at once) for this cluster and the flags."""
    gpus_total = float(ray.cluster_resources().get("GPU", 0))
    per = workers.ray_gpus if workers.ray_gpus is not None else (1.0 if gpus_total else 0.0)
    if per > gpus_total:
        raise UserError(f"--ray-gpus {per:g}: the cluster has {gpus_total:g} GPU(s)", "ray_gpus")
    at_once = workers.ray_workers or (max(int(gpus_total // per), 1) if per else 1)
    return per, at_once


def run_tasks(
    fn: Callable[..., Any],
    args: Sequence[tuple],
    workers,
    on_done: Callable[[Any], None] | None = None,
) -> list[Any]:
    """fn(*a) for each a in `args` as Ray tasks (at most `ray_workers` running), results in `args`' order;
    `on_done(result)` in the driver as each finishes. Must run inside `ray_session`."""
    import ray

    gpus, at_once = resources(ray, workers)
    remote = ray.remote(fn).options(num_gpus=gpus, num_cpus=1, max_retries=retries(workers), retry_exceptions=False)
    results: list[Any] = [None] * len(args)
    waiting = list(enumerate(args))
    running: dict[Any, int] = {}
    try:
        while waiting or running:
            while waiting and len(running) < at_once:
                i, a = waiting.pop(0)
                running[remote.remote(*a)] = i
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                i = running.pop(ref)
                results[i] = _get(ray, ref)
                if on_done is not None:
                    on_done(results[i])
    finally:  # a failure (or SIGTERM) stops the other tasks too: none goes on writing after the driver stopped
        for ref in running:
            ray.cancel(ref, force=True)
    return results


def run_actor_pool(
    actor: type,
    init: dict[str, Any],
    calls: Sequence[Any],
    workers,
    on_done: Callable[[Any], None] | None = None,
) -> list[Any]:
    """`actor(**init)` started `ray_workers` times (each loads the models once), then `actor.run(c)` for each
    c in `calls`, each handed to the next idle actor; `on_done(result)` in the driver as each finishes. An
    actor whose process dies is restarted and the call it had redone, up to `retries` times. Results in
    `calls`' order. Must run inside `ray_session`."""
    import ray

    if not calls:
        return []
    gpus, at_once = resources(ray, workers)
    # an actor may be restarted any number of times over a long run (preemptions); each call, i.e. each unit, is
    # retried at most `retries` times
    remote = ray.remote(actor).options(num_gpus=gpus, num_cpus=1, max_restarts=-1, max_task_retries=retries(workers))
    pool = [remote.remote(**init) for _ in range(min(at_once, len(calls)))]
    results: list[Any] = [None] * len(calls)
    waiting, idle = list(enumerate(calls)), list(pool)
    running: dict[Any, tuple[Any, int]] = {}
    try:
        while waiting or running:
            while waiting and idle:
                i, c = waiting.pop(0)
                a = idle.pop(0)
                running[a.run.remote(c)] = (a, i)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                a, i = running.pop(ref)
                results[i] = _get(ray, ref)
                idle.append(a)
                if on_done is not None:
                    on_done(results[i])
    finally:
        for a in pool:
            ray.kill(a)
    return results


def _get(ray, ref):
    try:
        return ray.get(ref)
    except Exception as e:  # noqa: BLE001
        raise _unwrap(e) from None


def _unwrap(e: BaseException) -> BaseException:
    """The exception a Ray worker raised, as itself (a UserError or StorageError keeps its one line: Ray wraps it
    in a RayTaskError that is also an instance of it, with the traceback as its text), else a one-line
    RuntimeError (e.g. a worker that died more often than `--retries` allows)."""
    from augment.run.storage import StorageError

    seen, chain = e, []
    while seen is not None and len(chain) < 16 and seen not in chain:
        chain.append(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, UserError | StorageError) and "RayTaskError" not in type(err).__name__:
            return err
    last = chain[-1]
    if isinstance(last, UserError | StorageError):  # Ray's wrapper of ours, without a cause: its first line
        return type(last)(str(last).strip().splitlines()[0])
    lines = [x for x in str(last).strip().splitlines() if x.strip()] or [type(last).__name__]
    return EngineError(f"Ray gave up ({type(last).__name__}): {lines[-1].strip()}")
