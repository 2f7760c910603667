"""Atomic writes to OUT: readers (and other workers sharing OUT) see the old object or the new one, never half.

On a local path the content goes to `<name>.<pid>.tmp` beside the target (unique per process: workers write the
same manifest, card or info file at once), then replaces the target with one rename; on any failure (a full
disk) the temporary file is removed before the error goes on. On an object store (augment.run.storage) there
is no rename and no need of one: the finished bytes go up in one PUT (a multipart upload for large objects),
which the store makes visible only once whole; a failed or killed upload leaves no object."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from augment.run.storage import StorageError, from_remote, out_path, storage_error


def write_bytes(path, data: bytes, fsync: bool = False):
    path = out_path(path)
    if not isinstance(path, Path):  # an object store: one PUT, or a multipart upload aborted on failure
        try:
            path.fs.pipe_file(path.path, data)
        except Exception as e:
            if not from_remote(e):
                raise
            raise StorageError(f"{path}: cannot write ({storage_error(e)})") from e
        return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str, fsync: bool = False):
    return write_bytes(path, text.encode("utf-8"), fsync)


def write_json(path, obj: Any, indent: int | None = 1, fsync: bool = False):
    return write_text(path, json.dumps(obj, indent=indent) + "\n", fsync)
