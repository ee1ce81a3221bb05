"""Torch checkpoints written atomically, and the reset of checkpoints left by other settings or code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from oln.io import atomic_path, json_default, read_json, write_json


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save `obj` to `path` atomically (`DiskFullError` when the disk is full)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # through a Python file: a full disk surfaces as ENOSPC, not a bare C++ error


def reset_stale_checkpoints(out_dir: str | os.PathLike, settings: Any, code: str) -> bool:
    """Delete `out_dir/checkpoints/` when it was written under other settings or other code.

    Training resumes from `out_dir/checkpoints/last.pt`; after a config edit, or an edit
    of code the training runs, the old checkpoints must not be resumed. `settings`
    (options, inputs) and `code` (the stage's `oln.code_hash.stage_code_hash`, so edits
    of modules the training does not import keep its checkpoints) are fingerprinted into
    `checkpoints/settings.json`. Only rank 0 (env RANK) acts.

    Returns:
        True when stale checkpoints were removed.
    """
    if os.environ.get("RANK", "0") != "0":
        return False
    ckpt_dir = Path(out_dir) / "checkpoints"
    text = json.dumps(settings, sort_keys=True, default=_settings_default)
    fingerprint = {"settings": hashlib.sha256(text.encode()).hexdigest(), "code": code}
    stamp = ckpt_dir / "settings.json"
    removed = False
    if ckpt_dir.exists() and (not stamp.exists() or read_json(stamp) != fingerprint):
        shutil.rmtree(ckpt_dir)
        removed = True
    if not stamp.exists():
        write_json(stamp, fingerprint)
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (a training input's identity for `reset_stale_checkpoints`)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def input_fingerprints(**paths: str | os.PathLike) -> dict[str, str]:
    """{name: SHA-256} of the files a training reads, for its checkpoint settings.

    A training's json may change at the same path (merge_pseudo rewritten with another
    `merge.top_k`, synthesize with another seed); its checkpoints must then be reset, not
    resumed, so the content counts, not the path.
    """
    return {name: file_sha256(path) for name, path in paths.items()}


def _settings_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return json_default(obj)
