"""`peapod-train --topn_negatives fresh` (training/fresh_negatives.py): top-n training prompts with negatives drawn
again every epoch, assembled from cached word pieces. They must equal the tokenizer's output, follow the prepare
rule, be a function of (seed, epoch, row), and train through `peapod-train`."""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOKENIZER_DIR
from datasets import Dataset, DatasetDict, concatenate_datasets
from test_cli import assert_same_weights, saved_weights, stopped_and_resumed

from datasets_scripts import load_prepared
from datasets_scripts.build_dataset import (
    TEXT_FEATURES,
    build_samples,
    tokenize_dataset_dict,
)
from datasets_scripts.splits import NUM_NEGATIVES, fixed_negatives
from datasets_scripts.templates import TASKS, format_items
from modeling_peapod import compute_whole_word_ids
from training import cli
from training.fresh_negatives import FreshTopnNegatives
from training.sampler import TaskAlternatingBatchSampler
from training.trainer import _SamplerEpochCallback

TOPN = TASKS.index("topn")


def items_in(source: str) -> list[int]:
    return [int(item) for item in re.findall(r"item_(\d+)", source)]


def check_candidates(candidates, target, history, num_items):
    """The prepare rule: the target once, 99 distinct negatives from 1..num_items outside the full history."""
    negatives = [item for item in candidates if item != target]
    assert len(candidates) == NUM_NEGATIVES + 1 and candidates.count(target) == 1
    assert len(set(negatives)) == NUM_NEGATIVES
    assert not set(negatives) & set(history)
    assert all(1 <= item <= num_items for item in negatives)


@pytest.fixture(scope="module")
def toys_rows(tokenizer, shared_data_dir):
    """Sequential and top-n training rows of 25 real Toys users, tokenised as peapod-prepare does."""
    path = shared_data_dir / "amazon" / "toys" / "sequential.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    lines = path.read_text().splitlines()
    histories = {}
    for line in lines[:25]:
        user, *items = map(int, line.split())
        histories[user] = items
    # The whole catalogue: negatives come from all of it (sample_negatives' rejection-sampling path).
    num_items = max(int(item) for line in lines for item in line.split()[1:])
    negatives = {name: fixed_negatives(histories, num_items, name, 0) for name in ("validation", "test")}
    samples = build_samples(histories, num_items, negatives, None, seed=0)
    text = DatasetDict({name: Dataset.from_dict(samples[name], features=TEXT_FEATURES)
                        for name in ("sequential_train", "topn_train")})
    tokenised = tokenize_dataset_dict(text, tokenizer)
    return concatenate_datasets([tokenised["sequential_train"], tokenised["topn_train"]]), histories, num_items


def test_fresh_prompts_equal_the_tokenizer_on_real_prompts(toys_rows, tokenizer):
    rows, histories, num_items = toys_rows
    fresh = FreshTopnNegatives(rows, histories, num_items, tokenizer, seed=0)
    indices = list(range(len(rows)))
    for epoch in (0, 1):
        fresh.set_epoch(epoch)
        got = fresh.__getitems__(indices)
        topn = [index for index in indices if rows[index]["task_id"] == TOPN]
        assert topn and len(topn) < len(indices)
        sources = [fresh.source(index, rows[index]) for index in topn]
        expected = tokenizer(sources, verbose=False)["input_ids"]
        assert [got[index]["input_ids"] for index in topn] == expected
        assert [got[index]["whole_word_ids"] for index in topn] == compute_whole_word_ids(expected, tokenizer)
        for index, source in zip(topn, sources):
            prepared = rows[index]
            user, target = prepared["user_id"], prepared["item_id"]
            # The row's own template and target, fresh candidates by the prepare rule; labels untouched.
            candidates = fresh.candidates(index, user, target)
            assert prepared["source"].replace(format_items(prepared["candidates"]), format_items(candidates)) == source
            check_candidates(candidates, target, histories[user], num_items)
            assert set(items_in(source)) != set(prepared["candidates"])
            assert got[index]["labels"] == prepared["labels"] and got[index]["user_id"] == user
        for index in set(indices) - set(topn):  # other tasks' rows pass through as prepared
            assert got[index] == {name: rows[index][name] for name in got[index]}


@pytest.fixture(scope="module")
def synthetic(synthetic_prepared):
    data = load_prepared(synthetic_prepared)
    rows = data.dataset["topn_train"]
    return data, rows


def test_same_seed_same_rows_new_epoch_new_negatives(synthetic, tokenizer):
    data, rows = synthetic
    indices = list(range(len(rows)))
    first = FreshTopnNegatives(rows, data.histories, data.num_items, tokenizer, seed=3)
    again = FreshTopnNegatives(rows, data.histories, data.num_items, tokenizer, seed=3)
    other_seed = FreshTopnNegatives(rows, data.histories, data.num_items, tokenizer, seed=4)
    epoch0 = first.__getitems__(indices)
    assert again.__getitems__(indices[::-1]) == epoch0[::-1]  # a row's prompt does not depend on its batch
    assert [first[index] for index in indices[:5]] == epoch0[:5]
    different_seed = other_seed.__getitems__(indices)
    first.set_epoch(1)
    epoch1 = first.__getitems__(indices)
    for index in indices:
        assert epoch1[index]["input_ids"] != epoch0[index]["input_ids"]
        assert different_seed[index]["input_ids"] != epoch0[index]["input_ids"]
        assert epoch1[index]["labels"] == epoch0[index]["labels"]
    first.set_epoch(0)
    assert first.__getitems__(indices) == epoch0  # epoch 0 again: the same negatives


def test_negatives_follow_the_prepare_rule(synthetic, tokenizer):
    """The synthetic catalogue is small (the explicit-draw path of sample_negatives); every epoch, every row."""
    data, rows = synthetic
    fresh = FreshTopnNegatives(rows, data.histories, data.num_items, tokenizer, seed=0)
    for epoch in range(3):
        fresh.set_epoch(epoch)
        for index in range(len(rows)):
            user, target = rows[index]["user_id"], rows[index]["item_id"]
            check_candidates(fresh.candidates(index, user, target), target, data.histories[user], data.num_items)


def test_distributed_ranks_build_the_rows_one_process_builds(synthetic, tokenizer):
    data, rows = synthetic
    fresh = FreshTopnNegatives(rows, data.histories, data.num_items, tokenizer, seed=0)
    fresh.set_epoch(2)
    single = fresh.__getitems__(list(range(len(rows))))
    seen = []
    for rank in (0, 1):
        sampler = TaskAlternatingBatchSampler([TOPN] * len(rows), batch_size=4, seed=0, num_replicas=2, rank=rank)
        sampler.set_epoch(2)
        rank_copy = FreshTopnNegatives(rows, data.histories, data.num_items, tokenizer, seed=0)
        rank_copy.set_epoch(2)
        for batch in sampler:
            assert rank_copy.__getitems__(batch) == [single[index] for index in batch]
            seen += batch
    assert sorted(seen) == list(range(len(rows)))  # the sampler's exact coverage is unchanged


def test_the_trainer_sets_the_epoch_before_each_epoch(synthetic, tokenizer):
    data, rows = synthetic
    fresh = FreshTopnNegatives(rows, data.histories, data.num_items, tokenizer)

    class Trainer:  # what the callback reads
        train_dataset = fresh
        _task_batch_sampler = None

    class State:
        epoch = 2.5  # resumed halfway through epoch 2

    _SamplerEpochCallback(Trainer()).on_epoch_begin(None, State(), None)
    assert fresh.epoch == 2


def test_peapod_train_draws_fresh_negatives_each_epoch(synthetic_prepared, tmp_path, monkeypatch):
    """In process: 4 steps over 2 epochs (8 samples per task, batch 8); every top-n row is built with the epoch's
    negatives."""
    built = []
    original = FreshTopnNegatives.__getitems__

    def recording(self, indices):
        rows = original(self, indices)
        built.extend((self.epoch, index, tuple(row["input_ids"])) for index, row in zip(indices, rows)
                     if row["task_id"] == TOPN)
        return rows

    monkeypatch.setattr(FreshTopnNegatives, "__getitems__", recording)
    metrics = cli.train(train_arguments(synthetic_prepared, tmp_path / "run", "--per_device_train_batch_size", "8"))
    assert metrics["global_step"] == 4
    assert {epoch for epoch, _, _ in built} == {0, 1}
    by_epoch = {epoch: {index: ids for e, index, ids in built if e == epoch} for epoch in (0, 1)}
    assert sorted(by_epoch[0]) == sorted(by_epoch[1]) and len(by_epoch[0]) == 8  # each top-n row once per epoch
    assert all(by_epoch[0][index] != by_epoch[1][index] for index in by_epoch[0])
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    assert "fresh top-n negatives every epoch" in card


def test_resumed_run_draws_the_same_negatives(synthetic_prepared, tmp_path, monkeypatch):
    """Stopped at step 5 (inside epoch 1: 4 steps per epoch) and resumed, a run ends with the uninterrupted run's
    weights bit for bit: the resumed epoch's top-n prompts carry that epoch's negatives."""
    steps = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "5", "--dropout_rate", "0"]
    resumed, reference, stopped = stopped_and_resumed(
        tmp_path, monkeypatch, lambda output, *extra: train_arguments(synthetic_prepared, output, *extra), steps, 5)
    assert resumed["global_step"] == 8
    assert_same_weights(saved_weights(stopped), saved_weights(reference))


def test_loader_workers_see_each_epoch(synthetic_prepared, tmp_path):
    """With a loader worker (not persistent: started anew each epoch, after the epoch is set) a run over two epochs
    ends with the weights of the run that builds its batches in the main process."""
    steps = ["--max_steps", "8", "--dropout_rate", "0"]
    cli.train(train_arguments(synthetic_prepared, tmp_path / "main", *steps))
    cli.train(train_arguments(synthetic_prepared, tmp_path / "worker", *steps, "--dataloader_num_workers", "1"))
    assert_same_weights(saved_weights(tmp_path / "worker"), saved_weights(tmp_path / "main"))


def train_arguments(prepared, output_dir, *extra):
    return ["--prepared_dir", str(prepared), "--output_dir", str(output_dir), "--base_model", "random:tiny",
            "--tokenizer", str(TOKENIZER_DIR), "--tasks", "sequential", "topn", "--max_steps", "4",
            "--per_device_train_batch_size", "4", "--max_train_samples_per_task", "8", "--max_eval_samples_per_task",
            "4", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True",
            "--topn_negatives", "fresh", *extra]


def run_peapod_train(arguments):
    script = Path(sys.executable).with_name("peapod-train")
    return subprocess.run([str(script), *arguments], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"})


def test_console_script_trains_with_fresh_negatives(synthetic_prepared, tmp_path):
    done = run_peapod_train(train_arguments(synthetic_prepared, tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "train_metrics.json").read_text())["global_step"] == 4
    run = json.loads((tmp_path / "run" / "peapod_run.json").read_text())
    assert run["data"]["topn_negatives"] == "fresh"  # part of what the run was asked to do


@pytest.mark.parametrize("extra, message", [
    (["--topn_negatives", "random"], "--topn_negatives"),
    (["--dataloader_num_workers", "1", "--dataloader_persistent_workers", "True"], "persistent"),
])
def test_bad_values_exit_2_with_one_line(synthetic_prepared, tmp_path, extra, message):
    done = run_peapod_train(train_arguments(synthetic_prepared, tmp_path / "run", *extra))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peapod-train: error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_curves_rows_pass_the_flag_to_peapod_train(synthetic_prepared, tmp_path, monkeypatch):
    """`experiments/curves.py --rows "mha+...+topn_negatives=fresh"` (the command that measures the option)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import curves

    passed = []
    monkeypatch.setattr(curves.cli, "train", passed.append)
    args = argparse.Namespace(prepared_dir=str(synthetic_prepared), shape="tiny", tokenizer=str(TOKENIZER_DIR),
                              tasks=["sequential", "topn"], max_steps=900, batch_size=32, learning_rate=5e-3,
                              warmup_steps=15, eval_every=300, seed=0)
    curves.train_row(args, "mha+dropout_rate=0.0+topn_negatives=fresh", tmp_path / "run")
    _, data_args, _ = cli.parse_arguments(passed[0])
    assert data_args.topn_negatives == "fresh"
