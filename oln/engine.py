"""The training loop shared by every trainer (affinity network, detector).

`train()` owns what is not model-specific: device choice, bf16 autocast and
channels_last on CUDA, DDP under torchrun, a deterministic sample stream that resumes
exactly by iteration, SGD/AdamW with linear warmup and step/cosine/constant decay,
gradient clipping, skipping non-finite steps, checkpoints with auto-resume,
SIGTERM/SIGUSR1 handling, a JSONL log and a progress line on rank 0.

The JSONL log is kept inside every checkpoint too (the records up to its iteration)
and rewritten from it on resume, so a run killed with -9, whose `log.jsonl` the
workflow manager then deletes, still ends with every record from iteration 1.
Messages go through `logging` (logger `oln.engine`; progress: `oln.progress`).

Determinism: the samples of iteration i are a pure function of (seed, i) (a seeded
permutation per epoch of the index stream), each sample's augmentation is seeded from
(seed, i, position in the global batch), and the torch RNG is reseeded from
(seed, i, rank) before each step. A run resumed from a checkpoint therefore sees the
same batches and the same dropout as an uninterrupted one. Trainers call
`seed_model_init(seed)` right before building their model, so the initial weights
are a function of the seed too and two runs of a stage give the same weights.

The pieces live in their own modules: device choice and DDP in `oln.devices`, the
sample stream and seeding in `oln.seeding`, checkpoints and the log restore in
`oln.resume`; this module holds the options, the schedule and the loop.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from oln.devices import all_reduce_max, dist_setup, max_mem_mb, resolve_device, wrap_ddp
from oln.io import append_jsonl, remove_stale_temp_files
from oln.preemption import EXIT_CODES, StopFlag
from oln.progress import Progress
from oln.resume import CHECKPOINT_NAME, load_checkpoint, restore_log, save_checkpoint
from oln.seeding import IterationBatchSampler, SeededDataset, mix_seed, sample_indices, seed_model_init

__all__ = ["TrainOptions", "build_optimizer", "lr_factor", "resolve_device", "sample_indices", "seed_model_init",
           "train"]

log = logging.getLogger(__name__)
LossFn = Callable[[nn.Module, Any, torch.device], dict]


@dataclass
class TrainOptions:
    """Training loop options.

    Attributes:
        iterations: optimiser steps in total (0 = from `epochs`, see `oln.schedule`).
        epochs: passes over the training images when `iterations` is 0 (GGN and OLN count
            their schedules in epochs of the filtered training set).
        lr_step_epochs: with `epochs`, the epochs after which lr *= gamma (become `lr_steps`).
        batch_size: images per process (per GPU under DDP).
        num_workers: DataLoader worker processes (0 = load in the main process).
        optimizer: sgd | adamw.
        lr, momentum, weight_decay: optimiser settings (momentum is AdamW's beta1).
        warmup_iters, warmup_factor: linear warmup from lr * warmup_factor to lr.
        schedule: step | cosine | constant decay after warmup.
        lr_steps, gamma: for `step`, lr *= gamma at each listed iteration.
        grad_clip: max gradient norm (0 = off).
        checkpoint_every: iterations between checkpoints (one is always written at the end).
        log_every: iterations averaged into one JSONL log record.
        amp: bf16 autocast + channels_last (CUDA only; ignored on CPU).
        seed: seeds the sample order, augmentations and the torch RNG.
        device: auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK).
    """

    iterations: int = 1000
    epochs: float = 0.0
    lr_step_epochs: list[float] = field(default_factory=list)
    batch_size: int = 8
    num_workers: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    schedule: str = "step"
    lr_steps: list[int] = field(default_factory=list)
    gamma: float = 0.1
    grad_clip: float = 0.0
    checkpoint_every: int = 500
    log_every: int = 10
    amp: bool = True
    seed: int = 0
    device: str = "auto"


def lr_factor(iteration: int, options: TrainOptions) -> float:
    """Learning-rate multiplier at `iteration` (warmup times decay)."""
    if options.schedule == "step":
        decay = options.gamma ** sum(iteration >= s for s in options.lr_steps)
    elif options.schedule == "cosine":
        progress = min(iteration, options.iterations) / max(1, options.iterations)
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif options.schedule == "constant":
        decay = 1.0
    else:
        raise ValueError(f"schedule must be step | cosine | constant, got {options.schedule!r}")
    if iteration < options.warmup_iters:
        alpha = iteration / options.warmup_iters
        decay *= options.warmup_factor * (1.0 - alpha) + alpha
    return decay


def build_optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    """SGD or AdamW (`options.optimizer`) over the trainable parameters of `model`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                               weight_decay=options.weight_decay)
    if options.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=options.lr, betas=(options.momentum, 0.999),
                                 weight_decay=options.weight_decay)
    raise ValueError(f"optimizer must be sgd | adamw, got {options.optimizer!r}")


@dataclass
class _Run:
    """State of one training run, shared by the steps of `train`.

    Attributes:
        model: what `loss_fn` is called with (the DDP wrapper under torchrun).
        raw_model: the unwrapped model (saved in checkpoints, returned).
        start_iter: iteration the run starts (or resumes) at.
        skipped: steps skipped for a non-finite loss so far.
        history: the JSONL log records so far (rank 0; kept in every checkpoint).
    """

    options: TrainOptions
    desc: str
    rank: int
    world_size: int
    device: torch.device
    use_amp: bool
    model: nn.Module
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ckpt_path: Path
    log_path: Path
    start_iter: int
    skipped: int
    history: list[dict]


def train(
    model: nn.Module,
    dataset: Dataset,
    collate_fn: Callable,
    loss_fn: LossFn,
    options: TrainOptions,
    out_dir: str | Path,
    desc: str = "train",
) -> nn.Module:
    """Train `model` on `dataset`, resuming from `out_dir/checkpoints/last.pt` if present.

    Args:
        model: the network (moved to the device here).
        dataset: map-style dataset; items are combined by `collate_fn`.
        collate_fn: list of items -> batch.
        loss_fn: `(model, batch, device) -> {name: scalar tensor}`; the terms are summed
            for backward. Under DDP `model` is the DDP wrapper: call it, not its submodules.
        options: see `TrainOptions`.
        out_dir: receives `log.jsonl` and `checkpoints/last.pt`.
        desc: label of the progress line.
    Returns:
        the trained (unwrapped) model in eval mode.
    Raises:
        SystemExit: 143 after SIGTERM (138 after SIGUSR1), once a checkpoint is written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world_size, device, created_group = dist_setup(options.device)
    if len(dataset) == 0:
        raise ValueError("empty training dataset")
    run = _start_run(model, options, out_dir, desc, rank, world_size, device)
    sampler = IterationBatchSampler(options.seed, run.start_iter, options.iterations, options.batch_size,
                                    len(dataset), rank, world_size)
    loader = DataLoader(SeededDataset(dataset), batch_sampler=sampler, collate_fn=collate_fn,
                        num_workers=options.num_workers, pin_memory=device.type == "cuda")
    stop = StopFlag()
    stop.install()
    run.model.train()
    try:
        if run.start_iter < options.iterations:
            _train_loop(run, loader, loss_fn, stop)
        return run.raw_model.eval()
    finally:
        stop.restore()
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _start_run(model: nn.Module, options: TrainOptions, out_dir: Path, desc: str, rank: int, world_size: int,
               device: torch.device) -> _Run:
    """Seed, move `model` to `device`, build optimiser and schedule, resume from a checkpoint, wrap in DDP."""
    ckpt_path = out_dir / "checkpoints" / CHECKPOINT_NAME
    log_path = out_dir / "log.jsonl"
    use_amp = options.amp and device.type == "cuda"
    torch.manual_seed(mix_seed(options.seed, -1, rank))
    model.to(device)
    if use_amp:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, options))
    if rank == 0:  # leftovers of a write interrupted by a kill (checkpoints can be large)
        remove_stale_temp_files(out_dir)
        remove_stale_temp_files(ckpt_path.parent)
    start_iter, skipped, saved_log = load_checkpoint(ckpt_path, model, optimizer, scheduler)
    if rank == 0 and ckpt_path.exists():
        log.info("%s: resuming from %s at iteration %d", desc, ckpt_path, start_iter)
    history = restore_log(log_path, saved_log, start_iter) if rank == 0 else []
    train_model = wrap_ddp(model, device, world_size)
    return _Run(options=options, desc=desc, rank=rank, world_size=world_size, device=device, use_amp=use_amp,
                model=train_model, raw_model=train_model.module if world_size > 1 else train_model,
                optimizer=optimizer, scheduler=scheduler, ckpt_path=ckpt_path, log_path=log_path,
                start_iter=start_iter, skipped=skipped, history=history)


def _train_loop(run: _Run, loader: DataLoader, loss_fn: LossFn, stop: StopFlag) -> None:
    """Iterations `run.start_iter` .. `options.iterations`: step, log, report progress, checkpoint."""
    options = run.options
    progress = Progress(run.desc, options.iterations, run.start_iter, enabled=run.rank == 0)
    window: dict[str, list[float]] = {}
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    loader_iter = iter(loader)
    t_end = time.perf_counter()
    for it in range(run.start_iter, options.iterations):
        batch = next(loader_iter)
        t_data = time.perf_counter()
        losses, loss, lr = _train_step(run, loss_fn, batch, it)
        t_now = time.perf_counter()
        values = {k: float(v.detach()) for k, v in losses.items()}
        values.update(loss=float(loss.detach()), iter_time=t_now - t_end, data_time=t_data - t_end)
        t_end = t_now
        done = it + 1
        window = _log_window(run, window, values, done, lr)
        progress.update(done, f"loss {values['loss']:.4f} lr {lr:.2e}")
        _checkpoint_or_stop(run, stop, done)
    progress.close()


def _train_step(run: _Run, loss_fn: LossFn, batch: Any, iteration: int) -> tuple[dict, torch.Tensor, float]:
    """One optimiser step on `batch`; skipped (and counted) when the loss is not finite on some rank.

    Returns:
        (the loss terms, their sum, the learning rate the step used).
    """
    torch.manual_seed(mix_seed(run.options.seed, iteration, run.rank))
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=run.use_amp):
        losses = loss_fn(run.model, batch, run.device)
    loss = sum(v.float() for v in losses.values())
    finite = all_reduce_max(0.0 if torch.isfinite(loss).item() else 1.0, run.device, run.world_size) == 0
    run.optimizer.zero_grad(set_to_none=True)
    if finite:
        loss.backward()
        if run.options.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.options.grad_clip)
        run.optimizer.step()
    else:
        run.skipped += 1
        log.warning("%s: non-finite loss at iteration %d; step skipped", run.desc, iteration + 1)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return losses, loss, lr


def _log_window(run: _Run, window: dict[str, list[float]], values: dict[str, float], done: int,
                lr: float) -> dict[str, list[float]]:
    """Add `values` to `window`; every `log_every` iterations (and at the end) append their means
    to the JSONL log (rank 0) and start a new window.

    Returns:
        the window to keep adding to.
    """
    for k, v in values.items():
        window.setdefault(k, []).append(v)
    if done % run.options.log_every != 0 and done != run.options.iterations:
        return window
    if run.rank == 0:
        record = {"iter": done, **{k: float(np.mean(v)) for k, v in window.items()}, "lr": lr,
                  "max_mem_mb": max_mem_mb(run.device), "skipped_steps": run.skipped}
        append_jsonl(run.log_path, record)
        run.history.append(record)
    return {}


def _checkpoint_or_stop(run: _Run, stop: StopFlag, done: int) -> None:
    """Write a checkpoint when one is due or a stop signal came (on any rank); then exit on a signal.

    Raises:
        SystemExit: with the signal's exit code (see `oln.preemption.EXIT_CODES`).
    """
    stop_now = all_reduce_max(float(stop.signum or 0), run.device, run.world_size)
    if done % run.options.checkpoint_every == 0 or done == run.options.iterations or stop_now:
        _save_checkpoint(run, done)
    if stop_now:
        signum = signal.Signals(int(stop_now))
        log.warning("%s: received %s; checkpoint at iteration %d written", run.desc, signum.name, done)
        raise SystemExit(EXIT_CODES.get(signum, 1))


def _save_checkpoint(run: _Run, iteration: int) -> None:
    """Write `last.pt` (rank 0): weights, optimiser, schedule, RNGs and the log records so far."""
    if run.rank != 0:
        return
    save_checkpoint(run.ckpt_path, run.raw_model, run.optimizer, run.scheduler, iteration, run.skipped, run.options,
                    run.history)
