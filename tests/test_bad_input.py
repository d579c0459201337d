"""The standing bad-input suite of the console scripts (issue 9's CLI side): every case asserts the exact behaviour.

* Bad arguments and bad config files, table-driven (`CASES`): exit status 2, exactly one stderr line
  `<prog>: error: ...` naming the flag or file, no traceback, and no output written (or the previous output intact).
  They run the console scripts' own `main(argv)` in this process (fast); `test_real_console_scripts` runs one case
  of every installed script as a real subprocess.
* Unsafe `--overwrite` / `--fresh` targets: the current directory, the source, a folder holding or inside it, a
  folder this tool did not write, a prepared folder with a user's file in it — all refused, all left intact.
* `kill -9` at three points of `peapod-prepare` (user table written, files written, between the two renames of the
  final swap): the previous output stays intact (or comes back), and the next run leaves no temporary behind.
* Code in a checkpoint folder (an `auto_map` in tokenizer_config.json, replaced code files) is never executed.

Everything uses a 30-user synthetic prepared folder and the real T5 tokenizer from ../shared (skipped without it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TOKENIZER_DIR

from datasets_scripts import cli as prepare_cli
from training import cli as train_cli
from training import demo as demo_cli
from training import figures as plots
from training.evaluation import cli as evaluate_cli

PROGRAMS = {
    "peapod-prepare": prepare_cli.main,
    "peapod-train": train_cli.main,
    "peapod-evaluate": evaluate_cli.main,
    "peapod-explain-user": plots.explain_user_main,
    "peapod-demo": demo_cli.main,
}
TOK = str(TOKENIZER_DIR)


# Fixtures: one prepared folder and one checkpoint for the whole module ---------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer):
    from datasets_scripts import prepare

    folder = tmp_path_factory.mktemp("bad-input") / "prepared"
    prepare(folder, synthetic=True, tokenizer=TOK, max_users=30, embedding_dim=8, num_neighbors=3, pmf_max_iter=5)
    return folder


@pytest.fixture(scope="module")
def checkpoint(prepared, tokenizer):
    """A tiny untrained PeaPOD saved like peapod-train saves (config, code files, weights, tokenizer)."""
    from datasets_scripts import load_prepared
    from modeling_peapod import PeaPODForConditionalGeneration

    data = load_prepared(prepared, load_dataset=False)
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=data.num_users, num_items=data.num_items, user_embedding_dim=8, num_neighbors=3)
    model.set_user_table(data.user_embeddings, data.user_neighbors)
    folder = prepared.parent / "checkpoint"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def offline(monkeypatch):
    """The Hub unreachable, deterministically: a closed local port instead of huggingface.co."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def run_main(prog: str, argv: list[str], capsys) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of a console script's main() run in this process."""
    capsys.readouterr()
    status = PROGRAMS[prog](argv)
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_one_line_error(prog: str, status: int, lines: list[str], expected: str) -> None:
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert status == 2, lines
    assert len(errors) == 1 and expected in errors[0], lines
    assert not any("Traceback" in line for line in lines), lines


def stray_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# The table: (program, argv builder, expected text in the error line) ------------------------------------------
# Builders get (tmp, prepared, checkpoint) and return argv; every output they name lies under tmp/"out".


def _file(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


TRAIN = ["--base_model", "random:tiny", "--report_to", "none"]
CASES = {
    # peapod-prepare
    "prepare: unknown --pmf_implementation": ("peapod-prepare", lambda t, p, c: [
        "--output_dir", str(t / "out"), "--synthetic", "--pmf_implementation", "fortran"],
        "--pmf-implementation: invalid choice: 'fortran' (choose from 'numba', 'cornac')"),
    "prepare: no source": ("peapod-prepare", lambda t, p, c: ["--output_dir", str(t / "out")],
                           "give exactly one data source"),
    "prepare: two sources": ("peapod-prepare", lambda t, p, c: ["--output_dir", str(t / "out"), "--synthetic",
                                                                  "--p5_dir", str(p)], "exactly one data source"),
    "prepare: --tokenizer /nonexistent": (
        "peapod-prepare", lambda t, p, c: ["--output_dir", str(t / "out"), "--synthetic", "--tokenizer",
                                           "/nonexistent"], "--tokenizer /nonexistent: no such folder"),
    "prepare: missing --p5_dir": ("peapod-prepare", lambda t, p, c: ["--output_dir", str(t / "out"), "--p5_dir",
                                                                       str(t / "nope")], "--p5_dir"),
    "prepare: missing --reviews": ("peapod-prepare", lambda t, p, c: ["--output_dir", str(t / "out"), "--reviews",
                                                                        str(t / "r.json.gz")], "--reviews"),
    "prepare: --embedding_dim 0": ("peapod-prepare", lambda t, p, c: ["--output_dir", str(t / "out"), "--synthetic",
                                                                        "--embedding_dim", "0"],
                                   "--embedding_dim must be >= 1, got 0"),
    "prepare: --output_dir is a file": ("peapod-prepare", lambda t, p, c: [
        "--output_dir", _file(t, "out", "x"), "--synthetic"], "exists and is not a folder"),
    "prepare: unknown embedding": ("peapod-prepare", lambda t, p, c: ["--output_dir", str(t / "out"), "--synthetic",
                                                                        "--embedding", "word2vec"], "--embedding"),
    # peapod-train
    "train: YAML syntax error": ("peapod-train", lambda t, p, c: [
        _file(t, "run.yaml", "learning_rate: 0.001\nmax_steps: [2\n"), "--output_dir", str(t / "out")],
        "run.yaml:3:1: invalid YAML"),
    "train: JSON syntax error": ("peapod-train", lambda t, p, c: [
        _file(t, "run.json", '{"learning_rate": 0.001,\n "max_steps" 2}'), "--output_dir", str(t / "out")],
        "run.json:2:14: invalid JSON: Expecting ':' delimiter"),
    "train: unknown config key": ("peapod-train", lambda t, p, c: [
        _file(t, "run.yaml", "learnig_rate: 0.1\n"), "--output_dir", str(t / "out")],
        "unknown config keys 'learnig_rate' (did you mean 'learning_rate'?)"),
    "train: missing config file": ("peapod-train", lambda t, p, c: [str(t / "absent.yaml"), "--output_dir",
                                                                      str(t / "out")], "absent.yaml does not exist"),
    "train: --user_prompt_dropout 1": ("peapod-train", lambda t, p, c: [
        "--prepared_dir", str(p), "--output_dir", str(t / "out"), "--tokenizer", TOK, "--user_prompt_dropout", "1"],
        "--user_prompt_dropout must be in [0, 1), got 1.0"),
    "train: unknown flag": ("peapod-train", lambda t, p, c: ["--output_dir", str(t / "out"), "--bogus", "1"],
                            "unknown arguments ['--bogus', '1']"),
    "train: non-numeric learning rate": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--output_dir", str(t / "out"), "--learning_rate", "abc"],
        "argument --learning_rate/--learning-rate: invalid float value: 'abc'"),
    "train: random:huge": ("peapod-train", lambda t, p, c: ["--base_model", "random:huge", "--output_dir",
                                                              str(t / "out")],
                           "unknown shape 'huge'; known shapes: t5-small, mini, tiny"),
    "train: negative learning rate": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--prepared_dir", str(p), "--output_dir", str(t / "out"), "--learning_rate", "-0.001"],
        "--learning_rate must be > 0, got -0.001"),
    "train: zero batch size": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--prepared_dir", str(p), "--output_dir", str(t / "out"), "--per_device_train_batch_size", "0"],
        "--per_device_train_batch_size must be >= 1, got 0"),
    "train: zero time box": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--prepared_dir", str(p), "--output_dir", str(t / "out"), "--max_train_seconds", "0"],
        "max_train_seconds must be a positive number of seconds"),
    "train: --output_dir is a file": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--prepared_dir", str(p), "--output_dir", _file(t, "out", "x")], "exists and is not a folder"),
    "train: missing --prepared_dir": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--prepared_dir", str(t / "nope"), "--output_dir", str(t / "out")], "--prepared_dir"),
    "train: --tokenizer /nonexistent": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--prepared_dir", str(p), "--output_dir", str(t / "out"), "--tokenizer", "/nonexistent"],
        "--tokenizer /nonexistent: no such folder"),
    "train: default t5-small tokenizer offline": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--output_dir", str(t / "out")],
        ("t5-small: not a local folder and http://127.0.0.1:9 cannot be reached to download it (ConnectError); "
         "pass a local tokenizer folder")),
    "train: pretrained t5-small offline": ("peapod-train", lambda t, p, c: [
        "--base_model", "t5-small", "--prepared_dir", str(p), "--output_dir", str(t / "out")],
        "offline, use a random shape, e.g. --base_model random:t5-small"),
    "train: unknown task": ("peapod-train", lambda t, p, c: [
        *TRAIN, "--prepared_dir", str(p), "--output_dir", str(t / "out"), "--tasks", "rating"], "--tasks"),
    # peapod-evaluate
    "evaluate: --output_dir is a file": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--checkpoint", str(c), "--output_dir", _file(t, "out", "x")],
        "--output_dir", ),
    "evaluate: missing checkpoint": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--checkpoint", str(t / "nope"), "--output_dir", str(t / "out")], "--checkpoint"),
    "evaluate: checkpoint without config.json": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--checkpoint", str(t), "--output_dir", str(t / "out")], "holds no config.json"),
    "evaluate: missing --prepared_dir": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(t / "nope"), "--baselines", "popularity", "--output_dir", str(t / "out")],
        "--prepared_dir"),
    "evaluate: zero batch size": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--checkpoint", str(c), "--batch_size", "0", "--output_dir", str(t / "out")],
        "--batch_size must be >= 1, got 0"),
    "evaluate: unknown flag": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--baselines", "pmf", "--bogus", "1"], "['--bogus', '1'] (see peapod-evaluate --help)"),
    "evaluate: unknown baseline": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--baselines", "itemknn", "--output_dir", str(t / "out")], "--baselines"),
    "evaluate: bad --topn_rankings": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--checkpoint", str(c), "--topn_rankings", "sampling", "--output_dir",
        str(t / "out")], "--topn_rankings ['sampling']: expected a non-empty subset of ['beam', 'likelihood']"),
    "evaluate: bad split": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--baselines", "pmf", "--split", "train", "--output_dir", str(t / "out")],
        "--split"),
    "evaluate: --tokenizer /nonexistent": ("peapod-evaluate", lambda t, p, c: [
        "--prepared_dir", str(p), "--checkpoint", str(c), "--tokenizer", "/nonexistent", "--output_dir",
        str(t / "out")], "--tokenizer /nonexistent: no such folder"),
    # peapod-explain-user
    "explain-user: missing checkpoint": ("peapod-explain-user", lambda t, p, c: [
        "--checkpoint", str(t / "nope"), "--user_id", "1", "--output", str(t / "out")], "--checkpoint"),
    "explain-user: missing --user_id": ("peapod-explain-user", lambda t, p, c: [
        "--checkpoint", str(c)], "the following arguments are required: --user_id"),
    "explain-user: user outside the table": ("peapod-explain-user", lambda t, p, c: [
        "--checkpoint", str(c), "--user_id", "1000000", "--output", str(t / "out")],
        "--user_id 1000000: user_id=1000000 is not in the model's user table (1..30)"),
    # peapod-demo
    "demo: --tokenizer /nonexistent": ("peapod-demo", lambda t, p, c: [
        "--output_dir", str(t / "out"), "--tokenizer", "/nonexistent"], "--tokenizer /nonexistent: no such folder"),
    "demo: unknown --data": ("peapod-demo", lambda t, p, c: [
        "--output_dir", str(t / "out"), "--tokenizer", TOK, "--data", "movies"], "--data: invalid choice: 'movies'"),
    "demo: --dropout_rate 1.5": ("peapod-demo", lambda t, p, c: [
        "--output_dir", str(t / "out"), "--tokenizer", TOK, "--dropout_rate", "1.5"], "--dropout_rate must be in [0, 1)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_arguments_exit_2_with_one_line(case, prepared, checkpoint, tmp_path, capsys, offline, monkeypatch):
    prog, build, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path, prepared, checkpoint)
    output_before = sorted(tmp_path.iterdir())
    if case.startswith("evaluate"):  # refused before any evaluation runs (and so before results could be lost)
        monkeypatch.setattr("training.evaluation.api.evaluate_checkpoint", _must_not_run)
    status, lines = run_main(prog, argv, capsys)
    assert_one_line_error(prog, status, lines, expected)
    assert sorted(tmp_path.iterdir()) == output_before  # nothing written: no output folder, no temporaries


def _must_not_run(*args, **kwargs):
    raise AssertionError("evaluation ran although the arguments were bad")


# Unsafe --overwrite / --fresh targets ---------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _source_with_notes(tmp: Path, prepared: Path) -> Path:
    """A P5 source folder (a copy of the prepared one, which is P5-shaped) with a user's notes file beside it."""
    source = tmp / "source"
    shutil.copytree(prepared, source, ignore=shutil.ignore_patterns("dataset"))
    (source / "notes.txt").write_text("my notes")
    return source


def _with_prepared_inside(source: Path, prepared: Path) -> Path:
    shutil.copytree(prepared, source / "dataset-copy", ignore=shutil.ignore_patterns("dataset"))
    return source / "dataset-copy"


def _foreign_folder(tmp: Path) -> Path:
    folder = tmp / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    return folder


def _prepared_with_notes(tmp: Path, prepared: Path) -> Path:
    folder = tmp / "prepared-copy"
    shutil.copytree(prepared, folder, ignore=shutil.ignore_patterns("dataset"))
    (folder / "notes.txt").write_text("my notes")
    return folder


def _source_is_output(tmp: Path, prepared: Path):
    source = _source_with_notes(tmp, prepared)
    return ["--p5_dir", str(source), "--output_dir", str(source)], source


def _output_holds_source(tmp: Path, prepared: Path):
    source = _source_with_notes(tmp, prepared)
    return ["--p5_dir", str(source), "--output_dir", str(tmp)], tmp


def _output_inside_source(tmp: Path, prepared: Path):
    source = _source_with_notes(tmp, prepared)
    return ["--p5_dir", str(source), "--output_dir", str(_with_prepared_inside(source, prepared))], source


def _foreign_output(tmp: Path, prepared: Path):
    folder = _foreign_folder(tmp)
    return ["--synthetic", "--output_dir", str(folder)], folder


def _prepared_output_with_notes(tmp: Path, prepared: Path):
    folder = _prepared_with_notes(tmp, prepared)
    return ["--synthetic", "--output_dir", str(folder)], folder


UNSAFE_TARGETS = {
    # name: (builder (area, prepared) -> (argv, folder whose content must stay intact), expected text)
    "the working directory": (lambda t, p: (["--synthetic", "--output_dir", "."], t), "current working directory"),
    "a folder holding the working directory": (
        lambda t, p: (["--synthetic", "--output_dir", ".."], t), "current working directory or holds it"),
    "the source itself": (_source_is_output, "is, holds or lies inside the input"),
    "a folder holding the source": (_output_holds_source, "is, holds or lies inside the input"),
    "a folder inside the source": (_output_inside_source, "is, holds or lies inside the input"),
    "a folder peapod-prepare did not write": (_foreign_output, "holds no prepare_config.json"),
    "a prepared folder holding a user's file": (_prepared_output_with_notes,
                                                "holds files this tool did not write (notes.txt)"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TARGETS))
def test_prepare_overwrite_refuses_unsafe_targets(case, prepared, tmp_path, capsys, monkeypatch):
    build, expected = UNSAFE_TARGETS[case]
    workdir, area = tmp_path / "work", tmp_path / "area"  # the working directory; where the other targets lie
    workdir.mkdir()
    area.mkdir()
    (workdir / "keep.txt").write_text("the user's file")
    monkeypatch.chdir(workdir)
    argv, protected = build(workdir if "working directory" in case else area, prepared)
    before = _snapshot(protected)
    status, lines = run_main("peapod-prepare", [*argv, "--overwrite", "--tokenizer", TOK], capsys)
    assert_one_line_error("peapod-prepare", status, lines, expected)
    assert _snapshot(protected) == before
    assert (workdir / "keep.txt").read_text() == "the user's file"


def test_prepare_overwrite_replaces_a_prepared_folder(prepared, tmp_path, capsys):
    """The one allowed case: a folder peapod-prepare wrote (with the temporaries a killed run left) is replaced."""
    target = tmp_path / "prepared"
    shutil.copytree(prepared, target)
    status, lines = run_main("peapod-prepare", ["--synthetic", "--output_dir", str(target), "--overwrite",
                                                "--tokenizer", TOK, "--max_users", "25", "--embedding_dim", "4",
                                                "--num_neighbors", "2", "--pmf_max_iter", "2"], capsys)
    assert status == 0, lines
    assert json.loads((target / "prepare_config.json").read_text())["statistics"]["num_users"] == 25
    assert stray_temporaries(tmp_path) == []


def test_a_new_folder_inside_the_source_is_allowed(tmp_path):
    """Creating a new prepared folder inside the source replaces nothing, so it is not refused."""
    from datasets_scripts.files import check_replaceable
    from datasets_scripts.prepared import MARKER_FILE, PREPARED_ENTRIES

    (tmp_path / "source").mkdir()
    check_replaceable(tmp_path / "source" / "prepared", MARKER_FILE, PREPARED_ENTRIES, inputs=[tmp_path / "source"])
    (tmp_path / "source" / "prepared").mkdir()  # once it exists, it lies inside the input: never replaced
    (tmp_path / "source" / "prepared" / MARKER_FILE).write_text("{}")
    with pytest.raises(ValueError, match="lies inside the input"):
        check_replaceable(tmp_path / "source" / "prepared", MARKER_FILE, PREPARED_ENTRIES,
                          inputs=[tmp_path / "source"])


def test_demo_fresh_refuses_unsafe_targets(tmp_path, capsys, monkeypatch, tokenizer):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("the user's file")
    status, lines = run_main("peapod-demo", ["--output_dir", ".", "--fresh", "True", "--tokenizer", TOK], capsys)
    assert_one_line_error("peapod-demo", status, lines, "current working directory")
    foreign = _foreign_folder(tmp_path)
    status, lines = run_main("peapod-demo", ["--output_dir", str(foreign), "--fresh", "True", "--tokenizer", TOK],
                             capsys)
    assert_one_line_error("peapod-demo", status, lines, "holds no peapod_demo.json")
    assert (tmp_path / "keep.txt").exists() and (foreign / "chapter1.tex").read_text() == "years of work"


# kill -9 during peapod-prepare ------------------------------------------------------------------------------------

KILLED_PREPARE = r"""
import os, sys, time
from pathlib import Path
import datasets_scripts.files as files
import datasets_scripts.prepared as prepared
import datasets_scripts.user_embeddings as user_embeddings  # _prepare imports save_user_table from there

tokenizer, source, *jobs = sys.argv[1:]
# The tokenised samples do not matter to where a run is killed: a one-row dataset keeps these runs short.
import datasets
prepared.build_dataset_dict = lambda *args, **kwargs: datasets.DatasetDict(
    {"sequential_train": datasets.Dataset.from_dict({"input_ids": [[1]]})})


def after(function, condition=lambda *args: True):
    # Call `function`, then (when `condition` holds) announce this process's pid and wait for SIGKILL.
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if condition(*args):
            Path(output).parent.joinpath("ready").write_text(str(os.getpid()))
            time.sleep(600)
        return result
    return wrapped


children = []
for point, output in zip(jobs[::2], jobs[1::2]):
    pid = os.fork()  # one import of torch & co. for all three runs
    if pid:
        children.append(pid)
        continue
    if point == "user table written":
        user_embeddings.save_user_table = after(user_embeddings.save_user_table)
    elif point == "files written":
        prepared.write_dataset_card = after(prepared.write_dataset_card)
    else:  # between the two renames of the swap: the old folder moved aside, the new one not yet in place
        files.os.replace = after(os.replace, lambda source, target: ".old-" in str(target))
    # The source: the prepared folder's own P5 files and user table (no synthetic generation, no PMF): fast.
    prepared.prepare(output, p5_dir=source, embedding=str(Path(source) / "users.npy"), tokenizer=tokenizer,
                     num_neighbors=2, overwrite=True)
    os._exit(0)
for pid in children:
    os.waitpid(pid, 0)
"""
KILL_POINTS = ("user table written", "files written", "mid-swap")


def test_kill_9_during_prepare_keeps_the_previous_folder_and_the_next_run_cleans_up(prepared, tmp_path):
    import numpy as np

    from datasets_scripts import prepare

    source = tmp_path / "source"
    shutil.copytree(prepared, source, ignore=shutil.ignore_patterns("dataset"))
    from datasets_scripts.user_embeddings import load_user_table

    np.save(source / "users.npy", load_user_table(prepared / "user_table.safetensors")["user_embeddings"].numpy())
    jobs, folders = [], {}
    for point in KILL_POINTS:
        folders[point] = folder = tmp_path / point.replace(" ", "-")
        folder.mkdir()
        shutil.copytree(prepared, folder / "out")
        jobs += [point, str(folder / "out")]
    runs = subprocess.Popen([sys.executable, "-c", KILLED_PREPARE, TOK, str(source), *jobs], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    for point, folder in folders.items():
        deadline = time.monotonic() + 600
        while not (folder / "ready").exists():
            assert runs.poll() is None, runs.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"{point}: never reached"
            time.sleep(0.1)
        os.kill(int((folder / "ready").read_text()), signal.SIGKILL)
        (folder / "ready").unlink()
    runs.wait(timeout=60)  # it reaps the killed runs: their pids are gone
    previous = (prepared / "prepare_config.json").read_text()
    for point, folder in folders.items():
        assert stray_temporaries(folder), f"{point}: the kill left nothing behind (the test would prove nothing)"
        if point != "mid-swap":
            assert (folder / "out" / "prepare_config.json").read_text() == previous
        else:
            assert not (folder / "out").exists()  # moved aside: the next run brings it back first
        # The next run: even one refused for its arguments restores and cleans up first (a successful run over a
        # prepared folder: test_prepare_overwrite_replaces_a_prepared_folder).
        with pytest.raises(ValueError, match="num_neighbors"):
            prepare(folder / "out", synthetic=True, tokenizer=TOK, max_users=30, num_neighbors=0, overwrite=True)
        assert stray_temporaries(folder) == [], point
        assert (folder / "out" / "prepare_config.json").read_text() == previous, point


def test_stale_temporaries_of_live_processes_and_other_hosts_are_kept(tmp_path):
    from datasets_scripts.files import _HOST, atomic_write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f".x.json.tmp-{_HOST}-{dead.pid}-0123abcd",
        "alive": f".x.json.tmp-{_HOST}-{os.getppid()}-0123abcd",
        "other host": ".x.json.tmp-elsewhere-1-0123abcd",
        "other file": f".y.json.tmp-{_HOST}-{dead.pid}-0123abcd",
    }
    for name in names.values():
        (tmp_path / name).write_text("partial")
    atomic_write_text(tmp_path / "x.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["x.json", names["alive"], names["other host"], names["other file"]])


# Code inside a checkpoint folder is never executed ---------------------------------------------------------------

EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('executed')\nclass EvilTokenizer: pass\nclass Evil: pass\n"


def test_checkpoint_code_is_never_executed(checkpoint, prepared, tmp_path, capsys):
    """A downloaded checkpoint whose tokenizer_config.json has an auto_map and whose code files were replaced:
    peapod-evaluate and peapod-explain-user run with the installed classes; nothing of the folder is imported."""
    folder = tmp_path / "downloaded"
    shutil.copytree(checkpoint, folder)
    marker = tmp_path / "marker"
    for name in ("evil.py", "configuration_peapod.py", "modeling_peapod.py"):
        (folder / name).write_text(EVIL.format(marker=str(marker)))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))

    status, lines = run_main("peapod-evaluate", [
        "--checkpoint", str(folder), "--prepared_dir", str(prepared), "--tasks", "sequential", "--max_users", "2",
        "--num_beams", "2", "--top_k", "1", "--output_dir", str(tmp_path / "eval")], capsys)
    assert status == 0, lines
    status, lines = run_main("peapod-explain-user", ["--checkpoint", str(folder), "--user_id", "1", "--output",
                                                     str(tmp_path / "a.png")], capsys)
    assert status == 0, lines
    assert not marker.exists()
    # A tokenizer class nobody has installed cannot load without running the folder's code: refused, one line.
    config["tokenizer_class"] = "EvilTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    status, lines = run_main("peapod-evaluate", [
        "--checkpoint", str(folder), "--prepared_dir", str(prepared), "--tasks", "sequential", "--max_users", "2",
        "--num_beams", "2", "--top_k", "1"], capsys)
    assert_one_line_error("peapod-evaluate", status, lines, "asks to run custom code")
    assert not marker.exists()


# The installed console scripts, as real subprocesses --------------------------------------------------------------


def test_real_console_scripts(prepared, tmp_path):
    """The installed scripts are these `main` functions, and one run as the user runs it (a subprocess through the
    console-script wrapper) exits 2 with exactly one stderr line and nothing on stdout."""
    from importlib.metadata import entry_points

    installed = {ep.name: ep.load() for ep in entry_points(group="console_scripts") if ep.name in PROGRAMS}
    assert installed == PROGRAMS
    (tmp_path / "keep.txt").write_text("the user's file")
    script = Path(sys.executable).parent / "peapod-prepare"
    process = subprocess.run([str(script), "--synthetic", "--output_dir", ".", "--overwrite", "--tokenizer", TOK],
                             check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert process.returncode == 2, process.stderr[-2000:]
    assert process.stderr.splitlines() == [
        "peapod-prepare: error: --output_dir . is the current working directory or holds it: refusing to replace it"]
    assert process.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def suite_case_count() -> int:
    """The cases of this file as README counts them: every table row, parametrised case and scenario."""
    return (len(CASES) + len(UNSAFE_TARGETS) + 2  # + the allowed ones: a prepared folder, a new folder in the source
            + 2  # demo --fresh: the working directory, a foreign folder
            + len(KILL_POINTS) + 1  # + temporaries of live processes / other hosts kept
            + 2  # checkpoint code: auto_map beside an installed tokenizer class, and an uninstalled class
            + 1)  # the real console script


def test_case_count_in_readme():
    """README's "What happens on bad input" states how many cases this file covers; keep them in step."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What happens on bad input")[1].split("\n## ")[0]
    assert f"{suite_case_count()} cases" in section, suite_case_count()
