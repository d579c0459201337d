"""Tokenisation of a prepared dataset: the tokenizer per prompt (old) vs `PieceCache` (new), side by side (by hand).

    python benchmarks/prepare_throughput.py --data ../shared/data/amazon/beauty --sample 4000

Builds every `{task}_{split}` sample of the P5-format data (`build_samples`, as `peapod-prepare` does), then
tokenises every row of each split with `PieceCache` (starting from an empty word cache, so learning each
distinct word is included) and a random `--sample` of its rows with the tokenizer (input ids, whole-word ids,
labels: what `tokenize_dataset_dict` stores; its time scaled to the split), checks the outputs are equal, and
prints rows/s and the ratio. (The `datasets.map` around it, which writes the Arrow files, is not included.)
`--scale 2` doubles the users (each user copied under a new id, items unchanged) to check linear growth.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from transformers import AutoTokenizer

from datasets_scripts.build_dataset import PieceCache, build_samples
from datasets_scripts.splits import fixed_negatives
from modeling_peapod import compute_whole_word_ids


def old_tokenize(tokenizer, sources, targets):
    encoded = tokenizer(sources, verbose=False)["input_ids"]
    labels = tokenizer(text_target=targets, verbose=False)["input_ids"]
    return encoded, compute_whole_word_ids(encoded, tokenizer), labels


def new_tokenize(pieces, sources, targets):
    encoded = pieces(sources)
    return encoded["input_ids"], encoded["whole_word_ids"], pieces(targets)["input_ids"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/amazon/beauty")
    parser.add_argument("--tokenizer", default="../shared/tokenizers/t5")
    parser.add_argument("--sample", type=int, default=4000, help="rows per split timed on both paths")
    parser.add_argument("--scale", type=int, default=1, help="copy every user this many times")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    histories = {}
    for line in (Path(args.data) / "sequential.txt").read_text().splitlines():
        user, *items = map(int, line.split())
        histories[user] = items
    num_users = len(histories)
    histories = {user + copy * num_users: items for copy in range(args.scale) for user, items in histories.items()}
    num_items = max(max(items) for items in histories.values())
    started = time.perf_counter()
    negatives = {name: fixed_negatives(histories, num_items, name, args.seed) for name in ("validation", "test")}
    samples = build_samples(histories, num_items, negatives, None, args.seed)
    build_seconds = time.perf_counter() - started
    rng = random.Random(args.seed)
    results = {"data": args.data, "scale": args.scale, "users": len(histories), "sample_rows_per_split": args.sample,
               "build_samples_seconds": round(build_seconds, 1), "splits": {}}
    old_total = new_total = 0.0
    pieces = PieceCache(tokenizer)  # empty: the new path's timing includes learning every distinct word
    for name, columns in samples.items():
        # New: every row of the split (its real cost). Old: a random sample, scaled to the split (no warm-up).
        started = time.perf_counter()
        new = new_tokenize(pieces, columns["source"], columns["target"])
        new_seconds = time.perf_counter() - started
        rows = sorted(rng.sample(range(len(columns["source"])), min(args.sample, len(columns["source"]))))
        sources = [columns["source"][row] for row in rows]
        targets = [columns["target"][row] for row in rows]
        started = time.perf_counter()
        old = old_tokenize(tokenizer, sources, targets)
        old_seconds = (time.perf_counter() - started) * len(columns["source"]) / len(rows)
        if old != tuple([values[row] for row in rows] for values in new):
            raise SystemExit(f"{name}: PieceCache differs from the tokenizer")
        old_total += old_seconds
        new_total += new_seconds
        results["splits"][name] = {"rows": len(columns["source"]),
                                   "old_rows_per_s": round(len(columns["source"]) / old_seconds),
                                   "new_rows_per_s": round(len(columns["source"]) / new_seconds),
                                   "speedup": round(old_seconds / new_seconds, 1)}
    results["tokenisation_seconds"] = {"old_projected": round(old_total), "new_measured": round(new_total, 1),
                                       "speedup": round(old_total / new_total, 1)}
    results["cached_words"] = len(pieces.words)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
