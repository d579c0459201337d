"""The arguments of a training run: `ModelArguments`, `DataArguments`, `PeaPODTrainingArguments`.

They are what `training.api.train` takes and what `peapod-train` parses (`HfArgumentParser`; the flags are the
field names). The model fields that are `PeaPODConfig` fields take their defaults from `PeaPODConfig` itself, and
their choices from its `Literal` types, so a default is declared once, in the config. `check_arguments` checks
everything that needs no data or model, so a mistake is reported in seconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import Seq2SeqTrainingArguments

from configuration_peapod import (
    COLLABORATIVE_PROMPT_NORMS,
    DEFAULT_TASKS,
    LOSS_REDUCTIONS,
    NAMED_SHAPES,
    PROMPT_ATTENTION_NORMS,
    PROMPT_ENCODERS,
    USER_EMBEDDING_NORMS,
    CollaborativePromptNorm,
    LossReduction,
    PeaPODConfig,
    PeaPODInputError,
    PromptAttentionNorm,
    PromptEncoder,
    UserEmbeddingNorm,
)
from datasets_scripts.tokenizer_loading import (
    check_folder_or_hub_name,
    check_tokenizer_name,
)
from training.fresh_negatives import TOPN_NEGATIVES, TopnNegatives
from training.trainer import check_time_budget

# The paper's §5.4 value, and what our from-scratch runs use: transformers' default 5e-5 leaves a randomly
# initialised PeaPOD near chance (README, "Learning rate"). Fine-tuning pretrained t5-small: consider 5e-4.
DEFAULT_LEARNING_RATE = 5e-3


def _config_default(name: str):
    """The default of `PeaPODConfig` field `name` (the one place it is declared)."""
    return next(f.default for f in fields(PeaPODConfig) if f.name == name)


@dataclass
class ModelArguments:
    """The model of a run: its base (a T5 checkpoint, a named random shape or a PeaPOD checkpoint) and the PeaPOD
    fields of its `PeaPODConfig` (see the config's docstring for each)."""

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
    prompt_encoder: PromptEncoder = field(
        default=_config_default("prompt_encoder"), metadata={"help": "mha | mlp (0 heads) | none (POD)."}
    )
    prompt_encoder_heads: int = field(
        default=_config_default("prompt_encoder_heads"), metadata={"help": "H, attention heads of the prompt encoder."}
    )
    user_embedding_norm: UserEmbeddingNorm = field(
        default=_config_default("user_embedding_norm"),
        metadata={"help": "none (paper) | l2 | layernorm: normalise u and s_i before the projections."},
    )
    collaborative_prompt_norm: CollaborativePromptNorm = field(
        default=_config_default("collaborative_prompt_norm"),
        metadata={"help": "none (paper) | rms: RMS-normalise each collaborative prompt vector (learned gain)."},
    )
    prompt_attention_norm: PromptAttentionNorm = field(
        default=_config_default("prompt_attention_norm"),
        metadata={"help": "none (paper) | qk: RMS-normalise the mha prompt encoder's per-head queries and keys."},
    )
    neighbor_rank_bias: bool = field(
        default=_config_default("neighbor_rank_bias"),
        metadata={"help": "Add a learned bias per head and neighbour rank to the mha attention logits (0 at init)."},
    )
    user_prompt_dropout: float | None = field(
        default=None,
        metadata={"help": "Training only: the share of samples given the unknown user's prompt (default: "
                  f"{_config_default('user_prompt_dropout')} = the paper for a new model; a continued PeaPOD "
                  "checkpoint keeps its own unless this is given)."},
    )
    num_neighbors: int | None = field(
        default=None, metadata={"help": "n; default: the prepared neighbour table's width (else it is rebuilt)."}
    )
    collaborative_prompt_length: int = field(
        default=_config_default("collaborative_prompt_length"), metadata={"help": "L_p."}
    )
    add_user_prompt_to_tokens: bool = field(
        default=_config_default("add_user_prompt_to_tokens"),
        metadata={"help": "Also add the mean collaborative-prompt vector to every token embedding."},
    )
    use_task_prompts: bool = field(
        default=_config_default("use_task_prompts"), metadata={"help": "Task-specific soft prompts (POD)."}
    )
    task_prompt_length: int = field(default=_config_default("task_prompt_length"), metadata={"help": "L_t."})
    loss_reduction: LossReduction = field(
        default=_config_default("loss_reduction"), metadata={"help": "sequence (eq. 10) | token."}
    )
    dropout_rate: float = field(default=_config_default("dropout_rate"), metadata={"help": "T5 dropout."})
    prompt_learning_rate_multiplier: float = field(
        default=1.0, metadata={"help": "Learning rate of the prompt encoder, task prompts and whole-word embeddings, "
                               "as a multiple of --learning_rate (1: one rate, the paper)."},
    )
    prompt_diagnostics_every: int = field(
        default=0, metadata={"help": "Every K steps, record the gradient norms reaching the prompt encoder and the "
                             "prompt norms into <output_dir>/prompt_diagnostics.json (0: off)."},
    )

    def config_fields(self) -> dict:
        """The fields of this run's `PeaPODConfig` that these arguments set (num_neighbors, user_prompt_dropout: when given)."""
        config_names = {f.name for f in fields(PeaPODConfig)}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in config_names}
        unset_when_none = ("num_neighbors", "user_prompt_dropout")  # None: the data's, or the config's default
        return {name: value for name, value in values.items() if not (name in unset_when_none and value is None)}


@dataclass
class DataArguments:
    """The data of a run: a prepared folder (or the synthetic demo data) and how much of it to use."""

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
    topn_negatives: TopnNegatives = field(
        default="fixed",
        metadata={"help": "fixed (the paper): the top-n training prompts as prepared | fresh: draw their 99 negatives "
                  "again every epoch (seeded; validation/test keep their fixed candidates)."},
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


def resolve_base_model(model_args: ModelArguments) -> tuple[str, str | None]:
    """(base model, the named shape to initialise randomly or None). `mini`/`tiny` exist only as shapes; `t5-small`
    is both a Hub checkpoint and a shape, so its random initialisation is asked for as `random:t5-small` (or
    `--random_init`)."""
    base = model_args.base_model
    shape = base.removeprefix("random:")
    if shape in NAMED_SHAPES and (base.startswith("random:") or model_args.random_init or shape != "t5-small"):
        return base, shape
    return base, None


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """Every check that needs no data or model, so a mistake is reported in seconds (PeaPODInputError)."""
    base = model_args.base_model
    if base.startswith("random:") and base.removeprefix("random:") not in NAMED_SHAPES:
        raise PeaPODInputError(
            f"--base_model {base}: unknown shape {base.removeprefix('random:')!r}; known shapes: "
            + ", ".join(NAMED_SHAPES)
        )
    choice_fields = {"prompt_encoder": PROMPT_ENCODERS, "user_embedding_norm": USER_EMBEDDING_NORMS,
                     "collaborative_prompt_norm": COLLABORATIVE_PROMPT_NORMS,
                     "prompt_attention_norm": PROMPT_ATTENTION_NORMS, "loss_reduction": LOSS_REDUCTIONS}  # the parser checks the flags; this, Python callers
    for name, choices in choice_fields.items():
        if getattr(model_args, name) not in choices:
            raise PeaPODInputError(f"--{name} {getattr(model_args, name)!r}: expected one of {choices}")
    needed = {"prompt_encoder_heads": model_args.prompt_encoder == "mha",
              "collaborative_prompt_length": model_args.prompt_encoder != "none",
              "task_prompt_length": model_args.use_task_prompts}
    for name in (name for name, used in needed.items() if used):
        if getattr(model_args, name) < 1:
            raise PeaPODInputError(f"--{name} must be >= 1, got {getattr(model_args, name)}")
    mha_only = {"prompt_attention_norm": model_args.prompt_attention_norm != "none",
                "neighbor_rank_bias": model_args.neighbor_rank_bias}
    for name in (name for name, given in mha_only.items() if given and model_args.prompt_encoder != "mha"):
        raise PeaPODInputError(f"--{name} needs --prompt_encoder mha (got {model_args.prompt_encoder!r}): only the mha "
                               "prompt encoder attends over neighbours")
    if model_args.num_neighbors is not None and model_args.num_neighbors < 1:
        raise PeaPODInputError(f"--num_neighbors must be >= 1, got {model_args.num_neighbors}")
    if model_args.user_prompt_dropout is not None and not 0 <= model_args.user_prompt_dropout < 1:
        raise PeaPODInputError(f"--user_prompt_dropout must be in [0, 1), got {model_args.user_prompt_dropout}")
    if not 0 <= model_args.dropout_rate < 1:
        raise PeaPODInputError(f"--dropout_rate must be in [0, 1), got {model_args.dropout_rate}")
    if data_args.topn_negatives not in TOPN_NEGATIVES:
        raise PeaPODInputError(f"--topn_negatives {data_args.topn_negatives!r}: expected one of {TOPN_NEGATIVES}")
    if (data_args.topn_negatives == "fresh" and training_args.dataloader_persistent_workers
            and training_args.dataloader_num_workers > 0):
        raise PeaPODInputError("--topn_negatives fresh needs --dataloader_persistent_workers False: persistent "
                               "workers keep the first epoch's negatives")
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
    elif (recorded := prepared_tokenizer(data_args.prepared_dir)) is not None:
        check_tokenizer_name(recorded, f"the tokenizer recorded in {data_args.prepared_dir}/prepare_config.json")
    elif resolve_base_model(model_args)[1] is not None:
        raise PeaPODInputError(f"--base_model {base} is a random shape and {data_args.prepared_dir} records no "
                               "tokenizer: pass --tokenizer")
    else:
        check_tokenizer_name(base, "--tokenizer (default: --base_model)")


def prepared_tokenizer(prepared_dir: str | None) -> str | None:
    """The tokenizer a prepared folder was tokenised with, read from its prepare_config.json (None if unknown)."""
    if prepared_dir is None:
        return None
    try:
        config = json.loads((Path(prepared_dir) / "prepare_config.json").read_text(encoding="utf-8"))
        return config.get("arguments", {}).get("tokenizer")
    except (OSError, ValueError, AttributeError):
        return None  # load_prepared reports a broken folder with its own message
