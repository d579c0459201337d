"""Report writing: an evaluation report (a dict) -> `results.json` and a markdown table `results.md`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from datasets_scripts.files import atomic_write_text

from .runner import BOOTSTRAP_RESAMPLES, CONFIDENCE_LEVEL, RANKING_COLUMNS, TEXT_COLUMNS


def _format(value, interval=None) -> str:
    """`0.1234 (0.1100–0.1370)`: the value and, when there is one, its 95% interval."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}" + (f" ({interval[0]:.4f}–{interval[1]:.4f})" if interval is not None else "")


def markdown_table(report: dict, model_name: str = "model") -> str:
    """The report as markdown: one ranking table (HR/NDCG) and one explanation table (BLEU/ROUGE)."""
    header = (
        f"Split: `{report['split']}`. Users excluded (absent from the user table): "
        f"{report['users']['excluded_absent_from_user_table']['count']}. Ranking metrics: mean over users "
        f"({CONFIDENCE_LEVEL:.0%} percentile-bootstrap interval over users, {BOOTSTRAP_RESAMPLES:,} resamples)."
    )
    lines = [header, ""]
    ranking_rows = []
    labels = {"sequential": "sequential (beam)", "topn_beam": "top-n (beam)", "topn_likelihood": "top-n (likelihood)"}
    for name in ("sequential", "topn_beam", "topn_likelihood"):
        if name in report["results"]:
            ranking_rows.append((f"{model_name}", labels[name], report["results"][name]))
    for baseline, tasks in report["baselines"].items():
        for task, metrics in tasks.items():
            ranking_rows.append((baseline, "sequential (full ranking)" if task == "sequential" else "top-n", metrics))
    if ranking_rows:
        header = ["method", "task", *(column.upper() for column in RANKING_COLUMNS), "users"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, task, metrics in ranking_rows:
            cells = [
                method, task, *(_format(metrics.get(c), metrics.get(f"{c}_ci")) for c in RANKING_COLUMNS),
                str(metrics["num_users"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if "explanation" in report["results"]:
        metrics = report["results"]["explanation"]
        header = ["method", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "samples"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        cells = [model_name, *(_format(metrics[c]) for c in TEXT_COLUMNS), str(metrics["num_samples"])]
        lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    timing = [
        f"{task}: {t['users_per_second']} users/s ({t['seconds']} s)"
        for task, t in report["timing"].items()
        if "users_per_second" in t
    ]
    if timing:
        lines.append("Throughput: " + "; ".join(timing) + ".")
    return "\n".join(lines) + "\n"


def write_report(report: dict, output_dir, model_name: str = "model") -> tuple[Path, Path]:
    """Write `results.json` and `results.md` into `output_dir` (created if needed), each atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_dir / "results.json", output_dir / "results.md"
    atomic_write_text(json_path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    atomic_write_text(markdown_path, markdown_table(report, model_name))
    return json_path, markdown_path
