"""The experiment scripts' own logic: the grid's job order and the collector's sections and baselines."""

import json
import sys
from pathlib import Path

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


def test_a_row_runs_and_its_baselines_alone_match_the_in_run_ones(tmp_path, monkeypatch, tokenizer):
    from conftest import TOKENIZER_DIR

    from datasets_scripts import prepare

    folder = tmp_path / "prepared"
    prepare(folder, synthetic=True, tokenizer=str(TOKENIZER_DIR), max_users=30, embedding_dim=8, num_neighbors=3,
            pmf_max_iter=5)
    monkeypatch.setattr(run, "ROOT", tmp_path)  # checkpoints under tmp_path/runs/experiments
    config = {**run.DEFAULTS, "name": "tiny-row", "max_steps": 2, "batch_size": 4, "eval_users": 5, "num_beams": 10,
              "tasks": ["sequential", "topn"]}
    record = run.run_seed(config, 0, folder, str(TOKENIZER_DIR))
    assert record["train_steps"] == 2 and record["time_budget_stopped_at_step"] is None
    assert record["prepared"] == "prepared" and record["model"] == "PeaPOD"
    assert {name: metrics["num_users"] for name, metrics in record["results"].items()} == {
        "sequential": 5, "topn_beam": 5, "topn_likelihood": 5}
    alone = run.run_baselines(config, folder, str(TOKENIZER_DIR))
    assert alone["baselines"] == record["baselines"] and set(alone["baselines"]) == {"popularity", "pmf", "markov"}
