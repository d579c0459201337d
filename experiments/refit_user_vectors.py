"""Are the fold-in objective's user vectors better PMF user vectors than cornac's? (a lead for issues 10 and 13)

    OMP_NUM_THREADS=1 python experiments/refit_user_vectors.py prepared/synthetic-user-pmf512-n20 [more folders]

For a prepared folder with PMF item factors, every user's vector is solved again from their training items with
the item factors fixed, by the objective `fold_in_users(negatives="expected")` solves (`solve_pmf_users`: the
expectation of PMF's loss over its negative draw, lambda 1e-3, one negative per positive). Both tables are then
compared on the validation items (the test items are never read), for every user:
* the neighbour diagnostic: is the validation item in a training history of the user's n nearest neighbours (n the
  folder's), the prepared table's and the refitted one's, with random neighbours as the reference;
* the PMF dot product's HR@10 over the whole catalogue, the user's training items excluded.
Writes experiments/results/refit-user-vectors.json (one entry per folder) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from datasets_scripts import load_prepared
from datasets_scripts.neighbor_diagnostic import neighbor_hits, random_neighbor_table
from datasets_scripts.splits import leave_one_out
from datasets_scripts.user_embeddings import PMF_LAMBDA_REG, PMF_NEGATIVES_PER_POSITIVE
from modeling_peapod import build_user_neighbors, pmf_fold_in_problem, solve_pmf_users
from training.evaluation import bootstrap_interval

ROOT = Path(__file__).resolve().parents[1]


def refit_users(item_factors: torch.Tensor, train: dict[int, list[int]], num_users: int,
                block_size: int = 256) -> torch.Tensor:
    """[num_users + 1, d] float32: each user's vector re-solved from its training items, V fixed (expected negatives,
    the weights `PeaPODForConditionalGeneration.fold_in_users` uses); row 0 and users without items stay zero."""
    factors = item_factors.double()
    table = torch.zeros(num_users + 1, factors.shape[1])
    users = sorted(user for user, items in train.items() if items)
    for start in range(0, len(users), block_size):
        block = users[start : start + block_size]
        targets, weights, ridge, _ = pmf_fold_in_problem(
            [list(dict.fromkeys(train[user])) for user in block], factors.shape[0] - 1, PMF_NEGATIVES_PER_POSITIVE,
            PMF_LAMBDA_REG)
        table[block] = solve_pmf_users(factors, targets, weights, ridge).float()
    return table


def catalogue_hits(user_table: torch.Tensor, item_factors: torch.Tensor, train: dict[int, list[int]],
                   validation: dict[int, int]) -> np.ndarray:
    users = list(validation)
    scores = user_table[users].double() @ item_factors.double().T
    scores[:, 0] = -torch.inf
    for row, user in enumerate(users):
        scores[row, train[user]] = -torch.inf
    targets = torch.tensor([validation[user] for user in users]).unsqueeze(1)
    return (scores.topk(10, dim=1).indices == targets).any(1).numpy().astype(float)


def summary(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "ci": bootstrap_interval(values.tolist())}


def compare(folder: Path) -> dict:
    prepared = load_prepared(folder, load_dataset=False)
    if prepared.item_embeddings is None:
        raise SystemExit(f"{folder} keeps no PMF item factors: prepare it with --embedding pmf")
    split = leave_one_out(prepared.histories)
    started = time.perf_counter()
    refitted = refit_users(prepared.item_embeddings, split.train, prepared.num_users)
    seconds = time.perf_counter() - started
    num_neighbors = prepared.user_neighbors.shape[1]
    tables = {"prepared": (prepared.user_embeddings, prepared.user_neighbors),
              "refitted": (refitted, build_user_neighbors(refitted, num_neighbors))}
    result = {"folder": str(folder), "num_users": len(split.validation), "num_items": prepared.num_items,
              "num_neighbors": num_neighbors, "refit_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
              "random_neighbours": summary(neighbor_hits(random_neighbor_table(prepared.num_users, num_neighbors, 0),
                                                         split.train, split.validation).astype(float))}
    hits = {}
    for name, (users, neighbors) in tables.items():
        hits[name] = (neighbor_hits(neighbors, split.train, split.validation).astype(float),
                      catalogue_hits(users, prepared.item_embeddings, split.train, split.validation))
        result[name] = {"neighbour_diagnostic": summary(hits[name][0]), "pmf_hr@10": summary(hits[name][1])}
    result["refitted_minus_prepared"] = {
        "neighbour_diagnostic": summary(hits["refitted"][0] - hits["prepared"][0]),
        "pmf_hr@10": summary(hits["refitted"][1] - hits["prepared"][1])}
    return result


def cell(entry: dict) -> str:
    low, high = entry["ci"]
    return f"{entry['mean']:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="Prepared folders made with --embedding pmf.")
    parser.add_argument("--output", default=str(ROOT / "experiments" / "results" / "refit-user-vectors.json"))
    args = parser.parse_args()
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.exists() else {}
    print("| data | users | user table | neighbour diagnostic [95% CI] | PMF HR@10, whole catalogue [95% CI] |")
    print("|---|---|---|---|---|")
    for folder in args.folders:
        result = compare(Path(folder))
        results[Path(folder).name] = result
        output.write_text(json.dumps(results, indent=1) + "\n")
        name = Path(folder).name
        print(f"| {name} | {result['num_users']} | random neighbours | {cell(result['random_neighbours'])} | |")
        for table in ("prepared", "refitted"):
            print(f"| {name} | {result['num_users']} | {table} | {cell(result[table]['neighbour_diagnostic'])} | "
                  f"{cell(result[table]['pmf_hr@10'])} |")
        difference = result["refitted_minus_prepared"]
        print(f"| {name} | {result['num_users']} | refitted - prepared (paired) | "
              f"{cell(difference['neighbour_diagnostic'])} | {cell(difference['pmf_hr@10'])} |", flush=True)


if __name__ == "__main__":
    main()
