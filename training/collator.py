"""Batch assembly for PeaPOD: dynamic padding, -100 label padding, user/task ids, whole-word ids (SPEC §1-2).

Sources longer than `max_source_length` are cut from the LEFT. The prompts put the user's history (oldest item
first) before the instruction and the final EOS, so a left cut drops the oldest items and keeps the most recent
ones, the end of the prompt and the EOS. The user's identity survives the cut through `user_ids` (the
collaborative prompt) even when the `user_…` word at the start is dropped. Targets are never cut: a target longer
than `max_target_length` is an error, because training on a silently shortened item id or sentence teaches the
model wrong answers. Only tasks whose prompts hold a history may be cut (`truncatable_task_ids`, default the
registry's tasks with a `{history}` in their prompt, i.e. sequential): a top-n prompt starts with the instruction and the user and ends with the candidate list, so
a left cut would drop the user and candidates (possibly the target) — such a row raises instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from configuration_peapod import DEFAULT_TASKS, TASK_REGISTRY

# Dataset columns the collator reads; PeaPODTrainer keeps them when it drops columns the model does not take.
INPUT_COLUMNS = ("input_ids", "whole_word_ids", "labels", "user_id", "task_id")
# The data's task ids (registry order) whose prompts hold a history: the only sources a left cut may shorten.
HISTORY_TASK_IDS = tuple(task_id for task_id, name in enumerate(DEFAULT_TASKS) if TASK_REGISTRY[name].has_history)


def truncate_source_left(
    input_ids: Sequence[int], whole_word_ids: Sequence[int], max_length: int
) -> tuple[list[int], list[int]]:
    """Keep the last `max_length` tokens, never starting inside an ID, and renumber the ID spans from 1.

    The rule: cut at `len - max_length`; if that cut falls inside a `user_…`/`item_…` span (the first kept token
    has the same non-zero whole-word index as the token before it), move the cut right past that span, since a
    half ID ("_", "45") names a different item. Then subtract the same offset from every kept non-zero index so
    the first kept span is 1, the next 2, … — exactly what `modeling_peapod.whole_word_ids_from_tokens` gives
    on the kept tokens. The kept sequence may therefore be a few tokens shorter than `max_length`.
    """
    if len(input_ids) <= max_length:
        return list(input_ids), list(whole_word_ids)
    start = len(input_ids) - max_length
    if whole_word_ids[start] != 0:
        while start < len(input_ids) and whole_word_ids[start] == whole_word_ids[start - 1]:
            start += 1
    kept_ids = list(input_ids[start:])
    kept_words = list(whole_word_ids[start:])
    first_span = next((index for index in kept_words if index != 0), 1)
    return kept_ids, [index - first_span + 1 if index != 0 else 0 for index in kept_words]


class PeaPODDataCollator:
    """Turn a list of dataset rows into the model's inputs (all `torch.long`).

    Each row needs `input_ids`, `whole_word_ids`, `labels` (lists of ints), `user_id` and `task_id` (ints);
    other columns are ignored. Returns `input_ids`, `attention_mask`, `whole_word_ids` (padding 0), `user_ids`,
    `task_ids` and `labels` (padding -100), padded on the right to the longest row of the batch.

    Args:
        tokenizer: supplies the pad id.
        max_source_length: longer sources are cut from the left (see `truncate_source_left`); None = no limit.
        max_target_length: a longer target raises ValueError; None = no limit.
        truncatable_task_ids: tasks whose sources may be cut (their prompts hold a history); a longer source of
            another task raises ValueError. Default: `HISTORY_TASK_IDS` (from the task registry: sequential).
    """

    def __init__(
        self, tokenizer, max_source_length: int | None = None, max_target_length: int | None = None,
        truncatable_task_ids: Sequence[int] = HISTORY_TASK_IDS,
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no pad token; PeaPOD pads with it")
        for name, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive int or None, got {value}")
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.truncatable_task_ids = set(truncatable_task_ids)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        sources, words, targets = [], [], []
        for position, row in enumerate(rows):
            missing = [column for column in INPUT_COLUMNS if column not in row]
            if missing:
                raise ValueError(f"batch row {position} lacks the column(s) {missing}; it has {sorted(row)}")
            input_ids, whole_word_ids, labels = list(row["input_ids"]), list(row["whole_word_ids"]), list(row["labels"])
            if len(input_ids) != len(whole_word_ids):
                raise ValueError(
                    f"batch row {position} (user {row['user_id']}, task {row['task_id']}): input_ids has "
                    f"{len(input_ids)} tokens but whole_word_ids has {len(whole_word_ids)}"
                )
            if not input_ids or not labels:
                raise ValueError(f"batch row {position} (user {row['user_id']}): empty input_ids or labels")
            if self.max_target_length is not None and len(labels) > self.max_target_length:
                raise ValueError(
                    f"batch row {position} (user {row['user_id']}, task {row['task_id']}): the target has "
                    f"{len(labels)} tokens, more than max_target_length={self.max_target_length}; targets are "
                    "never cut: raise max_target_length or shorten the target when preparing the data"
                )
            if self.max_source_length is not None and len(input_ids) > self.max_source_length:
                if int(row["task_id"]) not in self.truncatable_task_ids:
                    raise ValueError(
                        f"batch row {position} (user {row['user_id']}, task {row['task_id']}): the source has "
                        f"{len(input_ids)} tokens, more than max_source_length={self.max_source_length}, and this "
                        "task's prompt has no history to cut (top-n would lose its user and candidates): raise "
                        "max_source_length"
                    )
                input_ids, whole_word_ids = truncate_source_left(input_ids, whole_word_ids, self.max_source_length)
            sources.append(input_ids)
            words.append(whole_word_ids)
            targets.append(labels)
        return {
            "input_ids": _pad(sources, self.pad_token_id),
            "attention_mask": _pad([[1] * len(source) for source in sources], 0),
            "whole_word_ids": _pad(words, 0),
            "user_ids": torch.tensor([int(row["user_id"]) for row in rows], dtype=torch.long),
            "task_ids": torch.tensor([int(row["task_id"]) for row in rows], dtype=torch.long),
            "labels": _pad(targets, -100),
        }


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad to the longest sequence: a [len(sequences), longest] long tensor."""
    longest = max(len(sequence) for sequence in sequences)
    return torch.tensor([sequence + [value] * (longest - len(sequence)) for sequence in sequences], dtype=torch.long)
