"""Folders of unlabeled images: which files are images, and a fingerprint of the list.

Light on purpose (no torch, no image decoding): the workflow fingerprints every folder
source while it builds the DAG, so adding, removing or replacing an image re-runs the
indexing of that folder and what depends on it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under `folder` (recursively, by extension), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """16 hex digits of SHA-256 over the sorted relative names, sizes and mtimes of `folder`'s images.

    A missing folder gives the fingerprint of an empty one (its indexing then reports it).
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in list_images(folder) if folder.is_dir() else []:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
