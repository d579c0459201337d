"""peapod-train end to end on a small synthetic prepared folder, and its refusals before any training step."""

import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TOKENIZER_DIR
from transformers import AutoModelForSeq2SeqLM

from training import cli
from training.arguments import DEFAULT_LEARNING_RATE


@pytest.fixture(scope="module")
def prepared(synthetic_prepared):
    return synthetic_prepared  # 30 synthetic users by peapod-prepare (tests/conftest.py); never modified here


class StepClock:
    """A stand-in for the time module of training/trainer.py: monotonic() starts at 0 s at the time box's
    on_train_begin and advances 1 s per later call (the box reads it once per step), so a time box of S seconds
    ends training at step ceil(S), whatever the machine's speed. Everything else is the real time module."""

    def __init__(self):
        self.calls = 0

    def monotonic(self) -> float:
        self.calls += 1
        return float(self.calls - 1)

    def __getattr__(self, name):
        return getattr(time, name)


def saved_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(first: dict, second: dict):
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def stopped_and_resumed(tmp_path, monkeypatch, arguments, steps, stop_at_step):
    """Train `steps` once uninterrupted (tmp_path/reference) and once stopped by its time box at the end of step
    `stop_at_step` (`StepClock`), then resumed into the same folder (tmp_path/stopped) from that checkpoint;
    `arguments(output_dir, *extra)` builds the command. Returns the resumed run's metrics and the two folders."""
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    cli.train(arguments(reference, *steps))
    monkeypatch.setattr("training.trainer.time", StepClock())
    metrics = cli.train(arguments(stopped, *steps, "--max_train_seconds", str(stop_at_step - 0.5)))
    monkeypatch.undo()
    assert metrics["time_budget_stopped_at_step"] == stop_at_step
    assert max(int(path.name.split("-")[1]) for path in stopped.glob("checkpoint-*")) == stop_at_step
    resumed = cli.train(arguments(stopped, *steps, "--resume_from_checkpoint",
                                  str(stopped / f"checkpoint-{stop_at_step}")))
    return resumed, reference, stopped


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
    # The same run again into the same folder is allowed and replaces it with an identical run (same seed); the
    # run description is unchanged. A different run is refused and leaves the folder as it was.
    first, description = saved_weights(output), (output / "peapod_run.json").read_text()
    (output / "model.safetensors").unlink()
    again = cli.train(train_arguments(prepared, output))
    assert again["global_step"] == metrics["global_step"] == 2
    assert_same_weights(saved_weights(output), first)
    assert (output / "peapod_run.json").read_text() == description
    with pytest.raises(ValueError, match=r"holds a different run \(differs in \['model'\]\)"):
        cli.train(train_arguments(prepared, output, "--prompt_encoder", "mlp"))
    assert (output / "peapod_run.json").read_text() == description
    assert_same_weights(saved_weights(output), first)


def test_time_box_stops_training_and_still_saves(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr("training.trainer.time", StepClock())
    output = tmp_path / "boxed"
    metrics = cli.train(train_arguments(prepared, output, "--max_steps", "100000", "--max_train_seconds", "2.5"))
    # Step 3 is the first to end with 2.5 s of the box spent: training stops there, then saves as usual.
    assert metrics["global_step"] == metrics["time_budget_stopped_at_step"] == 3
    recorded = json.loads((output / "train_metrics.json").read_text())
    assert recorded["global_step"] == recorded["time_budget_stopped_at_step"] == 3
    assert "time-boxed to 2.5 s" in (output / "README.md").read_text()
    assert AutoModelForSeq2SeqLM.from_pretrained(output, trust_remote_code=True).config.num_users == 30
    monkeypatch.undo()
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
    from training.publishing.hub import NOT_UPLOADED

    uploads = []
    monkeypatch.setattr("training.publishing.hub.HfApi", lambda token=None: _RecordingApi(uploads))
    output = tmp_path / "run"
    cli.train(train_arguments(prepared, output, "--push_to_hub", "True", "--hub_model_id", "me/peapod",
                             "--save_strategy", "steps", "--save_steps", "1"))
    (create, upload), = [tuple(uploads)]
    assert create == ("create_repo", "me/peapod", {"private": False, "exist_ok": True, "repo_type": "model"})
    name, folder, repo_id, options, files = upload
    assert (name, folder, repo_id) == ("upload_folder", str(output), "me/peapod")
    assert options["repo_type"] == "model" and options["ignore_patterns"] == NOT_UPLOADED
    # What the folder held when it was sent: a loadable Hub repo (remote code, weights with the user table, card,
    # tokenizer), besides the run's checkpoints, which the ignore patterns keep out of the upload.
    assert {"config.json", "configuration_peapod.py", "modeling_peapod.py", "model.safetensors", "README.md",
            "tokenizer.json", "generation_config.json"} <= files
    assert {"checkpoint-1/model.safetensors", "checkpoint-2/optimizer.pt"} <= files
    assert "me/peapod" in (output / "README.md").read_text()  # the card's usage snippet names the repo
    assert json.loads((output / "config.json").read_text())["auto_map"]["AutoModelForSeq2SeqLM"]


class _RecordingApi:
    def __init__(self, calls):
        self.calls = calls

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = {str(path.relative_to(folder_path)) for path in Path(folder_path).rglob("*") if path.is_file()}
        self.calls.append(("upload_folder", folder_path, repo_id, kwargs, files))
        return "url"


def test_resume_from_checkpoint_through_peapod_train_matches_the_uninterrupted_run(prepared, tmp_path, monkeypatch):
    # 3 tasks x 8 samples in batches of 4: 6 steps per epoch; 8 steps cross into epoch 1; a checkpoint every 4.
    # The interrupted run: the same command, stopped by its time box at the end of step 4 (checkpoint-4 written).
    steps = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4"]
    resumed, reference, stopped = stopped_and_resumed(
        tmp_path, monkeypatch, lambda output, *extra: train_arguments(prepared, output, *extra), steps, 4)
    assert resumed["global_step"] == 8
    assert_same_weights(saved_weights(stopped), saved_weights(reference))  # dropout on: its RNG state came back too
    assert_same_weights(saved_weights(stopped / "checkpoint-8"), saved_weights(reference / "checkpoint-8"))
    state = json.loads((stopped / "checkpoint-8" / "trainer_state.json").read_text())
    expected = json.loads((reference / "checkpoint-8" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses == [entry["loss"] for entry in expected["log_history"] if "loss" in entry]


def test_ranking_eval_users_is_the_metric_that_picks_the_best_checkpoint(prepared, tmp_path, tokenizer):
    from datasets_scripts import load_prepared
    from training.evaluation import evaluate_checkpoint

    output = tmp_path / "best"
    arguments = train_arguments(prepared, output, "--tasks", "topn", "--max_steps", "6", "--learning_rate", "0.01",
                                "--ranking_eval_users", "10", "--eval_strategy", "steps", "--eval_steps", "3",
                                "--save_strategy", "steps", "--save_steps", "3", "--load_best_model_at_end", "True",
                                "--metric_for_best_model", "topn_likelihood_ndcg@10", "--greater_is_better", "True")
    cli.train(arguments)
    state = json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())
    logged = {entry["step"]: entry["eval_topn_likelihood_ndcg@10"] for entry in state["log_history"]
              if "eval_topn_likelihood_ndcg@10" in entry}
    assert sorted(logged) == [3, 6]
    best_step = max(sorted(logged), key=lambda step: logged[step])  # the first of equal values wins
    assert state["best_metric"] == logged[best_step]
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    # The logged metric is the real evaluation: recomputed here on each saved checkpoint (validation, 10 users).
    data = load_prepared(prepared)
    for step, value in logged.items():
        model = AutoModelForSeq2SeqLM.from_pretrained(output / f"checkpoint-{step}", trust_remote_code=True)
        report = evaluate_checkpoint(model, tokenizer, data, split="validation", tasks=["topn"], max_users=10,
                                     show_progress=False)
        assert report["results"]["topn_likelihood"]["ndcg@10"] == pytest.approx(value, abs=1e-9), step
    assert any(value > 0 for value in logged.values())  # a metric that moved, so the choice means something
    # The folder ends with the best checkpoint's weights.
    assert_same_weights(saved_weights(output), saved_weights(output / f"checkpoint-{best_step}"))


def test_torchrun_of_the_training_module_trains_with_two_processes(prepared, tmp_path):
    import subprocess
    import sys

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    from test_distributed import free_port

    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "training.cli",
               *train_arguments(prepared, output, "--max_steps", "3", "--per_device_train_batch_size", "2",
                                "--use_cpu", "True")]  # on CPU, as docs/training.md says (gloo)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=400, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((output / "train_metrics.json").read_text())
    assert metrics["global_step"] == 3 and "train_loss" in metrics
    model = AutoModelForSeq2SeqLM.from_pretrained(output, trust_remote_code=True)
    assert model.config.num_users == 30
    # Each of the two processes built its task-alternating sampler for 2 replicas (its INFO log line).
    logged = done.stdout + done.stderr
    assert logged.count("over 2 processes") == 2 * 3  # 2 processes x 3 tasks


def test_torchrun_without_use_cpu_on_a_cpu_machine_is_refused(prepared, tmp_path):
    import subprocess
    import sys

    if torch.cuda.is_available() or not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("needs a CPU-only machine with torch.distributed (gloo)")
    from test_distributed import free_port

    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "training.cli",
               *train_arguments(prepared, output, "--max_steps", "3")]  # no --use_cpu: two separate trainings
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert done.returncode != 0
    assert "peapod-train: error: launched as 2 processes (WORLD_SIZE) but the trainer sees 1" in done.stderr
    assert not output.exists()


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
                                    "--pmf_max_iter", "3", "--pmf_implementation", "cornac"], folder)}
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
    assert json.loads((folder / "prepared" / "prepare_config.json").read_text())["pmf"]["implementation"] == "cornac"
    # Output to a pipe, not a terminal: progress lines with an ETA instead of tqdm's carriage returns.
    progress = [line for line in runs["peapod-train"].stderr.splitlines() if line.startswith("peapod-train: step")]
    assert progress[-1].startswith("peapod-train: step 2/2 (100%), ") and "ETA" in progress[-1], progress


def test_final_folder_is_pickle_free_with_default_learning_rate(trained_by_console_scripts):
    folder, _ = trained_by_console_scripts
    run = folder / "run"
    assert not list(run.glob("*.bin")) and not list(run.glob("*.pt")) and not list(run.glob("*.pkl"))
    arguments = json.loads((run / "training_args.json").read_text())
    assert arguments["learning_rate"] == DEFAULT_LEARNING_RATE == 5e-3  # README "Learning rate"


def test_trained_folder_carries_the_pipeline(trained_by_console_scripts):
    """peapod-train's final folder (what push_to_hub uploads) registers the custom pipeline, which then loads from it."""
    from transformers import pipeline

    from modeling_peapod import custom_pipelines_entry

    run = trained_by_console_scripts[0] / "run"
    assert json.loads((run / "config.json").read_text())["custom_pipelines"] == custom_pipelines_entry()
    recommender = pipeline(model=str(run), trust_remote_code=True, device="cpu")
    ranking = recommender({"user_id": 1, "task": "topn", "candidates": [1, 2, 3]})
    assert sorted(entry["item_id"] for entry in ranking) == [1, 2, 3]


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
    from training.publishing.hub import check_hub_folder

    folder = tmp_path / "run"
    shutil.copytree(trained_by_console_scripts[0] / "run", folder)
    assert "training_args.json" in check_hub_folder(folder)
    (folder / "extra_state.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PeaPODInputError, match=r"refusing to upload pickle files \['extra_state.bin'\]"):
        check_hub_folder(folder)
