"""Uploading a saved checkpoint folder to the Hugging Face Hub with `huggingface_hub`."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

from configuration_peapod import PeaPODInputError

# What a checkpoint folder must hold to load with `AutoModelForSeq2SeqLM.from_pretrained(..., trust_remote_code=True)`.
REQUIRED_FILES = ("config.json", "configuration_peapod.py", "modeling_peapod.py", "model.safetensors", "README.md")
# Trainer state that belongs to resuming a run, not to the published model.
NOT_UPLOADED = ["optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json", "training_args.bin",
                "checkpoint-*/**", ".*"]
# Formats that are (or may be) Python pickles, which run code when loaded and which the Hub's scanner flags: a
# published PeaPOD folder holds none (weights are safetensors, training arguments JSON).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_hub_folder(folder: str | os.PathLike) -> list[str]:
    """The files that would be uploaded; raises (PeaPODInputError) if a file needed to load the model is missing
    or a pickle would be uploaded."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PeaPODInputError(f"{folder} is not a complete PeaPOD checkpoint: missing {missing}")
    files = sorted(
        str(path.relative_to(folder)) for path in folder.rglob("*")
        if path.is_file() and not any(path.match(pattern) for pattern in NOT_UPLOADED)
        and not path.relative_to(folder).parts[0].startswith(("checkpoint-", "."))
    )
    pickles = [name for name in files if name.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise PeaPODInputError(f"{folder}: refusing to upload pickle files {pickles} (keep the folder pickle-free)")
    return files


def push_folder_to_hub(
    folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
    commit_message: str = "Upload PeaPOD model", api: HfApi | None = None,
) -> str:
    """Create `repo_id` if needed and upload the checkpoint folder (code files and user table included)."""
    check_hub_folder(folder)
    api = api or HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message,
        ignore_patterns=NOT_UPLOADED,
    )
    return str(getattr(commit, "commit_url", commit))
