"""Evaluation: a checkpoint (or a baseline) and a prepared folder -> the paper's metrics, a report, a CLI.

One module per job: `runner` (the protocol: users, rows, ranking and explanation runs, baselines on the same rows),
`store` (the sharded, resumable chunk files), `report` (results.json / results.md), `baselines` (popularity, PMF,
BPR, Markov chain, planted oracle), `metrics/` (the shipped `evaluate` modules) and `cli` (`peapod-evaluate`).
The names below are the package's public surface.
"""

from .report import markdown_table, write_report
from .runner import (
    BASELINES,
    SPLITS,
    TASKS,
    bootstrap_interval,
    build_baseline,
    evaluate_baseline,
    evaluate_checkpoint,
)
from .store import ChunkStore

__all__ = [
    "BASELINES", "SPLITS", "TASKS", "ChunkStore", "bootstrap_interval", "build_baseline", "evaluate_baseline",
    "evaluate_checkpoint", "markdown_table", "write_report",
]
