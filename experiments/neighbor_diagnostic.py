"""The neighbour diagnostic of PMF, BPR and random neighbours on the real data sets, through `peapod-prepare`.

    OMP_NUM_THREADS=1 python experiments/neighbor_diagnostic.py --datasets beauty toys instruments --max_users 2000

Each data set is prepared by the shipped command (`peapod-prepare ... --embedding pmf --compare_neighbor_sources bpr
random`, k = 512, 20 neighbours, seed 0: the settings of the README's real-data experiments), into
prepared/neighbor-diagnostic/<name>; the figures are read back from its prepare_config.json. After each data set
the table so far is written to experiments/results/neighbor_diagnostic[-<tag>].{json,md}, so a long run that is
stopped keeps what it finished. The diagnostic is measured on the validation items (the test items are never read).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets_scripts.cli import prepare_from_arguments
from datasets_scripts.files import atomic_write_json, atomic_write_text

SOURCES = {  # name -> the peapod-prepare flags that read it (paths relative to --shared_dir)
    "beauty": ["--p5_dir", "data/amazon/beauty"],
    "toys": ["--p5_dir", "data/amazon/toys"],
    "instruments": ["--reviews", "data/amazon-musical-instruments/reviews_Musical_Instruments_5.json.gz"],
}


def prepare_arguments(name: str, shared: Path, output: Path, args: argparse.Namespace) -> list[str]:
    flag, path = SOURCES[name]
    argv = [flag, str(shared / path), "--output_dir", str(output), "--tokenizer", str(shared / "tokenizers" / "t5"),
            "--embedding", "pmf", "--compare_neighbor_sources", *args.compare, "--embedding_dim", str(args.k),
            "--num_neighbors", str(args.num_neighbors), "--seed", str(args.seed), "--overwrite",
            "--pmf_implementation", "cornac"]  # as for the recorded figures (experiments/run.py DEFAULTS)
    if args.max_users:
        argv += ["--max_users", str(args.max_users)]
    return argv


def markdown_table(rows: list[dict]) -> str:
    sources = list(dict.fromkeys(source for row in rows for source in row["hit_rates"]))
    header = ["data set", "users", "k", "n", *sources, "prepare wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        rates = [f"{row['hit_rates'][source]:.4f}" if source in row["hit_rates"] else "" for source in sources]
        lines.append("| " + " | ".join([row["dataset"], f"{row['num_users']:,}", str(row["k"]), str(row["num_neighbors"]),
                                        *rates, f"{row['seconds']:.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--max_users", type=int, default=2000, help="First N users of each data set (0: all).")
    parser.add_argument("--k", type=int, default=512, help="Embedding dimension of PMF and BPR.")
    parser.add_argument("--num_neighbors", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", nargs="+", default=["bpr", "random"], help="Sources compared beside pmf.")
    parser.add_argument("--tag", default="", help="Suffix of the result files (e.g. full).")
    parser.add_argument("--shared_dir", default=str(ROOT.parent / "shared"))
    args = parser.parse_args(argv)
    shared = Path(args.shared_dir)
    stem = ROOT / "experiments" / "results" / ("neighbor_diagnostic" + (f"-{args.tag}" if args.tag else ""))
    rows = []
    for name in args.datasets:
        output = ROOT / "prepared" / "neighbor-diagnostic" / (name + (f"-{args.tag}" if args.tag else ""))
        command = ["peapod-prepare", *prepare_arguments(name, shared, output, args)]
        started = time.perf_counter()
        config = prepare_from_arguments(command[1:])
        diagnostic = config["neighbor_diagnostic"]
        rows.append({
            "dataset": name if not args.max_users or config["statistics"]["num_users"] < args.max_users
            else f"{name} (first {args.max_users:,} users)",
            "num_users": diagnostic["num_users"], "k": args.k, "num_neighbors": diagnostic["num_neighbors"],
            "hit_rates": diagnostic["hit_rates"], "random_seed": diagnostic["random_seed"],
            "seconds": round(time.perf_counter() - started, 1),
            "command": " ".join(part.replace(str(shared), "../shared").replace(str(ROOT) + "/", "") for part in command),
        })
        record = {"split": "validation", "machine": platform.platform(), "rows": rows,
                  "command": "python experiments/neighbor_diagnostic.py " + " ".join(argv or sys.argv[1:])}
        atomic_write_json(stem.with_suffix(".json"), record)
        atomic_write_text(stem.with_suffix(".md"), markdown_table(rows))
        print(markdown_table(rows), flush=True)


if __name__ == "__main__":
    main()
