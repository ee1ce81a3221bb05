"""Training checkpoints: what `oln.engine.train` saves, and how it resumes from them.

A checkpoint holds the weights, optimiser, schedule, RNG states and the JSONL log records
up to its iteration; on resume the log is rewritten from it, so a run killed with -9,
whose `log.jsonl` the workflow manager then deletes, still ends with every record.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oln.checkpoints import save_torch
from oln.io import read_jsonl, write_text
from oln.seeding import rng_states, set_rng_states

CHECKPOINT_NAME = "last.pt"


def load_checkpoint(ckpt_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> tuple[int, int, list[dict] | None]:
    """Restore model, optimiser, schedule and RNGs from `ckpt_path` if it exists.

    Returns:
        (iteration, skipped steps, the checkpoint's log records or None); (0, 0, None) without one.
    """
    if not ckpt_path.exists():
        return 0, 0, None
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_states(ckpt["rng"])
    return int(ckpt["iteration"]), int(ckpt.get("skipped_steps", 0)), ckpt.get("log")


def restore_log(log_path: Path, records: list[dict] | None, iteration: int) -> list[dict]:
    """Rewrite `log_path` with the records up to `iteration` and return them.

    `records` are the checkpoint's (so a log deleted after a kill comes back); None
    (no checkpoint, or one of an older version) keeps what `log_path` holds. Records a
    killed run wrote after its last checkpoint are dropped: the resumed run redoes them.
    """
    if records is None:
        records = read_jsonl(log_path) if log_path.exists() else []
    records = [r for r in records if r.get("iter", 0) <= iteration]
    write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def save_checkpoint(ckpt_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    iteration: int, skipped: int, options: Any, history: list[dict]) -> None:
    """Write a checkpoint atomically: weights, optimiser, schedule, RNGs and the log records so far.

    Args:
        ckpt_path: the checkpoint file.
        model: the unwrapped model.
        optimizer, scheduler: their states are saved.
        iteration: steps done.
        skipped: steps skipped for a non-finite loss.
        options: the run's options dataclass (saved as a dict).
        history: the JSONL log records up to `iteration` (restored on resume).
    """
    save_torch(ckpt_path, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": None,  # bf16 autocast needs no gradient scaler
        "rng": rng_states(),
        "iteration": iteration,
        "skipped_steps": skipped,
        "options": asdict(options),
        "log": history,
    })
