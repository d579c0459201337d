"""Collect experiments/results/*.json into tables (mean ± std over seeds) and the heads figure.

    python experiments/collect.py             # prints the summary, writes experiments/results/README.md (all tables)
    python experiments/collect.py --readme    # also replaces the block between the results markers in README.md

Records are grouped into sections by data (dataset, id space, user slice) and budget (shape, steps, time box,
batch, lr, evaluated users): only rows of one section are comparable. Baselines come from the records themselves
or, for runs made without them (the GPU script), from the `baselines-<prepared folder>-<N>users.json` files that
`run.py --baselines_only` writes for the same prepared folder and users.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev

from run import DEFAULTS  # older records lack newer keys: they ran with the defaults

from datasets_scripts.files import atomic_write_text
from training.figures import heads_figure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = {
    "sequential": ("hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10"),
    "topn_beam": ("hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10"),
    "topn_likelihood": ("hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10"),
    "explanation": ("bleu4", "rouge1", "rouge2", "rougeL"),
}
# The README's one-line-per-row summary: (column title, result task, metric).
SUMMARY = (("seq HR@10", "sequential", "hr@10"), ("seq NDCG@10", "sequential", "ndcg@10"),
           ("top-n HR@10", "topn_beam", "hr@10"), ("top-n NDCG@10", "topn_beam", "ndcg@10"),
           ("top-n HR@10 (likelihood)", "topn_likelihood", "hr@10"), ("BLEU-4", "explanation", "bleu4"),
           ("ROUGE-L", "explanation", "rougeL"))
BASELINE_TASKS = {"sequential": "sequential", "topn_beam": "topn"}  # result task -> the baselines' task name
BUDGET_KEYS = ("shape", "max_steps", "max_train_seconds", "batch_size", "learning_rate", "lr_scheduler_type",
               "warmup_steps", "eval_users", "num_beams", "num_neighbors", "embedding_dim")


def load_records() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*-seed*.json"))]


def load_baseline_files() -> dict[tuple[str, int], dict]:
    files = {}
    for path in sorted(RESULTS.glob("baselines-*.json")):
        record = json.loads(path.read_text())
        files[(record["prepared"], record["eval_users"])] = record["baselines"]
    return files


def summarise(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{mean(values):.4f} ± {pstdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def section_key(record: dict) -> tuple:
    config = record["config"]
    return (record["dataset"], bool(record["reindex_items"]), config.get("max_users") or 0,
            tuple(config.get("tasks") or ()), *(str(config.get(key, DEFAULTS.get(key))) for key in BUDGET_KEYS))


def section_title(records: list[dict]) -> str:
    record, config = records[0], records[0]["config"]
    runs = defaultdict(int)
    for each in records:
        runs[each["hardware"]] += 1
    hardware = ", ".join(f"{name} ({count} run{'s' * (count > 1)})" for name, count in sorted(runs.items()))
    users = f"first {config['max_users']:,} users" if config.get("max_users") else "all users"
    space = "re-indexed ids" if record["reindex_items"] else "P5 ids"
    budget = f"{config['max_steps']} steps" if not config.get("max_train_seconds") else (
        f"time-boxed to {config['max_train_seconds']} s of training")
    return (f"{record['dataset']} ({users}), {space} — {config['shape']} shape, random init, {budget} of batch "
            f"{config['batch_size']}, lr {config['learning_rate']}, test split, first {config['eval_users']} "
            f"users, {config['num_beams']} beams; hardware: {hardware}")


def section_baselines(records: list[dict], files: dict) -> dict:
    for record in records:
        if record.get("baselines"):
            return record["baselines"]
    return files.get((records[0].get("prepared"), records[0]["config"]["eval_users"]), {})


def sections(records: list[dict]) -> list[tuple[str, dict[str, list[dict]], dict]]:
    """[(title, {model: records}, baselines)] in a stable order."""
    grouped: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        grouped[section_key(record)][record["model"]].append(record)
    files = load_baseline_files()
    out = []
    for key in sorted(grouped, key=str):
        rows = grouped[key]
        every = [r for group in rows.values() for r in group]
        out.append((section_title(every), dict(sorted(rows.items())), section_baselines(every, files)))
    return out


def wall_times(rows: dict[str, list[dict]]) -> str:
    """Wall time per run, per hardware (runs on different machines are not comparable in time)."""
    by_hardware: dict[str, list[dict]] = defaultdict(list)
    for record in (r for group in rows.values() for r in group):
        by_hardware[record["hardware"]].append(record)
    parts = []
    for hardware, runs in sorted(by_hardware.items()):
        train, evaluation = [r["train_seconds"] for r in runs], [r.get("eval_seconds", 0) for r in runs]
        parts.append(f"{hardware}: training {min(train):.0f}-{max(train):.0f} s, evaluation "
                     f"{min(evaluation):.0f}-{max(evaluation):.0f} s")
    steps = sorted({r.get("train_steps") for group in rows.values() for r in group} - {None})
    return ("Wall time per run — " + "; ".join(parts)
            + (f". Optimizer steps {steps[0]}-{steps[-1]}" if steps else "") + ".\n")


def full_tables(records: list[dict]) -> str:
    lines = []
    for title, rows, baselines in sections(records):
        lines.append(f"\n**{title}.** Mean ± std (population) over the seeds counted in each row.\n")
        for task, metrics in COLUMNS.items():
            if not any(task in r["results"] for group in rows.values() for r in group):
                continue
            lines.append(f"| {task} | seeds | " + " | ".join(metrics) + " |")
            lines.append("|---" * (len(metrics) + 2) + "|")
            for model, group in rows.items():
                present = [r for r in group if task in r["results"]]
                if present:
                    cells = [summarise([r["results"][task][m] for r in present]) for m in metrics]
                    lines.append(f"| {model} | {len(present)} | " + " | ".join(cells) + " |")
            for name, by_task in sorted(baselines.items()):
                if BASELINE_TASKS.get(task) in by_task:
                    cells = [f"{by_task[BASELINE_TASKS[task]][m]:.4f}" for m in metrics]
                    lines.append(f"| {name} (baseline) | – | " + " | ".join(cells) + " |")
            lines.append("")
        lines.append(wall_times(rows))
    return "\n".join(lines)


def summary_table(records: list[dict]) -> str:
    lines = []
    for title, rows, baselines in sections(records):
        columns = [c for c in SUMMARY if any(c[1] in r["results"] for g in rows.values() for r in g)]
        lines += [f"\n**{title}.**\n", "| model | seeds | " + " | ".join(c[0] for c in columns) + " |",
                  "|---" * (len(columns) + 2) + "|"]
        for model, group in rows.items():
            cells = [summarise([r["results"][task][m] for r in group if task in r["results"]]) for _, task, m in
                     columns]
            lines.append(f"| {model} | {len(group)} | " + " | ".join(cells) + " |")
        for name, by_task in sorted(baselines.items()):
            cells = [f"{by_task[BASELINE_TASKS[task]][m]:.4f}" if BASELINE_TASKS.get(task) in by_task else "–"
                     for _, task, m in columns]
            lines.append(f"| {name} (baseline) | – | " + " | ".join(cells) + " |")
        lines.append("\n" + wall_times(rows))
    return "\n".join(lines) + "\n"


def heads_records(records: list[dict]) -> list[dict]:
    """The section with the most distinct head counts (PeaPOD with task prompts; MLP counts as 0 heads)."""
    best: list[dict] = []
    by_section: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        if record["model"].startswith("PeaPOD") and "no task" not in record["model"]:
            by_section[section_key(record)].append(record)
    for group in by_section.values():
        if len({r["heads"] for r in group}) > len({r["heads"] for r in best}):
            best = group
    return best


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="update README.md between the results markers")
    args = parser.parse_args(argv)
    records = load_records()
    if not records:
        raise SystemExit(f"no results in {RESULTS}: run experiments/run.py first")
    summary = summary_table(records)
    atomic_write_text(RESULTS / "README.md",
                      "# Experiment results (generated by experiments/collect.py)\n" + full_tables(records) + "\n")
    heads = heads_records(records)
    if len({r["heads"] for r in heads}) > 1:
        heads_figure(heads, "ndcg@10", RESULTS / "heads.png")
        summary += (f"\n![metric vs heads](experiments/results/heads.png) Figure 5 analogue: NDCG@10 against the "
                    f"number of heads (0 = MLP) on {section_title(heads).split(' — ')[0]}.\n")
    if args.readme:
        readme = (ROOT / "README.md").read_text()
        if START not in readme or END not in readme:
            raise SystemExit(f"README.md lacks the {START} ... {END} markers")
        before, rest = readme.split(START, 1)
        _, after = rest.split(END, 1)
        atomic_write_text(ROOT / "README.md", before + START + "\n" + summary + "\n" + END + after)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
