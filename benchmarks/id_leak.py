"""How much the P5 item ids give away: rank each test user's 100 top-n candidates by how close their integer id
is to the user's training items (|id - median of the training ids|), no model, and report HR@10.

    python benchmarks/id_leak.py prepared/beauty-2000users-pmf512-n20 prepared/beauty-reindexed-2000users-pmf512-n20

P5's sequential indexing numbers items in order of first appearance while walking the users, so one user's
items get nearby ids; a leakage-free (re-indexed) folder should give about 10/100 = 0.10 here.
"""

import argparse
import statistics

from datasets_scripts import load_prepared


def nearest_id_hit_rate(path: str, top_k: int = 10, max_users: int | None = None) -> float:
    prepared = load_prepared(path)
    test = prepared.dataset["topn_test"]
    rows = range(len(test)) if max_users is None else range(min(max_users, len(test)))
    hits = 0
    for row in rows:
        user, target, candidates = test[row]["user_id"], test[row]["item_id"], test[row]["candidates"]
        centre = statistics.median(prepared.histories[user][:-2])
        ranked = sorted(candidates, key=lambda item: (abs(item - centre), item))
        hits += target in ranked[:top_k]
    return hits / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared_dirs", nargs="+")
    parser.add_argument("--max_users", type=int)
    args = parser.parse_args()
    for path in args.prepared_dirs:
        print(f"{path}: nearest-id HR@10 = {nearest_id_hit_rate(path, max_users=args.max_users):.3f}")


if __name__ == "__main__":
    main()
