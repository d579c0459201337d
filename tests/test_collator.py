"""PeaPODDataCollator: dynamic padding, -100 labels, ids, left truncation of histories, target-length errors."""

import pytest
import torch

from modeling_peapod import whole_word_ids_from_tokens
from training.collator import PeaPODDataCollator, truncate_source_left

KEYS = {"input_ids", "attention_mask", "whole_word_ids", "user_ids", "task_ids", "labels"}


def row(tokenizer, source_text, target_text, user_id=1, task_id=0, **extra):
    input_ids = tokenizer(source_text).input_ids
    return {
        "input_ids": input_ids,
        "whole_word_ids": whole_word_ids_from_tokens(tokenizer.convert_ids_to_tokens(input_ids)),
        "labels": tokenizer(target_text).input_ids,
        "user_id": user_id,
        "task_id": task_id,
        **extra,
    }


def test_pads_each_batch_to_its_longest_row(tokenizer):
    rows = [
        row(tokenizer, "user_3 bought item_12 , item_7 . next ?", "13", user_id=3, task_id=0, source="ignored"),
        row(tokenizer, "explain item_5 for user_9", "it is light and works well", user_id=9, task_id=2),
    ]
    batch = PeaPODDataCollator(tokenizer)(rows)
    assert set(batch) == KEYS
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    lengths = [len(r["input_ids"]) for r in rows]
    assert batch["input_ids"].shape == (2, max(lengths))
    for index, r in enumerate(rows):
        n = lengths[index]
        assert batch["input_ids"][index, :n].tolist() == r["input_ids"]
        assert (batch["input_ids"][index, n:] == tokenizer.pad_token_id).all()
        assert batch["attention_mask"][index].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert batch["whole_word_ids"][index, :n].tolist() == r["whole_word_ids"]
        assert (batch["whole_word_ids"][index, n:] == 0).all()
        t = len(r["labels"])
        assert batch["labels"][index, :t].tolist() == r["labels"]
        assert (batch["labels"][index, t:] == -100).all()
    assert batch["user_ids"].tolist() == [3, 9]
    assert batch["task_ids"].tolist() == [0, 2]
    # Dynamic: a batch of the short row alone is only as long as that row.
    assert PeaPODDataCollator(tokenizer)(rows[1:])["input_ids"].shape == (1, lengths[1])


def test_left_truncation_keeps_recent_items_prompt_end_and_eos(tokenizer):
    history = " , ".join(f"item_{item}" for item in range(101, 121))  # oldest first
    r = row(tokenizer, f"user_4 bought {history} . what is next ?", "121", user_id=4)
    full = len(r["input_ids"])
    limit = full - 7  # cuts into the history
    batch = PeaPODDataCollator(tokenizer, max_source_length=limit)([r])
    kept = batch["input_ids"][0].tolist()
    assert len(kept) <= limit and kept[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(kept, skip_special_tokens=True)
    assert text.endswith("item_120 . what is next ?")  # most recent item and the prompt's end stay
    assert "user_4" not in text and "item_101" not in text  # the oldest part went
    # The whole-word ids of what is kept are what the kept tokens themselves give (spans renumbered from 1).
    expected = whole_word_ids_from_tokens(tokenizer.convert_ids_to_tokens(kept))
    assert batch["whole_word_ids"][0].tolist() == expected
    assert expected[0] in (0, 1) and max(expected) >= 2


def test_left_cut_inside_an_id_drops_the_partial_id():
    # Tokens: [w, A, A, A, w, B, B, eos] with whole-word ids [0, 1, 1, 1, 0, 2, 2, 0]; keep 6 -> cut inside span 1.
    input_ids = [10, 11, 12, 13, 14, 15, 16, 1]
    whole_word_ids = [0, 1, 1, 1, 0, 2, 2, 0]
    ids, words = truncate_source_left(input_ids, whole_word_ids, 6)
    assert ids == [14, 15, 16, 1] and words == [0, 1, 1, 0]
    # A cut at a span boundary keeps the whole span, renumbered.
    ids, words = truncate_source_left(input_ids, whole_word_ids, 7)
    assert ids == [11, 12, 13, 14, 15, 16, 1] and words == [1, 1, 1, 0, 2, 2, 0]
    # Short enough: unchanged.
    assert truncate_source_left(input_ids, whole_word_ids, 8) == (input_ids, whole_word_ids)


def test_too_long_target_is_an_error_not_a_cut(tokenizer):
    r = row(tokenizer, "explain item_5 for user_9", "a long sentence that will not fit in four tokens", user_id=9)
    with pytest.raises(ValueError, match="max_target_length=4"):
        PeaPODDataCollator(tokenizer, max_target_length=4)([r])
    assert PeaPODDataCollator(tokenizer, max_target_length=len(r["labels"]))([r])["labels"].shape[1] == len(r["labels"])


def test_bad_rows_are_rejected(tokenizer):
    good = row(tokenizer, "user_1 item_2", "2")
    with pytest.raises(ValueError, match="lacks the column"):
        PeaPODDataCollator(tokenizer)([{k: v for k, v in good.items() if k != "task_id"}])
    with pytest.raises(ValueError, match="whole_word_ids has"):
        PeaPODDataCollator(tokenizer)([{**good, "whole_word_ids": good["whole_word_ids"][:-1]}])
    with pytest.raises(ValueError, match="empty batch"):
        PeaPODDataCollator(tokenizer)([])


def test_top_n_prompts_are_never_cut(tokenizer):
    candidates = ", ".join(f"item_{item}" for item in range(100, 140))
    topn = row(tokenizer, f"Recommend one item to user_4 from the candidates: {candidates}", "120", user_id=4,
               task_id=1)
    limit = len(topn["input_ids"]) - 5
    with pytest.raises(ValueError, match=rf"task 1\): the source has {len(topn['input_ids'])} tokens, more than "
                                         rf"max_source_length={limit}"):
        PeaPODDataCollator(tokenizer, max_source_length=limit)([topn])
    sequential = {**topn, "task_id": 0}  # the same length is cut for a history prompt
    assert PeaPODDataCollator(tokenizer, max_source_length=limit)([sequential])["input_ids"].shape[1] <= limit
