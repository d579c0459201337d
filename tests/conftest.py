"""Shared fixtures: the genuine T5 tokenizer and the real data in ../shared (skipped with a reason when absent).

A developer without ../shared gets skips. CI must not: `.ci/run` sets PEAPOD_REQUIRE_SHARED=1, and then a missing
piece of ../shared stops the session before any test runs (exit status 4, the message naming the missing paths),
and any fixture that would skip for want of ../shared fails instead. So a green CI run means the real-data tests ran.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
TOKENIZER_DIR = SHARED / "tokenizers" / "t5"
DATA_DIR = SHARED / "data"
# Everything in ../shared some test reads (.ci/run checks the same list before it installs anything).
REQUIRED_SHARED = (
    TOKENIZER_DIR / "tokenizer.json",
    DATA_DIR / "amazon" / "beauty" / "sequential.txt",
    DATA_DIR / "amazon" / "beauty" / "datamaps.json",
    DATA_DIR / "amazon" / "toys" / "sequential.txt",
    DATA_DIR / "amazon" / "toys" / "datamaps.json",
    DATA_DIR / "amazon-musical-instruments" / "reviews_Musical_Instruments_5.json.gz",
)


def shared_required() -> bool:
    return os.environ.get("PEAPOD_REQUIRE_SHARED", "") not in ("", "0")


def pytest_sessionstart(session):
    missing = [str(path) for path in REQUIRED_SHARED if not path.exists()]
    if missing and shared_required():
        pytest.exit(f"PEAPOD_REQUIRE_SHARED=1 but ../shared is incomplete; missing: {missing}", returncode=4)


def skip_without_shared(reason: str):
    """Skip (developers without ../shared) or, under PEAPOD_REQUIRE_SHARED=1 (CI), fail with the same reason."""
    if shared_required():
        pytest.fail(f"PEAPOD_REQUIRE_SHARED=1: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tokenizer():
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        skip_without_shared(f"the T5 tokenizer is not at {TOKENIZER_DIR} (../shared beside the repository)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="session")
def shared_data_dir():
    if not DATA_DIR.exists():
        skip_without_shared(f"real data not available at {DATA_DIR} (../shared/data beside the repository)")
    return DATA_DIR


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory):
    """One tiny prepared folder made by the `peapod-prepare` console script (30 synthetic users, 8-d PMF users,
    3 neighbours), shared by the CLI, evaluation and experiment tests. Tests must not modify it (copy it first)."""
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        skip_without_shared(f"the T5 tokenizer is not at {TOKENIZER_DIR} (../shared beside the repository)")
    folder = tmp_path_factory.mktemp("synthetic") / "prepared"
    done = subprocess.run(
        [console_script("peapod-prepare"), "--synthetic", "--output_dir", str(folder), "--tokenizer", str(TOKENIZER_DIR),
         "--max_users", "30", "--embedding_dim", "8", "--num_neighbors", "3", "--pmf_max_iter", "5"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (folder / "dataset" / "dataset_dict.json").exists()
    return folder


def console_script(name: str) -> str:
    """The installed console script `name` of the running interpreter's environment (activated or not)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"console script {name} is not installed (pip install -e .)"
    return found


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
