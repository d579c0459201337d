"""peapod-train end to end on a small synthetic prepared folder, and its refusals before any training step."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

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


# The console scripts as the user runs them, and what they leave on disk -------------------------------------


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _run(command: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def trained_by_console_scripts(tmp_path_factory, tokenizer):
    """peapod-prepare -> peapod-train (default learning rate) -> peapod-evaluate -> peapod-explain-user, each a real
    subprocess; returns (folder, {script: CompletedProcess})."""
    folder = tmp_path_factory.mktemp("console")
    tok = str(TOKENIZER_DIR)
    runs = {"peapod-prepare": _run([_script("peapod-prepare"), "--synthetic", "--output_dir", "prepared", "--tokenizer",
                                    tok, "--max_users", "30", "--embedding_dim", "8", "--num_neighbors", "3",
                                    "--pmf_max_iter", "3"], folder)}
    runs["peapod-train"] = _run([_script("peapod-train"), "--prepared_dir", "prepared", "--output_dir", "run",
                                 "--base_model", "random:tiny", "--max_steps", "2", "--per_device_train_batch_size",
                                 "4", "--max_train_samples_per_task", "8", "--max_eval_samples_per_task", "4",
                                 "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none"], folder)
    runs["peapod-evaluate"] = _run([_script("peapod-evaluate"), "--checkpoint", "run", "--prepared_dir", "prepared",
                                    "--tasks", "sequential", "--max_users", "2", "--num_beams", "2", "--top_k", "1",
                                    "--output_dir", "eval"], folder)
    runs["peapod-explain-user"] = _run([_script("peapod-explain-user"), "--checkpoint", "run", "--user_id", "1",
                                        "--output", "user1.png"], folder)
    return folder, runs


def test_console_scripts_exit_0(trained_by_console_scripts):
    folder, runs = trained_by_console_scripts
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr[-3000:])
        assert "Traceback" not in run.stderr, name
    assert (folder / "eval" / "results.json").is_file() and (folder / "user1.png").is_file()
    # Output to a pipe, not a terminal: progress lines with an ETA instead of tqdm's carriage returns.
    progress = [line for line in runs["peapod-train"].stderr.splitlines() if line.startswith("peapod-train: step")]
    assert progress[-1].startswith("peapod-train: step 2/2 (100%), ") and "ETA" in progress[-1], progress


def test_final_folder_is_pickle_free_with_default_learning_rate(trained_by_console_scripts):
    folder, _ = trained_by_console_scripts
    run = folder / "run"
    assert not list(run.glob("*.bin")) and not list(run.glob("*.pt")) and not list(run.glob("*.pkl"))
    arguments = json.loads((run / "training_args.json").read_text())
    assert arguments["learning_rate"] == cli.DEFAULT_LEARNING_RATE == 5e-3  # README "Learning rate"


def test_written_files_have_normal_permissions(trained_by_console_scripts):
    folder, _ = trained_by_console_scripts
    umask = os.umask(0)
    os.umask(umask)
    files = [folder / "run" / name for name in ("model.safetensors", "README.md", "config.json", "training_args.json")]
    files += [folder / "eval" / "results.json", folder / "eval" / "results.md", folder / "user1.png",
              folder / "prepared" / "user_table.safetensors", folder / "prepared" / "prepare_config.json"]
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in files}
    assert modes == {path.name: oct(0o666 & ~umask) for path in files}
    assert oct((folder / "prepared").stat().st_mode & 0o777) == oct(0o777 & ~umask)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    from datasets_scripts.files import (
        atomic_path,
        atomic_write_json,
        temporary_sibling_folder,
    )

    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.bin") as temporary:
            temporary.write_bytes(b"\0")
        with temporary_sibling_folder(tmp_path / "folder") as temporary:
            kept = temporary
            mode = kept.stat().st_mode & 0o777
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert mode == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name, "a.json", "b.bin"]


def test_saved_folder_tokenizer_loads_without_asking_or_remote_code(trained_by_console_scripts, monkeypatch, capfd):
    from datasets_scripts.tokenizer_loading import load_tokenizer

    folder, _ = trained_by_console_scripts
    assert "auto_map" not in json.loads((folder / "run" / "tokenizer_config.json").read_text())

    def asked(prompt=""):
        raise AssertionError(f"asked: {prompt}")

    monkeypatch.setattr("builtins.input", asked)
    tokenizer = load_tokenizer(str(folder / "run"))
    assert type(tokenizer).__module__.startswith("transformers.")
    assert tokenizer("user_1 item_2").input_ids == load_tokenizer(str(TOKENIZER_DIR))("user_1 item_2").input_ids
    captured = capfd.readouterr()
    assert "custom code" not in captured.out + captured.err


def test_setup_declares_every_package_folder():
    """Every folder of Python files ships as a declared package (pip's "absent from the packages configuration")."""
    import setuptools

    root = Path(__file__).resolve().parents[1]
    declared = {}
    original, cwd = setuptools.setup, Path.cwd()
    setuptools.setup = lambda **kwargs: declared.update(kwargs)
    try:
        os.chdir(root)  # setup.py reads README.md relative to it
        runpy.run_path(str(root / "setup.py"))
    finally:
        setuptools.setup = original
        os.chdir(cwd)
    folders = {str(path.parent.relative_to(root)).replace("/", ".")
               for top in ("training", "datasets_scripts", "model_cards") for path in (root / top).rglob("*.py")
               if "__pycache__" not in path.parts}
    assert folders == set(declared["packages"])


def test_hub_upload_refuses_pickles(trained_by_console_scripts, tmp_path):
    from configuration_peapod import PeaPODInputError
    from training.hub import check_hub_folder

    folder = tmp_path / "run"
    shutil.copytree(trained_by_console_scripts[0] / "run", folder)
    assert "training_args.json" in check_hub_folder(folder)
    (folder / "extra_state.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PeaPODInputError, match=r"refusing to upload pickle files \['extra_state.bin'\]"):
        check_hub_folder(folder)
