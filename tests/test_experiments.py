"""The experiment scripts' own logic: the grid's job order and the collector's sections and baselines."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import collect
import grid
import run


def write_config(folder: Path, name: str, text: str) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_grid_jobs_are_seed_major_and_respect_each_configs_seeds(tmp_path):
    a = write_config(tmp_path, "a", "prompt_encoder: mha\n")
    b = write_config(tmp_path, "b", "prompt_encoder: none\nseeds: [0]\n")
    assert grid.job_list([a, b], None) == [(a, 0), (b, 0), (a, 1), (a, 2)]
    assert grid.job_list([b, a], [1, 0]) == [(a, 1), (b, 0), (a, 0)]


def test_unknown_config_key_is_named(tmp_path):
    bad = write_config(tmp_path, "bad", "prompt_encoder: mha\nmax_step: 10\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown keys \['max_step'\]"):
        grid.job_list([bad], None)


def record(name, model, seed, hr, reindex=False, shape="tiny", baselines=None):
    config = {**run.DEFAULTS, "name": name, "dataset": "beauty", "max_users": 2000, "reindex_items": reindex,
              "shape": shape}
    return {"row": name, "seed": seed, "dataset": "beauty", "prepared": "beauty-2000users", "reindex_items": reindex,
            "model": model, "heads": 4, "config": config, "hardware": "test", "train_seconds": 1.0, "train_steps": 300,
            "results": {"topn_beam": {"hr@10": hr, "ndcg@10": hr / 2}}, "baselines": baselines or {}}


def test_collect_groups_by_data_and_budget_and_finds_baselines_files(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "RESULTS", tmp_path)
    records = [record("p", "PeaPOD", 0, 0.4), record("p", "PeaPOD", 1, 0.2), record("q", "POD", 0, 0.3),
               record("r", "PeaPOD", 0, 0.9, reindex=True), record("s", "PeaPOD", 0, 0.7, shape="t5-small")]
    (tmp_path / "baselines-beauty-2000users-100users.json").write_text(json.dumps(
        {"prepared": "beauty-2000users", "eval_users": 100, "baselines": {"popularity": {"topn": {"hr@10": 0.21,
                                                                                                 "ndcg@10": 0.1}}}}))
    found = collect.sections(records)
    assert len(found) == 3  # P5 ids tiny, re-indexed tiny, P5 ids t5-small: never averaged together
    tiny_p5 = next(section for section in found if "P5 ids" in section[0] and "tiny" in section[0])
    assert {model: len(group) for model, group in tiny_p5[1].items()} == {"POD": 1, "PeaPOD": 2}
    assert tiny_p5[2]["popularity"]["topn"]["hr@10"] == 0.21
    table = collect.summary_table(records)
    assert "| PeaPOD | 2 | 0.3000 ± 0.1000 |" in table and "| popularity (baseline) | – | 0.2100 |" in table


def baseline_metrics_by_hand(folder: Path, users: list[int], top_k: int = 10) -> dict:
    """Popularity and PMF HR/NDCG recounted from the prepared folder's raw files, without training/evaluation/baselines.py:
    popularity = number of training interactions (items[:-2]); PMF = user . item factors of user_table.safetensors;
    ties -> the lower item id; the test item = the last of the user's line; top-n candidates = it + its 99 negatives."""
    import math

    from safetensors.torch import load_file

    histories = {}
    for line in (folder / "sequential.txt").read_text().splitlines():
        user, *items = map(int, line.split())
        histories[user] = items
    negatives = {}
    for line in (folder / "negatives_test.txt").read_text().splitlines():
        user, *items = map(int, line.split())
        negatives[user] = items
    counts: dict[int, int] = {}
    for items in histories.values():
        for item in items[:-2]:
            counts[item] = counts.get(item, 0) + 1
    table = load_file(str(folder / "user_table.safetensors"))
    catalogue = range(1, table["item_embeddings"].shape[0])
    scorers = {
        "popularity": lambda user, item: counts.get(item, 0),
        "pmf": lambda user, item: float(table["user_embeddings"][user] @ table["item_embeddings"][item]),
    }
    results = {}
    for name, score in scorers.items():
        results[name] = {}
        for task in ("sequential", "topn"):
            ranks = []
            for user in users:
                pool = catalogue if task == "sequential" else [histories[user][-1], *negatives[user]]
                ranked = sorted(pool, key=lambda item: (-score(user, item), item))[:top_k]
                ranks.append(ranked.index(histories[user][-1]) if histories[user][-1] in ranked else None)
            metrics = {f"hr@{k}": sum(r is not None and r < k for r in ranks) / len(users) for k in (1, 5, 10)}
            metrics |= {f"ndcg@{k}": sum(1 / math.log2(r + 2) for r in ranks if r is not None and r < k) / len(users)
                        for k in (5, 10)}
            results[name][task] = metrics | {"num_users": len(users)}
    return results


def test_a_row_runs_and_its_baselines_equal_a_recount_from_the_files(tmp_path, monkeypatch, synthetic_prepared):
    from conftest import TOKENIZER_DIR

    folder = synthetic_prepared
    monkeypatch.setattr(run, "ROOT", tmp_path)  # checkpoints under tmp_path/runs/experiments
    config = {**run.DEFAULTS, "name": "tiny-row", "max_steps": 2, "batch_size": 4, "eval_users": 5, "num_beams": 10,
              "tasks": ["sequential", "topn"]}
    record = run.run_seed(config, 0, folder, str(TOKENIZER_DIR))
    assert record["train_steps"] == 2 and record["time_budget_stopped_at_step"] is None
    assert record["prepared"] == "prepared" and record["model"] == "PeaPOD"
    assert {name: metrics["num_users"] for name, metrics in record["results"].items()} == {
        "sequential": 5, "topn_beam": 5, "topn_likelihood": 5}
    # The baselines of a model run and of --baselines_only, each against an independent recount from the files.
    by_hand = baseline_metrics_by_hand(folder, users=[1, 2, 3, 4, 5])
    alone = run.run_baselines(config, folder, str(TOKENIZER_DIR))
    for baselines in (record["baselines"], alone["baselines"]):
        assert set(baselines) == {"popularity", "pmf"}
        for name, tasks in by_hand.items():
            for task, metrics in tasks.items():
                reported = {key: baselines[name][task][key] for key in metrics}
                assert reported == pytest.approx(metrics, abs=1e-12), (name, task)
    assert any(value > 0 for tasks in by_hand.values() for metrics in tasks.values()
               for key, value in metrics.items() if key != "num_users")  # not a comparison of zeros


# The grid runner: real worker processes running a stand-in run.py (trivial jobs) ------------------------------


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """ROOT with an experiments/run.py that sleeps, exits or succeeds as its config's row name says, and records
    the command line it got; preparing data is recorded instead of done."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "run.py").write_text(
        "import sys, time, pathlib\n"
        "config, seed = sys.argv[1], sys.argv[sys.argv.index('--seeds') + 1]\n"
        "name = pathlib.Path(config).stem\n"
        "pathlib.Path(sys.argv[0]).with_name(f'{name}-{seed}.started').write_text(' '.join(sys.argv[1:]))\n"
        "print('job', name, seed)\n"
        "if name.startswith('slow'): time.sleep(60)\n"
        "sys.exit(3 if name.startswith('bad') else 0)\n"
    )
    prepared = []
    monkeypatch.setattr(grid, "ROOT", tmp_path)
    monkeypatch.setattr(grid, "prepared_folder", lambda config, shared, tokenizer: prepared.append(config["name"]))
    return tmp_path, prepared


def test_grid_runs_every_job_and_exits_0_when_all_succeed(fake_root, tmp_path, capsys):
    root, prepared = fake_root
    good = write_config(tmp_path, "good", "seeds: [0, 1]\n")
    other = write_config(tmp_path, "other", "seeds: [1]\n")
    logs = tmp_path / "logs"
    assert grid.main([good, other, "--jobs", "2", "--log_dir", str(logs), "--baselines"]) == 0
    assert sorted(p.name for p in (root / "experiments").glob("*.started")) == [
        "good-0.started", "good-1.started", "other-1.started"]
    assert (root / "experiments" / "good-1.started").read_text() == f"{good} --seeds 1 --baselines"
    assert (logs / "good-seed0.log").read_text() == "job good 0\n"  # each job's output in its own log
    assert sorted(prepared) == ["good", "other"]  # each data configuration prepared once, before the jobs
    assert "done: 3 ok, 0 failed, 0 killed at the hard deadline, 0 not started" in capsys.readouterr().out


def test_grid_reports_a_failed_job_and_exits_1(fake_root, tmp_path, capsys):
    good = write_config(tmp_path, "good", "seeds: [0]\n")
    bad = write_config(tmp_path, "bad", "seeds: [0]\n")
    assert grid.main([good, bad, "--log_dir", str(tmp_path / "logs")]) == 1
    printed = capsys.readouterr().out
    assert "bad seed 0: failed (exit 3, see logs/bad-seed0.log)" in printed
    assert "good seed 0: ok" in printed and "done: 1 ok, 1 failed, 0 killed" in printed


def test_grid_deadlines_kill_a_running_job_and_start_no_new_one(fake_root, tmp_path, capsys):
    import time

    root, _ = fake_root
    slow = write_config(tmp_path, "slow", "seeds: [0, 1]\n")
    started = time.monotonic()
    # One worker: seed 0 starts at once and sleeps 60 s; it is killed at the 3 s hard deadline; seed 1 would start
    # after the 1 s soft deadline, so it never starts.
    code = grid.main([slow, "--jobs", "1", "--deadline_s", "1", "--hard_deadline_s", "3",
                      "--log_dir", str(tmp_path / "logs")])
    assert code == 1 and time.monotonic() - started < 50  # killed long before its 60 s sleep ended
    printed = capsys.readouterr().out
    assert "slow seed 0: killed (hard deadline)" in printed and "slow seed 1: not started (deadline)" in printed
    assert "done: 0 ok, 0 failed, 1 killed at the hard deadline, 1 not started" in printed
    assert not (root / "experiments" / "slow-1.started").exists()


def test_grid_refuses_bad_worker_counts_with_a_usage_error(fake_root, tmp_path, capsys):
    config = write_config(tmp_path, "good", "seeds: [0]\n")
    for flag in ("--jobs", "--threads"):
        with pytest.raises(SystemExit) as stopped:
            grid.main([config, flag, "0", "--log_dir", str(tmp_path / "logs")])
        assert stopped.value.code == 2
        assert "--jobs and --threads must be at least 1" in capsys.readouterr().err
    assert not list((fake_root[0] / "experiments").glob("*.started"))  # nothing ran


def test_fold_in_paired_only_checks_any_model_on_data_without_held_out_users(synthetic_prepared, tokenizer, tmp_path):
    """experiments/fold_in.py --paired_only: the paired check alone (in-table users by their row, folded in, row 0),
    with popularity/PMF on the same users and per-user paired differences; without it the data must hold held-out
    users."""
    import fold_in

    from datasets_scripts import load_prepared
    from modeling_peapod import PeaPODForConditionalGeneration
    from training.factory import install_item_factors

    prepared = load_prepared(synthetic_prepared)
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=prepared.num_users, num_items=prepared.num_items,
        user_embedding_dim=prepared.user_embeddings.shape[1], num_neighbors=prepared.user_neighbors.shape[1])
    model.set_user_table(prepared.user_embeddings, prepared.user_neighbors)
    install_item_factors(model, prepared)
    model.save_pretrained(tmp_path / "model")
    common = ["--prepared_dir", str(synthetic_prepared), "--checkpoint", str(tmp_path / "model"),
              "--tokenizer", tokenizer.name_or_path, "--eval_users", "6", "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="holds no held-out users"):
        fold_in.main(common)

    fold_in.main([*common, "--paired_only"])
    report = json.loads((tmp_path / "out" / "fold-in.json").read_text())
    assert set(report["groups"]) == {"popularity_in_table", "pmf_in_table"}
    paired = report["paired_in_table"]
    assert paired["num_users"] == report["groups"]["pmf_in_table"]["num_users"] == 6
    for name in ("unknown_user_row_0", "fold_in_expected", "fold_in_sampled", "fold_in_expected_table_neighbours",
                 "fold_in_expected_without_own_row"):
        hits, reference = paired[name]["hits"], paired["table_row"]["hits"]
        difference = paired[name]["hr@10_paired_difference"]
        assert difference["mean"] == pytest.approx(np.mean(hits) - np.mean(reference))
        assert difference["ci"][0] <= difference["mean"] <= difference["ci"][1]
    table = (tmp_path / "out" / "fold-in.md").read_text()
    assert "held-out" not in table and "| folded in from their training items (expected) |" in table
    assert "| vectors folded in from their training items (expected) |" in table
    assert report["trained_steps"] is None  # saved, never trained: no train_metrics.json

    (tmp_path / "out" / "fold-in.md").unlink()
    fold_in.main(["--output", str(tmp_path / "out"), "--table"])  # rewritten from the JSON alone
    assert (tmp_path / "out" / "fold-in.md").read_text() == table


def test_fold_in_held_out_comparison_states_the_targets_ratio_and_paired_gains():
    """The held-out users folded in against the in-table users (a ratio of independent groups, with a bootstrap
    interval) and, on the same held-out users, against row 0 and popularity (paired differences)."""
    import fold_in

    rng = np.random.default_rng(0)
    folded, row_0, popularity = (rng.random(72) < p for p in (0.6, 0.1, 0.05))
    in_table = rng.random(648) < 0.5
    groups = {"fold_in_expected": {"hits": folded.astype(int).tolist()}, "in_table": {"hits": in_table.astype(int).tolist()},
              "unknown_user_row_0": {"hits": row_0.astype(int).tolist()},
              "popularity_held_out": {"hits": popularity.astype(int).tolist()}}
    comparison = fold_in.held_out_comparison(groups)
    ratio, (low, high) = comparison["hr@10_ratio_to_in_table"], comparison["hr@10_ratio_to_in_table_ci"]
    assert ratio == pytest.approx(folded.mean() / in_table.mean())
    assert low < ratio < high and high - low > 0.1  # 72 users: a wide interval, not a point
    assert comparison["minus_unknown_user_row_0"]["mean"] == pytest.approx(folded.mean() - row_0.mean())
    assert comparison["minus_popularity"]["mean"] == pytest.approx(folded.mean() - popularity.mean())
    low, high = comparison["minus_unknown_user_row_0"]["ci"]
    assert 0 < low < high  # 0.6 against 0.1 on 72 users: clearly above row 0


def test_refit_user_vectors_solves_the_fold_in_objective(synthetic_prepared, tmp_path):
    """experiments/refit_user_vectors.py re-solves every table user by fold-in's expected objective: its vectors are
    `fold_in_users(negatives="expected")`'s for the same training items, and its report compares both tables."""
    import refit_user_vectors
    import torch

    from datasets_scripts import load_prepared
    from datasets_scripts.splits import leave_one_out
    from modeling_peapod import PeaPODForConditionalGeneration
    from training.factory import install_item_factors

    prepared = load_prepared(synthetic_prepared, load_dataset=False)
    train = leave_one_out(prepared.histories).train
    refitted = refit_user_vectors.refit_users(prepared.item_embeddings, train, prepared.num_users, block_size=7)
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=prepared.num_users, num_items=prepared.num_items,
        user_embedding_dim=prepared.user_embeddings.shape[1], num_neighbors=prepared.user_neighbors.shape[1])
    model.set_user_table(prepared.user_embeddings, prepared.user_neighbors)
    install_item_factors(model, prepared)
    users = sorted(train)
    folded, _ = model.fold_in_users([train[user] for user in users])
    torch.testing.assert_close(refitted[users], folded.float(), atol=1e-5, rtol=1e-4)
    assert refitted[0].abs().sum() == 0

    result = refit_user_vectors.compare(synthetic_prepared)
    assert result["num_users"] == prepared.num_users
    for measure in ("neighbour_diagnostic", "pmf_hr@10"):
        difference = result["refitted_minus_prepared"][measure]["mean"]
        assert difference == pytest.approx(result["refitted"][measure]["mean"] - result["prepared"][measure]["mean"])


@pytest.mark.parametrize("arguments, seed, message", [
    ([], "0", "expected a row name"),
    (["peapod-mha", "user", "runs/x", "extra"], "0", "expected a row name"),
    (["peapod-mha", "neighbors", "/nonexistent/run"], "0", "no 900-step row /nonexistent/run"),
    (["peapod-mha"], "one", "SEED must be a non-negative integer, got 'one'"),
])
def test_user_chain_refuses_a_mistake_with_one_line_and_status_2(arguments, seed, message):
    import subprocess

    script = EXPERIMENTS / "user_chain.sh"
    result = subprocess.run(["bash", str(script), *arguments], check=False, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "SEED": seed})
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_neighbor_prompt_probe_mixes_the_rows_each_pattern_selects():
    import torch
    from neighbor_prompt_probe import mixed_rows, pattern_weights

    embeddings = torch.arange(1.0, 7.0).repeat_interleave(2).view(6, 2)  # row r = [r + 1, r + 1]
    embeddings[0] = 0.0
    neighbors = torch.tensor([[0, 0, 0], [2, 3, 4], [1, 3, 5], [4, 1, 2], [3, 5, 1], [4, 3, 2]])
    mates = {1: {3}, 2: {5, 3}, 3: {1}, 4: {5}, 5: {4}}
    uniform = mixed_rows(embeddings, neighbors, pattern_weights(neighbors, "uniform"))
    torch.testing.assert_close(uniform[1], embeddings[[2, 3, 4]].mean(0))
    assert uniform[0].abs().sum() == 0  # the unknown user stays zero
    first = mixed_rows(embeddings, neighbors, pattern_weights(neighbors, "most_similar"))
    torch.testing.assert_close(first[1:], embeddings[neighbors[1:, 0]])
    truth = pattern_weights(neighbors, "clique_mates", mates)
    assert truth[2].tolist() == [0.0, 0.5, 0.5] and truth[1].tolist() == [0.0, 1.0, 0.0]
    outside = pattern_weights(neighbors, "random_non_mate", mates, seed=3)
    for user in range(1, 6):
        (chosen,) = outside[user].nonzero().flatten().tolist()
        assert neighbors[user, chosen].item() not in mates[user]
    assert pattern_weights(neighbors, "top_clique_size", clique_size=3)[1].tolist() == [0.5, 0.5, 0.0]
    assert torch.allclose(pattern_weights(neighbors, "random_one", seed=0)[1:].sum(1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown pattern"):
        pattern_weights(neighbors, "psychic")


def test_neighbor_prompt_probe_refuses_a_missing_folder_with_status_2(tmp_path):
    import subprocess

    result = subprocess.run([sys.executable, str(EXPERIMENTS / "neighbor_prompt_probe.py"), "--prepared_dir",
                             str(tmp_path / "absent")], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "absent: no such folder" in result.stderr.strip().splitlines()[-1]


def test_history_lookup_probe_writes_each_source_form_as_documented(tokenizer):
    from history_lookup_probe import rewrite_source

    source = "Given the purchase history of user_1: item_241, item_97, item_351, predict the next item."
    assert rewrite_source(source, "prompt") == source
    assert rewrite_source(source, "recent_first") == (
        "Given the purchase history of user_1: item_351, item_97, item_241, predict the next item.")
    assert rewrite_source(source, "spaced") == "history: item 241 , item 97 , item 351 ; next ?"
    assert rewrite_source(source, "last_item") == "item_351"
    assert rewrite_source(source, "last_id") == "351"
    # What the forms are for: in the prompt the last id's pieces are cut otherwise ("35", "1,") than the
    # target's ("▁3", "51"); the spaced and last_id forms write the id in the target's own pieces.
    target = tokenizer.tokenize("351")

    def holds_target(text: str) -> bool:
        pieces = tokenizer.tokenize(text)
        return any(pieces[i:i + len(target)] == target for i in range(len(pieces)))

    assert not holds_target(source)
    assert holds_target(rewrite_source(source, "spaced")) and holds_target(rewrite_source(source, "last_id"))


def test_history_lookup_probe_trains_and_records_every_form(synthetic_prepared, tmp_path):
    from conftest import TOKENIZER_DIR
    from history_lookup_probe import SOURCE_FORMS, main

    output = tmp_path / "probe"
    assert main(["--prepared_dir", str(synthetic_prepared), "--tokenizer", str(TOKENIZER_DIR), "--max_steps", "2",
                 "--eval_every", "1", "--output", str(output)]) == 0
    recorded = json.loads((output / "probe.json").read_text())
    assert [result["form"] for result in recorded["results"]] == list(SOURCE_FORMS)
    for result in recorded["results"]:
        assert [point["step"] for point in result["points"]] == [1, 2]
        assert all(0.0 <= point["test_exact"] <= 1.0 and point["test_loss"] > 0 for point in result["points"])
    assert (output / "probe.md").read_text().count("\n| `") == len(SOURCE_FORMS)


def test_lookup_probe_writes_each_explanation_form_as_documented():
    from history_lookup_probe import EXPLANATION_FORMS, rewrite_explanation_source

    source = "Describe item_12 from the point of view of user_7."
    written = {form: rewrite_explanation_source(source, 12, 7, form) for form in EXPLANATION_FORMS}
    assert written == {"prompt": source, "no_user": "Describe item_12 from the point of view of a user.",
                       "ids_only": "item_12 user_7", "item_alone": "item_12"}


def test_lookup_probe_untied_embeddings_gives_the_output_layer_its_own_weights(tokenizer):
    """transformers 5.x ties T5's output layer whatever tie_word_embeddings says; the probe's flag must untie it."""
    import torch
    from history_lookup_probe import probe_model

    torch.manual_seed(0)
    tied, untied = probe_model(tokenizer, "tiny"), probe_model(tokenizer, "tiny", untied_embeddings=True)
    assert tied.lm_head.weight.data_ptr() == tied.shared.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.shared.weight.data_ptr()
    assert not untied.config.scale_decoder_outputs and tied.config.scale_decoder_outputs
    # a step on the output layer alone moves it and leaves the input embeddings where they were
    before = untied.shared.weight.detach().clone()
    ids = torch.tensor([[5, 6, 1]])
    untied(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        untied.lm_head.weight -= untied.lm_head.weight.grad
    assert torch.equal(untied.shared.weight, before) and not torch.equal(untied.lm_head.weight, before)


def test_lookup_probe_scores_explanations_by_the_item_features_they_name(synthetic_prepared, tmp_path):
    from conftest import TOKENIZER_DIR
    from history_lookup_probe import EXPLANATION_FORMS, main

    output = tmp_path / "probe"
    assert main(["--task", "explanation", "--prepared_dir", str(synthetic_prepared), "--tokenizer", str(TOKENIZER_DIR),
                 "--max_steps", "2", "--eval_every", "1", "--untied_embeddings", "--output", str(output)]) == 0
    recorded = json.loads((output / "probe.json").read_text())
    assert recorded["settings"]["task"] == "explanation" and recorded["settings"]["untied_embeddings"] is True
    assert [result["form"] for result in recorded["results"]] == list(EXPLANATION_FORMS)
    for result in recorded["results"]:
        assert [point["step"] for point in result["points"]] == [1, 2]
        assert all(0.0 <= point["test_share"] <= 1.0 and 0.0 <= point["train_share"] <= 1.0 and point["test_loss"] > 0
                   for point in result["points"])
    assert "| test share @ 1 |" in (output / "probe.md").read_text()


def test_lookup_probe_feature_share_counts_a_named_feature_of_the_item(tokenizer):
    from history_lookup_probe import feature_share

    class Writes:  # stands in for a model: "generates" a fixed sentence per sample
        def __init__(self, sentences):
            self.sentences = sentences

        def eval(self):
            return self

        def train(self):
            return self

        def generate(self, input_ids, attention_mask, max_new_tokens):
            return tokenizer(self.sentences, padding=True, return_tensors="pt").input_ids

    samples = [([5, 1], [5, 1]), ([6, 1], [6, 1])]
    features = {3: {"neck", "tone"}, 4: {"lens"}}
    assert feature_share(Writes(["The neck of this guitar is superb.", "This camera has a sharp lens."]), tokenizer,
                         samples, [3, 4], features) == 1.0
    # a feature of the right category but not of this item, and a feature word inside another word, do not count
    assert feature_share(Writes(["The strings of this guitar are cheap.", "The lenses are sharp."]), tokenizer,
                         samples, [3, 4], features) == 0.0


def test_lookup_probe_refuses_a_form_of_the_other_task_with_status_2(synthetic_prepared):
    import subprocess

    result = subprocess.run([sys.executable, str(EXPERIMENTS / "history_lookup_probe.py"), "--task", "explanation",
                             "--forms", "last_id", "--prepared_dir", str(synthetic_prepared)],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--forms last_id: not a form of --task explanation" in result.stderr.strip().splitlines()[-1]


def test_history_lookup_probe_refuses_a_missing_folder_with_status_2(tmp_path):
    import subprocess

    result = subprocess.run([sys.executable, str(EXPERIMENTS / "history_lookup_probe.py"), "--prepared_dir",
                             str(tmp_path / "absent")], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "absent: no prepared folder" in result.stderr.strip().splitlines()[-1]
