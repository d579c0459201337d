"""The typed Python API (training.api) is the console scripts' own code path: on the same seed it gives the same
prepared folder, the same trained weights and losses, and the same evaluation numbers as the CLIs' `--flag value`
route. This is also the behaviour-unchanged check of the restructuring: the CLI route is the one the tests before
the move exercised (benchmarks/same_numbers.py compares it with the pre-move commit by hand)."""

import json
import shutil

import pytest
import torch
from conftest import TOKENIZER_DIR
from safetensors.torch import load_file

from configuration_peapod import PeaPODConfig
from datasets_scripts import load_prepared
from datasets_scripts.cli import prepare_from_arguments
from training import api
from training.arguments import ModelArguments
from training.cli import train as train_cli
from training.evaluation.cli import evaluate as evaluate_cli

TOK = str(TOKENIZER_DIR)
TRAIN_FLAGS = {"max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 5e-3, "warmup_steps": 1, "logging_steps": 1,
                   "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "seed": 3, "disable_tqdm": True,
                   "dataloader_num_workers": 0}


def _flags(values: dict) -> list[str]:
    return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def test_model_arguments_take_their_defaults_from_the_config():
    config = PeaPODConfig()
    for name, value in ModelArguments().config_fields().items():
        assert getattr(config, name) == value, name


def test_prepare_api_builds_the_folder_the_cli_builds(tmp_path):
    common = {"synthetic": True, "tokenizer": TOK, "max_users": 30, "embedding_dim": 8, "num_neighbors": 3, "pmf_max_iter": 3}
    folder = api.prepare(api.PrepareArguments(output_dir=str(tmp_path / "api"), **common))
    prepare_from_arguments(["--output_dir", str(tmp_path / "cli"), "--synthetic", "True", *_flags(
        {k: v for k, v in common.items() if k != "synthetic"})])
    assert folder.path == tmp_path / "api" and folder.num_users == 30
    assert load_prepared(tmp_path / "api").fingerprint == load_prepared(tmp_path / "cli").fingerprint


def test_train_and_evaluate_api_give_the_cli_numbers_on_the_same_seed(synthetic_prepared, tmp_path):
    prepared = tmp_path / "prepared"
    shutil.copytree(synthetic_prepared, prepared)
    model = {"base_model": "random:tiny", "tokenizer": TOK}
    data = {"prepared_dir": str(prepared), "max_eval_samples_per_task": 8}
    cli_metrics = train_cli(_flags({**model, **data, **TRAIN_FLAGS, "output_dir": tmp_path / "cli"}))
    run = api.train(api.ModelArguments(**model), api.DataArguments(**data),
                    api.PeaPODTrainingArguments(output_dir=str(tmp_path / "api"), **TRAIN_FLAGS))
    assert isinstance(run, api.TrainResult) and run.global_step == 4 == cli_metrics["global_step"]
    timing = ("runtime", "per_second")
    assert {k: v for k, v in run.metrics.items() if not any(t in k for t in timing)} == {
        k: v for k, v in cli_metrics.items() if not any(t in k for t in timing)}
    weights = [load_file(folder / "model.safetensors") for folder in (tmp_path / "cli", run.output_dir)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])

    evaluation = {"prepared_dir": str(prepared), "max_users": 6, "num_beams": 4, "top_k": 2, "max_explanation_tokens": 6,
                      "baselines": ["popularity"]}
    report = evaluate_cli(["--checkpoint", str(run.output_dir), *_flags({k: v for k, v in evaluation.items()
                                                                       if k != "baselines"}),
                           "--baselines", "popularity", "--output_dir", str(tmp_path / "eval-cli")])
    result = api.evaluate(api.EvaluateArguments(checkpoint=str(run.output_dir), output_dir=str(tmp_path / "eval-api"),
                                                **evaluation))
    assert result.complete and result.results == report["results"] and result.report["baselines"] == report["baselines"]
    assert result.written == (tmp_path / "eval-api" / "results.json", tmp_path / "eval-api" / "results.md")
    assert json.loads(result.written[0].read_text())["results"] == report["results"]


def test_the_api_refuses_a_choice_outside_the_config_literal(synthetic_prepared, tmp_path):
    with pytest.raises(api.PeaPODInputError, match="--prompt_encoder 'attention'"):
        api.train(api.ModelArguments(base_model="random:tiny", prompt_encoder="attention"),
                  api.DataArguments(prepared_dir=str(synthetic_prepared)),
                  api.PeaPODTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none"))
