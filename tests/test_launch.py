"""Multi-GPU rules start one process per GPU the machine really has."""

import subprocess
import sys

from oln.launch import launch_command


def test_fewer_gpus_than_requested_use_what_exists():
    single = launch_command(8, 0, ["train-pa", "--x"])
    assert single == [sys.executable, "-m", "oln.cli", "train-pa", "--x"]
    assert launch_command(8, 1, ["train-pa"]) == [sys.executable, "-m", "oln.cli", "train-pa"]
    two = launch_command(8, 2, ["train-pa"])
    assert two[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert two[-3:] == ["-m", "oln.cli", "train-pa"]
    assert launch_command(2, 8, ["x"])[4] == "--nproc_per_node=2"  # never more than requested


def test_launch_on_a_machine_without_gpus_warns_and_runs_one_process():
    done = subprocess.run([sys.executable, "-m", "oln.launch", "--gpus", "8", "--", "--help"], capture_output=True,
                          text=True, timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "8 GPUs requested, this machine has no GPU" in done.stderr
    assert "usage: oln" in done.stdout
