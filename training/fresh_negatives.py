"""Fresh top-n negatives every epoch: `peapod-train --topn_negatives fresh`.

`peapod-prepare` writes each top-n training prompt once, with 99 negatives drawn at prepare time, so every epoch
shows the model the same 99 wrong answers beside each positive (`fixed`, the paper's setting and the default).
`FreshTopnNegatives` wraps the training rows and, for the top-n rows only, draws the 99 negatives again every
epoch by the prepare rule (`datasets_scripts.build_dataset.topn_candidates`: uniform over the items outside the
user's full history, target included and the 100 shuffled), writes them into the row's own training template
(found by re-rendering the prepared prompt) and tokenises the prompt from cached per-word pieces
(`PieceCache`: exact for T5's tokenizer, which never merges across whitespace; tests/test_fresh_negatives.py
checks equality with the tokenizer). Other tasks' rows, the labels, and the validation/test splits (the
evaluation protocol's fixed candidates) are untouched.

Determinism: a row's candidates are a function of (seed, epoch, row index), from their own NumPy stream, so every
process of a distributed run, a resumed run and a rerun with the same seed build the same prompts whichever
batches they fall in, while two epochs differ. The row count, order and tasks are those of the wrapped rows, so
`TaskAlternatingBatchSampler`'s guarantees hold unchanged (`PeaPODTrainer` reads the task ids and lengths from
`.dataset`). The epoch is set by `PeaPODTrainer` at every epoch start (`set_epoch`), before the loader's workers
are started; persistent workers would keep a stale epoch, so `peapod-train` refuses them with this option.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import torch

from datasets_scripts.build_dataset import PieceCache, topn_candidates
from datasets_scripts.templates import TASKS, TRAIN_TEMPLATES, render

from .collator import INPUT_COLUMNS

TopnNegatives = Literal["fixed", "fresh"]  # fixed: the prepared prompts (the paper); fresh: this module
TOPN_NEGATIVES: tuple[str, ...] = get_args(TopnNegatives)
# Its own stream, apart from prepare's ([seed, offset] with the offsets of build_dataset.SAMPLING_SEED_OFFSETS).
FRESH_NEGATIVES_SEED_OFFSET = 15
_COLUMNS = (*INPUT_COLUMNS, "item_id", "source", "candidates")


class FreshTopnNegatives(torch.utils.data.Dataset):
    """Training rows whose top-n prompts get fresh negatives every epoch (module docstring).

    Args:
        dataset: the training rows (a `datasets.Dataset` as prepared: `input_ids`, `whole_word_ids`, `labels`,
            `user_id`, `task_id`, `item_id`, `source`, `candidates`), any tasks mixed.
        histories: every user's full item history (`PreparedData.histories`): the items never drawn as negatives.
        num_items: the catalogue size (items are 1..num_items).
        tokenizer: the tokenizer the rows were prepared with.
        seed: with the epoch and the row index, fixes a row's candidates.
        topn_task_id: the task id of the rows to refresh.

    Rows come out as dicts of the collator's input columns (`INPUT_COLUMNS`).
    """

    def __init__(
        self, dataset, histories: Mapping[int, Sequence[int]], num_items: int, tokenizer, seed: int = 0,
        topn_task_id: int = TASKS.index("topn"),
    ):
        missing = [column for column in _COLUMNS if column not in dataset.column_names]
        if missing:
            raise ValueError(f"fresh top-n negatives need the prepared columns {missing}; the rows have "
                             f"{dataset.column_names}")
        self.dataset = dataset.select_columns(list(_COLUMNS))
        self.histories = histories
        self.num_items = num_items
        self.seed = seed
        self.topn_task_id = topn_task_id
        self.pieces = PieceCache(tokenizer)
        self.epoch = 0
        self._templates: dict[int, str] = {}  # row -> its training template, found once

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose negatives rows get (called by `PeaPODTrainer` at every epoch start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def candidates(self, index: int, user: int, target: int) -> list[int]:
        """Row `index`'s 100 shuffled candidates this epoch: `target` and 99 items outside the user's history."""
        rng = np.random.default_rng([self.seed, FRESH_NEGATIVES_SEED_OFFSET, self.epoch, index])
        return topn_candidates(rng, target, set(self.histories[user]), self.num_items)

    def template(self, index: int, row: Mapping) -> str:
        """The training template row `index`'s prepared prompt was written with (the one that re-renders it)."""
        if index not in self._templates:
            found = [template for template in TRAIN_TEMPLATES["topn"]
                     if render(template, row["user_id"], candidates=row["candidates"]) == row["source"]]
            if not found:
                raise ValueError(f"training row {index} (user {row['user_id']}): its top-n prompt matches none of the "
                                 f"training templates; re-prepare the folder with this version: {row['source'][:80]!r}")
            self._templates[index] = found[0]
        return self._templates[index]

    def source(self, index: int, row: Mapping) -> str:
        """Row `index`'s top-n prompt this epoch: its template with fresh candidates."""
        candidates = self.candidates(index, row["user_id"], row["item_id"])
        return render(self.template(index, row), row["user_id"], candidates=candidates)

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """The rows at `indices` (a batch: one Arrow read, one tokenisation call)."""
        columns = self.dataset[list(indices)]
        rows = [{name: values[position] for name, values in columns.items()} for position in range(len(indices))]
        refreshed = [position for position, row in enumerate(rows) if row["task_id"] == self.topn_task_id]
        encoded = self.pieces([self.source(indices[position], rows[position]) for position in refreshed])
        for position, input_ids, whole_word_ids in zip(refreshed, encoded["input_ids"], encoded["whole_word_ids"]):
            rows[position]["input_ids"], rows[position]["whole_word_ids"] = input_ids, whole_word_ids
        return [{name: row[name] for name in INPUT_COLUMNS} for row in rows]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]
