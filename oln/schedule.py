"""Training schedules counted in epochs, resolved to iterations over the actual training set.

GGN and OLN give their schedules in epochs (PA: 20 epochs, lr step after 15; detectors: 8
epochs, steps after 6 and 7) of the images their dataset keeps after filtering. A config
with `iterations: 0` states the schedule the same way; `resolve_schedule` turns it into
iterations once the training set (and so its size) and the number of processes are known.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

from oln.engine import TrainOptions

log = logging.getLogger(__name__)


def iterations_per_epoch(dataset_size: int, batch_size: int, world_size: int) -> int:
    """Optimiser steps for one pass over `dataset_size` images at a global batch of batch_size * world_size."""
    return max(1, math.ceil(dataset_size / (batch_size * world_size)))


def resolve_schedule(options: TrainOptions, dataset_size: int, world_size: int | None = None) -> TrainOptions:
    """`options` with `iterations` and `lr_steps` computed from `epochs` when `iterations` is 0.

    Args:
        options: engine options; returned unchanged when `iterations` > 0.
        dataset_size: training images (after filtering).
        world_size: processes (default: $WORLD_SIZE, 1 without torchrun).
    Raises:
        ValueError: when neither iterations nor epochs is set.
    """
    if options.iterations > 0:
        return options
    if options.epochs <= 0:
        raise ValueError("train.iterations is 0 and train.epochs is not set: give one of them")
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_epoch = iterations_per_epoch(dataset_size, options.batch_size, world_size)
    iterations = max(1, round(options.epochs * per_epoch))
    steps = [round(epoch * per_epoch) for epoch in options.lr_step_epochs]
    log.info("schedule: %g epochs of %d images at %d x %d images per step = %d iterations, lr steps at %s",
             options.epochs, dataset_size, options.batch_size, world_size, iterations, steps)
    return dataclasses.replace(options, iterations=iterations, lr_steps=steps)
