"""One GPU per worker: the device each process resolves under torchrun, srun, a Slurm array or a plain shell,
with CUDA's availability and device count simulated (this machine has no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from augment.devices import local_rank, resolve_device
from augment.errors import UserError
from augment.run.workers import worker_slot
from tests.helpers import ENV, REPO

LAUNCH_VARS = ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "RANK", "WORLD_SIZE", "SLURM_LOCALID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
               "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
               "SLURM_ARRAY_TASK_MIN", "CUDA_VISIBLE_DEVICES")  # fmt: skip


@pytest.fixture
def gpus(monkeypatch):
    """A node with n visible GPUs (n = 0: no CUDA) and no launcher variables."""
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)

    def node(n: int, **env: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return node


def test_torchrun_gives_each_local_rank_its_gpu(gpus):
    gpus(8, LOCAL_RANK="3", LOCAL_WORLD_SIZE="8", RANK="11", WORLD_SIZE="16")
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)  # plain "cuda" too
    assert worker_slot(None, None) == (11, 16)  # the worker index is the global rank


def test_srun_tasks_on_a_node_take_their_local_gpu(gpus):
    gpus(4, SLURM_LOCALID="2", SLURM_PROCID="6", SLURM_STEP_NUM_TASKS="8", SLURM_STEP_TASKS_PER_NODE="4(x2)")
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert local_rank() == (2, 4, "SLURM_LOCALID")
    assert worker_slot(None, None) == (6, 8)  # srun's tasks are workers without any flag


def test_srun_with_one_gpu_bound_per_task(gpus):
    """--gpus-per-task: each task sees one GPU (CUDA_VISIBLE_DEVICES), whatever its local id."""
    gpus(1, SLURM_LOCALID="3", SLURM_PROCID="3", SLURM_STEP_NUM_TASKS="4", CUDA_VISIBLE_DEVICES="3")
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_a_batch_script_of_several_tasks_is_one_worker(gpus):
    """sbatch -n 4 running augment directly (no srun): SLURM_NTASKS is 4 but only one process runs."""
    gpus(1, SLURM_NTASKS="4", SLURM_PROCID="0")
    assert worker_slot(None, None) == (0, 1)


def test_slurm_array_task_uses_the_first_gpu(gpus):
    gpus(2, SLURM_ARRAY_TASK_ID="12", SLURM_ARRAY_TASK_COUNT="8", SLURM_ARRAY_TASK_MIN="10")
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert worker_slot(None, None) == (2, 8)


def test_array_of_multi_task_steps(gpus):
    gpus(
        2,
        SLURM_ARRAY_TASK_ID="1",
        SLURM_ARRAY_TASK_COUNT="3",
        SLURM_PROCID="1",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_LOCALID="1",
    )
    assert worker_slot(None, None) == (3, 6)
    assert resolve_device("auto") == torch.device("cuda", 1)


def test_a_local_rank_without_a_gpu_is_refused(gpus):
    gpus(2, LOCAL_RANK="2", LOCAL_WORLD_SIZE="4", CUDA_VISIBLE_DEVICES="0,1")
    with pytest.raises(UserError, match=r"local rank 2 of 4 \(LOCAL_RANK\) but this process sees only 2 GPU"):
        resolve_device("auto")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES=0,1"):
        resolve_device("cuda")


def test_ranks_stacked_on_one_unbound_gpu_are_refused(gpus):
    """torchrun with 2 processes on a one-GPU node, nothing binding GPUs: the second would share the first's."""
    gpus(1, LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    with pytest.raises(UserError, match="local rank 1 of 2"):
        resolve_device("auto")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # asked for explicitly: allowed


def test_explicit_device_wins_and_is_checked(gpus):
    gpus(2, LOCAL_RANK="1")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="sees 2 GPU"):
        resolve_device("cuda:5")
    assert resolve_device("cpu") == torch.device("cpu")


def test_no_cuda(gpus):
    gpus(0, LOCAL_RANK="1")
    assert resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device(spec)


SIMULATED_NODE = """
import json, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
from augment.devices import resolve_device
from augment.run.workers import worker_slot
print(json.dumps({"device": str(resolve_device("auto")), "slot": worker_slot(None, None)}))
"""


def test_two_process_torchrun_on_a_simulated_two_gpu_node(tmp_path):
    """A real torchrun launch (CPU): each process resolves its own GPU and its own worker slot."""
    script = tmp_path / "which_device.py"
    script.write_text(SIMULATED_NODE)
    env = {k: v for k, v in ENV.items() if k not in LAUNCH_VARS}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = sorted(json.loads(line)["device"] + " " + str(json.loads(line)["slot"]) for line in proc.stdout.splitlines())
    assert seen == ["cuda:0 [0, 2]", "cuda:1 [1, 2]"]
