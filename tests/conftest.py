"""Shared fixtures: the genuine T5 tokenizer and the real data in ../shared (skipped with a reason when absent)."""

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
TOKENIZER_DIR = SHARED / "tokenizers" / "t5"
DATA_DIR = SHARED / "data"


@pytest.fixture(scope="session")
def tokenizer():
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"the T5 tokenizer is not at {TOKENIZER_DIR} (../shared beside the repository)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="session")
def shared_data_dir():
    if not DATA_DIR.exists():
        pytest.skip(f"real data not available at {DATA_DIR} (../shared/data beside the repository)")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
