"""Two CPU processes (gloo) under torchrun: training works, ranks agree, and one epoch covers the data once."""

import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from distributed_train_script import REPO_ROOT, tiny_dataset
from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_two_process_training(tmp_path, tokenizer):
    script = Path(__file__).with_name("distributed_train_script.py")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(script), "--output_dir", str(tmp_path), "--epochs", "2",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["world_size"] for record in ranks] == [2, 2]

    # It trains: the loss of the whole training set goes down (computed identically on both ranks).
    for record in ranks:
        assert record["final_loss"] < record["initial_loss"] - 0.5
    # Both ranks end with identical weights (DDP kept them in sync).
    weights = [load_file(str(tmp_path / f"rank{rank}_weights.safetensors")) for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])

    train_set = tiny_dataset(tokenizer)
    for epoch in (0, 1):
        per_rank = [record["epochs"][epoch] for record in ranks]
        # Same number of batches on both ranks, each batch single-task, and both ranks on one task per step.
        assert len(per_rank[0]["batches"]) == len(per_rank[1]["batches"])
        for tasks_0, tasks_1 in zip(per_rank[0]["tasks"], per_rank[1]["tasks"]):
            assert len(set(tasks_0)) == 1 and set(tasks_0) == set(tasks_1)
        # The union of what the two processes collated is the training set, each row exactly once.
        rows = [row for record in per_rank for batch in record["batches"] for row in batch]
        assert Counter(rows) == Counter(range(len(train_set)))
    assert ranks[0]["epochs"][0]["batches"] != ranks[0]["epochs"][1]["batches"]  # reshuffled per epoch
