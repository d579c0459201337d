"""Prepared splits -> a tokenised `datasets.DatasetDict` of the three tasks (SPEC §2), and its dataset card.

Splits are named `{task}_{split}` for task in ("sequential", "topn", "explanation") and split in
("train", "validation", "test"); the explanation splits exist only when explanation data does. Columns:

* `task` (str), `task_id` (int: 0 sequential, 1 topn, 2 explanation), `user_id`, `item_id` (the target or the
  explained item), `source` (the prompt), `target` (bare item id string, or the explanation sentence),
  `candidates` (list[int], the 100 shuffled top-n candidates, empty for other tasks), `feature` (the explained
  feature, empty for other tasks);
* `input_ids`, `attention_mask`, `whole_word_ids` (modeling_peapod.compute_whole_word_ids) and `labels`:
  unpadded; the collator pads (labels with -100).

Training samples (all random draws seeded, so a (data, seed) pair gives the same dataset):
* sequential: every position t >= 1 of the training history items[:-2] predicts items[t] from the up to 20
  items before it;
* top-n: one sample per training positive with 99 fresh negatives never in the user's (full) history, the 100
  candidates shuffled;
* explanation: one sample per training review;
* each sample's template is drawn at random from the task's training templates.
Validation/test: the plain template; sequential predicts items[-2] from items[:-2] and items[-1] from
items[:-1]; top-n uses the fixed negative files.
"""

from __future__ import annotations

import gc
import os
import re
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value

from modeling_peapod import compute_whole_word_ids, whole_word_ids_from_tokens

from .splits import NUM_NEGATIVES, LeaveOneOut, leave_one_out, sample_negatives
from .templates import EVAL_TEMPLATES, TASKS, TRAIN_TEMPLATES, render

SPLITS = ("train", "validation", "test")
TEXT_FEATURES = Features(
    {
        "task": Value("string"),
        "task_id": Value("int64"),
        "user_id": Value("int64"),
        "item_id": Value("int64"),
        "source": Value("string"),
        "target": Value("string"),
        "candidates": List(Value("int64")),
        "feature": Value("string"),
    }
)
TOKEN_FEATURES = {
    "input_ids": List(Value("int32")),
    "attention_mask": List(Value("int8")),
    "whole_word_ids": List(Value("int32")),
    "labels": List(Value("int32")),
}
# Offsets of the per-purpose random streams (see splits.SEED_OFFSETS for the split-level ones).
SAMPLING_SEED_OFFSETS = {"sequential": 10, "topn": 11, "explanation": 12, "topn_negatives": 13, "eval_shuffle": 14}


def _new_columns() -> dict[str, list]:
    return {name: [] for name in TEXT_FEATURES}


def _append(columns, task, user, item, source, target, candidates=(), feature=""):
    columns["task"].append(task)
    columns["task_id"].append(TASKS.index(task))
    columns["user_id"].append(user)
    columns["item_id"].append(item)
    columns["source"].append(source)
    columns["target"].append(target)
    columns["candidates"].append(list(candidates))
    columns["feature"].append(feature)


def _pick(rng: np.random.Generator, templates):
    return templates[int(rng.integers(len(templates)))]


def topn_candidates(rng: np.random.Generator, target: int, excluded: set[int], num_items: int) -> list[int]:
    """A top-n training sample's 100 candidates: `target` and 99 negatives drawn uniformly from the items outside
    `excluded` (the user's full history), shuffled. `peapod-train --topn_negatives fresh` draws with it too."""
    candidates = np.array([target, *sample_negatives(rng, excluded, num_items, NUM_NEGATIVES)])
    return rng.permutation(candidates).tolist()


def build_samples(
    histories: dict[int, list[int]],
    num_items: int,
    negatives: dict[str, dict[int, list[int]]],
    explanations: dict[str, list[dict]] | None,
    seed: int,
    split: LeaveOneOut | None = None,
) -> dict[str, dict[str, list]]:
    """The untokenised samples of every `{task}_{split}` as column dicts (module docstring)."""
    split = split or leave_one_out(histories)
    users = sorted(histories)
    out: dict[str, dict[str, list]] = {}

    # Sequential.
    rng = np.random.default_rng([seed, SAMPLING_SEED_OFFSETS["sequential"]])
    train = _new_columns()
    for user in users:
        items = split.train[user]
        for t in range(1, len(items)):
            source = render(_pick(rng, TRAIN_TEMPLATES["sequential"]), user, history=items[:t])
            _append(train, "sequential", user, items[t], source, str(items[t]))
    out["sequential_train"] = train
    for name, history_end, targets in (("validation", -2, split.validation), ("test", -1, split.test)):
        columns = _new_columns()
        for user in users:
            source = render(EVAL_TEMPLATES["sequential"], user, history=histories[user][:history_end])
            _append(columns, "sequential", user, targets[user], source, str(targets[user]))
        out[f"sequential_{name}"] = columns

    # Top-n.
    rng = np.random.default_rng([seed, SAMPLING_SEED_OFFSETS["topn"]])
    negative_rng = np.random.default_rng([seed, SAMPLING_SEED_OFFSETS["topn_negatives"]])
    train = _new_columns()
    for user in users:
        seen = set(histories[user])
        for item in split.train[user]:
            candidates = topn_candidates(negative_rng, item, seen, num_items)
            source = render(_pick(rng, TRAIN_TEMPLATES["topn"]), user, candidates=candidates)
            _append(train, "topn", user, item, source, str(item), candidates)
    out["topn_train"] = train
    rng = np.random.default_rng([seed, SAMPLING_SEED_OFFSETS["eval_shuffle"]])
    for name, targets in (("validation", split.validation), ("test", split.test)):
        columns = _new_columns()
        for user in users:
            candidates = rng.permutation(np.array([targets[user], *negatives[name][user]])).tolist()
            source = render(EVAL_TEMPLATES["topn"], user, candidates=candidates)
            _append(columns, "topn", user, targets[user], source, str(targets[user]), candidates)
        out[f"topn_{name}"] = columns

    # Explanation.
    if explanations is not None:
        rng = np.random.default_rng([seed, SAMPLING_SEED_OFFSETS["explanation"]])
        for name in SPLITS:
            columns = _new_columns()
            for record in explanations[name]:
                if name == "train":
                    template = _pick(rng, TRAIN_TEMPLATES["explanation"])
                else:
                    template = EVAL_TEMPLATES["explanation"]
                source = render(template, record["user"], item=record["item"])
                _append(
                    columns, "explanation", record["user"], record["item"], source, record["explanation"],
                    feature=record["feature"],
                )
            out[f"explanation_{name}"] = columns
    return out


# Whitespace to Python's str.split but not to Rust's char::is_whitespace (the tokenizer's WhitespaceSplit).
_NOT_RUST_WHITESPACE = re.compile("[\x1c-\x1f]")


class PieceCache:
    """Token ids and whole-word ids of texts, assembled from each distinct whitespace-separated word's tokens.

    T5's tokenizer has no normaliser and pre-tokenises with WhitespaceSplit + Metaspace, so a text's tokens are
    exactly the concatenation of its words' tokens (each word as "▁word") plus EOS, and an ID never spans two
    words, so whole-word ids (modeling_peapod.whole_word_ids_from_tokens) assemble the same way with the span
    counter carried over. Prompts repeat the same few thousand words ("item_123,", templates' words), so each is
    tokenised once instead of once per prompt (tests/test_data_prepare.py proves equality with the tokenizer).
    For any other tokenizer (`exact_for` False) it calls the tokenizer itself.

    The assembly is array work (`encode`): a batch's words become row numbers of a table of the known words, and
    numpy gathers their tokens, shifts their whole-word ids and inserts the EOS; Python touches each word once,
    for one dict lookup (`benchmarks/prepare_throughput.py` compares it with the tokenizer on full Beauty).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.exact = self.exact_for(tokenizer)
        self.words: dict[str, int] = {}  # word -> its row in the per-word tables below
        # Per known word: where its tokens start in `_token_ids` / `_local_ids` (its token ids and local whole-word
        # ids, stored back to back), how many there are, and how many whole words it counts (its largest local id).
        self._token_ids = np.zeros(0, dtype=np.int32)
        self._local_ids = np.zeros(0, dtype=np.int32)
        self._start = np.zeros(0, dtype=np.int64)
        self._length = np.zeros(0, dtype=np.int64)
        self._spans = np.zeros(0, dtype=np.int64)

    @staticmethod
    def exact_for(tokenizer) -> bool:
        import json

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return False
        model = json.loads(backend.to_str())
        steps = (model.get("pre_tokenizer") or {}).get("pretokenizers", [])
        post = model.get("post_processor") or {}
        return (
            model.get("normalizer") is None
            and [step.get("type") for step in steps] == ["WhitespaceSplit", "Metaspace"]
            and steps[1].get("prepend_scheme") == "always" and steps[1].get("split") is True
            and post.get("type") == "TemplateProcessing"
            and [next(iter(part)) for part in post.get("single", [])] == ["Sequence", "SpecialToken"]
            and tokenizer.eos_token_id is not None
        )

    def _learn(self, words: set[str]) -> None:
        new = sorted(words.difference(self.words))
        if not new:
            return
        ids = self.tokenizer(new, add_special_tokens=False, verbose=False)["input_ids"]
        local = [whole_word_ids_from_tokens(self.tokenizer.convert_ids_to_tokens(word_ids)) for word_ids in ids]
        length = np.array([len(word_ids) for word_ids in ids], dtype=np.int64)
        self.words.update(zip(new, range(len(self._start), len(self._start) + len(new))))
        self._start = np.concatenate([self._start, len(self._token_ids) + np.cumsum(length) - length])
        self._length = np.concatenate([self._length, length])
        self._spans = np.concatenate([self._spans, [max(word_local, default=0) for word_local in local]])
        self._token_ids = np.concatenate([self._token_ids, np.fromiter(chain.from_iterable(ids), np.int32)])
        self._local_ids = np.concatenate([self._local_ids, np.fromiter(chain.from_iterable(local), np.int32)])

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, whole_word_ids, offsets): every text's ids back to back (int32, EOS appended, as the
        tokenizer gives them), text i being [offsets[i], offsets[i + 1])."""
        split = [None if _NOT_RUST_WHITESPACE.search(text) else text.split() for text in texts]
        if not self.exact or None in split:  # str.split would cut where the tokenizer's WhitespaceSplit does not
            return self._encode_by_tokenizer(texts)
        words = list(chain.from_iterable(split))
        self._learn(set(words))
        token_ids, local_ids, start, length, spans = (self._token_ids, self._local_ids, self._start, self._length,
                                                      self._spans)
        rows = np.fromiter(map(self.words.__getitem__, words), dtype=np.int64, count=len(words))
        words_per_text = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
        word_length, word_spans = length[rows], spans[rows]
        # Where each word's tokens come from in the tables, token by token.
        first_output = np.cumsum(word_length) - word_length
        source = np.arange(int(word_length.sum())) + np.repeat(start[rows] - first_output, word_length)
        # The whole-word counter carried over within a text: the spans of the text's earlier words.
        spans_before = np.cumsum(word_spans) - word_spans
        text_first_word = np.cumsum(words_per_text) - words_per_text
        spans_before -= np.repeat(np.append(spans_before, 0)[text_first_word], words_per_text)
        local = local_ids[source]
        whole = np.where(local > 0, local + np.repeat(spans_before, word_length).astype(np.int32), 0)
        # Every text gets one more token, the EOS (whole-word id 0), after its own.
        text_of_word = np.repeat(np.arange(len(texts)), words_per_text)
        tokens_per_text = np.bincount(text_of_word, weights=word_length, minlength=len(texts)).astype(np.int64) + 1
        offsets = np.concatenate([[0], np.cumsum(tokens_per_text)])
        input_ids = np.full(offsets[-1], self.tokenizer.eos_token_id, dtype=np.int32)
        whole_word_ids = np.zeros(offsets[-1], dtype=np.int32)
        target = np.arange(len(source)) + np.repeat(np.arange(len(texts)), tokens_per_text - 1)
        input_ids[target] = token_ids[source]
        whole_word_ids[target] = whole
        return input_ids, whole_word_ids, offsets

    def _encode_by_tokenizer(self, texts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        input_ids = self.tokenizer(texts, verbose=False)["input_ids"]
        whole_word_ids = compute_whole_word_ids(input_ids, self.tokenizer)
        offsets = np.concatenate([[0], np.cumsum([len(ids) for ids in input_ids])])
        flat = (np.fromiter(chain.from_iterable(values), dtype=np.int32, count=offsets[-1])
                for values in (input_ids, whole_word_ids))
        return *flat, offsets

    def __call__(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """{"input_ids", "whole_word_ids"} of each text (EOS appended), as the tokenizer would give them."""
        input_ids, whole_word_ids, offsets = self.encode(texts)
        bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
        return {"input_ids": [input_ids[a:b].tolist() for a, b in bounds],
                "whole_word_ids": [whole_word_ids[a:b].tolist() for a, b in bounds]}


def _list_array(values: np.ndarray, offsets: np.ndarray):
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(values))


def _tokenize_batch(batch, pieces: PieceCache):
    """A batch (a pyarrow Table of text columns) with `TOKEN_FEATURES` appended, as Arrow arrays: `datasets` writes
    them as they are (Python lists of full Beauty's ~50M token ids took ~13 s to convert)."""
    # verbose=False (tokenizer fallback): top-n prompts (100 candidates) exceed T5's nominal 512 tokens on purpose;
    # T5's relative positions handle it, so the length warning is noise here.
    input_ids, whole_word_ids, offsets = pieces.encode(batch.column("source").to_pylist())
    labels, _, label_offsets = pieces.encode(batch.column("target").to_pylist())
    columns = {
        "input_ids": _list_array(input_ids, offsets),
        "attention_mask": _list_array(np.ones(len(input_ids), dtype=np.int8), offsets),
        "whole_word_ids": _list_array(whole_word_ids, offsets),
        "labels": _list_array(labels, label_offsets),
    }
    for name, values in columns.items():
        batch = batch.append_column(name, values)
    return batch


def prompt_inputs(tokenizer, source: str, user: int, task: str, target: str = "") -> dict:
    """One prompt as a model-input row, tokenised exactly as the prepared datasets are (`input_ids`,
    `attention_mask`, `whole_word_ids`, `labels`, `user_id`, `task_id`): what `PeaPODDataCollator` takes."""
    import pyarrow as pa

    encoded = _tokenize_batch(pa.table({"source": [source], "target": [target]}), PieceCache(tokenizer))
    return {name: encoded.column(name)[0].as_py() for name in TOKEN_FEATURES} | {
        "user_id": user, "task_id": TASKS.index(task)}


def tokenizer_fingerprint(tokenizer) -> str:
    """A cheap, content-based hash of a tokenizer for `.map` fingerprints.

    Letting `datasets` hash the tokenizer object itself dill-pickles it on every `.map` call (seconds per split);
    its serialised vocabulary and special tokens identify it just as well.
    """
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return Hasher.hash([type(tokenizer).__name__, content, tokenizer.all_special_tokens])


def tokenize_dataset_dict(
    dataset_dict: DatasetDict, tokenizer, num_proc: int | None = None, batch_size: int = 1000
) -> DatasetDict:
    """Add input_ids, attention_mask, whole_word_ids, labels with a batched `.map` per split.

    Each split's fingerprint is a function of its input fingerprint and the tokenizer's content, so a cached
    result is reused exactly when both are unchanged.
    """
    from datasets.fingerprint import Hasher

    features = Features({**TEXT_FEATURES, **TOKEN_FEATURES})
    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    pieces = PieceCache(tokenizer)  # one word cache shared by every split (copied to each worker with num_proc)
    return DatasetDict(
        {
            # The Arrow format in and out (`_tokenize_batch`), then no format: the saved dataset reads as before.
            name: dataset.with_format("arrow").map(
                _tokenize_batch,
                batched=True,
                batch_size=batch_size,
                fn_kwargs={"pieces": pieces},
                features=features,
                num_proc=num_proc if num_proc and len(dataset) > batch_size else None,
                new_fingerprint=Hasher.hash([dataset._fingerprint, tokenizer_hash, "peapod-tokenize-v1", batch_size]),
                desc=f"tokenising {name}",
            ).with_format(None)
            for name, dataset in dataset_dict.items()
        }
    )


def build_dataset_dict(
    histories: dict[int, list[int]],
    num_items: int,
    negatives: dict[str, dict[int, list[int]]],
    explanations: dict[str, list[dict]] | None,
    tokenizer,
    seed: int,
    num_proc: int | None = None,
) -> DatasetDict:
    """`build_samples` + `tokenize_dataset_dict`: the DatasetDict a prepared folder stores under dataset/."""
    with cyclic_gc_paused():
        samples = build_samples(histories, num_items, negatives, explanations, seed)
        text = DatasetDict({name: Dataset.from_dict(columns, features=TEXT_FEATURES)
                            for name, columns in samples.items()})
        del samples
        return tokenize_dataset_dict(text, tokenizer, num_proc=num_proc)


@contextmanager
def cyclic_gc_paused():
    """Python's cycle collector off inside (and back as it was after): building millions of small lists and
    strings, none of them in a reference cycle, triggers full collections that each walk every live object, a
    cost that grows faster than the data (measured by hand while writing it: full Beauty's samples, text columns and
    tokenisation 41 s -> 35 s, twice Beauty 88 s -> 77 s; `benchmarks/prepare_scaling.py` shows the whole prepare).
    Reference counting still frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def write_dataset_card(path: str | os.PathLike, name: str, statistics: dict, provenance: list[str]) -> None:
    """README.md of a prepared folder: YAML metadata plus statistics and provenance, via huggingface_hub."""
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        pretty_name=f"PeaPOD prepared data: {name}",
        language="en",
        task_categories=["text-generation"],
        tags=["recommendation", "generative-recommendation", "peapod", "p5"],
        configs=[{"config_name": "default", "data_dir": "dataset"}],
    )
    split_rows = "\n".join(f"| `{split}` | {size:,} |" for split, size in statistics["split_sizes"].items())
    provenance_lines = "\n".join(f"- {line}" for line in provenance)
    content = f"""---
{card_data.to_yaml()}
---

# PeaPOD prepared data: {name}

Prepared by `peapod-prepare` for PeaPOD's three tasks (sequential recommendation, top-n recommendation,
explanation generation). Load with `datasets_scripts.load_prepared(path)` or
`datasets.load_from_disk(path + "/dataset")`.

## Statistics

| | count |
| --- | --- |
| users | {statistics["num_users"]:,} |
| items | {statistics["num_items"]:,} |
| interactions | {statistics["num_interactions"]:,} |

| split | samples |
| --- | --- |
{split_rows}

## Provenance

{provenance_lines}

## Protocol

Leave-one-out: items[:-2] train, items[-2] validation, items[-1] test. Top-n candidates: the positive plus 99
negatives never in the user's history (validation/test: fixed, seeded files `negatives_validation.txt`,
`negatives_test.txt`, regenerated because P5's negative file is not public). Explanations: 8:1:1 split, every user
and item of validation/test present in train, no sequential/top-n validation/test pair in explanation train.
User embeddings and neighbour table in `user_table.safetensors` are trained on the training interactions only.
"""
    DatasetCard(content).save(Path(path))
