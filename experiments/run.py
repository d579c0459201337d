"""One experiment row: prepare (cached) -> train -> evaluate on the test split, for each seed; results as JSON.

    python experiments/run.py experiments/configs/instruments-p5-peapod.yaml            # the config's seeds
    python experiments/run.py experiments/configs/instruments-p5-peapod.yaml --seeds 0  # one seed
    python experiments/run.py experiments/configs/instruments-p5-peapod.yaml --baselines_only
    python experiments/run.py experiments/configs/instruments-reindexed-allusers.yaml --baselines_only \
        --baselines popularity pmf bpr markov                                       # every test user, 4 baselines

A config (YAML) names the data (`dataset`: synthetic | beauty | toys | instruments, `synthetic_variant`:
default | history | user | neighbors (docs/data.md), `reindex_items`, `max_users`), the model row
(`prompt_encoder`, `prompt_encoder_heads`, `use_task_prompts`, `shape`) and the budget (`max_steps`,
`max_train_seconds`, `batch_size`, `learning_rate`, `eval_users`: null for every user). Prepared folders are
cached under `prepared/`; checkpoints go to `runs/experiments/`; each (row, seed) writes
`experiments/results/<row>-seed<k>.json`. Training and evaluation use the GPU when there is one.

The popularity and PMF baselines depend on the data and the evaluated users only (PMF scores with the prepared
folder's own PMF factors), so `--baselines_only` writes them once per prepared folder as
`experiments/results/baselines-<folder>-<users>users.json`; `--baselines` (none) skips them in model runs, as the
GPU script does (experiments/gpu/).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from datasets_scripts import load_prepared
from datasets_scripts.files import atomic_write_text
from datasets_scripts.prepared import PrepareArguments
from datasets_scripts.tokenizer_loading import load_tokenizer
from modeling_peapod import PeaPODForConditionalGeneration
from training import api
from training.arguments import (
    DEFAULT_LEARNING_RATE,
    DataArguments,
    ModelArguments,
    PeaPODTrainingArguments,
)
from training.evaluation import BASELINES as KNOWN_BASELINES
from training.evaluation import TASKS, evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = {
    "beauty": ("p5_dir", "data/amazon/beauty"),
    "toys": ("p5_dir", "data/amazon/toys"),
    "instruments": ("reviews", "data/amazon-musical-instruments/reviews_Musical_Instruments_5.json.gz"),
}
_MODEL, _DATA, _PREPARE = ModelArguments(), DataArguments(), PrepareArguments(output_dir="")
# A row's keys. The model and data ones default to the API's dataclasses (whose model defaults are PeaPODConfig's),
# so a default is declared once; the rest are this script's own (its budget and protocol).
DEFAULTS = {
    "dataset": "synthetic", "synthetic_variant": _PREPARE.synthetic_variant, "reindex_items": _PREPARE.reindex_items,
    "max_users": _PREPARE.max_users, "shape": "tiny", "prompt_encoder": _MODEL.prompt_encoder,
    "prompt_encoder_heads": _MODEL.prompt_encoder_heads, "use_task_prompts": _MODEL.use_task_prompts,
    "num_neighbors": _PREPARE.num_neighbors, "embedding_dim": _PREPARE.embedding_dim, "max_steps": 300,
    "batch_size": 32, "learning_rate": DEFAULT_LEARNING_RATE, "eval_users": 100, "num_beams": 20, "seeds": [0, 1, 2],
    "tasks": None,
    "max_source_length": _DATA.max_source_length, "data_seed": _PREPARE.seed, "max_train_seconds": None,
    "lr_scheduler_type": "linear", "warmup_steps": None,
    # The folders behind README's recorded results were prepared by cornac's own PMF loop; kept, so that these
    # commands reproduce them exactly (a config may say "numba", peapod-prepare's faster default).
    "pmf_implementation": "cornac",
}
BASELINES = ("popularity", "pmf")  # the default set; --baselines names any of training.evaluation.BASELINES


def load_config(path: str) -> dict:
    values = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **values, "name": Path(path).stem}


def prepared_folder(config: dict, shared: Path, tokenizer: str) -> Path:
    variant = config["synthetic_variant"]
    if variant != "default" and config["dataset"] != "synthetic":
        raise ValueError(f"synthetic_variant {variant!r} needs dataset: synthetic (got {config['dataset']!r})")
    parts = [config["dataset"]] + ([variant] if variant != "default" else []) + (
        ["reindexed"] if config["reindex_items"] else []) + (
        [f"{config['max_users']}users"] if config["max_users"] else []) + [f"pmf{config['embedding_dim']}",
                                                                          f"n{config['num_neighbors']}"]
    folder = ROOT / "prepared" / "-".join(parts)
    if not folder.exists():
        source: dict = {"synthetic": True, "synthetic_variant": variant}
        if config["dataset"] != "synthetic":
            key, relative = REAL_DATA[config["dataset"]]
            source = {key: str(shared / relative)}
        api.prepare(PrepareArguments(
            output_dir=str(folder), **source, seed=config["data_seed"], tokenizer=tokenizer, embedding="pmf",
            embedding_dim=config["embedding_dim"], num_neighbors=config["num_neighbors"],
            max_users=config["max_users"], reindex_items=config["reindex_items"],
            pmf_implementation=config["pmf_implementation"],
        ))
    return folder


def run_seed(config: dict, seed: int, prepared_dir: Path, tokenizer: str, baselines=BASELINES) -> dict:
    import torch

    output_dir = ROOT / "runs" / "experiments" / config["name"] / f"seed{seed}"
    started = time.perf_counter()
    model_args = ModelArguments(
        base_model=f"random:{config['shape']}", tokenizer=tokenizer, prompt_encoder=config["prompt_encoder"],
        prompt_encoder_heads=config["prompt_encoder_heads"], use_task_prompts=config["use_task_prompts"],
    )
    data_args = DataArguments(
        prepared_dir=str(prepared_dir), tasks=list(config["tasks"] or DataArguments().tasks),
        max_eval_samples_per_task=64, max_source_length=config["max_source_length"],
        max_train_seconds=config["max_train_seconds"], overwrite_output_dir=True,
    )
    training_args = PeaPODTrainingArguments(
        output_dir=str(output_dir), max_steps=config["max_steps"], per_device_train_batch_size=config["batch_size"],
        learning_rate=config["learning_rate"], lr_scheduler_type=config["lr_scheduler_type"],
        warmup_steps=config["max_steps"] // 20 if config["warmup_steps"] is None else config["warmup_steps"],
        eval_strategy="no", save_strategy="no", seed=seed, report_to="none", disable_tqdm=True,
        logging_steps=50 if config["max_train_seconds"] else max(config["max_steps"] // 10, 1),
    )
    train_metrics = api.train(model_args, data_args, training_args).metrics
    train_seconds = time.perf_counter() - started
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = PeaPODForConditionalGeneration.from_pretrained(output_dir).eval().to(device)  # installed code only
    tokenizer = load_tokenizer(str(output_dir))
    report = evaluate_on_test(config, prepared_dir, model, tokenizer, baselines, seed)
    heads = 0 if config["prompt_encoder"] == "mlp" else config["prompt_encoder_heads"]
    return {
        "row": config["name"], "seed": seed, "dataset": config["dataset"], "prepared": prepared_dir.name,
        "reindex_items": config["reindex_items"],
        "model": model_label(config), "heads": heads, "config": {k: v for k, v in config.items() if k != "seeds"},
        "results": report["results"], "baselines": report["baselines"], "users": report["users"],
        "explanation_examples": report.get("explanations", {}).get("first_predictions"),
        "train_loss": train_metrics.get("train_loss"), "train_seconds": round(train_seconds, 1),
        "train_steps": train_metrics.get("global_step"),
        "time_budget_stopped_at_step": train_metrics.get("time_budget_stopped_at_step"),
        "eval_seconds": round(time.perf_counter() - started - train_seconds, 1), "hardware": api.hardware_description(),
    }


def evaluate_on_test(config: dict, prepared_dir: Path, model, tokenizer, baselines, seed: int) -> dict:
    """`evaluate_checkpoint` on the test split of the first `eval_users` users: the same rows for a model run and
    for `--baselines_only` (model None: the ranking tasks only, baselines have no explanations)."""
    prepared = load_prepared(prepared_dir)
    tasks = [task for task in (config["tasks"] or TASKS) if f"{task}_test" in prepared.dataset
             and (model is not None or task != "explanation")]
    return evaluate_checkpoint(model, tokenizer, prepared, split="test", tasks=tasks, max_users=config["eval_users"],
                               num_beams=config["num_beams"], baselines=baselines, seed=seed, show_progress=False)


def run_baselines(config: dict, prepared_dir: Path, tokenizer: str, baselines=BASELINES) -> dict:
    """The baselines alone on the rows a model run of `config` evaluates (same split, users and candidates)."""
    report = evaluate_on_test(config, prepared_dir, None, load_tokenizer(tokenizer), baselines,
                              config["data_seed"])
    return {"prepared": prepared_dir.name, "dataset": config["dataset"], "reindex_items": config["reindex_items"],
            "eval_users": config["eval_users"], "baselines": report["baselines"], "users": report["users"],
            "hardware": api.hardware_description()}


def write_json(target: Path, record: dict) -> None:
    atomic_write_text(target, json.dumps(record, indent=1, sort_keys=True))
    print(f"{target.relative_to(ROOT)}: {json.dumps(record.get('results', record.get('baselines')))}", flush=True)


def model_label(config: dict) -> str:
    if config["prompt_encoder"] == "none":
        return "POD" if config["use_task_prompts"] else "T5 + whole-word (no prompts)"
    name = "PeaPOD" if config["prompt_encoder"] == "mha" else "PeaPOD-MLP"
    if config["prompt_encoder"] == "mha" and config["prompt_encoder_heads"] != 4:
        name += f" (H={config['prompt_encoder_heads']})"
    return name + ("" if config["use_task_prompts"] else " (no task)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="*")
    parser.add_argument("--shared_dir", default=str(ROOT.parent / "shared"))

    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=KNOWN_BASELINES,
                        help="Baselines evaluated beside each model run (none: --baselines with no names).")
    parser.add_argument("--baselines_only", action="store_true", help="Write the baselines file and stop.")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    shared = Path(args.shared_dir)
    tokenizer = str(shared / "tokenizers" / "t5")
    prepared_dir = prepared_folder(config, shared, tokenizer)
    results_dir = ROOT / "experiments" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.baselines_only:
        users = "all" if config["eval_users"] is None else config["eval_users"]
        name = f"baselines-{prepared_dir.name}-{users}users.json"
        write_json(results_dir / name, run_baselines(config, prepared_dir, tokenizer, tuple(args.baselines)))
        return
    for seed in args.seeds if args.seeds is not None else config["seeds"]:
        record = run_seed(config, seed, prepared_dir, tokenizer, tuple(args.baselines))
        write_json(results_dir / f"{config['name']}-seed{seed}.json", record)


if __name__ == "__main__":
    main()
