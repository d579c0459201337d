"""`PieceCache` (datasets_scripts/build_dataset.py) assembles prompts' token ids and whole-word ids from cached
per-word tokens: it must equal the tokenizer on real prompts of every template and task."""

import random

import pytest

from datasets_scripts.build_dataset import PieceCache, build_samples
from datasets_scripts.splits import (
    enforce_explanation_rules,
    fixed_negatives,
    leave_one_out,
)
from datasets_scripts.synthetic import SyntheticConfig, generate_synthetic
from datasets_scripts.templates import EVAL_TEMPLATES, TRAIN_TEMPLATES, render
from modeling_peapod import compute_whole_word_ids


def _assert_exact(tokenizer, texts):
    pieces = PieceCache(tokenizer)
    assert pieces.exact
    got = pieces(texts)
    expected = tokenizer(texts, verbose=False)["input_ids"]
    assert got["input_ids"] == expected
    assert got["whole_word_ids"] == compute_whole_word_ids(expected, tokenizer)
    assert got == pieces(texts)  # from the filled cache too


def test_every_template_and_odd_text(tokenizer):
    rng = random.Random(0)
    texts = []
    for templates in (*TRAIN_TEMPLATES.values(), *({task: t} for task, t in EVAL_TEMPLATES.items())):
        for template in templates.values() if isinstance(templates, dict) else templates:
            for _ in range(3):
                texts.append(render(template, rng.randint(1, 30000), history=rng.sample(range(1, 13000), 20),
                                    candidates=rng.sample(range(1, 13000), 100), item=rng.randint(1, 13000)))
    texts += [
        "", "   ", "user_12:item_3,(item_45) x", "item_1 item_1item_2 user_x_3 titem_4", "Great  sound,\tnice\n",
        "Ünïcödé café — ok", "a\u00a0b\u2003c", "sep\x1cfield item_5", "</s> item_7 <pad>",
    ]
    _assert_exact(tokenizer, texts)  # "\x1c" sends this batch to the tokenizer itself (str.split cuts there)
    assembled = [text for text in texts if "\x1c" not in text]  # the array path, empty texts included
    _assert_exact(tokenizer, assembled)
    _assert_exact(tokenizer, ["", *assembled[:3], "   "])


def test_prepared_samples_of_a_real_catalogue(tokenizer, shared_data_dir):
    """Real Toys histories (a slice), every task's train/validation/test prompts and targets."""
    path = shared_data_dir / "amazon" / "toys" / "sequential.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    histories = {}
    for line in path.read_text().splitlines()[:60]:
        user, *items = map(int, line.split())
        histories[user] = items
    num_items = max(max(items) for items in histories.values())
    negatives = {name: fixed_negatives(histories, num_items, name, 0) for name in ("validation", "test")}
    synthetic = generate_synthetic(SyntheticConfig(num_users=20, seed=0))
    explanations, _ = enforce_explanation_rules(synthetic.explanations, leave_one_out(synthetic.histories))
    samples = build_samples(histories, num_items, negatives, None, seed=0)
    samples |= {name: columns for name, columns in build_samples(synthetic.histories, synthetic.num_items,
                {n: fixed_negatives(synthetic.histories, synthetic.num_items, n, 0) for n in ("validation", "test")},
                explanations, seed=0).items() if name.startswith("explanation")}
    assert {name.split("_")[0] for name in samples} == {"sequential", "topn", "explanation"}
    texts = [text for columns in samples.values() for key in ("source", "target") for text in columns[key]]
    _assert_exact(tokenizer, texts)
