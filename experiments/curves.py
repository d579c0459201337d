"""Learning curves: test HR@10/NDCG@10 against optimizer steps, per model row, with the baselines as lines.

    python experiments/curves.py --prepared_dir prepared/syn --rows mha mlp pod --max_steps 600 --eval_every 100
    python experiments/curves.py --prepared_dir prepared/syn --rows "mha+user_embedding_norm=none" --name mha-paper
    python experiments/curves.py --output experiments/results/curves-syn --plot_only     # redraw from the JSONs
    python experiments/curves.py --output experiments/results/curves-syn --table         # README's markdown table
    python experiments/curves.py --output OUT --name whole --join run.json continued.json:900  # run + continuation

Each row trains once (`peapod-train`, seeded, tiny shape by default) saving a checkpoint every `--eval_every`
steps; every checkpoint is then evaluated on the test split of ALL test users (or `--eval_users`):
* top-n HR@10 / NDCG@10 by exact candidate likelihood (`score_candidates`) and the mean test loss per task;
* for rows with a collaborative prompt, the same with the user table permuted across users
  (`training.diagnostics.shuffle_test`): the *shuffle drop* is how much the model relies on its prompt;
* sequential HR@10 / NDCG@10 by constrained beam search (`--sequential_beams`, 0 to skip: the slow part), or by
  exact likelihood of every catalogue item (`--sequential_likelihood`: the full ranking beam search approximates,
  much cheaper, with the shuffle drop for sequential too);
* for rows trained on explanations, BLEU-4 / ROUGE-L and the share of explanations that name the item's feature
  (training/evaluation/metrics/feature_share.py);
* 95% bootstrap intervals over users beside the HR@10s and the shuffle drop (paired: per-user differences).
A row is a preset (`mha`, `mlp`, `pod`) plus `+flag=value` overrides of `peapod-train` flags, e.g.
`mha+user_embedding_norm=none`. Results go to `<output>/<row name>.json` (written after every checkpoint), the
baselines (popularity, PMF, and every other baseline `training.evaluation.BASELINES` offers, on the same users)
to `<output>/baselines.json`, and the figure to `<output>/curves.png`: one panel per metric, one line per row,
baselines as horizontal lines. Rows can run in separate processes into the same folder; `--plot_only` redraws.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

from datasets_scripts import load_prepared
from datasets_scripts.files import atomic_path, atomic_write_json
from datasets_scripts.synthetic import planted_clique_mates
from modeling_peapod import PeaPODForConditionalGeneration
from training import cli
from training.api import hardware_description
from training.diagnostics import (
    _loss_and_topn,
    attention_health,
    cross_attention_on_prompt,
    prompt_norms,
    shuffle_test,
)
from training.evaluation import BASELINES, evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"mha": {"prompt_encoder": "mha"}, "mlp": {"prompt_encoder": "mlp"}, "pod": {"prompt_encoder": "none"}}
LABELS = {"mha": "PeaPOD (mha)", "mlp": "PeaPOD-MLP", "none": "POD"}
PANELS = (("topn_hr@10", "top-n HR@10 (likelihood)"), ("topn_ndcg@10", "top-n NDCG@10 (likelihood)"),
          ("sequential_hr@10", "sequential HR@10 (beam)"), ("topn_shuffle_drop", "top-n HR@10 drop, user table permuted"),
          ("explanation_item_feature_share", "explanations naming the item's feature"))


def parse_row(spec: str) -> tuple[str, dict]:
    """`mha+flag=value+...` -> (preset, {flag: value}); the preset gives prompt_encoder."""
    preset, *overrides = spec.split("+")
    if preset not in PRESETS:
        raise ValueError(f"row {spec!r}: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    flags = dict(PRESETS[preset])
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator:
            raise ValueError(f"row {spec!r}: override {override!r} is not flag=value")
        flags[key] = value
    return preset, flags


def row_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec.replace("+", "__"))


def train_row(args, spec: str, output_dir: Path) -> dict:
    _, flags = parse_row(spec)
    arguments = [
        "--prepared_dir", args.prepared_dir, "--output_dir", str(output_dir), "--base_model", f"random:{args.shape}",
        "--tokenizer", args.tokenizer, "--tasks", *args.tasks, "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--warmup_steps", str(args.warmup_steps), "--eval_strategy", "no", "--save_strategy", "steps",
        "--save_steps", str(args.eval_every), "--save_only_model", "True", "--logging_steps", str(args.eval_every),
        "--seed", str(args.seed), "--report_to", "none", "--dataloader_num_workers", "0",
        "--overwrite_output_dir", "True", "--disable_tqdm", "True", "--prompt_diagnostics_every",
        str(args.eval_every),
    ]
    for key, value in flags.items():
        arguments += [f"--{key}", value]
    return cli.train(arguments)


def evaluate_folder(folder: Path, prepared, tokenizer, args, true_neighbors=None) -> dict:
    """The metrics of one checkpoint folder (see the module docstring); `true_neighbors`: see `attention_health`."""
    import torch

    torch.manual_seed(args.seed)
    model = PeaPODForConditionalGeneration.from_pretrained(folder).eval()  # installed classes, not the folder's code
    started = time.perf_counter()
    if model.has_collaborative_prompt:
        shuffled = shuffle_test(model, tokenizer, prepared, max_users=args.eval_users, seed=args.seed,
                                sequential_likelihood=args.sequential_likelihood)
        point = dict(shuffled["as_is"])
        point["permuted"] = dict(shuffled["permuted"])  # its per-user hits too: the paired drop interval
        point["topn_shuffle_drop"] = shuffled["drop"].get("topn_hr@10")
        point["loglik_change"] = shuffled.get("loglik_change")
        point["attention"] = attention_health(model, true_neighbors=true_neighbors)
    else:
        point = _loss_and_topn(model, tokenizer, prepared, "test", args.eval_users, 16, args.sequential_likelihood)
        point.pop("_topn_scores", None)
        point.pop("_sequential_scores", None)
    point["norms"] = prompt_norms(model)
    point["cross_attention_on_prompt"] = cross_attention_on_prompt(model, tokenizer, prepared.dataset["topn_test"],
                                                                   range(32))
    if args.sequential_beams:
        report = evaluate_checkpoint(model, tokenizer, prepared, split="test", tasks=["sequential"],
                                     max_users=args.eval_users, num_beams=args.sequential_beams,
                                     show_progress=False, return_rankings=True)
        point["sequential_hr@10"] = report["results"]["sequential"]["hr@10"]
        point["sequential_ndcg@10"] = report["results"]["sequential"]["ndcg@10"]
        ranking = report["rankings"]["sequential"]
        point["sequential_hits"] = [int(t in r) for t, r in zip(ranking["targets"], ranking["ranked"])]
    # The row's trained tasks (--tasks), not config.tasks: a checkpoint lists every task it *can* prompt.
    if "explanation" in args.tasks and "explanation_test" in prepared.dataset:
        report = evaluate_checkpoint(model, tokenizer, prepared, split="test", tasks=["explanation"],
                                     max_users=args.eval_users, num_beams=args.explanation_beams, top_k=1,
                                     show_progress=False)
        scores = report["results"]["explanation"]
        for key in ("bleu4", "rougeL", "feature_match", "item_feature_share", "feature_match_ci",
                    "item_feature_share_ci", "num_samples"):
            point[f"explanation_{key}"] = scores.get(key)
        point["explanation_examples"] = report["explanations"]["first_predictions"]
    add_intervals(point)
    point["eval_seconds"] = round(time.perf_counter() - started, 1)
    return point


def add_intervals(point: dict) -> None:
    """95% bootstrap intervals over users (training.evaluation.bootstrap_interval) beside the per-user hit rates:
    top-n and sequential HR@10, the permuted table's, and the paired shuffle drop (per-user hit as is minus hit
    permuted, resampled together, so the drop's interval is not two overlapping intervals subtracted)."""
    import numpy as np

    from training.evaluation import bootstrap_interval

    for hits_key, metric in (("topn_hits", "topn_hr@10"), ("sequential_hits", "sequential_hr@10")):
        if point.get(hits_key):
            point[f"{metric}_ci"] = bootstrap_interval(point[hits_key])
    for task in ("topn", "sequential"):
        permuted_hits = point.get("permuted", {}).get(f"{task}_hits")
        if permuted_hits:
            point["permuted"][f"{task}_hr@10_ci"] = bootstrap_interval(permuted_hits)
            drop = np.asarray(point[f"{task}_hits"], dtype=float) - np.asarray(permuted_hits, dtype=float)
            point[f"{task}_shuffle_drop"] = float(drop.mean())
            point[f"{task}_shuffle_drop_ci"] = bootstrap_interval(drop)


def baselines(prepared, tokenizer, args, output: Path) -> dict:
    target = output / "baselines.json"
    if target.exists():
        return json.loads(target.read_text())
    # BPR: 200 epochs of cornac, not worth a line here; the oracle exists on the planted-signal variants only.
    variant = prepared.config.get("arguments", {}).get("synthetic_variant", "default")
    names = tuple(name for name in BASELINES if name != "bpr" and (name != "oracle" or variant != "default"))
    report = evaluate_checkpoint(None, tokenizer, prepared, split="test", tasks=["sequential", "topn"],
                                 max_users=args.eval_users, baselines=names, show_progress=False)
    write_json(target, report["baselines"])
    return report["baselines"]


def write_json(target: Path, record) -> None:
    atomic_write_json(target, record)


def plot(output: Path) -> Path | None:
    """One panel per metric; a line per row JSON in `output`; baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {path.stem: json.loads(path.read_text()) for path in sorted(output.glob("*.json"))
            if path.name != "baselines.json"}
    if not rows:
        return None
    lines = json.loads((output / "baselines.json").read_text()) if (output / "baselines.json").exists() else {}
    # A panel per metric some row measured (explanation only for rows trained on it; sequential only with beams).
    panels = [(metric, title) for metric, title in PANELS
              if any(p.get(metric) is not None for row in rows.values() for p in row["points"])] or list(PANELS[:1])
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    axes = axes[0]
    for axis, (metric, title) in zip(axes, panels):
        for name, row in rows.items():
            points = [(p["step"], p[metric]) for p in row["points"] if p.get(metric) is not None]
            if points:
                axis.plot(*zip(*points), marker="o", label=f"{row.get('label', name)} ({name})")
        task, _, measure = metric.partition("_")
        for style, (baseline, tasks) in zip(("--", ":", "-.", (0, (1, 3))), lines.items()):
            if measure in tasks.get(task, {}):
                axis.axhline(tasks[task][measure], color="grey", linestyle=style, label=baseline)
        axis.set_title(title)
        axis.set_xlabel("optimizer steps")
        axis.grid(alpha=0.3)
    first = next(iter(rows.values()))
    figure.suptitle(f"{first.get('prepared', '')}: {first.get('shape', '')} shape, batch {first.get('batch_size')}, "
                    f"lr {first.get('learning_rate')}, seed {first.get('seed')}, test users {first.get('users')}")
    # One legend under the panels (inside a panel it hides the curves): every row and baseline line, once.
    legend = {label: handle for axis in axes for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 3), fontsize=7)
    figure.tight_layout(rect=(0, 0.06 * math.ceil(len(legend) / 3), 1, 1))
    target = output / "curves.png"
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    return target


def markdown_table(output: Path, reference: str = "pod") -> str:
    """The README table of a curves folder: per row and evaluated step, top-n HR@10 [95% CI], the same with the
    user table permuted, the paired shuffle drop [CI], the paired difference from the `reference` row (default
    POD) at the same step (where `<reference>.json` evaluated the same users), top-n NDCG@10 and (where measured)
    sequential HR@10; then the baselines."""

    def cell(value, interval=None):
        if value is None:
            return "–"
        return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    import numpy as np

    from training.evaluation import bootstrap_interval

    # The reference's per-user hits by step: the paired difference row - reference on the same users (with POD:
    # issue 10's "POD + 0.10").
    pod_file = output / f"{reference}.json"
    pod_hits = {p["step"]: p["topn_hits"] for p in json.loads(pod_file.read_text())["points"]} if (
        pod_file.exists()) else {}
    lines = [("| row | step | users | top-n HR@10 [95% CI] | table permuted [CI] | shuffle drop [paired CI] | "
             f"minus {'POD' if reference == 'pod' else f'`{reference}`'} [paired CI] | top-n NDCG@10 | sequential HR@10 [CI] |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(output.glob("*.json")):
        if path.name == "baselines.json":
            continue
        row = json.loads(path.read_text())
        for p in row["points"]:
            permuted = p.get("permuted", {})
            versus_pod = None
            if path != pod_file and len(pod_hits.get(p["step"], ())) == len(p["topn_hits"]):
                difference = np.asarray(p["topn_hits"], dtype=float) - np.asarray(pod_hits[p["step"]], dtype=float)
                versus_pod = (float(difference.mean()), bootstrap_interval(difference))
            lines.append("| " + " | ".join([
                f"{row.get('label', path.stem).split(' [')[0]} (`{path.stem}`)", str(p["step"]), str(len(p["topn_hits"])),
                cell(p["topn_hr@10"], p.get("topn_hr@10_ci")),
                cell(permuted.get("topn_hr@10"), permuted.get("topn_hr@10_ci")),
                cell(p.get("topn_shuffle_drop"), p.get("topn_shuffle_drop_ci")),
                cell(*versus_pod) if versus_pod else "–", cell(p.get("topn_ndcg@10")),
                cell(p.get("sequential_hr@10"), p.get("sequential_hr@10_ci")) + (
                    " (likelihood)" if row.get("sequential_ranking") == "likelihood" and "sequential_hits" in p
                    else "")]) + " |")
    if (output / "baselines.json").exists():
        for name, tasks in json.loads((output / "baselines.json").read_text()).items():
            topn, sequential = tasks.get("topn", {}), tasks.get("sequential", {})
            lines.append("| " + " | ".join([
                name, "–", str(topn.get("num_users", "")), cell(topn.get("hr@10"), topn.get("hr@10_ci")), "–", "–", "–",
                cell(topn.get("ndcg@10")), cell(sequential.get("hr@10"), sequential.get("hr@10_ci"))]) + " |")
    return "\n".join(lines)


def join_rows(parts: list[str], output: Path, name: str) -> Path | None:
    """One learning curve from the row JSONs of a run and its continuations (`--join`): the points of each
    `path[:offset]` with their steps shifted by offset, the first file's metadata, and `joined_from` naming the parts."""
    record, points = None, []
    for part in parts:
        path, _, offset = part.partition(":")
        row = json.loads(Path(path).read_text())
        record = record or {**row, "training_diagnostics": None}
        points += [{**point, "step": point["step"] + int(offset or 0)} for point in row["points"]]
    steps = [point["step"] for point in points]
    if len(set(steps)) != len(steps):
        raise SystemExit(f"curves.py: error: --join: the parts share steps {sorted(steps)}; check the offsets")
    record.update(points=sorted(points, key=lambda point: point["step"]), joined_from=parts,
                  max_steps=max(steps))
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / f"{name}.json", record)
    return plot(output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared_dir")
    parser.add_argument("--rows", nargs="*", default=["mha", "mlp", "pod"])
    parser.add_argument("--name", help="Row name in the output (default: derived from the row spec).")
    parser.add_argument("--output", help="Folder of the JSONs and the PNG (default experiments/results/curves-<data>).")
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--tasks", nargs="+", default=["sequential", "topn"])
    parser.add_argument("--max_steps", type=int, default=600)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--warmup_steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval_users", type=int, default=None, help="First N test users (default: all).")
    parser.add_argument("--sequential_beams", type=int, default=20, help="0: skip sequential (beam search).")
    parser.add_argument("--sequential_likelihood", action="store_true",
                        help="Sequential HR@10/NDCG@10 by exact likelihood of every catalogue item instead of beam "
                        "search (needs --sequential_beams 0); with a user table, its shuffle drop too.")
    parser.add_argument("--explanation_beams", type=int, default=4,
                        help="Beams for the explanations of rows trained on the explanation task.")
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared" / "tokenizers" / "t5"))
    parser.add_argument("--keep_checkpoints", action="store_true")
    parser.add_argument("--plot_only", action="store_true")
    parser.add_argument("--table", action="store_true", help="Print the folder's markdown table (README) and exit.")
    parser.add_argument("--reference", default="pod", help="--table: the row (file stem) of the paired difference "
                        "column (default pod).")
    parser.add_argument("--steps", type=int, nargs="*", help="Evaluate only the checkpoints of these steps (an existing row file keeps its other steps' points).")
    parser.add_argument("--evaluate_run", help="Evaluate the checkpoint-* folders of an existing peapod-train "
                        "output folder (trained with the row's flags) instead of training.")
    parser.add_argument("--join", nargs="+", metavar="ROW_JSON[:OFFSET]",
                        help="Write one row (--name) into --output from the points of existing row JSONs, each one's "
                        "steps shifted by OFFSET (a run continued from another's checkpoint), then plot.")
    args = parser.parse_args(argv)
    if args.join:
        if not (args.output and args.name):
            parser.error("--join needs --output and --name")
        print(join_rows(args.join, Path(args.output), args.name))
        return
    if args.plot_only or args.table:
        if not args.output:
            parser.error("--plot_only and --table need --output")
        print(markdown_table(Path(args.output), args.reference) if args.table else plot(Path(args.output)))
        return
    if not args.prepared_dir:
        parser.error("--prepared_dir is required")
    if args.sequential_likelihood and args.sequential_beams:
        parser.error("--sequential_likelihood replaces beam search: give --sequential_beams 0 with it")
    if (args.name or args.evaluate_run) and len(args.rows) != 1:
        parser.error("--name and --evaluate_run need a single row")
    from transformers import AutoTokenizer

    prepared = load_prepared(args.prepared_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    output = Path(args.output or ROOT / "experiments" / "results" / f"curves-{Path(args.prepared_dir).name}")
    output.mkdir(parents=True, exist_ok=True)
    baselines(prepared, tokenizer, args, output)
    true_neighbors = planted_clique_mates(prepared)
    for spec in args.rows:
        name = args.name or row_name(spec)
        run_dir = ROOT / "runs" / "curves" / output.name / name
        started = time.perf_counter()
        if args.evaluate_run:
            run_dir = Path(args.evaluate_run)
            metrics_file = run_dir / "train_metrics.json"
            train_metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        else:
            train_metrics = train_row(args, spec, run_dir)
        train_seconds = train_metrics.get("train_runtime") or time.perf_counter() - started
        _, flags = parse_row(spec)
        record = {
            "row": spec, "label": LABELS[flags["prompt_encoder"]] + (f" [{spec}]" if "+" in spec else ""),
            "prepared": Path(args.prepared_dir).name, "shape": args.shape, "tasks": args.tasks,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "warmup_steps": args.warmup_steps,
            "seed": args.seed, "max_steps": args.max_steps, "train_seconds": round(train_seconds, 1),
            "train_loss": train_metrics.get("train_loss"), "hardware": _hardware(), "points": [],
            "sequential_ranking": "likelihood" if args.sequential_likelihood else (
                f"{args.sequential_beams}-beam search" if args.sequential_beams else None),
        }
        previous = output / f"{name}.json"
        if args.steps and previous.exists():  # a partial re-evaluation keeps the file's points of other steps
            record["points"] = [p for p in json.loads(previous.read_text())["points"] if p["step"] not in args.steps]
        diagnostics = run_dir / "prompt_diagnostics.json"
        record["training_diagnostics"] = json.loads(diagnostics.read_text()) if diagnostics.exists() else None
        folders = [(int(path.name.split("-")[1]), path) for path in run_dir.glob("checkpoint-*")]
        if not folders and args.evaluate_run and (run_dir / "config.json").exists():
            # A run saved without intermediate checkpoints: its final model, at its last step.
            folders = [(train_metrics.get("global_step", args.max_steps), run_dir)]
        for step, folder in sorted(folders, key=lambda pair: pair[0]):
            if args.steps and step not in args.steps:
                continue
            point = {"step": step, **evaluate_folder(folder, prepared, tokenizer, args, true_neighbors)}
            record["users"] = len(point["topn_hits"])
            record["points"] = sorted(record["points"] + [point], key=lambda p: p["step"])
            write_json(output / f"{name}.json", record)
            print(f"{name} step {point['step']}: " + ", ".join(
                f"{key} {point[key]:.4f}" for key in ("topn_hr@10", "topn_shuffle_drop", "sequential_hr@10",
                                                      "topn_loss") if point.get(key) is not None), flush=True)
            if not (args.keep_checkpoints or args.evaluate_run) and folder != run_dir:
                shutil.rmtree(folder)
    print(plot(output))


def _hardware() -> str:
    return hardware_description() + f", OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


if __name__ == "__main__":
    main()
