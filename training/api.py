"""The typed Python API under the console scripts: `prepare` -> `train` -> `evaluate`.

Each function takes the dataclasses its console script parses (`peapod-prepare`, `peapod-train`,
`peapod-evaluate` are thin parsers over these) and returns a typed result:

    from training.api import (DataArguments, EvaluateArguments, ModelArguments, PeaPODTrainingArguments,
                              PrepareArguments, evaluate, prepare, train)

    data = prepare(PrepareArguments(output_dir="prepared", synthetic=True, tokenizer="t5-small", embedding_dim=16))
    run = train(ModelArguments(base_model="random:tiny"), DataArguments(prepared_dir=str(data.path)),
                PeaPODTrainingArguments(output_dir="runs/tiny", max_steps=20, report_to="none"))
    result = evaluate(EvaluateArguments(prepared_dir=str(data.path), checkpoint=str(run.output_dir), max_users=10))
    result.results["sequential"]["hr@10"]

A user's mistake raises `PeaPODInputError` (or FileNotFoundError/FileExistsError) before any heavy work.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from datasets import concatenate_datasets
from transformers import set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from configuration_peapod import PeaPODInputError
from datasets_scripts import load_prepared
from datasets_scripts import prepare as prepare_folder
from datasets_scripts.files import atomic_write_json, atomic_write_text
from datasets_scripts.prepared import (
    PrepareArguments,
    check_data_fingerprint,
    check_task_order_matches,
)
from datasets_scripts.tokenizer_loading import load_tokenizer
from training.arguments import (
    DataArguments,
    ModelArguments,
    PeaPODTrainingArguments,
    check_arguments,
    resolve_base_model,
)
from training.collator import PeaPODDataCollator
from training.diagnostics import PromptDiagnosticsCallback
from training.evaluation.api import EvaluateArguments, EvaluationResult, evaluate
from training.evaluation.runner import evaluate_checkpoint
from training.factory import build_model
from training.fresh_negatives import FreshTopnNegatives
from training.progress import ProgressLineCallback
from training.publishing.hub import push_folder_to_hub
from training.publishing.model_card import TrainingSummary, write_model_card
from training.trainer import PeaPODTrainer, TimeBudgetCallback

logger = logging.getLogger("peapod.train")

RUN_FILE = "peapod_run.json"  # what a run was asked to do: an output folder holding another run is refused

__all__ = [
    "DataArguments", "EvaluateArguments", "EvaluationResult", "ModelArguments", "PeaPODTrainingArguments",
    "PrepareArguments", "PreparedFolder", "TrainResult", "evaluate", "prepare", "train",
]


# prepare ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedFolder:
    """What `prepare` built: the folder (load it with `datasets_scripts.load_prepared(path)`) and its record."""

    path: Path
    num_users: int
    num_items: int
    config: dict  # prepare_config.json: the arguments, statistics and timing


def prepare(args: PrepareArguments) -> PreparedFolder:
    """Build a prepared folder (what `peapod-prepare` does) from `PrepareArguments`."""
    values = {f.name: getattr(args, f.name) for f in fields(args) if f.name != "output_dir"}
    config = prepare_folder(args.output_dir, **values)
    statistics = config["statistics"]
    return PreparedFolder(Path(args.output_dir), statistics["num_users"], statistics["num_items"], config)


# train ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What `train` saved: the Hub-ready model folder, the number of optimiser steps and the run's metrics (train
    loss, runtime, and the final per-task validation losses when there are validation sets: train_metrics.json)."""

    output_dir: Path
    global_step: int
    metrics: dict[str, float]


def check_output_dir(output_dir: str, run_description: dict, overwrite: bool, resuming: bool) -> None:
    """Refuse an output folder that holds a different run, unless asked to overwrite it."""
    run_file = Path(output_dir) / RUN_FILE
    if not Path(output_dir).exists() or not any(Path(output_dir).iterdir()) or overwrite:
        return
    if not run_file.exists():
        raise PeaPODInputError(
            f"output_dir {output_dir} is not empty and holds no {RUN_FILE}: refusing to write a run into it "
            "(pass --overwrite_output_dir to allow it)"
        )
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise PeaPODInputError(f"{run_file} is not valid JSON: pass --overwrite_output_dir to replace the run") from None
    if previous != run_description and not resuming:
        changed = sorted(key for key in set(previous) | set(run_description) if previous.get(key) != run_description.get(key))
        raise PeaPODInputError(
            f"output_dir {output_dir} holds a different run (differs in {changed}); pass --overwrite_output_dir "
            "to replace it or --resume_from_checkpoint to continue it"
        )


def load_prepared_data(data_args: DataArguments, output_dir: str, seed: int, tokenizer_name: str | None):
    prepared_dir = data_args.prepared_dir
    if prepared_dir is None:
        prepared_dir = os.path.join(output_dir, "prepared-synthetic")
        if not Path(prepared_dir).exists():
            logger.info("No --prepared_dir: preparing the synthetic demo data in %s", prepared_dir)
            prepare_folder(prepared_dir, synthetic=True, seed=seed, tokenizer=tokenizer_name or "t5-small",
                           embedding="pmf", embedding_dim=64, num_neighbors=10)
    return load_prepared(prepared_dir)


def training_splits(prepared, data_args: DataArguments, seed: int):
    """The concatenated training samples of the chosen tasks and a {task: validation subset} dict."""
    available = [task for task in data_args.tasks if f"{task}_train" in prepared.dataset]
    missing = [task for task in data_args.tasks if task not in available]
    if missing:
        logger.warning("The prepared data has no training split for %s; training on %s", missing, available)
    if not available:
        raise PeaPODInputError(f"{prepared.path} has none of the requested tasks {data_args.tasks}")
    train_parts, eval_sets = [], {}
    for task in available:
        train = prepared.dataset[f"{task}_train"]
        if data_args.max_train_samples_per_task and len(train) > data_args.max_train_samples_per_task:
            train = train.shuffle(seed=seed).select(range(data_args.max_train_samples_per_task))
        train_parts.append(train)
        if f"{task}_validation" in prepared.dataset:
            validation = prepared.dataset[f"{task}_validation"]
            limit = data_args.max_eval_samples_per_task
            eval_sets[task] = validation.select(range(min(limit, len(validation)))) if limit else validation
    return concatenate_datasets(train_parts), eval_sets, available


def hardware_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()}), torch {torch.__version__}"


def training_summary(model_args: ModelArguments, data_args: DataArguments, training_args, prepared) -> TrainingSummary:
    """The model card's description of this run (filled in further as training goes)."""
    return TrainingSummary(
        dataset_name=Path(str(prepared.path)).name,
        dataset_description=prepared.config.get("source_notes", {}).get("source", str(prepared.path)),
        id_space="leakage-free re-indexed item ids" if prepared.item_reindex else "P5/POD integer ids",
        base_model=None if resolve_base_model(model_args)[1] or model_args.random_init else model_args.base_model,
        base_shape=model_args.base_model.removeprefix("random:"),
        optimisation=f"AdamW lr {training_args.learning_rate}, batch {training_args.per_device_train_batch_size} "
                     f"per device, {training_args.num_train_epochs} epochs (max_steps {training_args.max_steps})"
                     + (f", time-boxed to {data_args.max_train_seconds:g} s" if data_args.max_train_seconds else "")
                     + (", fresh top-n negatives every epoch" if data_args.topn_negatives == "fresh" else ""),
        seed=training_args.seed, hardware=hardware_description(), repo_id=training_args.hub_model_id or
        "path/to/this-folder",
    )


def keep_final_folder_pickle_free(output_dir: str, training_args) -> None:
    """Replace `Trainer`'s `training_args.bin` (a pickle, which the Hub's scanner flags and which runs code when
    loaded) by `training_args.json` in the final, Hub-ready folder. Checkpoint folders keep theirs for resuming."""
    atomic_write_text(Path(output_dir) / "training_args.json", training_args.to_json_string())
    (Path(output_dir) / "training_args.bin").unlink(missing_ok=True)


def train(model_args: ModelArguments, data_args: DataArguments, training_args: PeaPODTrainingArguments) -> TrainResult:
    """Check, train, save (model, tokenizer, model card, train_metrics.json), optionally push; what `peapod-train` runs.

    Raises PeaPODInputError (or a FileNotFoundError/FileExistsError) on a user's mistake, before any heavy work.
    """
    check_arguments(model_args, data_args, training_args)
    run_description = {"model": asdict(model_args), "data": asdict(data_args) | {"overwrite_output_dir": None},
                       "seed": training_args.seed}
    check_output_dir(training_args.output_dir, run_description, data_args.overwrite_output_dir,
                     bool(training_args.resume_from_checkpoint))
    set_seed(training_args.seed)

    prepared = load_prepared_data(data_args, training_args.output_dir, training_args.seed, model_args.tokenizer)
    # The tokenizer the prepared folder was tokenised with, unless one is named: token ids must agree.
    prepared_tokenizer = prepared.config.get("arguments", {}).get("tokenizer")
    tokenizer_name = model_args.tokenizer or prepared_tokenizer or model_args.base_model
    tokenizer = load_tokenizer(tokenizer_name, flag="--tokenizer")
    model = build_model(model_args, prepared)

    # Refuse a checkpoint trained on other data; a fresh model records this data's fingerprint.
    check_data_fingerprint(model.config, prepared, data_args.allow_other_data, record=True,
                           checkpoint=training_args.resume_from_checkpoint)
    check_task_order_matches(model.config, prepared, data_args.tasks)
    train_dataset, eval_sets, tasks = training_splits(prepared, data_args, training_args.seed)
    if data_args.topn_negatives == "fresh" and "topn" in tasks:  # validation/test keep the protocol's fixed candidates
        data_seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        train_dataset = FreshTopnNegatives(train_dataset, prepared.histories, prepared.num_items, tokenizer,
                                           seed=data_seed, topn_task_id=model.config.tasks.index("topn"))

    ranking_metrics_fn = None
    if data_args.ranking_eval_users:
        def ranking_metrics_fn(eval_model):
            report = evaluate_checkpoint(
                eval_model, tokenizer, prepared, split="validation", tasks=[t for t in tasks if t != "explanation"],
                max_users=data_args.ranking_eval_users, show_progress=False,
            )
            # Point values only: the bootstrap intervals (`*_ci`, [low, high]) stay in evaluation reports.
            return {f"{name}_{metric}": value for name, metrics in report["results"].items()
                    for metric, value in metrics.items() if isinstance(value, (int, float))}

    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # uploaded once, by us, at the end
    Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(training_args.output_dir) / RUN_FILE, json.dumps(run_description, indent=2, sort_keys=True))
    summary = training_summary(model_args, data_args, training_args, prepared)
    trainer = PeaPODTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_sets or None,
        data_collator=PeaPODDataCollator(tokenizer, data_args.max_source_length, data_args.max_target_length),
        processing_class=tokenizer, ranking_metrics_fn=ranking_metrics_fn, model_card_summary=summary,
        group_by_length=data_args.group_by_length,
        prompt_learning_rate_multiplier=model_args.prompt_learning_rate_multiplier,
    )
    if training_args.disable_tqdm or not sys.stderr.isatty():
        # A log file, not a terminal: plain progress lines with an ETA instead of tqdm's carriage returns.
        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(PrinterCallback)  # the loss lines the bar printed
        trainer.add_callback(ProgressLineCallback())
    if model_args.prompt_diagnostics_every:
        trainer.add_callback(PromptDiagnosticsCallback(model_args.prompt_diagnostics_every))
    time_budget = None
    if data_args.max_train_seconds is not None:
        time_budget = TimeBudgetCallback(data_args.max_train_seconds)
        trainer.add_callback(time_budget)
    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    summary.train_time = f"{time.perf_counter() - started:.0f} s"
    metrics = dict(train_result.metrics)
    metrics["global_step"] = trainer.state.global_step
    if time_budget is not None:
        metrics["time_budget_stopped_at_step"] = time_budget.stopped_at_step
    if eval_sets:
        metrics.update(trainer.evaluate())
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        write_model_card(training_args.output_dir, trainer.model.config, summary)
        atomic_write_json(Path(training_args.output_dir) / "train_metrics.json", metrics, indent=2)
        keep_final_folder_pickle_free(training_args.output_dir, training_args)
        if push_to_hub:
            url = push_folder_to_hub(training_args.output_dir, training_args.hub_model_id or Path(
                training_args.output_dir).name, private=bool(training_args.hub_private_repo),
                token=training_args.hub_token)
            logger.info("Uploaded to %s", url)
    return TrainResult(Path(training_args.output_dir), trainer.state.global_step, metrics)
