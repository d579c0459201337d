"""Learning curves: test HR@10/NDCG@10 against optimizer steps, per model row, with the baselines as lines.

    python experiments/curves.py --prepared_dir prepared/syn --rows mha mlp pod --max_steps 600 --eval_every 100
    python experiments/curves.py --prepared_dir prepared/syn --rows "mha+user_embedding_norm=none" --name mha-paper
    python experiments/curves.py --output experiments/results/curves-syn --plot_only     # redraw from the JSONs

Each row trains once (`peapod-train`, seeded, tiny shape by default) saving a checkpoint every `--eval_every`
steps; every checkpoint is then evaluated on the test split of ALL test users (or `--eval_users`):
* top-n HR@10 / NDCG@10 by exact candidate likelihood (`score_candidates`) and the mean test loss per task;
* for rows with a collaborative prompt, the same with the user table permuted across users
  (`training.diagnostics.shuffle_test`): the *shuffle drop* is how much the model relies on its prompt;
* sequential HR@10 / NDCG@10 by constrained beam search (`--sequential_beams`, 0 to skip: the slow part).
A row is a preset (`mha`, `mlp`, `pod`) plus `+flag=value` overrides of `peapod-train` flags, e.g.
`mha+user_embedding_norm=none`. Results go to `<output>/<row name>.json` (written after every checkpoint), the
baselines (popularity, PMF, and every other baseline `training.evaluation.BASELINES` offers, on the same users)
to `<output>/baselines.json`, and the figure to `<output>/curves.png`: one panel per metric, one line per row,
baselines as horizontal lines. Rows can run in separate processes into the same folder; `--plot_only` redraws.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

from datasets_scripts import load_prepared
from modeling_peapod import PeaPODForConditionalGeneration
from training import cli
from training.cli import hardware_description
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
          ("sequential_hr@10", "sequential HR@10 (beam)"), ("topn_shuffle_drop", "top-n HR@10 drop, user table permuted"))


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


def evaluate_folder(folder: Path, prepared, tokenizer, args) -> dict:
    """The metrics of one checkpoint folder (see the module docstring)."""
    import torch

    torch.manual_seed(args.seed)
    model = PeaPODForConditionalGeneration.from_pretrained(folder).eval()  # installed classes, not the folder's code
    started = time.perf_counter()
    if model.has_collaborative_prompt:
        shuffled = shuffle_test(model, tokenizer, prepared, max_users=args.eval_users, seed=args.seed)
        point = {key: value for key, value in shuffled["as_is"].items() if key != "topn_hits"}
        point["topn_hits"] = shuffled["as_is"]["topn_hits"]
        point["permuted"] = {key: value for key, value in shuffled["permuted"].items() if key != "topn_hits"}
        point["topn_shuffle_drop"] = shuffled["drop"].get("topn_hr@10")
        point["loglik_change"] = shuffled.get("loglik_change")
        point["attention"] = attention_health(model)
    else:
        point = _loss_and_topn(model, tokenizer, prepared, "test", args.eval_users, 16)
        point.pop("_topn_scores", None)
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
    point["eval_seconds"] = round(time.perf_counter() - started, 1)
    return point


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
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(target)


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
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for axis, (metric, title) in zip(axes, PANELS):
        for name, row in rows.items():
            points = [(p["step"], p[metric]) for p in row["points"] if p.get(metric) is not None]
            if points:
                axis.plot(*zip(*points), marker="o", label=row.get("label", name))
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
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    target = output / "curves.png"
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


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
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared" / "tokenizers" / "t5"))
    parser.add_argument("--keep_checkpoints", action="store_true")
    parser.add_argument("--plot_only", action="store_true")
    parser.add_argument("--evaluate_run", help="Evaluate the checkpoint-* folders of an existing peapod-train "
                        "output folder (trained with the row's flags) instead of training.")
    args = parser.parse_args(argv)
    if args.plot_only:
        if not args.output:
            parser.error("--plot_only needs --output")
        print(plot(Path(args.output)))
        return
    if not args.prepared_dir:
        parser.error("--prepared_dir is required")
    if (args.name or args.evaluate_run) and len(args.rows) != 1:
        parser.error("--name and --evaluate_run need a single row")
    from transformers import AutoTokenizer

    prepared = load_prepared(args.prepared_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    output = Path(args.output or ROOT / "experiments" / "results" / f"curves-{Path(args.prepared_dir).name}")
    output.mkdir(parents=True, exist_ok=True)
    baselines(prepared, tokenizer, args, output)
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
        }
        diagnostics = run_dir / "prompt_diagnostics.json"
        record["training_diagnostics"] = json.loads(diagnostics.read_text()) if diagnostics.exists() else None
        folders = sorted(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
        for folder in folders:
            point = {"step": int(folder.name.split("-")[1]), **evaluate_folder(folder, prepared, tokenizer, args)}
            record["users"] = len(point["topn_hits"])
            record["points"].append(point)
            write_json(output / f"{name}.json", record)
            print(f"{name} step {point['step']}: " + ", ".join(
                f"{key} {point[key]:.4f}" for key in ("topn_hr@10", "topn_shuffle_drop", "sequential_hr@10",
                                                      "topn_loss") if point.get(key) is not None), flush=True)
            if not (args.keep_checkpoints or args.evaluate_run):
                shutil.rmtree(folder)
    print(plot(output))


def _hardware() -> str:
    return hardware_description() + f", OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


if __name__ == "__main__":
    main()
