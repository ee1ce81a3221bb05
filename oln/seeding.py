"""Deterministic sample stream and RNG seeding of the training loop.

The samples of iteration i are a pure function of (seed, i) (a seeded permutation per
epoch of the index stream), and each sample's augmentation is seeded from (seed, i,
position in the global batch), so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

MODEL_INIT_STREAM = -2  # mix_seed stream of the initial weights (-1: RNG before the first step)


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (pure function of its arguments)."""
    words = [int(v) & 0xFFFFFFFF for v in values]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) >> 1


def seed_model_init(seed: int) -> None:
    """Seed the torch RNG that layer constructors draw initial weights from.

    Call right before building a model: without it every process starts from other
    weights and two runs with the same `seed` differ. Same value on every rank.
    """
    torch.manual_seed(mix_seed(seed, MODEL_INIT_STREAM))


def sample_indices(seed: int, iteration: int, global_batch: int, dataset_size: int) -> list[int]:
    """Dataset indices of the global batch of `iteration`: consecutive slices of an
    endless stream of per-epoch permutations seeded by (seed, epoch)."""
    start = iteration * global_batch
    out: list[int] = []
    epoch, offset = divmod(start, dataset_size)
    while len(out) < global_batch:
        generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
        perm = torch.randperm(dataset_size, generator=generator).tolist()
        take = perm[offset : offset + global_batch - len(out)]
        out.extend(take)
        epoch, offset = epoch + 1, 0
    return out


class IterationBatchSampler:
    """Yields, for iterations start..end-1, this rank's list of (index, sample_seed)."""

    def __init__(self, seed: int, start: int, end: int, batch_size: int, dataset_size: int, rank: int,
                 world_size: int):
        self.seed, self.start, self.end = seed, start, end
        self.batch_size, self.dataset_size = batch_size, dataset_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        global_batch = self.batch_size * self.world_size
        for it in range(self.start, self.end):
            indices = sample_indices(self.seed, it, global_batch, self.dataset_size)
            positions = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            yield [(indices[p], mix_seed(self.seed, it, p)) for p in positions]


class SeededDataset(Dataset):
    """Reseeds python/numpy/torch RNGs with the sample seed before reading an item, so
    augmentations are a pure function of (seed, iteration, sample position)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        random.seed(sample_seed)
        np.random.seed(sample_seed % 2**32)
        torch.manual_seed(sample_seed)
        return self.dataset[index]


def rng_states() -> dict:
    """The python, numpy, torch (and CUDA) RNG states, for a checkpoint."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore RNG states saved by `rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
