"""Training engine: schedule, sample stream, exact resume, signals, skipped steps."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from oln.data.transforms import build_transforms
from oln.engine import TrainOptions, lr_factor, resolve_device, sample_indices, train
from oln.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


class TinyDataset(torch.utils.data.Dataset):
    """8x8 images with one square mask; augmentation uses python `random` and torch RNG."""

    def __init__(self, n: int = 10):
        gen = torch.Generator().manual_seed(123)
        self.images = torch.rand(n, 3, 8, 8, generator=gen)
        self.transform = build_transforms(flip=True, scale_range=(1.0, 1.0), crop_size=6)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
        masks[0, 2:6, 1:4] = 1
        target = {"masks": masks, "boxes": torch.tensor([[1.0, 2, 4, 6]]), "labels": torch.ones(1)}
        image, target = self.transform(self.images[i], target)
        noise = torch.rand(1).item() * 0.01  # drawn from the reseeded torch RNG
        return image + noise, float(target["masks"].sum()) / 36.0


def collate(batch):
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))


def mse_loss(model, batch, device):
    x, y = batch
    pred = model(x.to(device))[:, 0]
    y = y.to(device)
    return {"loss_mse": ((pred - y) ** 2).mean(), "loss_l1": (pred - y).abs().mean() * 0.1}


def options(**kw):
    base = dict(iterations=8, batch_size=3, lr=0.05, warmup_iters=2, lr_steps=[5], checkpoint_every=100,
                log_every=1, seed=7, device="cpu")
    base.update(kw)
    return TrainOptions(**base)


def test_lr_factor_hand_values():
    opts = TrainOptions(iterations=100, warmup_iters=10, warmup_factor=0.001, lr_steps=[20, 30], gamma=0.1)
    assert lr_factor(0, opts) == pytest.approx(0.001)
    assert lr_factor(5, opts) == pytest.approx(0.5005)
    assert lr_factor(10, opts) == pytest.approx(1.0)
    assert lr_factor(25, opts) == pytest.approx(0.1)
    assert lr_factor(30, opts) == pytest.approx(0.01)
    cosine = TrainOptions(iterations=100, warmup_iters=0, schedule="cosine")
    assert lr_factor(50, cosine) == pytest.approx(0.5)
    assert lr_factor(0, TrainOptions(warmup_iters=0, schedule="constant")) == 1.0


def test_sample_stream_is_epoch_permutations_and_pure():
    first = [i for it in range(4) for i in sample_indices(3, it, 5, 10)]
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert sample_indices(3, 3, 5, 10) == first[15:]
    assert sample_indices(4, 0, 5, 10) != sample_indices(3, 0, 5, 10)
    # a batch spanning an epoch boundary (7 per batch, 10 items)
    stream = [i for it in range(10) for i in sample_indices(0, it, 7, 10)]
    assert all(sorted(stream[k : k + 10]) == list(range(10)) for k in range(0, 70, 10))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    straight = train(tiny_model(), TinyDataset(), collate, mse_loss, options(), tmp_path / "a")

    calls = {"n": 0}

    def interrupting_loss(model, batch, device):
        calls["n"] += 1
        if calls["n"] == 4:  # request a stop during iteration 4; the engine checkpoints after it
            os.kill(os.getpid(), signal.SIGUSR1)
        return mse_loss(model, batch, device)

    with pytest.raises(SystemExit) as stopped:
        train(tiny_model(), TinyDataset(), collate, interrupting_loss, options(), tmp_path / "b")
    assert stopped.value.code == 128 + signal.SIGUSR1
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 4
    resumed = train(tiny_model(), TinyDataset(), collate, mse_loss, options(), tmp_path / "b")

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    log_a, log_b = read_jsonl(tmp_path / "a" / "log.jsonl"), read_jsonl(tmp_path / "b" / "log.jsonl")
    assert [r["iter"] for r in log_b] == list(range(1, 9))
    for ra, rb in zip(log_a, log_b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6)
        assert rb["lr"] == pytest.approx(ra["lr"])
    expected_keys = {"iter", "loss_mse", "loss_l1", "loss", "lr", "iter_time", "data_time", "max_mem_mb"}
    assert expected_keys <= set(log_a[0])
    assert log_a[5]["lr"] == pytest.approx(0.005)  # after the step at iteration 5
    assert not straight.training
    # a finished run is not trained again
    again = train(tiny_model(), TinyDataset(), collate, mse_loss, options(), tmp_path / "a")
    assert torch.equal(again[0].weight, straight[0].weight)


def test_non_finite_loss_is_skipped(tmp_path, caplog):
    calls = {"n": 0}

    def sometimes_nan(model, batch, device):
        calls["n"] += 1
        losses = mse_loss(model, batch, device)
        if calls["n"] == 2:
            losses["loss_mse"] = losses["loss_mse"] * float("nan")
        return losses

    with caplog.at_level("WARNING", logger="oln.engine"):
        model = train(tiny_model(), TinyDataset(), collate, sometimes_nan, options(iterations=3), tmp_path)
    assert "non-finite loss at iteration 2; step skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert read_jsonl(tmp_path / "log.jsonl")[-1]["skipped_steps"] == 1


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_engine import TinyDataset, collate, tiny_model, mse_loss, options
    from oln.engine import train
    torch.set_num_threads(1)
    def slow_loss(model, batch, device):
        time.sleep(0.02)
        return mse_loss(model, batch, device)
    train(tiny_model(), TinyDataset(), collate, slow_loss,
          options(iterations=100000, checkpoint_every=5, log_every=1), {out!r})
""")


def test_sigterm_leaves_loadable_checkpoint(tmp_path):
    script = SIGTERM_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    ckpt_path = tmp_path / "checkpoints" / "last.pt"
    deadline = time.time() + 60
    while not ckpt_path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ckpt_path.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr.decode()[-2000:]
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "iteration"} <= set(ckpt)
    assert ckpt["iteration"] >= 5
    model = tiny_model()
    model.load_state_dict(ckpt["model"])
    assert read_jsonl(tmp_path / "log.jsonl")[-1]["iter"] >= ckpt["iteration"]


def test_transforms_are_deterministic_given_rng():
    transform = build_transforms(max_size=10, flip=True, scale_range=(0.5, 1.5), crop_size=7)
    image = torch.rand(3, 12, 16)
    masks = torch.zeros(2, 12, 16, dtype=torch.uint8)
    masks[0, 0:6, 0:8] = 1
    masks[1, 6:12, 8:16] = 1
    target = {"masks": masks, "boxes": torch.tensor([[0.0, 0, 8, 6], [8, 6, 16, 12]]),
              "labels": torch.ones(2, dtype=torch.int64), "image_id": 1}
    a = transform(image, target, random.Random(5))
    b = transform(image, target, random.Random(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])
    assert max(a[0].shape[-2:]) <= 7
    out_masks, out_boxes = a[1]["masks"], a[1]["boxes"]
    assert len(out_masks) == len(out_boxes) == len(a[1]["labels"])
    for m, box in zip(out_masks, out_boxes):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
