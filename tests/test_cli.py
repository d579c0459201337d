"""peapod-train end to end on a small synthetic prepared folder, and its refusals before any training step."""

import json
import shutil

import pytest
import torch
from conftest import TOKENIZER_DIR
from transformers import AutoModelForSeq2SeqLM

from training import cli


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer):
    from datasets_scripts import prepare

    folder = tmp_path_factory.mktemp("data") / "prepared"
    prepare(folder, synthetic=True, tokenizer=str(TOKENIZER_DIR), max_users=30, embedding_dim=8, num_neighbors=3,
            pmf_max_iter=5)
    return folder


def train_arguments(prepared, output_dir, *extra):
    return ["--prepared_dir", str(prepared), "--output_dir", str(output_dir), "--base_model", "random:tiny",
            "--tokenizer", str(TOKENIZER_DIR), "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--max_train_samples_per_task", "8", "--max_eval_samples_per_task", "4", "--eval_strategy", "no",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True", *extra]


def test_train_writes_a_complete_hub_folder(prepared, tmp_path):
    output = tmp_path / "run"
    metrics = cli.train(train_arguments(prepared, output))
    assert {"eval_sequential_loss", "eval_topn_loss", "eval_explanation_loss", "train_loss"} <= set(metrics)
    for name in ("config.json", "modeling_peapod.py", "configuration_peapod.py", "model.safetensors", "README.md",
                 "tokenizer.json", "generation_config.json", "peapod_run.json"):
        assert (output / name).exists(), name
    model = AutoModelForSeq2SeqLM.from_pretrained(output, trust_remote_code=True)
    assert model.config.num_users == 30 and model.config.num_neighbors == 3
    assert "random initialisation of the tiny shape" in (output / "README.md").read_text()
    # Same run again into the same folder is fine (e.g. a resume); a different run is refused.
    with pytest.raises(ValueError, match=r"holds a different run \(differs in \['model'\]\)"):
        cli.train(train_arguments(prepared, output, "--prompt_encoder", "mlp"))


def test_time_box_stops_training_and_still_saves(prepared, tmp_path):
    output = tmp_path / "boxed"
    metrics = cli.train(train_arguments(prepared, output, "--max_steps", "100000", "--max_train_seconds", "1"))
    assert 0 < metrics["global_step"] < 100000
    assert metrics["time_budget_stopped_at_step"] == metrics["global_step"]
    assert (output / "model.safetensors").exists()
    assert "time-boxed to 1 s" in (output / "README.md").read_text()
    # A run that ends before its time box says so (no stop step).
    metrics = cli.train(train_arguments(prepared, tmp_path / "roomy", "--max_train_seconds", "3600"))
    assert metrics["global_step"] == 2 and metrics["time_budget_stopped_at_step"] is None


def test_time_box_must_be_positive(prepared, tmp_path):
    from training.trainer import TimeBudgetCallback

    with pytest.raises(ValueError, match="max_train_seconds must be a positive number of seconds, got 0"):
        TimeBudgetCallback(0)
    for bad in ("0", "-5", "nan"):
        with pytest.raises(ValueError, match=f"max_train_seconds must be a positive number of seconds, got {bad}"):
            cli.train(train_arguments(prepared, tmp_path / "never", "--max_train_seconds", bad))
        assert not (tmp_path / "never").exists()  # refused before anything was written


def test_refusals_before_training(prepared, tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text("learning_rate: 0.001\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config keys 'learnig_rate' \(did you mean 'learning_rate'\?\)"):
        cli.train([str(config_file), *train_arguments(prepared, tmp_path / "a")])
    with pytest.raises(ValueError, match=r"unknown arguments \['--bogus', '1'\]"):
        cli.train([*train_arguments(prepared, tmp_path / "b"), "--bogus", "1"])

    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    (broken / "user_table.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="user_table.safetensors"):
        cli.train(train_arguments(broken, tmp_path / "c"))

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("someone else's files")
    with pytest.raises(ValueError, match="holds no peapod_run.json"):
        cli.train(train_arguments(prepared, occupied))

    # A PeaPOD checkpoint whose user table has another size than the data.
    from modeling_peapod import PeaPODForConditionalGeneration

    other = PeaPODForConditionalGeneration.from_shape("tiny", num_users=12, user_embedding_dim=8, num_neighbors=3)
    other.set_user_table(torch.randn(13, 8))
    other.save_pretrained(tmp_path / "other")
    arguments = train_arguments(prepared, tmp_path / "d")
    arguments[arguments.index("random:tiny")] = str(tmp_path / "other")
    with pytest.raises(ValueError, match="has a user table of 12 users but the prepared data has 30"):
        cli.train(arguments)
    assert not (tmp_path / "d" / "model.safetensors").exists()


def test_push_to_hub_uploads_the_final_folder(prepared, tmp_path, monkeypatch):
    uploads = []
    monkeypatch.setattr("training.hub.HfApi", lambda token=None: _RecordingApi(uploads))
    cli.train(train_arguments(prepared, tmp_path / "run", "--push_to_hub", "True", "--hub_model_id", "me/peapod"))
    (create, upload), = [tuple(uploads)]
    assert create == ("create_repo", "me/peapod") and upload[0] == "upload_folder"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["auto_map"]["AutoModelForSeq2SeqLM"]


class _RecordingApi:
    def __init__(self, calls):
        self.calls = calls

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", folder_path, repo_id))
        return "url"
