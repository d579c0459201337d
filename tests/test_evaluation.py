"""The evaluation runner on a tiny model and tiny synthetic data: determinism, valid constrained output, the
likelihood ranker, user-table checks, empty references, and the CLI."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER = SHARED / "tokenizers" / "t5"
if not TOKENIZER.is_dir():
    pytest.skip(f"the T5 tokenizer is not at {TOKENIZER}", allow_module_level=True)

from transformers import AutoTokenizer

from datasets_scripts.build_dataset import build_dataset_dict
from datasets_scripts.prepared import PreparedData
from datasets_scripts.splits import (
    enforce_explanation_rules,
    fixed_negatives,
    leave_one_out,
)
from datasets_scripts.synthetic import SyntheticConfig, generate_synthetic
from modeling_peapod import (
    PeaPODConfig,
    PeaPODForConditionalGeneration,
    build_user_neighbors,
)
from training.collator import PeaPODDataCollator
from training.evaluation import evaluate_checkpoint, markdown_table

# Small and fast, still the real protocol shape (100 candidates per top-n user).
FAST = {"batch_size": 4, "num_beams": 10, "top_k": 5, "max_explanation_tokens": 8, "show_progress": False}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER))


@pytest.fixture(scope="module")
def prepared(tokenizer):
    data = generate_synthetic(SyntheticConfig(num_users=12, seed=0))
    split = leave_one_out(data.histories)
    explanations, _ = enforce_explanation_rules(data.explanations, split)
    negatives = {name: fixed_negatives(data.histories, data.num_items, name, 0) for name in ("validation", "test")}
    dataset = build_dataset_dict(data.histories, data.num_items, negatives, explanations, tokenizer, 0)
    generator = torch.Generator().manual_seed(0)
    users = torch.randn(data.num_users + 1, 8, generator=generator)
    users[0] = 0
    return PreparedData(
        path=Path("."), config={}, histories=data.histories, num_users=data.num_users, num_items=data.num_items,
        negatives=negatives, user_embeddings=users, user_neighbors=build_user_neighbors(users, 3),
        item_embeddings=torch.randn(data.num_items + 1, 8, generator=generator), dataset=dataset,
        explanations=explanations, item_reindex=None, id2user=data.id2user, id2item=data.id2item,
    )


def tiny_model(prepared, **fields):
    torch.manual_seed(0)
    config = PeaPODConfig(
        vocab_size=32128, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, user_embedding_dim=8,
        num_neighbors=3, prompt_encoder_heads=2, num_items=prepared.num_items, **fields,
    )
    model = PeaPODForConditionalGeneration(config)
    if model.has_collaborative_prompt:
        model.set_user_table(prepared.user_embeddings, prepared.user_neighbors)
    return model.eval()


@pytest.fixture(scope="module")
def model(prepared):
    return tiny_model(prepared)


def _without_timing(report):
    return {key: value for key, value in report.items() if key != "timing"}


def test_same_checkpoint_and_data_give_identical_numbers_twice(model, tokenizer, prepared):
    first = evaluate_checkpoint(model, tokenizer, prepared, max_users=2, baselines=("popularity",), **FAST)
    second = evaluate_checkpoint(model, tokenizer, prepared, max_users=2, baselines=("popularity",), **FAST)
    assert _without_timing(first) == _without_timing(second)
    assert set(first["results"]) == {"sequential", "topn_beam", "topn_likelihood", "explanation"}
    assert first["users"]["evaluated_per_task"]["sequential"] == 2
    # Throughput is what the report's own seconds and user counts say (seconds rounded to ms, rates to 0.001).
    assert set(first["timing"]) == {"sequential", "topn", "explanation", "baseline_popularity"}
    samples = {"sequential": first["results"]["sequential"]["num_users"],
               "topn": first["results"]["topn_beam"]["num_users"],
               "explanation": first["results"]["explanation"]["num_samples"]}
    for task, timing in first["timing"].items():
        if task.startswith("baseline_"):
            continue
        users = first["users"]["evaluated_per_task"][task]
        assert users == 2 and timing["seconds"] > 0
        # "seconds" is rounded to 1 ms, so the rates (from the unrounded time) agree within that rounding.
        rel = 0.01 + 0.0005 / timing["seconds"]
        assert timing["users_per_second"] == pytest.approx(users / timing["seconds"], rel=rel, abs=2e-3)
        assert timing["samples_per_second"] == pytest.approx(samples[task] / timing["seconds"], rel=rel, abs=2e-3)
    table = markdown_table(first)
    assert "top-n (likelihood)" in table and "BLEU-4" in table and "popularity" in table


def test_constrained_outputs_are_valid_distinct_and_within_the_candidates(model, tokenizer, prepared):
    report = evaluate_checkpoint(
        model, tokenizer, prepared, max_users=3, tasks=("sequential", "topn"), return_rankings=True, **FAST
    )
    catalogue = set(range(1, prepared.num_items + 1))
    sequential = report["rankings"]["sequential"]["ranked"]
    assert len(sequential) == 3 and all(0 < len(items) <= FAST["top_k"] for items in sequential)
    assert all(len(set(items)) == len(items) and set(items) <= catalogue for items in sequential)
    candidates = prepared.dataset["topn_test"][:3]["candidates"]
    for name in ("topn_beam", "topn_likelihood"):
        ranked = report["rankings"][name]["ranked"]
        for items, allowed in zip(ranked, candidates):
            assert 0 < len(items) <= FAST["top_k"] and len(set(items)) == len(items) and set(items) <= set(allowed)
    # The likelihood ranker scores all 100 candidates, so its lists are always full.
    assert all(len(items) == FAST["top_k"] for items in report["rankings"]["topn_likelihood"]["ranked"])


def test_each_topn_ranking_alone_gives_what_both_give(model, tokenizer, prepared):
    """`topn_rankings` skips a ranking without changing the other (or the sequential task)."""
    both = evaluate_checkpoint(model, tokenizer, prepared, max_users=3, tasks=("sequential", "topn"),
                               return_rankings=True, **FAST)
    assert both["settings"]["topn_rankings"] == ["beam", "likelihood"]
    for name in ("likelihood", "beam"):
        alone = evaluate_checkpoint(model, tokenizer, prepared, max_users=3, tasks=("sequential", "topn"),
                                    return_rankings=True, topn_rankings=(name,), **FAST)
        assert set(alone["results"]) == {"sequential", f"topn_{name}"}
        for result in alone["results"]:
            assert alone["results"][result] == both["results"][result]
            assert alone["rankings"][result] == both["rankings"][result]
        assert alone["settings"]["topn_rankings"] == [name]


def test_likelihood_ranker_puts_a_planted_item_first(prepared, tokenizer):
    model = tiny_model(prepared)
    row = prepared.dataset["topn_test"][0]  # user 1 and its 100 test candidates
    planted = next(item for item in row["candidates"] if item != row["item_id"])  # a negative, so not by chance
    target = tokenizer(text_target=str(planted))["input_ids"]
    batch = PeaPODDataCollator(tokenizer)([{**row, "labels": target}])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(10):  # one pair, a few steps: the planted item's log-likelihood ends far above the others
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    report = evaluate_checkpoint(
        model, tokenizer, prepared, tasks=("topn",), max_users=1, return_rankings=True, **FAST
    )
    assert report["rankings"]["topn_likelihood"]["ranked"][0][0] == planted
    assert report["rankings"]["topn_beam"]["ranked"][0][0] == planted


def test_user_table_must_exist_and_match_the_data(prepared, tokenizer):
    without_table = PeaPODForConditionalGeneration(
        PeaPODConfig(vocab_size=32128, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                     user_embedding_dim=8, num_neighbors=3, prompt_encoder_heads=2)
    )
    with pytest.raises(ValueError, match="no user table"):
        evaluate_checkpoint(without_table, tokenizer, prepared, **FAST)
    other = tiny_model(prepared)
    bigger = torch.randn(prepared.num_users + 5, 8)
    other.config.num_users = 0
    other.set_user_table(bigger, build_user_neighbors(bigger, 3))
    with pytest.raises(ValueError, match=f"prepared data has num_users={prepared.num_users}"):
        evaluate_checkpoint(other, tokenizer, prepared, **FAST)
    # POD has no user table by design and evaluates normally.
    pod = tiny_model(prepared, prompt_encoder="none")
    report = evaluate_checkpoint(pod, tokenizer, prepared, tasks=("sequential",), max_users=1, **FAST)
    assert report["users"]["excluded_absent_from_user_table"]["count"] == 0


def test_users_absent_from_the_table_are_counted_reported_and_excluded(prepared, tokenizer):
    model = tiny_model(prepared)
    model.user_embeddings[2] = 0  # user 2: no collaborative signal in the table
    report = evaluate_checkpoint(
        model, tokenizer, prepared, tasks=("sequential",), max_users=3, baselines=("popularity",),
        return_rankings=True, **FAST
    )
    assert report["users"]["excluded_absent_from_user_table"] == {"count": 1, "user_ids": [2]}
    assert report["rankings"]["sequential"]["user_ids"] == [1, 3, 4]
    assert report["baselines"]["popularity"]["sequential"]["num_users"] == 3  # the same users as the model
    assert "excluded (absent from the user table): 1" in markdown_table(report)


def test_empty_explanation_reference_is_an_error_before_generation(prepared, tokenizer, model):
    from datasets import DatasetDict

    broken = DatasetDict(dict(prepared.dataset))
    broken["explanation_test"] = broken["explanation_test"].map(
        lambda row, index: {"target": "  " if index == 1 else row["target"]}, with_indices=True
    )
    damaged = PreparedData(**{**prepared.__dict__, "dataset": broken})
    with pytest.raises(ValueError, match="empty reference"):
        evaluate_checkpoint(model, tokenizer, damaged, tasks=("explanation",), **FAST)


def test_bad_arguments_are_value_errors(model, tokenizer, prepared):
    with pytest.raises(ValueError, match="split"):
        evaluate_checkpoint(model, tokenizer, prepared, split="train")
    with pytest.raises(ValueError, match="tasks"):
        evaluate_checkpoint(model, tokenizer, prepared, tasks=("rating",))
    with pytest.raises(ValueError, match="baseline"):
        evaluate_checkpoint(model, tokenizer, prepared, baselines=("itemknn",))
    with pytest.raises(ValueError, match="top_k"):
        evaluate_checkpoint(model, tokenizer, prepared, num_beams=5, top_k=10)
    for rankings in ((), ("beam", "sampling")):
        with pytest.raises(ValueError, match="topn_rankings must be a non-empty subset"):
            evaluate_checkpoint(model, tokenizer, prepared, topn_rankings=rankings)


# Bootstrap intervals over users --------------------------------------------------------------------------------


def _numpy_percentile_bootstrap(values, resamples=1000, seed=0):
    """The reference: resample users with replacement, mean per resample, 2.5th and 97.5th percentiles."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return np.percentile(means, [2.5, 97.5]).tolist()


def test_bootstrap_interval_matches_a_numpy_reference_contains_the_value_and_shrinks():
    from training.evaluation import bootstrap_interval

    hits = (np.random.default_rng(3).random(400) < 0.3).astype(float)
    low, high = bootstrap_interval(hits)
    assert [low, high] == pytest.approx(_numpy_percentile_bootstrap(hits), abs=1e-12)
    assert low <= hits.mean() <= high and low < high
    assert bootstrap_interval(hits) == [low, high]  # seeded: the same interval every time
    assert bootstrap_interval(hits, seed=1) != [low, high]
    more = np.tile(hits, 16)  # the same hit rate, 16 x the users
    more_low, more_high = bootstrap_interval(more)
    assert more_low <= more.mean() <= more_high and (more_high - more_low) < 0.5 * (high - low)
    assert bootstrap_interval([1.0, 1.0, 1.0]) == [1.0, 1.0] and bootstrap_interval([0.5]) == [0.5, 0.5]
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_every_ranking_metric_gets_its_interval_from_the_per_user_values():
    from training.evaluation.runner import RANKING_COLUMNS, _ranking_scores

    rng = np.random.default_rng(0)
    targets = rng.integers(1, 50, size=300).tolist()
    ranked = [rng.permutation(np.arange(1, 50))[:10].tolist() for _ in targets]
    scores = _ranking_scores(ranked, targets)
    ranks = [row.index(t) + 1 if t in row else None for row, t in zip(ranked, targets)]
    for column in RANKING_COLUMNS:
        k = int(column.split("@")[1])
        if column.startswith("hr"):
            per_user = np.array([float(r is not None and r <= k) for r in ranks])
        else:
            per_user = np.array([1 / np.log2(r + 1) if r is not None and r <= k else 0.0 for r in ranks])
        assert scores[column] == pytest.approx(per_user.mean())
        assert scores[f"{column}_ci"] == pytest.approx(_numpy_percentile_bootstrap(per_user), abs=1e-12)
    assert scores["num_users"] == 300


def test_reports_carry_intervals_for_the_model_and_the_baselines(model, tokenizer, prepared):
    report = evaluate_checkpoint(
        model, tokenizer, prepared, tasks=("sequential", "topn"), max_users=6, baselines=("popularity", "markov"),
        **FAST,
    )
    entries = [*report["results"].values(), *(m for b in report["baselines"].values() for m in b.values())]
    assert len(entries) == 3 + 4
    for metrics in entries:
        low, high = metrics["hr@5_ci"]
        assert low <= metrics["hr@5"] <= high
    assert report["settings"]["intervals"]["resamples"] == 1000
    table = markdown_table(report)
    hr5 = report["baselines"]["markov"]["sequential"]["hr@5"]
    low, high = report["baselines"]["markov"]["sequential"]["hr@5_ci"]
    assert "| markov | sequential (full ranking) |" in table and f"{hr5:.4f} ({low:.4f}–{high:.4f})" in table
    json.dumps(report)  # JSON-ready


def test_cli_writes_json_and_markdown(model, tokenizer, prepared, tmp_path, monkeypatch):
    import training.evaluation.api as prepared_module  # the evaluation API's own name for load_prepared
    from training.evaluation.cli import evaluate as main

    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    monkeypatch.setattr(prepared_module, "load_prepared", lambda path: prepared)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unused").mkdir()  # --prepared_dir must exist; load_prepared is replaced above
    output = tmp_path / "eval"
    report = main([
        "--checkpoint", str(checkpoint), "--prepared_dir", "unused", "--tasks", "sequential", "--max_users", "2",
        "--num_beams", "4", "--top_k", "2", "--baselines", "popularity", "pmf", "--output_dir", str(output),
    ])
    written = json.loads((output / "results.json").read_text())
    assert written["results"] == report["results"]
    assert set(written["baselines"]) == {"popularity", "pmf"}
    assert "| popularity |" in (output / "results.md").read_text()
    # --update_model_card puts the numbers into the checkpoint's card (model-index and a section).
    from huggingface_hub import ModelCard

    from training.publishing.model_card import TrainingSummary, write_model_card

    write_model_card(checkpoint, model.config, TrainingSummary(dataset_name="synthetic"))
    main(["--checkpoint", str(checkpoint), "--prepared_dir", "unused", "--tasks", "sequential", "--max_users", "2",
          "--num_beams", "4", "--top_k", "2", "--update_model_card", "True"])
    card = ModelCard.load(checkpoint / "README.md")
    assert {r.metric_type for r in card.data.eval_results} >= {"hr@1", "ndcg@5"}
    assert "`peapod-evaluate` on `unused`, test split, 2 users: sequential by 4-beam search constrained" in card.text
    assert "top-n" not in card.text.split("## Evaluation (test split)")[1].split("##")[0]
    (checkpoint / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="--update_model_card: .*README.md does not exist"):
        main(["--checkpoint", str(checkpoint), "--prepared_dir", "unused", "--update_model_card", "True"])
    with pytest.raises(ValueError, match="--update_model_card needs --checkpoint"):
        main(["--prepared_dir", "unused", "--baselines", "popularity", "--update_model_card", "True"])


# A real prepared folder (made by `peapod-prepare --synthetic`, tests/conftest.py) and a checkpoint on disk ----------

REAL = {"max_users": 4, "batch_size": 4, "num_beams": 10, "top_k": 5, "max_explanation_tokens": 8,
        "baselines": ("popularity",)}


@pytest.fixture(scope="module")
def real_run(synthetic_prepared, tokenizer, tmp_path_factory):
    """A tiny model sized for the prepared folder, nudged for a few steps so that user 1's test item is ranked
    first (so the metrics below are not all zero), saved as a checkpoint, and its in-memory report."""
    from datasets_scripts import load_prepared

    prepared = load_prepared(synthetic_prepared)
    torch.manual_seed(0)
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=prepared.num_users, num_items=prepared.num_items, user_embedding_dim=8, num_neighbors=3,
        dropout_rate=0.0,
    )
    model.set_user_table(prepared.user_embeddings, prepared.user_neighbors)
    rows = [prepared.dataset["topn_test"][0], prepared.dataset["sequential_test"][0]]
    assert [row["user_id"] for row in rows] == [1, 1]
    batch = PeaPODDataCollator(tokenizer)(
        [{**row, "labels": tokenizer(text_target=str(row["item_id"]))["input_ids"]} for row in rows]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(10):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    checkpoint = tmp_path_factory.mktemp("real") / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    report = evaluate_checkpoint(model, tokenizer, prepared, return_rankings=True, show_progress=False, **REAL)
    return synthetic_prepared, checkpoint, report


def test_peapod_evaluate_in_a_fresh_process_reproduces_the_in_memory_numbers(real_run, tmp_path):
    """save -> load -> evaluate through the console script, on a real prepared folder, nothing mocked."""
    import subprocess

    from conftest import console_script

    folder, checkpoint, expected = real_run
    output = tmp_path / "eval"
    command = [console_script("peapod-evaluate"), "--checkpoint", str(checkpoint), "--prepared_dir", str(folder),
               "--max_users", str(REAL["max_users"]), "--batch_size", str(REAL["batch_size"]),
               "--num_beams", str(REAL["num_beams"]), "--top_k", str(REAL["top_k"]),
               "--max_explanation_tokens", str(REAL["max_explanation_tokens"]), "--baselines", "popularity",
               "--output_dir", str(output)]
    # The same float reductions as this process: the same number of threads.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    written = json.loads((output / "results.json").read_text())
    for key in ("results", "baselines", "users", "settings", "explanations", "tasks"):
        assert written[key] == expected[key], key
    assert set(written["results"]) == {"sequential", "topn_beam", "topn_likelihood", "explanation"}
    assert written["checkpoint"] == str(checkpoint) and written["prepared_dir"] == str(folder)
    assert (output / "results.md").read_text() in done.stdout  # the tables it printed are the ones it wrote


def test_reported_hr_and_ndcg_equal_a_recount_from_the_ranked_lists_and_the_prepared_files(real_run):
    folder, _, report = real_run
    # The held-out test item is the last item of each user's line in sequential.txt (leave-one-out), and a top-n
    # user's candidates are that item plus the 99 of its line in negatives_test.txt: read here from the raw files.
    last_item = {}
    for line in (folder / "sequential.txt").read_text().splitlines():
        user, *items = map(int, line.split())
        last_item[user] = items[-1]
    negatives = {}
    for line in (folder / "negatives_test.txt").read_text().splitlines():
        user, *items = map(int, line.split())
        negatives[user] = set(items)
    num_items = len(json.loads((folder / "datamaps.json").read_text())["id2item"])
    nontrivial = 0
    for name in ("sequential", "topn_beam", "topn_likelihood"):
        ranking = report["rankings"][name]
        users, ranked = ranking["user_ids"], ranking["ranked"]
        assert users == [1, 2, 3, 4] and ranking["targets"] == [last_item[user] for user in users]
        for user, items in zip(users, ranked):
            assert len(items) == len(set(items)) == REAL["top_k"] and all(1 <= item <= num_items for item in items)
            if name != "sequential":
                assert set(items) <= negatives[user] | {last_item[user]}
        expected = {}
        for k in (1, 5, 10):
            ranks = [items[:k].index(last_item[user]) if last_item[user] in items[:k] else None
                     for user, items in zip(users, ranked)]
            expected[f"hr@{k}"] = sum(rank is not None for rank in ranks) / len(users)
            if k > 1:
                expected[f"ndcg@{k}"] = sum(1 / math.log2(rank + 2) for rank in ranks if rank is not None) / len(users)
        metrics = report["results"][name]
        assert metrics["num_users"] == len(users)
        for metric, value in expected.items():
            assert metrics[metric] == pytest.approx(value, abs=1e-12), (name, metric)
        nontrivial += 0 < metrics["hr@5"] < 1
    # The planted user 1 makes HR non-zero; the other random users keep it below 1, so the recount is not 0 == 0.
    assert report["rankings"]["topn_likelihood"]["ranked"][0][0] == last_item[1]
    assert nontrivial >= 2
