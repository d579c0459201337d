"""Training throughput of PeaPOD against a plain T5 of the same shape, on the same batches (run by hand).

    python benchmarks/train_throughput.py --shape mini --data ../shared/data/amazon/beauty --steps 6 --rounds 3
    python benchmarks/train_throughput.py --padding_only --padding_users 2000   # padding waste per task only

Batches are real prompts: Beauty histories rendered with the evaluation templates (sequential: up to 20 items;
top-n: the user plus 100 candidates), tokenised with the T5 tokenizer, batch size 16 by default. Each step is a
full forward + backward + AdamW update. PeaPOD's overhead is its prompt encoder, task prompts, whole-word
embeddings and the L_t + L_p longer encoder input. The script also prints the estimated time of one Beauty
epoch (every training sample of the sequential and top-n tasks once) at the measured rates.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from configuration_peapod import NAMED_SHAPES
from datasets_scripts.build_dataset import PieceCache, build_samples
from datasets_scripts.splits import fixed_negatives
from datasets_scripts.templates import EVAL_TEMPLATES, render
from modeling_peapod import PeaPODForConditionalGeneration, compute_whole_word_ids
from training.sampler import TaskAlternatingBatchSampler


def read_histories(path: Path) -> dict[int, list[int]]:
    histories = {}
    for line in (path / "sequential.txt").read_text().splitlines():
        user, *items = map(int, line.split())
        histories[user] = items
    return histories


def make_batches(histories, num_items, tokenizer, task, batch_size, count, seed):
    rng = random.Random(seed)
    users = rng.sample(sorted(histories), batch_size * count)
    batches = []
    for start in range(0, len(users), batch_size):
        sources, targets = [], []
        for user in users[start:start + batch_size]:
            train = histories[user][:-2]
            if task == "sequential":
                sources.append(render(EVAL_TEMPLATES["sequential"], user, history=train[:-1]))
                targets.append(str(train[-1]))
            else:
                seen = set(histories[user])
                negatives = rng.sample([i for i in range(1, num_items + 1) if i not in seen], 99)
                candidates = negatives + [train[-1]]
                rng.shuffle(candidates)
                sources.append(render(EVAL_TEMPLATES["topn"], user, candidates=candidates))
                targets.append(str(train[-1]))
        encoded = tokenizer(sources, return_tensors="pt", padding=True)
        labels = tokenizer(targets, return_tensors="pt", padding=True).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        batches.append({
            "input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask, "labels": labels,
            "whole_word_ids": compute_whole_word_ids(encoded.input_ids, tokenizer),
            "user_ids": torch.tensor(users[start:start + batch_size]),
            "task_ids": torch.full((len(sources),), 0 if task == "sequential" else 1),
        })
    return batches


def padding_waste(histories, num_items, tokenizer, batch_size, seed, num_users, group_rounds=50):
    """Per task, padded / real input tokens of one epoch of training batches, task-alternated as in training,
    without and with length grouping (`TaskAlternatingBatchSampler(lengths=...)`), on the real training prompts
    (`build_samples`, training templates) of `num_users` random users."""
    users = random.Random(seed).sample(sorted(histories), min(num_users, len(histories)))
    subset = {user: histories[user] for user in users}
    negatives = {name: fixed_negatives(subset, num_items, name, seed) for name in ("validation", "test")}
    samples = build_samples(subset, num_items, negatives, None, seed)
    pieces = PieceCache(tokenizer)
    tasks, lengths = [], []
    for task_id, task in enumerate(("sequential", "topn")):
        sources = samples[f"{task}_train"]["source"]
        tasks += [task_id] * len(sources)
        lengths += [len(ids) for ids in pieces(sources)["input_ids"]]
    report = {}
    for label, grouped in (("random", None), ("length_grouped", lengths)):
        sampler = TaskAlternatingBatchSampler(tasks, batch_size, seed=seed, lengths=grouped, group_rounds=group_rounds)
        padded = {0: 0, 1: 0}
        real = {0: 0, 1: 0}
        for batch in sampler:
            longest = max(lengths[row] for row in batch)
            task = tasks[batch[0]]
            real[task] += sum(lengths[row] for row in batch)
            padded[task] += longest * len(batch) - sum(lengths[row] for row in batch)
        for task_id, task in enumerate(("sequential", "topn")):
            report.setdefault(task, {"samples": tasks.count(task_id),
                                     "mean_tokens": round(real[task_id] / tasks.count(task_id), 1)})
            report[task][f"padded_over_real_{label}"] = round(padded[task_id] / real[task_id], 4)
    return report


def samples_per_second(model, batches, peapod: bool, warmup: int = 1) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        inputs = batch if peapod else {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()

    for batch in batches[:warmup]:
        step(batch)
    started = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    elapsed = time.perf_counter() - started
    return sum(len(b["input_ids"]) for b in batches[warmup:]) / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mini", choices=sorted(NAMED_SHAPES))
    parser.add_argument("--data", default="../shared/data/amazon/beauty")
    parser.add_argument("--tokenizer", default="../shared/tokenizers/t5")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=["sequential", "topn"], choices=["sequential", "topn"])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best of each counts")
    parser.add_argument("--padding_users", type=int, default=2000,
                        help="users whose training prompts measure the padding waste (0: skip)")
    parser.add_argument("--padding_only", action="store_true", help="only the padding report (no model, fast)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    histories = read_histories(Path(args.data))
    num_users, num_items = len(histories), max(max(items) for items in histories.values())
    if args.padding_users:
        padding = padding_waste(histories, num_items, tokenizer, args.batch_size, args.seed, args.padding_users)
        print(json.dumps({"padding_waste": padding, "batch_size": args.batch_size, "users": args.padding_users},
                         indent=2))
    if args.padding_only:
        return
    shape = NAMED_SHAPES[args.shape]
    peapod = PeaPODForConditionalGeneration.from_shape(args.shape, num_users=num_users, num_items=num_items,
                                                       user_embedding_dim=512, num_neighbors=20)
    peapod.set_user_table(torch.randn(num_users + 1, 512), torch.randint(1, num_users + 1, (num_users + 1, 20)))
    plain = T5ForConditionalGeneration(T5Config(vocab_size=32128, decoder_start_token_id=0, **shape))
    results = {"shape": args.shape, "batch_size": args.batch_size, "timed_steps": args.steps - 1, "rounds": args.rounds,
               "threads": torch.get_num_threads(), "seed": args.seed}
    for task in args.tasks:
        batches = make_batches(histories, num_items, tokenizer, task, args.batch_size, args.steps, args.seed)
        # Interleaved rounds, best of each: background load on a shared VM only ever slows a round down.
        base = ours = 0.0
        for _ in range(args.rounds):
            base = max(base, samples_per_second(plain, batches, peapod=False))
            ours = max(ours, samples_per_second(peapod, batches, peapod=True))
        results[task] = {"t5_samples_per_s": round(base, 2), "peapod_samples_per_s": round(ours, 2),
                         "overhead_percent": round(100 * (base / ours - 1), 1),
                         "mean_source_tokens": round(float(torch.cat([b["attention_mask"].sum(1).float()
                                                                      for b in batches]).mean()), 1)}
    if len(args.tasks) < 2:
        print(json.dumps(results, indent=2))
        return
    # One epoch of Beauty: sequential = one sample per training position (items[1:-2]); top-n = one per positive.
    sequential_samples = sum(max(len(items) - 3, 0) for items in histories.values())
    topn_samples = sum(len(items) - 2 for items in histories.values())
    epoch_seconds = (sequential_samples / results["sequential"]["peapod_samples_per_s"]
                     + topn_samples / results["topn"]["peapod_samples_per_s"])
    results["epoch_estimate"] = {"sequential_samples": sequential_samples, "topn_samples": topn_samples,
                                 "hours": round(epoch_seconds / 3600, 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
