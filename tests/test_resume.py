"""Resume: a run killed with SIGKILL after a checkpoint and resumed ends with the uninterrupted run's weights."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distributed_train_script import REPO_ROOT, run_training

# 23 rows -> 13 batches of <= 2 per epoch; a checkpoint every 4 steps; killed right after checkpoint-16, i.e.
# 3 batches into the second epoch, so the resumed run must replay epoch 1's order (not epoch 0's) from batch 4.
EPOCHS, SAVE_STEPS, KILL_AFTER, STEPS_PER_EPOCH = 2, 4, 16, 13


@pytest.fixture(autouse=True)
def _single_thread_and_restored_flags():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # as in the script: the same float reductions in and out of process
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_killed_and_resumed_run_matches_the_uninterrupted_run(tmp_path, tokenizer):
    killed_dir = tmp_path / "killed"
    script = Path(__file__).with_name("distributed_train_script.py")
    victim = subprocess.Popen(
        [sys.executable, str(script), "--output_dir", str(killed_dir), "--epochs", str(EPOCHS),
         "--save_steps", str(SAVE_STEPS), "--hang_after_step", str(KILL_AFTER)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Meanwhile, the uninterrupted reference run, in this process.
        reference, reference_trainer = run_training(tmp_path / "reference", EPOCHS, SAVE_STEPS)
        deadline = time.time() + 240
        while not (killed_dir / "hanging").exists():
            assert victim.poll() is None, f"the run to kill exited early: {victim.stderr.read()[-3000:]}"
            assert time.time() < deadline, "no checkpoint appeared in time"
            time.sleep(0.5)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    checkpoint = killed_dir / f"checkpoint-{KILL_AFTER}"
    assert (checkpoint / "trainer_state.json").exists() and (checkpoint / "rng_state.pth").exists()
    assert not (killed_dir / f"checkpoint-{KILL_AFTER + SAVE_STEPS}").exists()

    resumed, resumed_trainer = run_training(killed_dir, EPOCHS, SAVE_STEPS, resume_from_checkpoint=str(checkpoint))

    # Same batch order after the restart: the rest of epoch 1, in epoch 1's order.
    skipped = KILL_AFTER - STEPS_PER_EPOCH
    assert resumed["epochs"][-1]["batches"] == reference["epochs"][1]["batches"][skipped:]
    assert reference["epochs"][1]["batches"] != reference["epochs"][0]["batches"]
    # Same final weights, bit for bit (dropout is on: its RNG state came back from the checkpoint too).
    assert resumed_trainer.model.config.dropout_rate > 0
    final = resumed_trainer.model.state_dict()
    for name, tensor in reference_trainer.model.state_dict().items():
        assert torch.equal(final[name], tensor), name
    assert resumed_trainer.state.global_step == reference_trainer.state.global_step == EPOCHS * STEPS_PER_EPOCH


def test_sampler_epoch_is_set_from_the_trainer_state_at_each_epoch_start(tmp_path, tokenizer):
    # In a multi-process run resumed mid-epoch, the loader is SkipBatchSampler(BatchSamplerShard(sampler)) and
    # Trainer._run_epoch's set_epoch cannot reach the sampler (BatchSamplerShard has no set_epoch); the
    # trainer's callback must set it from TrainerState.epoch instead.
    from accelerate.data_loader import BatchSamplerShard
    from distributed_train_script import (
        RecordingCollator,
        tiny_dataset,
        tiny_model,
        training_arguments,
    )
    from transformers import TrainerControl, TrainerState

    from training.trainer import PeaPODTrainer

    assert not hasattr(BatchSamplerShard([[0]], 2, 0), "set_epoch")
    trainer = PeaPODTrainer(
        model=tiny_model(), args=training_arguments(tmp_path), train_dataset=tiny_dataset(tokenizer),
        data_collator=RecordingCollator(tokenizer),
    )
    trainer.get_train_dataloader()
    for state_epoch, expected in ((None, 0), (1.2307, 1), (2.0, 2)):
        trainer.callback_handler.on_epoch_begin(trainer.args, TrainerState(epoch=state_epoch), TrainerControl())
        assert trainer._task_batch_sampler.epoch == expected
