"""Claim mode: workers take units of work (class tokens, then shards) from the shared OUT directory.

With a static split (`classes[rank::world]`) one slow class holds its whole worker back and a dead worker's
share waits for a rerun. In claim mode (`--claim`) every worker walks the same ordered list of units and
takes the next one nobody holds:

OUT/.claims/<stage>/<unit>.<generation>   one file per claim: "<host> <pid> <worker>"; its mtime is the lease

- A claim is made by creating generation g+1 with O_CREAT|O_EXCL, where g is the newest generation there
  (0 when none): of two workers racing for a unit exactly one create succeeds, on a local disk and on NFS v3+.
- While a worker holds claims a daemon thread touches them every lease/4 seconds. A claim whose mtime is
  older than `lease` seconds belongs to a dead (or frozen) worker: the next worker that wants the unit makes
  generation g+1 and redoes the unit from its start.
- A unit is done when its output exists (the token's directory, the shard's marker), never because of a
  claim; the claim file is removed once the output is committed.

Every output is a function of its unit alone (seeds per class and image), so the result is byte-identical to
a one-worker run whoever did which unit. A frozen worker that wakes after its lease was taken over writes
the same bytes under its own temporary names; the atomic renames keep either copy whole.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_LEASE = 300.0


class ClaimBoard:
    """This process's claims in OUT/.claims/<stage>. Use as a context manager (stops the heartbeat and
    drops the claims still held, so a clean exit never leaves work for a lease to expire)."""

    def __init__(self, out: str | Path, stage: str, worker: int, lease: float = DEFAULT_LEASE):
        if lease <= 0:
            raise ValueError(f"lease must be > 0 s, got {lease}")
        self.dir = Path(out) / ".claims" / stage
        self.owner = f"{platform.node()} {os.getpid()} {worker}\n"
        self.lease = lease
        self.held: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ claiming
    def _generations(self, key: str) -> list[tuple[int, Path]]:
        gens = []
        for p in self.dir.glob(f"{key}.*"):
            suffix = p.name[len(key) + 1 :]
            if suffix.isdigit():
                gens.append((int(suffix), p))
        return sorted(gens)

    def try_claim(self, key: str) -> bool:
        """Take `key` if nobody holds a live claim on it. True: this process now holds it."""
        if key in self.held:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        gens = self._generations(key)
        newest = gens[-1][0] if gens else 0
        if gens and self._live(gens[-1][1]) is not False:  # a live owner, or released just now: look again later
            return False
        path = self.dir / f"{key}.{newest + 1}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another worker won this generation
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self.owner)
        for _, old in gens:  # the dead owner's claims: not needed any more
            old.unlink(missing_ok=True)
        with self._lock:
            self.held[key] = path
        self._start_heartbeat()
        return True

    def release(self, key: str) -> None:
        """Drop the claim on `key` (call once its output is committed)."""
        with self._lock:
            path = self.held.pop(key, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def live_elsewhere(self, key: str) -> bool:
        """True when another process holds a live claim on `key`."""
        if key in self.held:
            return False
        gens = self._generations(key)
        return bool(gens) and self._live(gens[-1][1]) is True

    def _live(self, path: Path) -> bool | None:
        """Whether a claim file is within its lease; None when it vanished meanwhile (released or cleared)."""
        try:
            return time.time() - path.stat().st_mtime < self.lease
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ heartbeat
    def _start_heartbeat(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="augment-claims", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 4):
            with self._lock:
                paths = list(self.held.values())
            for p in paths:
                try:
                    os.utime(p)
                except FileNotFoundError:  # released meanwhile
                    pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for key in list(self.held):
            self.release(key)

    def __enter__(self) -> ClaimBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ClaimQueue(Generic[T]):
    """The units of one stage, handed out in order to whoever claims them first.

    `take(n)` claims up to n units that are not done and not held live elsewhere, without waiting; with
    `block` it waits (polling) while every remaining unit is held by another worker, and returns [] only when
    every unit is done or held by this process. Release each unit with `board.release(key(unit))` once its
    output is committed."""

    def __init__(
        self,
        board: ClaimBoard,
        items: Iterable[T],
        key: Callable[[T], str],
        done: Callable[[T], bool],
        poll: float = 5.0,
        on_wait: Callable[[int], None] | None = None,
    ):
        self.board, self.items, self.key, self.done = board, list(items), key, done
        self.poll, self.on_wait = poll, on_wait
        self._finished: set[int] = set()  # indices seen done (done stays done): not checked again

    def take(self, n: int, block: bool = False) -> list[T]:
        while True:
            got, waiting = [], 0
            for i, item in enumerate(self.items):
                if len(got) >= n:
                    break
                k = self.key(item)
                if i in self._finished or k in self.board.held:
                    continue
                if self.done(item):
                    self._finished.add(i)
                    continue
                if not self.board.try_claim(k):
                    waiting += 1
                elif self.done(item):  # finished by another worker between the check and the claim
                    self.board.release(k)
                else:
                    got.append(item)
            if got or not block or not waiting:
                return got
            if self.on_wait is not None:
                self.on_wait(waiting)
            time.sleep(min(self.poll, self.board.lease / 2))

    def reserve(self, items: list[T]) -> bool:
        """Claim every one of `items` (a checkpoint's classes) or none: False, nothing held, if any is taken."""
        keys = [self.key(item) for item in items]
        got = [k for k in keys if k in self.board.held or self.board.try_claim(k)]
        if len(got) < len(keys):
            for k in got:
                self.board.release(k)
            return False
        return True

    def __iter__(self) -> Iterator[T]:
        """Claim and yield one unit at a time (blocking), until none is left to take."""
        while item := self.take(1, block=True):
            yield item[0]
