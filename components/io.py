"""Atomic file output: write to a temporary name in the same folder, fsync, rename.

A process killed at any moment leaves either the previous file or the complete new one,
never a half-written file under the final name. Also the one reader of project checkpoint files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not all filesystems support opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Faults of the storage, not of the data: no retry or skip helps; the user must act.
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the filesystem is read-only"}


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, an exceeded quota or a read-only filesystem met while writing `path` into one
    UserError sentence naming the path (the partial file is the caller's to remove)."""
    from components.errors import UserError

    try:
        yield
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        raise UserError(f"cannot write {path}: {_STORAGE_ERRNOS[exc.errno]}; free space there (or point the "
                        "output elsewhere) and rerun: nothing partial was kept") from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on clean exit fsync and rename it to `path`."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with disk_errors(path):
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Deterministic JSON (sorted keys, fixed indent) written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def staging_dir(final: str | os.PathLike) -> Path:
    """A fresh, empty sibling folder in which to build `final` before `commit_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent))


def commit_dir(staged: str | os.PathLike, final: str | os.PathLike) -> None:
    """Replace folder `final` with the fully written folder `staged`.

    Between the two renames `final` is briefly absent, never partially written, so a crash
    leaves either the old folder, no folder, or the new one.
    """
    staged, final = Path(staged), Path(final)
    _fsync_dir(staged)
    trash = None
    if final.exists() or final.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + ".old.", dir=final.parent))
        os.replace(final, trash / final.name)
    os.replace(staged, final)
    _fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale_staging(parent: str | os.PathLike, name: str) -> None:
    """Delete leftovers of earlier killed runs that staged `name` inside `parent`."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for p in parent.glob(f"{TMP_PREFIX}{name}.*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def read_checkpoint(path: str | os.PathLike, kind: str, missing_hint: str, unreadable_hint: str,
                    map_location: Any = "cpu") -> Any:
    """`torch.load(weights_only=True)` of a project checkpoint file, with one UserError sentence for a
    missing file ("<kind> <path> does not exist; <missing_hint>") or one that does not unpickle."""
    import io

    import torch

    from components.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{kind} {path} does not exist; {missing_hint}")
    try:
        return torch.load(io.BytesIO(path.read_bytes()), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every unpickling failure is the same user-facing problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a loadable {kind} ({first}); {unreadable_hint}") from None
