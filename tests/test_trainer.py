"""PeaPODTrainer: task-alternated training, per-task eval losses, ranking hook, best checkpoint, Hub-ready saves."""

import json
import warnings

import pytest
import torch
from distributed_train_script import (
    RecordingCollator,
    tiny_dataset,
    tiny_model,
    training_arguments,
)
from safetensors import safe_open
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    TrainerCallback,
)

from training.collator import PeaPODDataCollator
from training.trainer import PeaPODTrainer


@pytest.fixture(autouse=True)
def _restore_determinism_flags():
    # full_determinism=True switches torch to deterministic algorithms process-wide; give other tests theirs back.
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


@pytest.fixture(scope="module")
def train_set(tokenizer):
    return tiny_dataset(tokenizer, samples_per_task=(6, 4, 3))


@pytest.fixture(scope="module")
def eval_set(tokenizer):
    return tiny_dataset(tokenizer, samples_per_task=(3, 3, 3), seed=1)


def test_train_save_reload_gives_a_complete_hub_folder(tokenizer, train_set, tmp_path):
    trainer = PeaPODTrainer(
        model=tiny_model(), args=training_arguments(tmp_path / "run", num_train_epochs=1),
        train_dataset=train_set, data_collator=PeaPODDataCollator(tokenizer), processing_class=tokenizer,
    )
    trainer.train()
    folder = tmp_path / "saved"
    trainer.save_model(str(folder))

    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "configuration_peapod.py", "modeling_peapod.py", "model.safetensors",
            "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_peapod.PeaPODForConditionalGeneration"
    assert config["auto_map"]["AutoConfig"] == "configuration_peapod.PeaPODConfig"
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert {"user_embeddings", "user_neighbors"} <= set(weights.keys())
        assert torch.equal(weights.get_tensor("user_embeddings"), trainer.model.user_embeddings)

    reloaded = AutoModelForSeq2SeqLM.from_pretrained(str(folder), trust_remote_code=True).eval()
    trained = trainer.model.eval()
    assert type(reloaded).__name__ == "PeaPODForConditionalGeneration"
    reloaded_state = reloaded.state_dict()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor.cpu(), reloaded_state[name]), name
    batch = PeaPODDataCollator(tokenizer)([train_set[index] for index in range(4)])
    with torch.no_grad():
        assert torch.equal(trained(**batch).logits, reloaded(**batch).logits)
    assert AutoTokenizer.from_pretrained(str(folder))("user_1 item_2").input_ids == tokenizer("user_1 item_2").input_ids


def batches_per_epoch(tokenizer, train_set, output_dir, seed):
    """The rows of every training batch the trainer collated, epoch by epoch (2 epochs, batch size 2)."""
    collator = RecordingCollator(tokenizer)
    seen = []

    class EpochCut(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            seen.append(collator.batches)
            collator.batches = []

    trainer = PeaPODTrainer(
        model=tiny_model(), args=training_arguments(output_dir, num_train_epochs=2, seed=seed),
        train_dataset=train_set, data_collator=collator, callbacks=[EpochCut()],
    )
    trainer.train()
    return seen


def test_batches_follow_the_documented_rule_and_the_epoch(tokenizer, train_set, tmp_path):
    # The expectation comes from the rule in training/sampler.py's docstring, not from the sampler: one process,
    # batches of <= 2; task 0 has 6 rows (3 batches), task 1 has 4 (2), task 2 has 3 (a full batch, then the
    # remaining row); tasks take turns batch by batch while several have batches left, then task 0's last one.
    tasks = train_set["task_id"]
    assert [tasks.count(task) for task in (0, 1, 2)] == [6, 4, 3]
    seen = batches_per_epoch(tokenizer, train_set, tmp_path / "a", seed=5)
    assert len(seen) == 2
    for batches in seen:
        assert [tasks[batch[0]] for batch in batches] == [0, 1, 2, 0, 1, 2, 0]
        assert all(len({tasks[row] for row in batch}) == 1 for batch in batches)  # one task per batch
        assert [len(batch) for batch in batches] == [2, 2, 2, 2, 2, 1, 2]
        assert sorted(row for batch in batches for row in batch) == list(range(len(train_set)))  # each row once
    assert seen[0] != seen[1]  # reshuffled per epoch (the trainer's epoch reached the sampler)
    in_order = {task: [row for batch in seen[0] for row in batch if tasks[row] == task] for task in (0, 1, 2)}
    assert any(rows != sorted(rows) for rows in in_order.values())  # shuffled within a task, not file order
    # A pure function of the seed: the same seed replays the same batches in a new run, another seed does not.
    assert batches_per_epoch(tokenizer, train_set, tmp_path / "b", seed=5) == seen
    assert batches_per_epoch(tokenizer, train_set, tmp_path / "c", seed=6) != seen


def test_evaluation_reports_each_task_loss_and_the_ranking_metrics(tokenizer, train_set, eval_set, tmp_path):
    calls = []

    def ranking_metrics_fn(model):
        calls.append(model.training)
        return {"sequential_hr@10": 0.25, "eval_topn_ndcg@10": 0.5}

    evaluations = []

    class Capture(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evaluations.append(dict(metrics))

    model = tiny_model()
    trainer = PeaPODTrainer(
        model=model, args=training_arguments(tmp_path, per_device_eval_batch_size=16), train_dataset=train_set,
        eval_dataset=eval_set, data_collator=PeaPODDataCollator(tokenizer), ranking_metrics_fn=ranking_metrics_fn,
        callbacks=[Capture()],
    )
    metrics = trainer.evaluate()
    assert len(evaluations) == 1 and evaluations[0] == metrics  # one evaluation event carrying everything
    assert calls == [False]  # the hook ran once, on the model in eval mode
    assert metrics["eval_sequential_hr@10"] == 0.25 and metrics["eval_topn_ndcg@10"] == 0.5
    collator = PeaPODDataCollator(tokenizer)
    model.eval()
    task_losses = []
    for task_id, name in enumerate(("sequential", "topn", "explanation")):
        rows = [row for row in eval_set if row["task_id"] == task_id]
        with torch.no_grad():
            expected = model(**collator(rows)).loss.item()
        assert metrics[f"eval_{name}_loss"] == pytest.approx(expected, rel=1e-5)
        task_losses.append(expected)
    assert metrics["eval_loss"] == pytest.approx(sum(task_losses) / 3, rel=1e-5)
    assert len(set(task_losses)) == 3


def test_best_checkpoint_is_kept_and_early_stopping_stops(tokenizer, train_set, eval_set, tmp_path):
    # A scripted ranking metric: best at the 2nd evaluation, then worse twice -> patience 2 stops training.
    scripted = iter([0.1, 0.5, 0.3, 0.2, 0.9, 0.9, 0.9])
    weights_at_step = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            weights_at_step[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    args = training_arguments(
        tmp_path, num_train_epochs=3, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        metric_for_best_model="hr@10", greater_is_better=True, load_best_model_at_end=True, save_total_limit=2,
    )
    trainer = PeaPODTrainer(
        model=tiny_model(), args=args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=PeaPODDataCollator(tokenizer), processing_class=tokenizer,
        ranking_metrics_fn=lambda model: {"hr@10": next(scripted)},
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2), Snapshot()],
    )
    trainer.train()
    assert trainer.state.global_step == 8  # evaluations at steps 2, 4, 6, 8; stopped after two without gain
    assert trainer.state.best_metric == 0.5
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    assert (tmp_path / "checkpoint-4" / "modeling_peapod.py").exists()  # checkpoints are Hub folders too
    final = trainer.model.state_dict()
    assert all(torch.equal(final[name], tensor) for name, tensor in weights_at_step[4].items())
    assert not all(torch.equal(final[name], tensor) for name, tensor in weights_at_step[8].items())
    logged = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert all({"eval_sequential_loss", "eval_topn_loss", "eval_explanation_loss", "eval_hr@10"} <= set(entry)
               for entry in logged)


def test_configuration_errors_are_caught(tokenizer, train_set, tmp_path):
    with pytest.raises(ValueError, match="dispatch_batches=False"):
        PeaPODTrainer(
            model=tiny_model(), args=training_arguments(tmp_path, accelerator_config={"dispatch_batches": True}),
            train_dataset=train_set, data_collator=PeaPODDataCollator(tokenizer),
        )
    trainer = PeaPODTrainer(
        model=tiny_model(), args=training_arguments(tmp_path), train_dataset=train_set.remove_columns("task_id"),
        data_collator=PeaPODDataCollator(tokenizer),
    )
    with pytest.raises(ValueError, match="needs a 'task_id' column"):
        trainer.get_train_dataloader()


def test_group_by_length_hands_the_input_lengths_to_the_sampler(train_set, tmp_path):
    trainer = PeaPODTrainer(model=tiny_model(), args=training_arguments(tmp_path), train_dataset=train_set,
                            data_collator=lambda rows: rows, group_by_length=True)
    sampler = trainer.get_train_dataloader().batch_sampler
    assert sampler.lengths.tolist() == [len(ids) for ids in train_set["input_ids"]]
    plain = PeaPODTrainer(model=tiny_model(), args=training_arguments(tmp_path), train_dataset=train_set,
                          data_collator=lambda rows: rows)
    assert plain.get_train_dataloader().batch_sampler.lengths is None


def test_memory_is_pinned_only_for_an_accelerator(train_set, tmp_path):
    """On a machine without an accelerator neither the training nor the evaluation loader pins memory, as with
    `use_cpu` (torch would warn on every run that pinning is ignored)."""
    arguments = training_arguments(tmp_path, use_cpu=False)
    assert arguments.dataloader_pin_memory and arguments.device.type == "cpu"  # transformers' default here
    trainer = PeaPODTrainer(model=tiny_model(), args=arguments, train_dataset=train_set, data_collator=lambda rows: rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaders = [trainer.get_train_dataloader(), trainer.get_eval_dataloader(train_set)]
        for loader in loaders:
            next(iter(loader))
    assert [loader.pin_memory for loader in loaders] == [False, False]
