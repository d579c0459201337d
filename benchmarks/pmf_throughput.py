"""PMF training, cornac's float64 loop vs the numba float32 loop (`fast_pmf`), side by side (by hand).

    OMP_NUM_THREADS=1 python benchmarks/pmf_throughput.py --data ../shared/data/amazon/beauty --epochs 100

Both train the paper's PMF (k 512, 100 epochs, lr 1e-3, lambda 1e-3, one sampled zero per observed item) on the
same leave-one-out training interactions of a P5-format folder (or a planted synthetic variant, `--synthetic
user`), from the same initial factors. Prints, per implementation, the training time (building cornac's training set included;
the numba loop's first-call compilation, or cache load, timed apart), and what the factors are for: the PMF dot product's top-n HR@10 / NDCG@10 on every
user's test item among its 100 fixed candidates (the evaluation protocol), and the neighbour diagnostic (share of
users whose validation item a 20-nearest neighbour took). `--output FILE` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from datasets_scripts import splits, user_embeddings
from datasets_scripts.fast_pmf import fit_pmf
from datasets_scripts.neighbor_diagnostic import neighbor_hit_rate
from datasets_scripts.p5_format import read_p5_dir
from datasets_scripts.synthetic import synthetic_data
from training.evaluation.baselines import PMFBaseline, recommend_topn
from training.evaluation.metrics import load_metric


def ranking_quality(user_table, item_table, loo, negatives, top_k: int = 10) -> dict:
    """HR@k and NDCG@k (the shipped `ranking` metric) of the PMF dot product on each user's test item among its
    fixed candidates."""
    users = sorted(loo.test)
    candidates = np.array([[loo.test[user], *negatives[user]] for user in users])
    ranked = recommend_topn(PMFBaseline(user_table, item_table), users, candidates, top_k=top_k)
    scores = load_metric("ranking").compute(predictions=ranked, references=[loo.test[user] for user in users],
                                            k_values=[top_k])
    return {name: scores[name] for name in (f"hr@{top_k}", f"ndcg@{top_k}")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/amazon/beauty", help="a P5-format folder")
    parser.add_argument("--synthetic", choices=["default", "history", "user", "neighbors"],
                        help="a seeded synthetic variant instead of --data")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--implementations", nargs="+", default=["numba", "cornac"],
                        choices=user_embeddings.PMF_IMPLEMENTATIONS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args()
    data = synthetic_data(args.synthetic, seed=args.seed) if args.synthetic else read_p5_dir(args.data)
    loo = splits.leave_one_out(data.histories)
    negatives = splits.fixed_negatives(data.histories, data.num_items, "test", args.seed)
    train_set = user_embeddings.cornac_train_set(loo.train, data.num_users, data.num_items, args.seed,
                                                 user_embeddings.PMF_NEGATIVES_PER_POSITIVE)
    results = {"data": args.synthetic and f"synthetic-{args.synthetic}" or args.data, "users": data.num_users,
               "items": data.num_items, "ratings": len(train_set.uir_tuple[2]), "k": args.k, "epochs": args.epochs,
               "seed": args.seed}
    if "numba" in args.implementations:  # compile on a one-rating set first, so the timing below is the training
        started = time.perf_counter()
        tiny = user_embeddings.cornac_train_set({1: [1]}, 1, 2, 0, 1)
        fit_pmf(tiny, k=4, max_iter=1, learning_rate=1e-3, lambda_reg=1e-3, seed=0)
        results["numba_first_call_seconds"] = round(time.perf_counter() - started, 2)
    for implementation in args.implementations:
        started = time.perf_counter()
        user_table, item_table = user_embeddings.train_pmf(
            loo.train, data.num_users, data.num_items, k=args.k, seed=args.seed, max_iter=args.epochs,
            implementation=implementation,
        )
        seconds = time.perf_counter() - started
        neighbors = user_embeddings.build_neighbor_table(user_table, 20)
        results[implementation] = {
            "seconds": round(seconds, 2),
            **{name: round(value, 4) for name, value in ranking_quality(user_table, item_table, loo, negatives).items()},
            "neighbor_diagnostic": round(neighbor_hit_rate(neighbors, loo.train, loo.validation), 4),
        }
        print(implementation, results[implementation], flush=True)
    if {"numba", "cornac"} <= set(results):
        results["cornac_over_numba_time"] = round(results["cornac"]["seconds"] / results["numba"]["seconds"], 2)
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
