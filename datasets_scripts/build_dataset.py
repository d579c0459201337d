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

import os
import re
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
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.exact = self.exact_for(tokenizer)
        self.words: dict[str, tuple[list[int], list[int], int]] = {}  # word -> (ids, local whole-word ids, spans)

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

    def _learn(self, words) -> None:
        new = sorted({word for word in words if word not in self.words})
        if not new:
            return
        for word, ids in zip(new, self.tokenizer(new, add_special_tokens=False, verbose=False)["input_ids"]):
            local = whole_word_ids_from_tokens(self.tokenizer.convert_ids_to_tokens(ids))
            self.words[word] = (ids, local, max(local, default=0))

    def __call__(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """{"input_ids", "whole_word_ids"} of each text (EOS appended), as the tokenizer would give them."""
        if not self.exact:
            input_ids = self.tokenizer(texts, verbose=False)["input_ids"]
            return {"input_ids": input_ids, "whole_word_ids": compute_whole_word_ids(input_ids, self.tokenizer)}
        split = [None if _NOT_RUST_WHITESPACE.search(text) else text.split() for text in texts]
        self._learn(word for words in split if words is not None for word in words)
        eos = self.tokenizer.eos_token_id
        all_ids, all_whole_word_ids = [], []
        for text, words in zip(texts, split):
            if words is None:  # str.split would cut where the tokenizer's WhitespaceSplit does not
                ids = self.tokenizer(text, verbose=False)["input_ids"]
                all_ids.append(ids)
                all_whole_word_ids.append(compute_whole_word_ids([ids], self.tokenizer)[0])
                continue
            ids, whole_word_ids, spans = [], [], 0
            for word in words:
                word_ids, local, word_spans = self.words[word]
                ids += word_ids
                whole_word_ids += [index + spans if index else 0 for index in local]
                spans += word_spans
            all_ids.append(ids + [eos])
            all_whole_word_ids.append(whole_word_ids + [0])
        return {"input_ids": all_ids, "whole_word_ids": all_whole_word_ids}


def _tokenize_batch(batch, pieces: PieceCache):
    # verbose=False (tokenizer fallback): top-n prompts (100 candidates) exceed T5's nominal 512 tokens on purpose;
    # T5's relative positions handle it, so the length warning is noise here.
    encoded = pieces(batch["source"])
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": [[1] * len(ids) for ids in encoded["input_ids"]],
        "whole_word_ids": encoded["whole_word_ids"],
        "labels": pieces(batch["target"])["input_ids"],
    }


def prompt_inputs(tokenizer, source: str, user: int, task: str, target: str = "") -> dict:
    """One prompt as a model-input row, tokenised exactly as the prepared datasets are (`input_ids`,
    `attention_mask`, `whole_word_ids`, `labels`, `user_id`, `task_id`): what `PeaPODDataCollator` takes."""
    encoded = _tokenize_batch({"source": [source], "target": [target]}, PieceCache(tokenizer))
    return {name: values[0] for name, values in encoded.items()} | {"user_id": user, "task_id": TASKS.index(task)}


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
            name: dataset.map(
                _tokenize_batch,
                batched=True,
                batch_size=batch_size,
                fn_kwargs={"pieces": pieces},
                features=features,
                num_proc=num_proc if num_proc and len(dataset) > batch_size else None,
                new_fingerprint=Hasher.hash([dataset._fingerprint, tokenizer_hash, "peapod-tokenize-v1", batch_size]),
                desc=f"tokenising {name}",
            )
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
    samples = build_samples(histories, num_items, negatives, explanations, seed)
    text = DatasetDict({name: Dataset.from_dict(columns, features=TEXT_FEATURES) for name, columns in samples.items()})
    return tokenize_dataset_dict(text, tokenizer, num_proc=num_proc)


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
