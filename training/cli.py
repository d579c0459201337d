"""`peapod-train`: train a PeaPOD model on a prepared folder with `PeaPODTrainer`.

    peapod-train --prepared_dir prepared/beauty --output_dir runs/beauty --base_model t5-small ...
    peapod-train experiments/configs/paper.yaml --prepared_dir prepared/beauty     # a config file, then overrides

Arguments come from three dataclasses parsed by `HfArgumentParser`: `ModelArguments` (base T5, prompt variant and
sizes), `DataArguments` (prepared folder or the synthetic default, sample limits) and transformers'
`Seq2SeqTrainingArguments` (optimiser, batch size, schedule, saving, `--push_to_hub`). A JSON or YAML file given as
the first argument supplies defaults that later command-line flags override; unknown keys are an error.

`main()` is the console script (exit status 0, or 2 with one `peapod-train: error: ...` line on a user's mistake);
`train(argv)` is the same run as a Python function returning the metrics dict. Every argument is checked
(`check_arguments`) before any data or model is loaded.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from transformers import Seq2SeqTrainingArguments, set_seed

from configuration_peapod import (
    DEFAULT_TASKS,
    NAMED_SHAPES,
    PROMPT_ENCODERS,
    PeaPODConfig,
    PeaPODInputError,
)
from datasets_scripts import load_prepared, prepare
from datasets_scripts.console import parse_dataclasses, run_console_script
from datasets_scripts.files import atomic_write_json, atomic_write_text
from datasets_scripts.prepared import check_data_fingerprint, check_task_order_matches
from datasets_scripts.tokenizer_loading import (
    check_folder_or_hub_name,
    check_tokenizer_name,
    load_tokenizer,
)
from datasets_scripts.user_embeddings import PMF_LAMBDA_REG, PMF_NEGATIVES_PER_POSITIVE
from modeling_peapod import PeaPODForConditionalGeneration, build_user_neighbors
from training.collator import PeaPODDataCollator
from training.diagnostics import PromptDiagnosticsCallback
from training.evaluation import evaluate_checkpoint
from training.progress import ProgressLineCallback
from training.publishing.hub import push_folder_to_hub
from training.publishing.model_card import TrainingSummary, write_model_card
from training.trainer import PeaPODTrainer, TimeBudgetCallback, check_time_budget

logger = logging.getLogger("peapod.train")

RUN_FILE = "peapod_run.json"  # what a run was asked to do: an output folder holding another run is refused
# The paper's §5.4 value, and what our from-scratch runs use: transformers' default 5e-5 leaves a randomly
# initialised PeaPOD near chance (README, "Learning rate"). Fine-tuning pretrained t5-small: consider 5e-4.
DEFAULT_LEARNING_RATE = 5e-3


@dataclass
class ModelArguments:
    base_model: str = field(
        default="t5-small",
        metadata={"help": "A named random shape for offline work (" + ", ".join(NAMED_SHAPES) + "; prefix 'random:' to "
                  "force it, e.g. random:t5-small), a T5 checkpoint name or path whose weights are kept (t5-small "
                  "online), or a PeaPOD checkpoint to continue from."},
    )
    random_init: bool = field(
        default=False, metadata={"help": "Start from a random model of base_model's shape instead of its weights."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path (default: the prepared folder's, else base_model)."}
    )
    prompt_encoder: str = field(default="mha", metadata={"help": "mha | mlp (0 heads) | none (POD)."})
    prompt_encoder_heads: int = field(default=4, metadata={"help": "H, attention heads of the prompt encoder."})
    user_embedding_norm: str = field(
        default="none", metadata={"help": "none (paper) | l2 | layernorm: normalise u and s_i before the projections."}
    )
    num_neighbors: int | None = field(
        default=None, metadata={"help": "n; default: the prepared neighbour table's width (else it is rebuilt)."}
    )
    collaborative_prompt_length: int = field(default=3, metadata={"help": "L_p."})
    add_user_prompt_to_tokens: bool = field(
        default=False, metadata={"help": "Also add the mean collaborative-prompt vector to every token embedding."}
    )
    use_task_prompts: bool = field(default=True, metadata={"help": "Task-specific soft prompts (POD)."})
    task_prompt_length: int = field(default=3, metadata={"help": "L_t."})
    loss_reduction: str = field(default="sequence", metadata={"help": "sequence (eq. 10) | token."})
    dropout_rate: float = field(default=0.1, metadata={"help": "T5 dropout."})
    prompt_learning_rate_multiplier: float = field(
        default=1.0, metadata={"help": "Learning rate of the prompt encoder, task prompts and whole-word embeddings, "
                               "as a multiple of --learning_rate (1: one rate, the paper)."},
    )
    prompt_diagnostics_every: int = field(
        default=0, metadata={"help": "Every K steps, record the gradient norms reaching the prompt encoder and the "
                             "prompt norms into <output_dir>/prompt_diagnostics.json (0: off)."},
    )


@dataclass
class DataArguments:
    prepared_dir: str | None = field(
        default=None, metadata={"help": "A folder made by peapod-prepare; default: the synthetic demo data."}
    )
    tasks: list[str] = field(
        default_factory=lambda: list(DEFAULT_TASKS),
        metadata={"help": f"Tasks to train on (those present in the data); the task registry has {DEFAULT_TASKS}."},
    )
    max_train_samples_per_task: int | None = field(
        default=None, metadata={"help": "A seeded random subset of each task's training samples (budgets)."}
    )
    max_eval_samples_per_task: int | None = field(
        default=256, metadata={"help": "Validation samples per task for the per-task validation loss."}
    )
    ranking_eval_users: int = field(
        default=0, metadata={"help": "Validation users for ranking metrics at each evaluation (0: losses only)."}
    )
    max_source_length: int = field(
        default=1024, metadata={"help": "Longer sources lose their oldest tokens (top-n prompts are ~500-600)."}
    )
    max_target_length: int = field(default=128, metadata={"help": "A longer target is an error, never cut."})
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch similar input lengths together within a task (less padding)."}
    )
    max_train_seconds: float | None = field(
        default=None, metadata={"help": "Time box: stop training after this many seconds, then save as usual."}
    )
    allow_other_data: bool = field(
        default=False, metadata={"help": "Continue a checkpoint trained on another prepared folder (data fingerprint)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow output_dir to hold a different run (it is overwritten)."}
    )

    def __post_init__(self):  # refused while parsing, before any model or data is loaded
        if self.max_train_seconds is not None:
            check_time_budget(self.max_train_seconds)


@dataclass
class PeaPODTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with PeaPOD's default learning rate (see DEFAULT_LEARNING_RATE)."""

    learning_rate: float = field(
        default=DEFAULT_LEARNING_RATE,
        metadata={"help": f"AdamW learning rate (default {DEFAULT_LEARNING_RATE:g}: the paper's §5.4 value, used by our "
                  "from-scratch runs; 5e-4 is the conservative choice for fine-tuning pretrained t5-small)."},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, PeaPODTrainingArguments)


def _known_keys() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}


def config_file_arguments(path: str) -> list[str]:
    """A JSON/YAML file of arguments as command-line flags (so later flags override it); unknown keys are errors.

    A missing file, a file that is not UTF-8 and a syntax error are PeaPODInputErrors naming the file and line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PeaPODInputError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise PeaPODInputError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PeaPODInputError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(values, dict):
        raise PeaPODInputError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}")
    known = _known_keys()
    unknown = [key for key in values if key not in known]
    if unknown:
        hints = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        details = ", ".join(f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for key, hint in hints.items())
        raise PeaPODInputError(f"{path}: unknown config keys {details}")
    argv: list[str] = []
    for key, value in values.items():
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def parse_arguments(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = config_file_arguments(argv[0]) + argv[1:]
    model_args, data_args, training_args, unknown = parse_dataclasses(
        ARGUMENT_CLASSES, argv, "peapod-train", return_remaining_strings=True
    )
    if unknown:
        raise PeaPODInputError(f"unknown arguments {unknown}; see peapod-train --help")
    return model_args, data_args, training_args


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """Every check that needs no data or model, so a mistake is reported in seconds (PeaPODInputError)."""
    base = model_args.base_model
    if base.startswith("random:") and base.removeprefix("random:") not in NAMED_SHAPES:
        raise PeaPODInputError(
            f"--base_model {base}: unknown shape {base.removeprefix('random:')!r}; known shapes: "
            + ", ".join(NAMED_SHAPES)
        )
    if model_args.prompt_encoder not in PROMPT_ENCODERS:
        raise PeaPODInputError(f"--prompt_encoder {model_args.prompt_encoder!r}: expected one of {PROMPT_ENCODERS}")
    needed = {"prompt_encoder_heads": model_args.prompt_encoder == "mha",
              "collaborative_prompt_length": model_args.prompt_encoder != "none",
              "task_prompt_length": model_args.use_task_prompts}
    for name in (name for name, used in needed.items() if used):
        if getattr(model_args, name) < 1:
            raise PeaPODInputError(f"--{name} must be >= 1, got {getattr(model_args, name)}")
    if model_args.num_neighbors is not None and model_args.num_neighbors < 1:
        raise PeaPODInputError(f"--num_neighbors must be >= 1, got {model_args.num_neighbors}")
    if not 0 <= model_args.dropout_rate < 1:
        raise PeaPODInputError(f"--dropout_rate must be in [0, 1), got {model_args.dropout_rate}")
    unknown_tasks = [task for task in data_args.tasks if task not in DEFAULT_TASKS]
    if unknown_tasks or not data_args.tasks:
        raise PeaPODInputError(f"--tasks {data_args.tasks}: expected a non-empty subset of {list(DEFAULT_TASKS)}")
    if not training_args.learning_rate > 0:
        raise PeaPODInputError(f"--learning_rate must be > 0, got {training_args.learning_rate}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise PeaPODInputError(f"--{name} must be >= 1, got {getattr(training_args, name)}")
    if training_args.max_steps <= 0 and not training_args.num_train_epochs > 0:
        raise PeaPODInputError(f"--num_train_epochs must be > 0 (or give --max_steps), got {training_args.num_train_epochs}")
    for name in ("max_source_length", "max_target_length"):
        if getattr(data_args, name) < 1:
            raise PeaPODInputError(f"--{name} must be >= 1, got {getattr(data_args, name)}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        # Without this, torchrun on a CPU machine (no --use_cpu) runs `launched` independent single-process trainings
        # that all write the same output folder; transformers only logs a warning.
        raise PeaPODInputError(
            f"launched as {launched} processes (WORLD_SIZE) but the trainer sees {training_args.world_size}: "
            "on a machine without GPUs pass --use_cpu True so the processes train together (gloo)"
        )
    output = Path(training_args.output_dir)
    if output.exists() and not output.is_dir():
        raise PeaPODInputError(f"--output_dir {output} exists and is not a folder")
    if any(parent.exists() and not parent.is_dir() for parent in output.parents):
        raise PeaPODInputError(f"--output_dir {output}: a part of the path is a file, not a folder")
    if data_args.prepared_dir is not None and not Path(data_args.prepared_dir).is_dir():
        raise FileNotFoundError(f"--prepared_dir {data_args.prepared_dir} does not exist (make one with peapod-prepare)")
    # Last, the names that may need one short network request (see datasets_scripts.tokenizer_loading).
    if resolve_base_model(model_args)[1] is None:  # weights (or a config, with --random_init) to read
        check_folder_or_hub_name(
            base, "--base_model", ("config.json",),
            f"offline, use a random shape, e.g. --base_model random:{'t5-small' if base == 't5-small' else 'tiny'}",
        )
    # The tokenizer `train` will load: --tokenizer, else the prepared folder's, else (synthetic data) t5-small,
    # else the base model's own.
    if model_args.tokenizer:
        check_tokenizer_name(model_args.tokenizer, "--tokenizer")
    elif data_args.prepared_dir is None:
        check_tokenizer_name("t5-small", "--tokenizer (default t5-small, for the synthetic data)")
    elif (recorded := _prepared_tokenizer(data_args.prepared_dir)) is not None:
        check_tokenizer_name(recorded, f"the tokenizer recorded in {data_args.prepared_dir}/prepare_config.json")
    elif resolve_base_model(model_args)[1] is not None:
        raise PeaPODInputError(f"--base_model {base} is a random shape and {data_args.prepared_dir} records no "
                               "tokenizer: pass --tokenizer")
    else:
        check_tokenizer_name(base, "--tokenizer (default: --base_model)")


def _prepared_tokenizer(prepared_dir: str | None) -> str | None:
    """The tokenizer a prepared folder was tokenised with, read from its prepare_config.json (None if unknown)."""
    if prepared_dir is None:
        return None
    try:
        config = json.loads((Path(prepared_dir) / "prepare_config.json").read_text(encoding="utf-8"))
        return config.get("arguments", {}).get("tokenizer")
    except (OSError, ValueError, AttributeError):
        return None  # load_prepared reports a broken folder with its own message


# Checks made before any training step ------------------------------------------------------------------------


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
            prepare(prepared_dir, synthetic=True, seed=seed, tokenizer=tokenizer_name or "t5-small",
                    embedding="pmf", embedding_dim=64, num_neighbors=10)
    return load_prepared(prepared_dir)


def resolve_base_model(model_args: ModelArguments) -> tuple[str, str | None]:
    """(base model, the named shape to initialise randomly or None). `mini`/`tiny` exist only as shapes; `t5-small`
    is both a Hub checkpoint and a shape, so its random initialisation is asked for as `random:t5-small` (or
    `--random_init`)."""
    base = model_args.base_model
    shape = base.removeprefix("random:")
    if shape in NAMED_SHAPES and (base.startswith("random:") or model_args.random_init or shape != "t5-small"):
        return base, shape
    return base, None


def is_peapod_checkpoint(path: str) -> bool:
    config_file = Path(path, "config.json")
    return config_file.exists() and json.loads(config_file.read_text()).get("model_type") == "peapod"


def build_model(model_args: ModelArguments, prepared) -> PeaPODForConditionalGeneration:
    """A model sized for the prepared data, its user table installed (or checked, for a PeaPOD checkpoint)."""
    embeddings, neighbors = prepared.user_embeddings, prepared.user_neighbors
    num_neighbors = model_args.num_neighbors or neighbors.shape[1]
    if num_neighbors != neighbors.shape[1]:
        neighbors = build_user_neighbors(embeddings, num_neighbors)
    peapod_fields = dict(
        num_users=prepared.num_users, num_items=prepared.num_items, user_embedding_dim=embeddings.shape[1],
        num_neighbors=num_neighbors, prompt_encoder=model_args.prompt_encoder,
        user_embedding_norm=model_args.user_embedding_norm,
        prompt_encoder_heads=model_args.prompt_encoder_heads,
        collaborative_prompt_length=model_args.collaborative_prompt_length,
        add_user_prompt_to_tokens=model_args.add_user_prompt_to_tokens,
        use_task_prompts=model_args.use_task_prompts, task_prompt_length=model_args.task_prompt_length,
        loss_reduction=model_args.loss_reduction, dropout_rate=model_args.dropout_rate,
    )
    base, random_shape = resolve_base_model(model_args)
    if random_shape is not None:
        model = PeaPODForConditionalGeneration.from_shape(random_shape, **peapod_fields)
    elif is_peapod_checkpoint(base):
        model = PeaPODForConditionalGeneration.from_pretrained(base)
        logger.warning("Continuing from the PeaPOD checkpoint %s: its own config fixes the model (prompt encoder, "
                       "sizes, dropout); the model flags of this command are not applied", base)
        if model.has_collaborative_prompt and model.config.num_users != prepared.num_users:
            raise PeaPODInputError(
                f"{base} has a user table of {model.config.num_users} users but the prepared data has "
                f"{prepared.num_users}: a PeaPOD checkpoint can only continue on the data of its user table"
            )
        return model
    elif model_args.random_init:
        from transformers import AutoConfig

        model = PeaPODForConditionalGeneration(PeaPODConfig.from_t5(AutoConfig.from_pretrained(base), **peapod_fields))
    else:
        model = PeaPODForConditionalGeneration.from_t5_pretrained(base, **peapod_fields)
    if model.has_collaborative_prompt:
        model.set_user_table(embeddings, neighbors)
        install_item_factors(model, prepared)
    return model


def install_item_factors(model: PeaPODForConditionalGeneration, prepared) -> None:
    """Keep a PMF table's item factors in the model (saved in model.safetensors), so the checkpoint can fold in
    users outside its table (`fold_in_users`, docs/fold-in.md); BiVAE and user-supplied tables have none."""
    if prepared.item_embeddings is None or not model.has_collaborative_prompt:
        return
    pmf = prepared.config.get("pmf") or {}  # folders prepared before it was recorded used train_pmf's defaults
    model.set_item_factors(
        prepared.item_embeddings, regularization=pmf.get("lambda_reg", PMF_LAMBDA_REG),
        negatives_per_positive=pmf.get("negatives_per_positive", PMF_NEGATIVES_PER_POSITIVE),
    )


def training_splits(prepared, data_args: DataArguments, seed: int):
    """The concatenated training samples of the chosen tasks and a {task: validation subset} dict."""
    from datasets import concatenate_datasets

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


def train(argv: list[str] | None = None) -> dict:
    """`peapod-train` as a Python function: parse `argv`, check, train, save; returns the metrics dict.

    Raises PeaPODInputError (or a FileNotFoundError/FileExistsError) on a user's mistake, before any heavy work.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model_args, data_args, training_args = parse_arguments(argv)
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
    check_task_order_matches(model.config, prepared)
    train_dataset, eval_sets, tasks = training_splits(prepared, data_args, training_args.seed)

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
    run_file = Path(training_args.output_dir) / RUN_FILE
    atomic_write_text(run_file, json.dumps(run_description, indent=2, sort_keys=True))
    summary = TrainingSummary(
        dataset_name=Path(str(prepared.path)).name,
        dataset_description=prepared.config.get("source_notes", {}).get("source", str(prepared.path)),
        id_space="leakage-free re-indexed item ids" if prepared.item_reindex else "P5/POD integer ids",
        base_model=None if resolve_base_model(model_args)[1] or model_args.random_init else model_args.base_model,
        base_shape=model_args.base_model.removeprefix("random:"),
        optimisation=f"AdamW lr {training_args.learning_rate}, batch {training_args.per_device_train_batch_size} "
                     f"per device, {training_args.num_train_epochs} epochs (max_steps {training_args.max_steps})"
                     + (f", time-boxed to {data_args.max_train_seconds:g} s" if data_args.max_train_seconds else ""),
        seed=training_args.seed, hardware=hardware_description(), repo_id=training_args.hub_model_id or
        "path/to/this-folder",
    )
    trainer = PeaPODTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_sets or None,
        data_collator=PeaPODDataCollator(tokenizer, data_args.max_source_length, data_args.max_target_length),
        processing_class=tokenizer, ranking_metrics_fn=ranking_metrics_fn, model_card_summary=summary,
        group_by_length=data_args.group_by_length,
        prompt_learning_rate_multiplier=model_args.prompt_learning_rate_multiplier,
    )
    if training_args.disable_tqdm or not sys.stderr.isatty():
        # A log file, not a terminal: plain progress lines with an ETA instead of tqdm's carriage returns.
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

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
    return metrics


def keep_final_folder_pickle_free(output_dir: str, training_args) -> None:
    """Replace `Trainer`'s `training_args.bin` (a pickle, which the Hub's scanner flags and which runs code when
    loaded) by `training_args.json` in the final, Hub-ready folder. Checkpoint folders keep theirs for resuming."""
    atomic_write_text(Path(output_dir) / "training_args.json", training_args.to_json_string())
    (Path(output_dir) / "training_args.bin").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """The `peapod-train` console script: 0 on success, 2 with one line on a user's mistake."""
    return run_console_script("peapod-train", train, argv)


if __name__ == "__main__":
    sys.exit(main())
