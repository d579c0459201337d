"""Time of the neighbour diagnostic on a full data set (by hand; not a test).

    OMP_NUM_THREADS=1 python benchmarks/neighbor_diagnostic_speed.py --data ../shared/data/amazon/beauty

Reads the P5 histories, splits them leave-one-out, builds the seeded random neighbour table (timed) and scores it on
the validation items with `neighbor_hit_rate` (timed; the best of --repeats runs, since the VM is shared).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from datasets_scripts.neighbor_diagnostic import (
    neighbor_hit_rate,
    random_neighbor_table,
)
from datasets_scripts.p5_format import read_sequential
from datasets_scripts.splits import leave_one_out


def best_time(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/amazon/beauty"))
    parser.add_argument("--num_neighbors", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    histories = read_sequential(Path(args.data) / "sequential.txt")
    split = leave_one_out(histories)
    table_seconds, table = best_time(
        lambda: random_neighbor_table(len(histories), args.num_neighbors, args.seed), args.repeats
    )
    rate_seconds, rate = best_time(lambda: neighbor_hit_rate(table, split.train, split.validation), args.repeats)
    print(f"{len(histories):,} users x {args.num_neighbors} neighbours: random table {table_seconds:.3f} s, "
          f"diagnostic {rate_seconds:.3f} s (random hit rate {rate:.4f}, seed {args.seed}; best of {args.repeats})")


if __name__ == "__main__":
    main()
