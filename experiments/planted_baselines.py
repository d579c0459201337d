"""Floors and ceilings of the planted-signal synthetic variants: oracle, popularity, PMF, BPR and Markov chain.

    python experiments/planted_baselines.py                      # every variant, every test user
    python experiments/planted_baselines.py --variants user      # one variant
    python experiments/planted_baselines.py --embedding_dim 64   # folders with PMF k = 64 (-> *-pmf64-n20.*)

For each variant of `peapod-prepare --synthetic --synthetic_variant` (docs/data.md) this prepares the folder
exactly as `experiments/run.py` does for a config with `dataset: synthetic`, `synthetic_variant: <variant>` and the
run defaults (PMF k = 512, 20 neighbours, data seed 0; cached under `prepared/synthetic-<variant>-pmf512-n20`),
evaluates the baselines on the test split of ALL users under the model's protocol (training/evaluation/runner.py:
sequential = full ranking, top-n = the 100 fixed candidates) and writes

* experiments/results/planted-baselines.json: the evaluation reports (every metric with its 95% bootstrap interval
  over users) and, for `neighbors`, how many of each user's clique-mates its prepared neighbour list holds;
* experiments/results/planted-baselines.md: the HR@10 / NDCG@10 table (README, "Planted-signal data").

The oracle ranks by the planted ground truth (datasets_scripts.synthetic.planted_oracle_scores): the ceiling.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import run  # experiments/run.py: the same prepared folders as the model runs

from datasets_scripts import load_prepared
from datasets_scripts.files import atomic_write_text
from datasets_scripts.synthetic import PLANTED_VARIANTS, clique_mates, planted_structure
from training import api
from training.evaluation import evaluate_checkpoint

ROOT = run.ROOT
METHODS = ("oracle", "popularity", "pmf", "bpr", "markov")
RESULTS = ROOT / "experiments" / "results"


def neighbour_recall(prepared) -> float:
    """Mean share of a user's clique-mates found among its prepared neighbours (`neighbors` variant only)."""
    shares = [len(mates & set(prepared.user_neighbors[user].tolist())) / len(mates)
              for user, mates in clique_mates(planted_structure(prepared)).items()]
    return sum(shares) / len(shares)


def evaluate_variant(variant: str, shared: Path, embedding_dim: int, num_neighbors: int) -> dict:
    from transformers import AutoTokenizer

    tokenizer = str(shared / "tokenizers" / "t5")
    config = {**run.DEFAULTS, "dataset": "synthetic", "synthetic_variant": variant, "eval_users": None,
              "embedding_dim": embedding_dim, "num_neighbors": num_neighbors}
    started = time.perf_counter()
    folder = run.prepared_folder(config, shared, tokenizer)
    prepared = load_prepared(folder)
    report = evaluate_checkpoint(
        None, AutoTokenizer.from_pretrained(tokenizer), prepared, split="test", tasks=("sequential", "topn"),
        max_users=None, baselines=METHODS, seed=config["data_seed"], show_progress=False,
    )
    record = {
        "variant": variant, "prepared": folder.name, "num_users": prepared.num_users, "num_items": prepared.num_items,
        "report": report, "seconds": round(time.perf_counter() - started, 1), "hardware": api.hardware_description(),
    }
    if variant == "neighbors":
        record["clique_mates_among_neighbours"] = round(neighbour_recall(prepared), 4)
    return record


def _cell(metrics: dict, name: str) -> str:
    low, high = metrics[f"{name}_ci"]
    return f"{metrics[name]:.3f} ({low:.3f}–{high:.3f})"


def markdown(records: list[dict]) -> str:
    lines = [
        "| variant | method | sequential HR@10 | sequential NDCG@10 | top-n HR@10 | top-n NDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for record in records:
        for method in METHODS:
            tasks = record["report"]["baselines"][method]
            cells = [_cell(tasks["sequential"], "hr@10"), _cell(tasks["sequential"], "ndcg@10"),
                     _cell(tasks["topn"], "hr@10"), _cell(tasks["topn"], "ndcg@10")]
            lines.append(f"| {record['variant']} | {method} | " + " | ".join(cells) + " |")
    notes = [f"{r['variant']}: {r['num_users']} users (all evaluated), {r['num_items']} items" for r in records]
    lines += ["", "Test split, every user; 95% percentile-bootstrap intervals over users (1,000 resamples, seed 0). "
              + "; ".join(notes) + "."]
    for record in records:
        if "clique_mates_among_neighbours" in record:
            lines.append(f"neighbors: the prepared neighbour lists ({record['prepared']}, PMF cosine) hold "
                         f"{record['clique_mates_among_neighbours']:.0%} of each user's clique-mates on average.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(PLANTED_VARIANTS), choices=PLANTED_VARIANTS)
    parser.add_argument("--shared_dir", default=str(ROOT.parent / "shared"))
    parser.add_argument("--embedding_dim", type=int, default=run.DEFAULTS["embedding_dim"],
                        help="PMF k of the prepared folders (the model runs' embedding_dim; PMF scores with them).")
    parser.add_argument("--num_neighbors", type=int, default=run.DEFAULTS["num_neighbors"])
    args = parser.parse_args(argv)
    records = [evaluate_variant(variant, Path(args.shared_dir), args.embedding_dim, args.num_neighbors)
               for variant in args.variants]
    RESULTS.mkdir(parents=True, exist_ok=True)
    default = (args.embedding_dim, args.num_neighbors) == (run.DEFAULTS["embedding_dim"], run.DEFAULTS["num_neighbors"])
    stem = "planted-baselines" + ("" if default else f"-pmf{args.embedding_dim}-n{args.num_neighbors}")
    for path, text in ((RESULTS / f"{stem}.json", json.dumps(records, indent=1) + "\n"),
                       (RESULTS / f"{stem}.md", markdown(records))):
        atomic_write_text(path, text)
    print(markdown(records))


if __name__ == "__main__":
    main()
