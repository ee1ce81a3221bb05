"""Atomic file writes and JSON.

Every stage writes its outputs through these helpers so a killed process never
leaves a half-written file behind: data goes to a temporary file in the same
directory (`.<name>.<8 random chars>.tmp<suffix>`), which is renamed over the
target only once it is complete. A process killed mid-write leaves that
temporary file; `remove_stale_temp_files` deletes such leftovers when the next
run starts. A full disk raises `DiskFullError` naming the file being written.

Light on purpose (numpy only): masks as COCO RLE are in `oln.rle` (pycocotools), torch
checkpoints in `oln.checkpoints`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
log = logging.getLogger(__name__)
#: Temporary files of `atomic_path`: `.<target name>.<mkstemp's 8 random chars>.tmp<target suffix>`.
TEMP_FILE_PATTERN = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(\.[^./]*)?")
_LOW_SPACE_BYTES = 1 << 20


class DiskFullError(OSError):
    """A write failed because the file system is full (errno ENOSPC); the message names the path."""


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """Whether `err` (or an exception it wraps, as torch's RuntimeError does) means the disk is full."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(current):
            return True
        current = current.__cause__ or current.__context__
    if isinstance(err, (OSError, RuntimeError)):  # torch's C++ writer says only "file write failed"
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < _LOW_SPACE_BYTES
    return False


def _disk_full_error(path: Path, err: BaseException) -> DiskFullError:
    free = "?"
    with contextlib.suppress(OSError):
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB"
    return DiskFullError(errno.ENOSPC, f"disk full: could not write {path} ({type(err).__name__}: {err}); "
                                       f"free space on {path.parent}: {free}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success.

    The temporary file keeps the target's suffix so libraries that pick a
    format from the extension (PNG writers, torch.save) behave the same.

    Raises:
        DiskFullError: the write failed because the disk is full (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give the file the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as err:
        if isinstance(err, DiskFullError) or not _is_disk_full(err, path.parent):
            raise
        raise _disk_full_error(path, err) from err
    finally:
        if tmp_path.exists() or tmp_path.is_symlink():
            tmp_path.unlink()


def remove_stale_temp_files(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete temporary files that a killed `atomic_path` write left in `folder`.

    Call at the start of a stage, for a folder no other live process writes to, or
    with `names`: only temporary files of those target file names are removed (safe
    in a folder that sibling jobs share, e.g. shard files).

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    wanted = None if names is None else set(names)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = TEMP_FILE_PATTERN.fullmatch(entry.name)
        if match is None or (wanted is not None and match["target"] not in wanted):
            continue
        if entry.is_file() or entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                size = entry.lstat().st_size
                entry.unlink()
                removed.append(entry)
                log.info("removed %s (%.1f MiB), left by an interrupted write", entry, size / 2**20)
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Serialise `obj` as JSON to `path` atomically (numpy scalars allowed)."""
    write_text(path, json.dumps(obj, indent=indent, default=json_default))


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file, naming the file in the error if it is not valid JSON."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to `path` (logs; a torn last line is tolerated by readers)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=json_default) + "\n")
    except OSError as err:
        if _is_disk_full(err, Path(path).parent):
            raise _disk_full_error(Path(path), err) from err
        raise


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, skipping a torn (incomplete) final line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def json_default(obj: Any) -> Any:
    """JSON form of numpy scalars and arrays and of paths (the `default` of `json.dumps`)."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
