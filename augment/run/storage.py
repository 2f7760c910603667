"""Where OUT lives: a local directory or any fsspec URL (`s3://bucket/run`, `gs://…`, `file://…`). The one
place that turns an OUT (or a tokens or shards directory a user names) into a path object; everything else
works on what `out_path` returns with the pathlib API, whatever the storage:

- a local path or `file://` URL → `pathlib.Path` (atomic writes: a temporary file, fsync, rename; the worker
  lock works on it);
- any other URL → a `upath.UPath` over fsspec (universal-pathlib). Object stores have no rename, so every
  object is written whole in one PUT of finished bytes (`augment.run.atomic`): a shard, a token or a marker is
  visible only when complete, and the marker is written after its shard.

Credentials and endpoints come the standard way (for S3: the AWS credential chain, `AWS_ENDPOINT_URL` for
S3-compatible stores such as MinIO); they never reach a manifest, a card or a log line. Needs the extra of
the URL's scheme (`pip install 'augment[s3]'` for s3://, `augment[gcs]` for gs://); without it, one line that
names it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from augment.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
# where the errors of remote filesystems come from (the clients under fsspec): turned into StorageError
REMOTE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "google", "urllib3", "upath")
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}  # URL scheme → the extra that brings its filesystem
# fsspec filesystems whose listings are cached per process: other workers write the same prefix, so no cache
NO_LISTINGS_CACHE = {"s3": {"use_listings_cache": False}, "s3a": {"use_listings_cache": False}}


def scheme(out: str | os.PathLike) -> str | None:
    """The URL scheme of `out` ("s3"), or None for a local path or a file:// URL."""
    text = os.fspath(out) if not isinstance(out, str) else out
    if "://" not in text:
        return None
    proto = text.split("://", 1)[0].lower()
    return None if proto in ("file", "local") else proto


def is_url(out: Any) -> bool:
    """True when `out` lives on a remote filesystem (an object store), not on a local path."""
    return not isinstance(out, Path) and scheme(str(out)) is not None


def out_path(out: str | os.PathLike, argument: str | None = None):
    """`out` as a path object: pathlib.Path for a local path or file:// URL, a UPath for any other URL (the
    scheme's filesystem must be installed: UserError naming the extra otherwise)."""
    if isinstance(out, Path):
        return out
    text = str(out)
    if not text.strip() or "\0" in text or text.startswith("://"):
        raise UserError(f"{argument or 'path'}: {text!r} is not a path or URL", argument)
    proto = scheme(text)
    if proto == "memory":
        raise UserError(f"{text}: memory:// keeps nothing after this process exits; give a path or a bucket", argument)
    if proto is None:
        return Path(text.split("://", 1)[1] if "://" in text else text).expanduser()
    if type(out).__module__.startswith("upath"):
        return out
    try:
        import fsspec
        from upath import UPath

        fsspec.get_filesystem_class(proto)
    except ImportError as e:
        extra = EXTRAS.get(proto, "cluster")
        raise UserError(
            f"{text}: {proto}:// needs the {extra!r} extra (pip install 'augment[{extra}]'; {e})", argument
        ) from None
    except ValueError:
        raise UserError(f"{text}: unknown storage scheme {proto!r}", argument) from None
    return UPath(text, **NO_LISTINGS_CACHE.get(proto, {}))


def check_out(out, argument: str = "out") -> None:
    """Refuse an OUT that cannot be written, before anything is written: a local path whose nearest existing
    parent is not a writable directory; a URL whose bucket is missing or denies listing or writing (one small
    probe object, written and removed) or whose credentials are missing or expired."""
    path = out_path(out, argument)
    if isinstance(path, Path):
        existing = path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"{out}: {existing} is not a directory", argument)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"{out}: {existing} is not writable", argument)
        try:  # os.access trusts the mode bits: /proc, /sys, an immutable or read-only mount say yes
            probe = existing / f".augment-probe-{uuid.uuid4().hex}"
            probe.touch(exist_ok=False)
            probe.unlink()
        except OSError as e:
            raise UserError(f"{out}: cannot write in {existing} ({e.strerror or type(e).__name__})", argument) from None
        return
    probe = path / f".augment-probe-{uuid.uuid4().hex}"
    try:
        if path.exists() and path.is_file():
            raise UserError(f"{out}: is an object, not a prefix (directory)", argument)
        probe.write_bytes(b"")
        probe.unlink()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (botocore's and fsspec's own error types: credentials, access, bucket)
        raise UserError(f"{out}: cannot write there ({storage_error(e)})", argument) from None


class StorageError(OSError):
    """A remote filesystem refused a write (access denied, credentials expired, bucket full or gone): the CLI
    says it in one line and exits 1; what was finished stays, nothing half-written is visible."""


def storage_error(e: BaseException) -> str:
    """One line for an error from a remote filesystem (no credentials or endpoints in it)."""
    import re

    first = str(e).splitlines()[0] if str(e) else ""
    first = re.sub(r"[a-z][a-z0-9+.-]*://[^\s\"']*", "<endpoint>", first)  # an endpoint may name a private host
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def from_remote(e: BaseException) -> bool:
    """Whether `e` (or what caused it) comes from a remote filesystem's client (botocore, aiohttp, s3fs, ...);
    a local error (a PermissionError on a cache file, a bug) is not."""
    seen = 0
    while e is not None and seen < 10:
        if (type(e).__module__ or "").split(".")[0] in REMOTE_MODULES:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


@contextlib.contextmanager
def storage_errors(out) -> Iterator[None]:
    """Around work on a remote OUT: an error of its filesystem (refused, unreachable, credentials expired)
    becomes one StorageError naming OUT; on a local OUT nothing changes."""
    if out is None or not is_url(out):
        yield
        return
    try:
        yield
    except (UserError, StorageError):
        raise
    except Exception as e:
        if not from_remote(e):
            raise
        raise StorageError(f"{out}: storage failed ({storage_error(e)})") from e


def converts_storage_errors(argument: str = "out") -> Callable[[F], F]:
    """Decorate a job whose `argument` is an OUT: `storage_errors` around the whole call."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            out = signature.bind_partial(*args, **kwargs).arguments.get(argument)
            with storage_errors(out):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
