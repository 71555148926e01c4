"""Durable writes: every file the engine keeps (checkpoints, logs, caches, samples) is written to a
temporary name in its own folder, flushed to disk and renamed over the target, so that a reader, a
crash or a full disk never leaves a half-written file where a whole one was."""
from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path
from typing import Callable


class DiskFullError(OSError):
    """The file system ran out of space (or quota) during a write; the previous file is intact."""


def full_disk_error(e: OSError, folder: Path) -> OSError:
    """A clear error for ENOSPC / EDQUOT that names the folder, caused by `e`; other errors unchanged
    (so that `raise full_disk_error(e, folder)` re-raises them as they were)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        error = DiskFullError(e.errno, f"no space left on the disk of {folder} while writing there; what was "
                                       "there before is intact: free some space (or choose another folder) and retry")
        error.__cause__ = e
        return error
    return e


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path, kind: str = "part") -> Path:
    """A unique hidden name beside `path`, for a file or folder being built to replace it."""
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], mode: int = 0o644) -> Path:
    """`write(tmp)` fills a temporary file beside `path`; it is then fsynced and renamed over `path`.

    On any failure the temporary file goes and `path` keeps its previous content; a full disk raises
    DiskFullError naming the folder. `mode` undoes the 0600 of writers such as safetensors: the
    engine's files are shared or shipped and hold no secrets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise full_disk_error(e, path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
