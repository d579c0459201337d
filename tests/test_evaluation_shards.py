"""Resumable and sharded evaluation (training/evaluation/runner.py `ChunkStore`): 2 shards == 1 run, a rerun computes
nothing, chunks of other settings are refused, and the CLI's --shard / --chunk_dir."""

import json

import pytest
from test_evaluation import FAST, prepared, tiny_model, tokenizer  # noqa: F401 (fixtures)

from training.evaluation import evaluate_checkpoint

TASKS = ("sequential", "topn", "explanation")


def _metrics(report):
    return {key: report[key] for key in ("results", "baselines", "users")}


def test_two_shards_give_the_numbers_of_one_run_and_a_rerun_computes_nothing(prepared, tokenizer, tmp_path):  # noqa: F811
    model = tiny_model(prepared)
    whole = evaluate_checkpoint(model, tokenizer, prepared, tasks=TASKS, baselines=["popularity"], **FAST,
                                return_rankings=True)
    chunks = tmp_path / "chunks"
    common = dict(tasks=TASKS, baselines=["popularity"], chunk_dir=chunks, chunk_size=2, return_rankings=True, **FAST)
    first = evaluate_checkpoint(model, tokenizer, prepared, shard=(0, 2), **common)
    assert first["chunks"]["incomplete_tasks"] == list(TASKS) and first["results"] == {} and first["baselines"] == {}
    assert sorted(path.name for path in chunks.glob("sequential-*.json")) == [  # 12 users, chunks 0, 2, 4 of 6
        "sequential-00000.json", "sequential-00002.json", "sequential-00004.json"]
    second = evaluate_checkpoint(model, tokenizer, prepared, shard=(1, 2), **common)  # finds every chunk
    assert second["chunks"]["incomplete_tasks"] == []
    assert _metrics(second) == _metrics(whole) and second["rankings"] == whole["rankings"]
    assert second["timing"]["sequential"]["samples_computed"] < whole["timing"]["sequential"]["samples_computed"]
    rerun = evaluate_checkpoint(model, tokenizer, prepared, **common)  # resume: everything loaded
    assert _metrics(rerun) == _metrics(whole)
    assert all(rerun["timing"][task]["samples_computed"] == 0 for task in TASKS)


def test_an_interrupted_run_resumes_from_its_chunks(prepared, tokenizer, tmp_path):  # noqa: F811
    model = tiny_model(prepared)
    whole = evaluate_checkpoint(model, tokenizer, prepared, tasks=["topn"], **FAST)
    common = dict(tasks=["topn"], chunk_dir=tmp_path, chunk_size=4, **FAST)
    evaluate_checkpoint(model, tokenizer, prepared, **common)
    (tmp_path / "topn-00001.json").unlink()  # as if killed before its second chunk
    resumed = evaluate_checkpoint(model, tokenizer, prepared, **common)
    assert resumed["timing"]["topn"]["samples_computed"] == 4 and resumed["results"] == whole["results"]


def test_chunks_of_other_settings_or_weights_are_refused(prepared, tokenizer, tmp_path):  # noqa: F811
    model = tiny_model(prepared)
    evaluate_checkpoint(model, tokenizer, prepared, tasks=["sequential"], chunk_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="holds results of another evaluation"):
        evaluate_checkpoint(model, tokenizer, prepared, tasks=["sequential"], chunk_dir=tmp_path,
                            **{**FAST, "num_beams": 6})
    with pytest.raises(ValueError, match="holds results of another evaluation"):
        evaluate_checkpoint(model, tokenizer, prepared, tasks=["sequential"], chunk_dir=tmp_path,
                            topn_rankings=["likelihood"], **FAST)
    other = tiny_model(prepared)
    other.lm_head.weight.data.mul_(2)
    with pytest.raises(ValueError, match="holds results of another evaluation"):
        evaluate_checkpoint(other, tokenizer, prepared, tasks=["sequential"], chunk_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="needs chunk_dir"):
        evaluate_checkpoint(model, tokenizer, prepared, tasks=["sequential"], shard=(0, 2), **FAST)


def test_cli_shards_then_merges(prepared, tokenizer, tmp_path, monkeypatch, capsys):  # noqa: F811
    import training.evaluation.api as prepared_module  # the evaluation API's own name for load_prepared
    from training.evaluation.cli import (
        evaluate as main,  # the Python API: returns the report, raises on mistakes
    )

    model = tiny_model(prepared)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    monkeypatch.setattr(prepared_module, "load_prepared", lambda path: prepared)
    common = ["--checkpoint", str(checkpoint), "--prepared_dir", str(tmp_path), "--tasks", "sequential", "--num_beams",
              "4", "--top_k", "2", "--chunk_dir", str(tmp_path / "chunks"), "--chunk_size", "5"]
    main([*common, "--shard", "1/2", "--output_dir", str(tmp_path / "eval")])
    assert "shard 1/2 done" in capsys.readouterr().out and not (tmp_path / "eval").exists()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    merged = main([*common, "--shard", "auto", "--output_dir", str(tmp_path / "eval")])
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["results"] == merged["results"]
    single = main(["--checkpoint", str(checkpoint), "--prepared_dir", str(tmp_path), "--tasks", "sequential",
                   "--num_beams", "4", "--top_k", "2"])
    assert merged["results"] == single["results"]
    for bad in (["--shard", "2/2"], ["--shard", "x"]):
        with pytest.raises(ValueError, match="--shard must be i/N"):
            main([*common, *bad])
    with pytest.raises(ValueError, match="needs --chunk_dir"):
        main(["--checkpoint", str(checkpoint), "--prepared_dir", str(tmp_path), "--shard", "0/2"])


def test_the_shard_finishing_last_reports_even_when_the_shards_overlap(prepared, tokenizer, tmp_path, monkeypatch):  # noqa: F811
    """Shard 1 runs entirely while shard 0 is between its tasks (after shard 0 found sequential incomplete):
    shard 0 finishes last, so it must look again at the end and report the numbers of one run."""
    from training.evaluation import runner as evaluation

    model = tiny_model(prepared)
    whole = evaluate_checkpoint(model, tokenizer, prepared, tasks=["sequential", "topn"], **FAST)
    common = dict(tasks=["sequential", "topn"], chunk_dir=tmp_path, chunk_size=4, **FAST)
    rank_rows = evaluation._rank_rows
    other_shard = {}

    def rank_rows_then_let_shard_1_run(*args, **kwargs):
        if args[4] == "topn" and not other_shard:  # shard 0 reaches top-n: shard 1 runs all of its part now
            other_shard["started"] = True
            other_shard["report"] = evaluate_checkpoint(model, tokenizer, prepared, shard=(1, 2), **common)
        return rank_rows(*args, **kwargs)

    monkeypatch.setattr(evaluation, "_rank_rows", rank_rows_then_let_shard_1_run)
    last = evaluate_checkpoint(model, tokenizer, prepared, shard=(0, 2), **common)
    assert other_shard["report"]["chunks"]["incomplete_tasks"] == ["topn"]
    assert last["chunks"]["incomplete_tasks"] == [] and last["results"] == whole["results"]
