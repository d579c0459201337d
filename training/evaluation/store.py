"""The sharded chunk store: per-chunk result files, so an evaluation resumes and several processes split the users."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from datasets_scripts.files import atomic_write_text


class ChunkStore:
    """Per-chunk result files, so an interrupted evaluation resumes and several processes split the users.

    A task's rows are cut into consecutive chunks of `chunk_size` rows; chunk c's outputs (rankings or generated
    explanations, in row order) go to `{directory}/{task}-{c:05d}.json`, written atomically. A run loads the
    chunks already there and computes the missing ones it owns: all of them, or with `shard=(i, n)` those with
    c % n == i. Merged in chunk order, the outputs are those of one unchunked run, so the metrics are the same.
    Each file records `fingerprint` (split, settings, model checksum, rows); a file of other settings is refused.
    """

    def __init__(self, directory, fingerprint: dict, shard: tuple[int, int] = (0, 1), chunk_size: int = 1024):
        index, count = shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.shard = (index, count)
        self.chunk_size = chunk_size

    def chunks(self, rows: list[int]) -> list[list[int]]:
        return [rows[start : start + self.chunk_size] for start in range(0, len(rows), self.chunk_size)]

    def owns(self, chunk: int) -> bool:
        return chunk % self.shard[1] == self.shard[0]

    def path(self, task: str, chunk: int) -> Path:
        return self.directory / f"{task}-{chunk:05d}.json"

    def load(self, task: str, chunk: int, rows: list[int]) -> dict | None:
        path = self.path(task, chunk)
        if not path.is_file():
            return None
        stored = json.loads(path.read_text(encoding="utf-8"))
        expected = {**self.fingerprint, "task": task, "rows": rows}
        if stored.get("fingerprint") != expected:
            raise ValueError(
                f"{path} holds results of another evaluation (other checkpoint, data, split or settings): use a "
                "fresh --chunk_dir, or delete that folder to start over"
            )
        return stored["outputs"]

    def save(self, task: str, chunk: int, rows: list[int], outputs: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"fingerprint": {**self.fingerprint, "task": task, "rows": rows}, "outputs": outputs}
        atomic_write_text(self.path(task, chunk), json.dumps(record) + "\n")


def model_checksum(model) -> str:
    """A cheap fingerprint of the weights (sum and sum of squares over every parameter and buffer)."""
    total = squares = 0.0
    for tensor in [*model.parameters(), *model.buffers()]:
        values = tensor.detach().double()
        total += float(values.sum())
        squares += float((values * values).sum())
    return f"{total:.10e}/{squares:.10e}"


def collect_chunks(task: str, rows: list[int], compute, store: ChunkStore | None, show_progress: bool, unit: str):
    """Run `compute(rows, progress) -> {name: list}` over the chunks this process owns, load the others.

    Returns (merged outputs or None when chunks of other shards are still missing, rows computed here)."""
    chunks = store.chunks(rows) if store is not None else [rows]
    outputs: dict[int, dict] = {}
    todo = []
    for index, chunk in enumerate(chunks):
        loaded = store.load(task, index, chunk) if store is not None else None
        if loaded is not None:
            outputs[index] = loaded
        elif store is None or store.owns(index):
            todo.append(index)
    computed = sum(len(chunks[index]) for index in todo)
    description = task if store is None or store.shard[1] == 1 else f"{task} (shard {store.shard[0]}/{store.shard[1]})"
    # tqdm shows the rate (users/s) and the ETA of what this process computes; loaded chunks are not counted.
    with tqdm(total=computed, desc=description, unit=unit, disable=not show_progress, smoothing=0.1) as progress:
        for index in todo:
            outputs[index] = compute(chunks[index], progress)
            if store is not None:
                store.save(task, index, chunks[index], outputs[index])
    if len(outputs) < len(chunks):
        return None, computed
    names = outputs[0].keys() if outputs else ()
    return {name: [value for index in range(len(chunks)) for value in outputs[index][name]] for name in names}, computed
