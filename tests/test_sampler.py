"""TaskAlternatingBatchSampler: single-task batches, exact coverage, determinism, alternation, distributed split."""

import logging
from collections import Counter

import pytest

from training.sampler import TaskAlternatingBatchSampler

# 3 tasks of uneven sizes, interleaved in the file so that row order says nothing about the task.
SIZES = {0: 23, 1: 10, 2: 4}
TASKS = [task for position in range(max(SIZES.values())) for task in SIZES if position < SIZES[task]]


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def task_of(batch):
    tasks = {TASKS[row] for row in batch}
    assert len(tasks) == 1, f"batch {batch} mixes tasks {tasks}"
    return tasks.pop()


@pytest.mark.parametrize("batch_size", [1, 3, 4, 64])
def test_single_process_epoch_covers_every_sample_once_in_single_task_batches(batch_size):
    sampler = TaskAlternatingBatchSampler(TASKS, batch_size=batch_size, seed=3)
    batches = epoch_batches(sampler, 0)
    rows = [row for batch in batches for row in batch]
    assert sorted(rows) == list(range(len(TASKS)))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    for batch in batches:
        task_of(batch)
    assert len(sampler) == len(batches)
    # Per task: full batches, then one partial batch at most.
    for task, size in SIZES.items():
        sizes = [len(batch) for batch in batches if task_of(batch) == task]
        assert sizes == [batch_size] * (size // batch_size) + ([size % batch_size] if size % batch_size else [])


def test_tasks_alternate_round_robin_then_the_rest():
    sampler = TaskAlternatingBatchSampler(TASKS, batch_size=3)
    order = [task_of(batch) for batch in epoch_batches(sampler, 0)]
    # Task 2 has 2 batches, task 1 has 4, task 0 has 8: cycles of (0, 1, 2) while all have batches, then (0, 1), then 0.
    assert order == [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 0, 0, 0]


def test_order_is_a_pure_function_of_seed_and_epoch():
    first = TaskAlternatingBatchSampler(TASKS, batch_size=4, seed=7)
    second = TaskAlternatingBatchSampler(TASKS, batch_size=4, seed=7)
    assert epoch_batches(first, 2) == epoch_batches(second, 2)
    # Iterating other epochs in between changes nothing (no hidden state carried across epochs).
    epoch_batches(first, 0)
    epoch_batches(first, 5)
    assert epoch_batches(first, 2) == epoch_batches(second, 2)
    assert list(first) == list(first)  # re-iterating the same epoch gives the same batches


def test_epochs_and_seeds_differ():
    sampler = TaskAlternatingBatchSampler(TASKS, batch_size=4, seed=7)
    assert epoch_batches(sampler, 0) != epoch_batches(sampler, 1)
    other_seed = TaskAlternatingBatchSampler(TASKS, batch_size=4, seed=8)
    assert epoch_batches(sampler, 0) != epoch_batches(other_seed, 0)


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_distributed_processes_cover_the_epoch_exactly_once(num_replicas, batch_size):
    per_rank = [
        epoch_batches(TaskAlternatingBatchSampler(TASKS, batch_size, seed=1, num_replicas=num_replicas, rank=rank), 4)
        for rank in range(num_replicas)
    ]
    # Same number of batches everywhere (else DDP hangs), equal to the announced length.
    lengths = {len(batches) for batches in per_rank}
    assert len(lengths) == 1
    assert lengths == {len(TaskAlternatingBatchSampler(TASKS, batch_size, num_replicas=num_replicas))}
    rows = [row for batches in per_rank for batch in batches for row in batch]
    assert Counter(rows) == Counter(range(len(TASKS)))  # every sample once: nothing duplicated, nothing dropped
    for step in zip(*per_rank):
        assert all(1 <= len(batch) <= batch_size for batch in step)
        # All processes train on the same task at the same step: one optimizer step = one task.
        assert len({task_of(batch) for batch in step}) == 1


def test_distributed_uneven_remainder_is_split_not_padded():
    # Task 1 has 10 samples; 2 processes x batch 4 = 8 per round, leaving 2: the last round gets 1 + 1.
    per_rank = [
        epoch_batches(TaskAlternatingBatchSampler(TASKS, 4, num_replicas=2, rank=rank), 0) for rank in range(2)
    ]
    task1 = [[len(batch) for batch in batches if task_of(batch) == 1] for batches in per_rank]
    assert task1 == [[4, 1], [4, 1]]
    # Task 2 has 4 samples with 3 processes x batch 2: one round of sizes 2, 1, 1.
    per_rank = [
        epoch_batches(TaskAlternatingBatchSampler(TASKS, 2, num_replicas=3, rank=rank), 0) for rank in range(3)
    ]
    assert [[len(b) for b in batches if task_of(b) == 2] for batches in per_rank] == [[2], [1], [1]]


def test_remainder_smaller_than_world_size_is_pooled_with_the_previous_round():
    # 9 samples of one task, 4 processes x batch 2 = 8 per round, remainder 1 < 4: two rounds share 9 samples.
    tasks = [0] * 9
    per_rank = [epoch_batches(TaskAlternatingBatchSampler(tasks, 2, num_replicas=4, rank=rank), 0) for rank in range(4)]
    sizes = [[len(batch) for batch in batches] for batches in per_rank]
    assert all(len(rank_sizes) == 2 for rank_sizes in sizes)
    assert sum(map(sum, sizes)) == 9 and min(map(min, sizes)) >= 1


def test_drop_last_keeps_only_full_batches():
    sampler = TaskAlternatingBatchSampler(TASKS, batch_size=4, drop_last=True)
    batches = epoch_batches(sampler, 0)
    assert {len(batch) for batch in batches} == {4}
    assert len(batches) == len(sampler) == 23 // 4 + 10 // 4 + 4 // 4


def test_accelerate_sees_variable_size_batches():
    # Accelerate's BatchSamplerShard holds back batches shorter than `batch_size` unless batch_size is None.
    assert TaskAlternatingBatchSampler(TASKS, batch_size=4).batch_size is None


def test_per_task_batch_counts_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="training.sampler"):
        TaskAlternatingBatchSampler(TASKS, batch_size=4, num_replicas=2)
    text = caplog.text
    assert "task 0: 23 samples -> 3 batches per process (6 over 2 processes)" in text
    assert "task 2: 4 samples -> 1 batches per process" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task_of_sample": [], "batch_size": 2}, "non-empty"),
        ({"task_of_sample": [0, 1], "batch_size": 0}, "batch_size"),
        ({"task_of_sample": [0.5, 1.0], "batch_size": 2}, "integer"),
        ({"task_of_sample": [0, 1], "batch_size": 2, "num_replicas": 2, "rank": 2}, "rank"),
        ({"task_of_sample": [0, 0, 0, 1], "batch_size": 2, "num_replicas": 2}, "task 1 has 1 training samples"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskAlternatingBatchSampler(**kwargs)


# -- length grouping ------------------------------------------------------------------------------------------

LENGTHS = [(row * 37) % 101 + (400 if TASKS[row] == 1 else 0) for row in range(len(TASKS))]


def _padding(batches, lengths):
    """Padded slots: sum over batches of (longest - each)."""
    return sum(max(lengths[row] for row in batch) * len(batch) - sum(lengths[row] for row in batch) for batch in batches)


@pytest.mark.parametrize("num_replicas,batch_size", [(1, 3), (2, 2), (3, 2)])
def test_length_grouping_keeps_every_guarantee_and_cuts_padding(num_replicas, batch_size):
    def make(rank, **kwargs):
        return TaskAlternatingBatchSampler(TASKS, batch_size, seed=4, num_replicas=num_replicas, rank=rank,
                                           lengths=LENGTHS, group_rounds=2, **kwargs)

    for epoch in (0, 1):
        per_rank = [epoch_batches(make(rank), epoch) for rank in range(num_replicas)]
        assert per_rank == [epoch_batches(make(rank), epoch) for rank in range(num_replicas)]  # (seed, epoch)
        assert len({len(batches) for batches in per_rank}) == 1 == len({len(make(0))} | {len(per_rank[0])})
        rows = [row for batches in per_rank for batch in batches for row in batch]
        assert sorted(rows) == list(range(len(TASKS)))  # exact coverage over the processes
        for step in zip(*per_rank):  # one task per optimizer step, across processes too
            assert len({task_of(batch) for batch in step}) == 1
            assert all(1 <= len(batch) <= batch_size for batch in step)
    assert epoch_batches(make(0), 0) != epoch_batches(make(0), 1)


def test_length_grouping_reduces_padding_and_default_order_is_unchanged():
    lengths = [(row * 7919) % 500 for row in range(len(TASKS))]
    plain = TaskAlternatingBatchSampler(TASKS, 4, seed=2)
    grouped = TaskAlternatingBatchSampler(TASKS, 4, seed=2, lengths=lengths, group_rounds=3)
    assert _padding(epoch_batches(grouped, 0), lengths) < _padding(epoch_batches(plain, 0), lengths)
    assert epoch_batches(TaskAlternatingBatchSampler(TASKS, 4, seed=2, lengths=None), 0) == epoch_batches(plain, 0)
    with pytest.raises(ValueError, match="lengths has 3 entries"):
        TaskAlternatingBatchSampler(TASKS, 4, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="group_rounds"):
        TaskAlternatingBatchSampler(TASKS, 4, lengths=lengths, group_rounds=0)
