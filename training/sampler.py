"""Task-alternated batches (paper §4.4, SPEC §2).

Every batch holds samples of one task; tasks take turns batch by batch; an epoch yields every training sample of
every task exactly once; the order is a pure function of (seed, epoch), so a resumed run replays the same batches.

Distributed runs. With `num_replicas = P` processes the epoch is cut into *rounds*: a round is P batches of the
same task, one per process, so that every optimizer (micro-)step of the whole job trains on one task, exactly as
one process does. A task with m samples gets ceil(m / (P * batch_size)) rounds: full rounds of P full batches,
then its remaining samples dealt evenly over the P batches of its last round (sizes differ by at most one). When
that remainder is smaller than P it is pooled with the previous full round and the 2P batches share it evenly,
so no batch is empty. Samples are never duplicated or dropped (unless `drop_last`), every process gets the same
number of batches (else DDP waits forever on the process that has one more), and process `rank` takes the
`rank`-th batch of every round. Rounds alternate between tasks round-robin while several tasks have rounds
left, then the remaining rounds of the larger tasks follow in task order.

The sampler is rank-aware (like `torch.utils.data.DistributedSampler`): iterating it yields only the batches of
process `rank`. `PeaPODTrainer` therefore hands it to Accelerate with its `BatchSamplerShard` wrapper made a
pass-through (see docs/training.md), and `batch_size` is exposed as `None` because Accelerate treats a batch
sampler with a `batch_size` as fixed-size and would hold back or pad the smaller last batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)


class TaskAlternatingBatchSampler:
    """Batch sampler whose batches are single-task and alternate between tasks.

    Args:
        task_of_sample: the task id of every dataset row (e.g. `dataset["task_id"]`), in row order.
        batch_size: the largest per-process batch.
        seed: with the epoch, fixes the shuffle (`set_epoch` before each epoch).
        num_replicas: number of data-parallel processes.
        rank: this process, in `[0, num_replicas)`.
        drop_last: drop, per task, the last round when it is not P full batches, so that every batch has exactly
            `batch_size` samples (the dropped samples change with the epoch's shuffle).
        lengths: optional length (e.g. input tokens) of every row: batches then group similar lengths within a
            task, to cut padding. As transformers' `LengthGroupedSampler`: the task's shuffled rows are cut into
            mega-batches of `group_rounds` rounds, each sorted by length (longest first) before being cut into
            rounds, and the task's rounds are then shuffled. Single-task batches, exact coverage, determinism by
            (seed, epoch) and the distributed split are unchanged; without `lengths` the order is as before.
        group_rounds: rounds per mega-batch (larger: less padding, less randomness).
    """

    def __init__(
        self,
        task_of_sample: Sequence[int],
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        lengths: Sequence[int] | None = None,
        group_rounds: int = 50,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        tasks = np.asarray(task_of_sample)
        if tasks.ndim != 1 or tasks.size == 0:
            raise ValueError(f"task_of_sample must be a non-empty 1-D sequence of task ids, got shape {tasks.shape}")
        if not np.issubdtype(tasks.dtype, np.integer):
            raise ValueError(f"task_of_sample must hold integer task ids, got dtype {tasks.dtype}")
        if lengths is not None and len(lengths) != tasks.size:
            raise ValueError(f"lengths has {len(lengths)} entries; expected one per row ({tasks.size})")
        if group_rounds < 1:
            raise ValueError(f"group_rounds must be >= 1, got {group_rounds}")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_rounds = group_rounds
        self.max_batch_size = batch_size
        # Accelerate reads `batch_size` to decide whether a batch is "complete"; None marks variable-size batches.
        self.batch_size = None
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.task_ids = sorted(int(task) for task in np.unique(tasks))
        self._rows_of_task = {task: np.flatnonzero(tasks == task) for task in self.task_ids}
        round_samples = num_replicas * batch_size
        self.rounds_per_task = {}
        for task, rows in self._rows_of_task.items():
            if drop_last:
                self.rounds_per_task[task] = len(rows) // round_samples
            else:
                rounds = math.ceil(len(rows) / round_samples)
                if len(rows) < rounds * num_replicas:
                    raise ValueError(
                        f"task {task} has {len(rows)} training samples: too few to give each of the {num_replicas} "
                        f"processes a non-empty batch of at most {batch_size} in each of its {rounds} rounds "
                        "(use fewer processes, a larger batch size, or drop_last=True)"
                    )
                self.rounds_per_task[task] = rounds
        for task in self.task_ids:
            rounds = self.rounds_per_task[task]
            logger.info(
                "TaskAlternatingBatchSampler: task %d: %d samples -> %d batches per process (%d over %d processes)%s",
                task,
                len(self._rows_of_task[task]),
                rounds,
                rounds * num_replicas,
                num_replicas,
                f", {len(self._rows_of_task[task]) - rounds * round_samples} dropped per epoch" if drop_last else "",
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` yields (call on every process before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches this process yields per epoch (the same on every process)."""
        return sum(self.rounds_per_task.values())

    def global_rounds(self) -> list[tuple[int, list[list[int]]]]:
        """The whole epoch as (task, [batch of process 0, …, batch of process P-1]) rounds, in training order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        rounds_by_task = {}
        for task, rows in self._rows_of_task.items():
            shuffled = rng.permutation(rows)
            if self.lengths is None:
                rounds_by_task[task] = self._task_rounds(shuffled)
            else:  # similar lengths together, then the task's rounds in random order
                rounds = self._task_rounds(self._length_grouped(shuffled))
                rounds_by_task[task] = [rounds[index] for index in rng.permutation(len(rounds))]
        ordered = []
        for round_index in range(max(len(rounds) for rounds in rounds_by_task.values())):
            for task in self.task_ids:
                if round_index < len(rounds_by_task[task]):
                    ordered.append((task, rounds_by_task[task][round_index]))
        return ordered

    def __iter__(self) -> Iterator[list[int]]:
        for _, batches in self.global_rounds():
            yield batches[self.rank]

    def _length_grouped(self, rows: np.ndarray) -> np.ndarray:
        """Shuffled rows, each mega-batch of `group_rounds` rounds sorted by length, longest first (stable)."""
        mega = self.group_rounds * self.num_replicas * self.max_batch_size
        pieces = [rows[start : start + mega] for start in range(0, len(rows), mega)]
        return np.concatenate([piece[np.argsort(-self.lengths[piece], kind="stable")] for piece in pieces])

    def _task_rounds(self, rows: np.ndarray) -> list[list[list[int]]]:
        """Cut one task's shuffled rows into rounds of `num_replicas` batches (see the module docstring)."""
        size, replicas = self.max_batch_size, self.num_replicas
        round_samples = replicas * size
        num_full = len(rows) // round_samples
        rounds = [
            np.split(rows[index * round_samples : (index + 1) * round_samples], replicas) for index in range(num_full)
        ]
        remainder = rows[num_full * round_samples :]
        if len(remainder) and not self.drop_last:
            if len(remainder) >= replicas:
                rounds.append(np.array_split(remainder, replicas))
            else:  # too few for one sample per process: share the last full round's samples too
                pooled = np.array_split(rows[(num_full - 1) * round_samples :], 2 * replicas)
                rounds[-1:] = [pooled[:replicas], pooled[replicas:]]
        return [[batch.tolist() for batch in round_batches] for round_batches in rounds]
