"""Reliability: kill -9 and resume, leftovers, locks, full disks, clear CLI errors, progress logs."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from oln.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_engine import TinyDataset, collate, mse_loss, options, tiny_model  # noqa: E402

from oln.engine import train  # noqa: E402


def python_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def wait_for(condition, proc: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


# --------------------------------------------------------------------------- point 2: the log survives kill -9

KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_engine import TinyDataset, collate, tiny_model, mse_loss, options
    from oln.engine import train
    torch.set_num_threads(1)
    calls = [0]
    def stalling_loss(model, batch, device):
        calls[0] += 1
        if calls[0] > 13:
            time.sleep(1000)  # stuck in iteration 14: killed here, like a node that dies
        return mse_loss(model, batch, device)
    train(tiny_model(), TinyDataset(), collate, stalling_loss,
          options(iterations=20, checkpoint_every=5, log_every=1), {out!r})
""")


def test_log_of_a_killed_training_is_restored_on_resume(tmp_path):
    script = KILL_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], env=python_env(), stderr=subprocess.PIPE)
    log_path = tmp_path / "log.jsonl"

    def thirteen_logged() -> bool:
        return log_path.exists() and any(r["iter"] == 13 for r in read_jsonl(log_path))

    wait_for(thirteen_logged, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["iteration"] == 10
    log_path.unlink()  # Snakemake removes the outputs of a failed job
    train(tiny_model(), TinyDataset(), collate, mse_loss, options(iterations=20, checkpoint_every=5, log_every=1),
          tmp_path)
    iters = [r["iter"] for r in read_jsonl(log_path)]
    assert iters == list(range(1, 21))
    straight = tmp_path / "straight"
    train(tiny_model(), TinyDataset(), collate, mse_loss, options(iterations=20, checkpoint_every=5, log_every=1),
          straight)
    for resumed, reference in zip(read_jsonl(log_path), read_jsonl(straight / "log.jsonl")):
        assert resumed["loss"] == pytest.approx(reference["loss"], abs=1e-6)


def test_log_of_a_finished_training_is_restored(tmp_path):
    opts = options(iterations=6, checkpoint_every=3, log_every=2)
    train(tiny_model(), TinyDataset(), collate, mse_loss, opts, tmp_path)
    (tmp_path / "log.jsonl").unlink()  # e.g. a failed curve plot after training made Snakemake delete it
    train(tiny_model(), TinyDataset(), collate, mse_loss, opts, tmp_path)
    assert [r["iter"] for r in read_jsonl(tmp_path / "log.jsonl")] == [2, 4, 6]


# --------------------------------------------------------------------------- point 5: leftovers, locks, full disk


def test_stale_temp_files_are_removed_at_start(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    stale = [ckpt_dir / ".last.pt.k3j_x9a1.tmp.pt", tmp_path / ".model.pt.abcdefgh.tmp.pt",
             tmp_path / ".log.jsonl.0a1b2c3d.tmp.jsonl"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden", ckpt_dir / "best.pt.tmp"]
    for path in kept:
        path.write_text("mine")
    train(tiny_model(), TinyDataset(), collate, mse_loss, options(iterations=2), tmp_path)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


def test_temp_files_of_other_outputs_are_kept(tmp_path):
    from oln.io import remove_stale_temp_files

    ours, sibling = tmp_path / ".shard-0-of-2.json.abcd1234.tmp.json", tmp_path / ".shard-1-of-2.json.abcd1234.tmp.json"
    ours.write_text("x")
    sibling.write_text("x")
    assert remove_stale_temp_files(tmp_path, names=["shard-0-of-2.json"]) == [ours]
    assert sibling.exists()


def hold_lock(lock_path: Path) -> subprocess.Popen:
    """Another process holding an exclusive flock on `lock_path` (as a running `oln` would)."""
    script = textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(lock_path)!r}, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().decode().strip() == "locked"
    return proc


def test_second_training_into_one_folder_fails_at_once(tmp_path, capsys):
    from oln.cli import main

    out_dir = tmp_path / "pa"
    out_dir.mkdir()
    holder = hold_lock(out_dir / ".oln.lock")
    try:
        started = time.perf_counter()
        code = main(["train-pa", "--params", "{}", "--train-json", str(tmp_path / "train.json"),
                     "--image-root", str(tmp_path), "--out-dir", str(out_dir), "--device", "cpu"])
        assert time.perf_counter() - started < 10
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code != 0
    assert str(out_dir) in err and "another oln process" in err


def test_lock_is_released_when_its_holder_dies(tmp_path):
    from oln.cli import LOCK_NAME, lock_output_dir

    holder = hold_lock(tmp_path / LOCK_NAME)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with lock_output_dir(tmp_path):
        pass


def fill_disk(monkeypatch, only: str = "") -> None:
    """Atomic writes of files whose name ends in `only` get a temporary file that links to
    /dev/full, so every write to it fails with ENOSPC, as on a full disk."""
    import oln.io

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    real_mkstemp = tempfile.mkstemp

    def mkstemp(dir=None, prefix="", suffix=""):
        if not suffix.endswith(only):
            return real_mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        link = Path(dir) / f"{prefix}fullfull{suffix}"
        link.symlink_to("/dev/full")
        return os.open(os.devnull, os.O_RDONLY), str(link)

    monkeypatch.setattr(oln.io.tempfile, "mkstemp", mkstemp)


@pytest.fixture
def full_disk(monkeypatch):
    fill_disk(monkeypatch)


@pytest.mark.usefixtures("full_disk")
@pytest.mark.parametrize("kind", ["torch", "json"])
def test_full_disk_names_the_path(tmp_path, kind):
    from oln.checkpoints import save_torch
    from oln.io import write_json

    target = tmp_path / "out" / ("last.pt" if kind == "torch" else "result.json")
    with pytest.raises(OSError, match="disk full") as raised:
        if kind == "torch":
            save_torch(target, {"weights": torch.zeros(200_000)})
        else:
            write_json(target, {"values": list(range(100_000))})
    assert raised.value.errno == errno.ENOSPC
    assert str(target) in str(raised.value)
    assert not target.exists() and not list(target.parent.glob(".*tmp*"))


def test_full_disk_during_training_says_so(tmp_path, monkeypatch):
    fill_disk(monkeypatch, only=".pt")  # the log still fits, the checkpoint does not
    with pytest.raises(OSError, match=r"disk full: could not write .*checkpoints/last\.pt"):
        train(tiny_model(), TinyDataset(), collate, mse_loss, options(iterations=2), tmp_path)
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))


def test_config_directory_is_a_clear_error(tmp_path, capsys):
    from oln.cli import main

    code = main(["synthesize", "--config", str(tmp_path), "--out", str(tmp_path / "data")])
    assert code == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["experiment.foo=1", "synthetic.num_train.x=3"])
def test_override_below_a_value_is_a_clear_error(tmp_path, capsys, override):
    from oln.cli import main

    code = main(["synthesize", "--config", str(REPO / "config" / "config.yaml"), "--set", override,
                 "--out", str(tmp_path / "data")])
    assert code == 2
    err = capsys.readouterr().err
    assert override.split("=")[0] in err and "not a section" in err


# --------------------------------------------------------------------------- point 8: progress and CLI hygiene

ETA = re.compile(r"eta \d+:\d\d:\d\d")


def test_progress_logs_count_rate_and_eta(caplog):
    from oln.progress import format_duration, progress

    assert format_duration(3725.2) == "1:02:05" and format_duration(float("inf")) == "?"
    with caplog.at_level(logging.INFO, logger="oln.progress"):
        assert list(progress(range(40), "predict", unit="img", every=10)) == list(range(40))
    lines = [r.getMessage() for r in caplog.records if r.name == "oln.progress"]
    assert [line.split()[1] for line in lines] == ["1/40", "10/40", "20/40", "30/40", "40/40"]
    assert all(ETA.search(line) and "img/s" in line and "elapsed 0:00:0" in line for line in lines)


def test_training_progress_has_an_eta(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="oln"):
        train(tiny_model(), TinyDataset(), collate, mse_loss, options(iterations=4), tmp_path, desc="toy")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("toy 4/4")]
    assert lines and ETA.search(lines[0]) and "loss" in lines[0]


def test_synthesize_logs_progress(tmp_path, caplog):
    from oln.data.synthetic import SyntheticOptions, synthesize

    with caplog.at_level(logging.INFO, logger="oln"):
        synthesize(tmp_path, SyntheticOptions(num_train=3, num_val=1, num_unlabeled=1, image_size=32))
    assert any(r.getMessage().startswith("synthesize train 3/3") and ETA.search(r.getMessage())
               for r in caplog.records)


def test_evaluation_logs_progress(caplog):
    from test_recall import random_case

    from oln.evaluation import evaluate_recall

    gt, dets = random_case(2, num_images=5)
    with caplog.at_level(logging.INFO, logger="oln"):
        evaluate_recall(gt, dets, "segm", num_workers=1)
    assert any(r.getMessage().startswith("evaluate segm 5/5") and ETA.search(r.getMessage())
               for r in caplog.records)


def test_version(capsys):
    from oln import __version__
    from oln.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"oln {__version__}"


def test_verbose_turns_on_debug_logging(tmp_path, capsys):
    from oln.cli import main

    (tmp_path / "log.jsonl").write_text('{"iter": 1, "loss": 1.0}\n{"iter": 2, "loss": 0.5}\n')
    args = ["plot-curve", str(tmp_path / "log.jsonl"), "--out", str(tmp_path / "c.png")]
    assert main(args) == 0
    assert "DEBUG" not in capsys.readouterr().err
    assert main(["-v", *args]) == 0
    assert "DEBUG oln: " in capsys.readouterr().err


def test_every_cli_argument_has_help():
    from oln.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    parsers = {"oln": parser, **subparsers.choices}
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in parsers.items() for action in sub._actions if not action.help]
    assert not missing, missing
    extract_help = subparsers.choices["extract"].format_help()
    assert "proposals_per_image" not in extract_help and "proposals_top_k" in extract_help


def test_lock_file_is_a_plain_flock(tmp_path):
    """The lock is an flock on `<out-dir>/.oln.lock`: other tools can take and test it too."""
    from oln.cli import LOCK_NAME, lock_output_dir

    with lock_output_dir(tmp_path):
        fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
