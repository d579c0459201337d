"""Tiny PeaPOD training run, shared by the trainer tests and run as a script by the multi-process and resume tests.

As a script (`python tests/distributed_train_script.py --output_dir D` or under `torchrun`/`accelerate launch`):
trains a tiny PeaPOD (1 layer, d_model 32, dropout on) on a tiny tokenised 3-task dataset with PeaPODTrainer and
writes, per process, `rank{r}.json` (the rows and tasks of every training batch it collated, per epoch, and
the loss of the whole training set before and after training) and `rank{r}_weights.safetensors` (its final weights).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script, or under pytest without the root on the path
    sys.path.insert(0, str(REPO_ROOT))

import torch
from datasets import Dataset
from transformers import AutoTokenizer, Seq2SeqTrainingArguments, TrainerCallback

from training.collator import PeaPODDataCollator

TOKENIZER_DIR = REPO_ROOT.parent / "shared" / "tokenizers" / "t5"
NUM_USERS = 12
TASK_NAMES = ("sequential", "topn", "explanation")


def tiny_model(seed: int = 0, dropout_rate: float = 0.1):
    """A randomly initialised 1-layer PeaPOD with a random user table, a pure function of `seed`."""
    from configuration_peapod import PeaPODConfig
    from modeling_peapod import PeaPODForConditionalGeneration

    torch.manual_seed(seed)
    config = PeaPODConfig(
        vocab_size=32128, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, dropout_rate=dropout_rate,
        num_users=NUM_USERS, user_embedding_dim=8, num_neighbors=3, prompt_encoder_heads=2,
    )
    model = PeaPODForConditionalGeneration(config)
    model.set_user_table(torch.randn(NUM_USERS + 1, 8, generator=torch.Generator().manual_seed(seed)))
    return model


def tiny_dataset(tokenizer, samples_per_task=(11, 7, 5), seed: int = 0) -> Dataset:
    """Rows of the three tasks (interleaved, so task order in the file means nothing), tokenised for real.

    Targets follow a simple rule of the input (the next item id, the first candidate, a fixed sentence about the
    item) so a model can learn them; `row_index` identifies each row.
    """
    from modeling_peapod import compute_whole_word_ids

    rng = random.Random(seed)
    rows = []
    for task_id, count in enumerate(samples_per_task):
        for _ in range(count):
            user = rng.randint(1, NUM_USERS)
            items = [rng.randint(1, 60) for _ in range(rng.randint(2, 6))]
            if task_id == 0:
                source = f"user_{user} bought " + " , ".join(f"item_{item}" for item in items) + " . what next ?"
                target = str(items[-1] + 1)
            elif task_id == 1:
                source = f"pick for user_{user} from " + " , ".join(f"item_{item}" for item in items) + " ."
                target = str(items[0])
            else:
                source = f"explain why user_{user} likes item_{items[0]} ."
                target = f"great quality item number {items[0]}"
            rows.append({"task_id": task_id, "user_id": user, "source": source, "target": target})
    rng.shuffle(rows)
    input_ids = tokenizer([row["source"] for row in rows]).input_ids
    labels = tokenizer([row["target"] for row in rows]).input_ids
    whole_word_ids = compute_whole_word_ids(input_ids, tokenizer)
    for index, row in enumerate(rows):
        row.update(
            row_index=index, input_ids=input_ids[index], labels=labels[index], whole_word_ids=whole_word_ids[index]
        )
    return Dataset.from_list(rows)


class RecordingCollator(PeaPODDataCollator):
    """A PeaPODDataCollator that remembers the `row_index` of every row it collates while `recording` is on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recording = True
        self.batches: list[list[int]] = []
        self.batch_tasks: list[list[int]] = []

    def __call__(self, rows):
        if self.recording:
            self.batches.append([int(row["row_index"]) for row in rows])
            self.batch_tasks.append([int(row["task_id"]) for row in rows])
        return super().__call__(rows)


def training_arguments(output_dir, **overrides) -> Seq2SeqTrainingArguments:
    """Deterministic CPU arguments for tiny runs; `remove_unused_columns=False` keeps `row_index` visible."""
    defaults = {
        "output_dir": str(output_dir), "per_device_train_batch_size": 2, "per_device_eval_batch_size": 4,
        "num_train_epochs": 2, "learning_rate": 3e-3, "seed": 0, "full_determinism": True, "use_cpu": True,
        "report_to": "none", "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no",
        "remove_unused_columns": False, "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    return Seq2SeqTrainingArguments(**{**defaults, **overrides})


class _EpochRecorder(TrainerCallback):
    """Cuts the collator's record into epochs, and optionally hangs after a given checkpoint (to be killed)."""

    def __init__(self, collator: RecordingCollator, hang_after_step: int | None):
        self.collator, self.hang_after_step = collator, hang_after_step
        self.epochs: list[dict] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.batches, self.collator.batch_tasks = [], []

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.append({"batches": self.collator.batches, "tasks": self.collator.batch_tasks})

    def on_save(self, args, state, control, **kwargs):
        if self.hang_after_step is not None and state.global_step == self.hang_after_step:
            (Path(args.output_dir) / "hanging").write_text(str(state.global_step))
            time.sleep(600)  # the test kills this process with SIGKILL here


@torch.no_grad()
def full_loss(model, dataset, tokenizer) -> float:
    """Mean training loss of the whole dataset in one batch, dropout off."""
    was_training = model.training
    model.eval()
    loss = model(**PeaPODDataCollator(tokenizer)(list(dataset))).loss.item()
    model.train(was_training)
    return loss


def run_training(output_dir, epochs=2, save_steps=0, hang_after_step=None, resume_from_checkpoint=None):
    """Train the tiny model with PeaPODTrainer; returns (record of this process, trainer)."""
    from training.trainer import PeaPODTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    collator = RecordingCollator(tokenizer)
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {}
    training_args = training_arguments(output_dir, num_train_epochs=epochs, **saving)
    recorder = _EpochRecorder(collator, hang_after_step)
    model, train_set = tiny_model(), tiny_dataset(tokenizer)
    trainer = PeaPODTrainer(
        model=model, args=training_args, train_dataset=train_set, data_collator=collator,
        processing_class=tokenizer, callbacks=[recorder],
    )
    initial_loss = full_loss(model, train_set, tokenizer)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    record = {
        "world_size": training_args.world_size,
        "epochs": recorder.epochs,
        "initial_loss": initial_loss,
        "final_loss": full_loss(trainer.model, train_set, tokenizer),
    }
    return record, trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--save_steps", type=int, default=0, help="0: no checkpoints")
    parser.add_argument("--hang_after_step", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # bitwise-reproducible CPU math, and 2 processes on 2 cores

    from safetensors.torch import save_file

    record, trainer = run_training(
        args.output_dir, args.epochs, args.save_steps, args.hang_after_step, args.resume_from_checkpoint
    )
    rank = trainer.args.process_index
    out = Path(args.output_dir)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in trainer.model.state_dict().items()}
    save_file(weights, str(out / f"rank{rank}_weights.safetensors"))


if __name__ == "__main__":
    main()
