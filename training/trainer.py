"""`PeaPODTrainer`: `Seq2SeqTrainer` with task-alternated batches, per-task validation losses and Hub-ready saves.

What it changes in transformers' `Seq2SeqTrainer` (5.x), and why:

* Training batches come from `TaskAlternatingBatchSampler` (paper §4.4, SPEC §2). `Trainer._get_dataloader`
  passes a custom sampler as a per-sample `sampler` (only its own `BatchRebalanceSampler` goes in as a batch
  sampler), so `get_train_dataloader` is overridden to build the DataLoader with `batch_sampler=`.
* Sharding across processes: the sampler is rank-aware, so after `accelerator.prepare` the `BatchSamplerShard`
  Accelerate wraps around it is made a pass-through (`num_processes = 1`), as transformers does for its own
  rank-aware `BatchRebalanceSampler`. Accelerate must run with `dispatch_batches=False` and `split_batches=False`
  (the defaults for map-style datasets): every process iterates its own loader. See docs/training.md.
* The sampler's epoch follows the trainer's: `Trainer._run_epoch` calls `set_epoch`, but on the epoch a run
  resumes in, accelerate's `skip_first_batches` wraps the loader in a `SkipBatchSampler` that hides the sampler
  from that call, so a callback also sets it from `TrainerState.epoch` at every epoch start.
* Evaluation reports the loss of every task separately (`eval_<task>_loss`), their unweighted mean as
  `eval_loss`, and whatever `ranking_metrics_fn(model)` returns, in one log entry and one `on_evaluate` call,
  so `metric_for_best_model` / `EarlyStoppingCallback` can use any of them.
* Saved folders are complete Hub repositories (config with auto_map, the two code files, safetensors with the
  user table, tokenizer, generation config) and get a model card from `_write_model_card`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.trainer_utils import seed_worker, speed_metrics

from configuration_peapod import DEFAULT_TASKS
from datasets_scripts.files import give_default_permissions

from .collator import INPUT_COLUMNS
from .fresh_negatives import FreshTopnNegatives
from .publishing.model_card import TrainingSummary, write_model_card
from .sampler import TaskAlternatingBatchSampler

logger = logging.getLogger(__name__)

TASK_COLUMN = "task_id"
PEAPOD_MODULES = ("prompt_encoder.", "task_prompts.", "whole_word_embeddings.")  # what PeaPOD adds to T5


class PeaPODTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` for PeaPOD (see the module docstring for what differs).

    Args (beyond `Seq2SeqTrainer`'s):
        ranking_metrics_fn: optional `fn(model) -> dict[str, float]` run at every evaluation, on every process,
            with the unwrapped model in eval mode; its keys are logged with the `eval_` prefix (e.g. a returned
            `sequential_ndcg@10` becomes `eval_sequential_ndcg@10`). It must return the same values on every
            process (deterministic), because early stopping and best-checkpoint decisions must agree.
        task_names: names of the task ids, for the metric keys; default `model.config.tasks`, else the task
            registry's order (`configuration_peapod.DEFAULT_TASKS`).
        model_card_summary: a `training.publishing.model_card.TrainingSummary`; every saved folder gets a model card
            (README.md) rendered from it.
        prompt_learning_rate_multiplier: the learning rate of the modules PeaPOD adds to T5 (prompt encoder,
            task prompts, whole-word embeddings) is this multiple of `args.learning_rate` (1.0: one rate for all,
            as in the paper); the schedule scales both rates alike.

    `train_dataset` needs a `task_id` column. `eval_dataset` is a dict {task name: dataset} or one dataset with
    a `task_id` column, which is split by task.
    """

    def __init__(
        self,
        *args,
        ranking_metrics_fn: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
        task_names: list[str] | tuple[str, ...] | None = None,
        model_card_summary=None,
        group_by_length: bool = False,
        prompt_learning_rate_multiplier: float = 1.0,
        **kwargs,
    ):
        self.model_card_summary = model_card_summary  # a training.publishing.model_card.TrainingSummary, read at every save
        self.group_by_length = group_by_length  # batches of similar input lengths within a task (less padding)
        if not (math.isfinite(prompt_learning_rate_multiplier) and prompt_learning_rate_multiplier > 0):
            raise ValueError(f"prompt_learning_rate_multiplier must be > 0, got {prompt_learning_rate_multiplier}")
        self.prompt_learning_rate_multiplier = prompt_learning_rate_multiplier
        super().__init__(*args, **kwargs)
        if self.args.device.type == "cpu":
            # Page-locked memory only speeds copies to an accelerator; without one torch warns, for every training
            # and evaluation loader, that it is ignored. transformers turns it off for use_cpu only.
            self.args.dataloader_pin_memory = False
        accelerator_config = self.args.accelerator_config
        if accelerator_config.dispatch_batches or accelerator_config.split_batches:
            raise ValueError(
                "PeaPODTrainer needs accelerator_config dispatch_batches=False and split_batches=False: its batch "
                "sampler gives each process its own single-task batches, which dispatching or splitting would mix"
            )
        if self.args.train_sampling_strategy not in ("random", None):
            logger.warning(
                "train_sampling_strategy=%r is ignored: PeaPODTrainer always uses task-alternated batches",
                self.args.train_sampling_strategy,
            )
        self.ranking_metrics_fn = ranking_metrics_fn
        config_tasks = getattr(getattr(self.model, "config", None), "tasks", None)
        self.task_names = list(task_names or config_tasks or DEFAULT_TASKS)
        self._task_batch_sampler: TaskAlternatingBatchSampler | None = None
        if self.eval_dataset is not None:
            self.eval_dataset = self._eval_datasets_by_task(self.eval_dataset)
        self.add_callback(_SamplerEpochCallback(self))

    # -- training data --------------------------------------------------------------------------------------

    @staticmethod
    def _input_lengths(dataset) -> list[int]:
        """Tokens of every row's input_ids, read from the Arrow column without decoding the lists."""
        import pyarrow.compute as pc

        if isinstance(dataset, datasets.Dataset) and "input_ids" in dataset.column_names:
            column = dataset.with_format("arrow")[:]["input_ids"]
            return pc.list_value_length(column).to_pylist()
        return [len(row["input_ids"]) for row in dataset]

    def get_train_dataloader(self) -> DataLoader:
        """A DataLoader over task-alternated batches; each process gets its own batches (see module docstring)."""
        if self.train_dataset is None:
            raise ValueError("PeaPODTrainer: training requires a train_dataset.")
        dataset = self.train_dataset
        # Fresh top-n negatives keep each row's task; the prepared prompts' lengths stand for theirs (a few tokens off).
        rows = dataset.dataset if isinstance(dataset, FreshTopnNegatives) else dataset
        sampler = TaskAlternatingBatchSampler(
            self._task_column(rows, "train_dataset"),
            batch_size=self._train_batch_size,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            num_replicas=max(1, self.args.world_size),
            rank=self.args.process_index,
            drop_last=self.args.dataloader_drop_last,
            lengths=self._input_lengths(rows) if self.group_by_length else None,
        )
        data_collator = self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            data_collator = self._get_collator_with_removed_columns(data_collator, description="training")
        num_workers = self.args.dataloader_num_workers
        dataloader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=data_collator,
            num_workers=num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and num_workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if num_workers > 0 else None,
            multiprocessing_context=self.args.dataloader_multiprocessing_context if num_workers > 0 else None,
            worker_init_fn=partial(seed_worker, num_workers=num_workers, rank=self.args.process_index),
        )
        dataloader = self.accelerator.prepare(dataloader)
        # In a multi-process run Accelerate wraps the batch sampler in a BatchSamplerShard that deals batches
        # round-robin; ours already holds only this process's batches, so the wrapper must pass them through.
        shard = getattr(dataloader, "batch_sampler", None)
        if shard is not sampler and getattr(shard, "batch_sampler", None) is sampler:
            shard.num_processes = 1
            shard.process_index = 0
        elif shard is not sampler:
            raise RuntimeError(
                f"Accelerate wrapped the task-alternating batch sampler in an unexpected {type(shard).__name__}; "
                "refusing to train on batches that may be re-sharded"
            )
        self._task_batch_sampler = sampler
        return dataloader

    def create_optimizer(self, model=None):
        """Trainer's optimizer; with `prompt_learning_rate_multiplier` != 1 each parameter group is split in two,
        the PeaPOD modules' half at the multiplied rate (weight decay groups are kept)."""
        optimizer = super().create_optimizer(model)
        if self.prompt_learning_rate_multiplier == 1.0:
            return optimizer
        model = self.model if model is None else model
        prompt_parameters = {id(p) for n, p in model.named_parameters() if n.startswith(PEAPOD_MODULES)
                             or any(f".{prefix}" in n for prefix in PEAPOD_MODULES)}
        groups = []
        for group in optimizer.param_groups:
            params = group["params"]
            for is_prompt in (False, True):
                chosen = [p for p in params if (id(p) in prompt_parameters) == is_prompt]
                if chosen:
                    lr = group["lr"] * (self.prompt_learning_rate_multiplier if is_prompt else 1.0)
                    groups.append({**group, "params": chosen, "lr": lr})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def _set_signature_columns_if_needed(self) -> None:
        # The collator reads `user_id`/`task_id` (singular, one per row) and outputs `user_ids`/`task_ids`; keep
        # its input columns when dropping what `forward` does not take.
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *INPUT_COLUMNS]))

    @staticmethod
    def _task_column(dataset, name: str) -> list[int]:
        column_names = getattr(dataset, "column_names", None)
        if column_names is None or TASK_COLUMN not in column_names:
            raise ValueError(
                f"{name} needs a '{TASK_COLUMN}' column (the task of every row) for task-alternated batches; "
                f"it has columns {column_names}"
            )
        return list(dataset[TASK_COLUMN])

    # -- evaluation -----------------------------------------------------------------------------------------

    def _eval_datasets_by_task(self, eval_dataset) -> dict:
        """{task name: dataset}: a dict is kept as given; one dataset is split by its task_id column."""
        if isinstance(eval_dataset, Mapping):
            return dict(eval_dataset)
        task_of_row = self._task_column(eval_dataset, "eval_dataset")
        by_task = {}
        for task_id in sorted(set(task_of_row)):
            if not 0 <= task_id < len(self.task_names):
                raise ValueError(f"eval_dataset has task_id {task_id}; known tasks: {self.task_names}")
            rows = [row for row, task in enumerate(task_of_row) if task == task_id]
            by_task[self.task_names[task_id]] = eval_dataset.select(rows)
        return by_task

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **gen_kwargs):
        """Loss per task (`{prefix}_{task}_loss`), their mean (`{prefix}_loss`) and the ranking metrics, if any.

        Unlike `Trainer.evaluate` on a dict, everything is logged once and callbacks see all metrics together.
        """
        gen_kwargs = dict(gen_kwargs)
        if (gen_kwargs.get("max_length") is None and gen_kwargs.get("max_new_tokens") is None
                and self.args.generation_max_length is not None):
            gen_kwargs["max_length"] = self.args.generation_max_length
        if gen_kwargs.get("num_beams") is None and self.args.generation_num_beams is not None:
            gen_kwargs["num_beams"] = self.args.generation_num_beams
        self.gather_function = self.accelerator.gather
        self._gen_kwargs = gen_kwargs

        if eval_dataset is None and self.eval_dataset is None and self.ranking_metrics_fn is None:
            raise ValueError("PeaPODTrainer: evaluation requires an eval_dataset or a ranking_metrics_fn.")
        # Named datasets (strings) let Trainer cache each task's loader when dataloader workers persist.
        if eval_dataset is None:
            datasets_by_task = {name: name for name in (self.eval_dataset or {})}
        else:
            datasets_by_task = self._eval_datasets_by_task(eval_dataset)

        self._memory_tracker.start()
        start_time = time.time()
        metrics: dict[str, float] = {}
        num_samples = 0
        for name, dataset in datasets_by_task.items():
            output = self.evaluation_loop(
                self.get_eval_dataloader(dataset),
                description=f"Evaluation ({name})",
                prediction_loss_only=True if self.compute_metrics is None else None,
                ignore_keys=ignore_keys,
                metric_key_prefix=f"{metric_key_prefix}_{name}",
            )
            metrics.update(output.metrics)
            num_samples += output.num_samples
        task_losses = [metrics[f"{metric_key_prefix}_{name}_loss"] for name in datasets_by_task]
        if task_losses:
            metrics[f"{metric_key_prefix}_loss"] = sum(task_losses) / len(task_losses)
        if self.ranking_metrics_fn is not None:
            metrics.update(self._ranking_metrics(metric_key_prefix))
        metrics.update(
            speed_metrics(
                metric_key_prefix,
                start_time,
                num_samples=num_samples,
                num_steps=math.ceil(num_samples / (self.args.eval_batch_size * self.args.world_size)),
            )
        )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics

    def _ranking_metrics(self, prefix: str) -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            returned = self.ranking_metrics_fn(model)
        finally:
            model.train(was_training)
        if not isinstance(returned, Mapping):
            raise TypeError(f"ranking_metrics_fn must return a dict of floats, got {type(returned).__name__}")
        return {
            key if key.startswith(f"{prefix}_") else f"{prefix}_{key}": float(value) for key, value in returned.items()
        }

    # -- saving ---------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """`Trainer._save` (weights with the user table, config with auto_map and code files, tokenizer,
        generation config), then the model card."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            for weights in Path(output_dir).glob("*.safetensors"):
                give_default_permissions(weights)  # safetensors writes its files owner-only (0600)
            self._write_model_card(output_dir)

    def _write_model_card(self, output_dir: str) -> None:
        """Write README.md (the Hub model card) into `output_dir` from `model_card_summary` (peapod-train rewrites
        the final folder's card with the evaluation results)."""
        summary = self.model_card_summary or TrainingSummary()
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        write_model_card(output_dir, model.config, summary)


def check_time_budget(seconds: float) -> float:
    """A time box must be a positive, finite number of seconds (NaN would never stop a run)."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"max_train_seconds must be a positive number of seconds, got {seconds}")
    return seconds


class TimeBudgetCallback(TrainerCallback):
    """Ends training once `seconds` of it have passed (time-boxed runs, e.g. a lent GPU's minutes).

    The stop is the Trainer's own (`should_training_stop`), so whatever follows a finished run (final save, model
    card, evaluation) still happens; `stopped_at_step` says where it cut (None: the run ended first). The clock
    starts at `on_train_begin`, so model loading and data preparation do not count.
    """

    def __init__(self, seconds: float):
        self.seconds = check_time_budget(seconds)
        self.stopped_at_step: int | None = None
        self._started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self._started >= self.seconds and not control.should_training_stop:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step


class _SamplerEpochCallback(TrainerCallback):
    """Sets the task-alternating sampler's epoch (and fresh top-n negatives') at every epoch start, resumed epochs
    included.

    `TrainerState.epoch` is the float epoch reached so far (e.g. 1.5 halfway through epoch 1 after a resume),
    so its integer part is the epoch about to run.
    """

    def __init__(self, trainer: PeaPODTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = self.trainer._task_batch_sampler
        if sampler is not None:
            sampler.set_epoch(int(state.epoch or 0))
        if isinstance(self.trainer.train_dataset, FreshTopnNegatives):  # before the epoch's loader workers start
            self.trainer.train_dataset.set_epoch(int(state.epoch or 0))
