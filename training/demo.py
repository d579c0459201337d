"""`peapod-demo`: the whole pipeline end to end, on CPU, in a few minutes.

prepare (synthetic data by default) -> PMF user embeddings -> exact neighbour table -> train a small PeaPOD ->
evaluate (the paper's protocol, with popularity and PMF beside it) -> save a Hub-ready folder with its model card
-> reload it with `AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)` -> print one user's
top-10 recommendations, a generated explanation and the metrics table.

    peapod-demo                                   # synthetic data, tiny shape
    peapod-demo --data beauty --max_users 300     # a slice of the real Amazon Beauty data in ../shared

`main()` is the console script (exit status 0, or 2 with one `peapod-demo: error: ...` line on a user's mistake);
`run_demo(argv)` returns the result dict. `--fresh` deletes only a folder a demo wrote (it holds DEMO_MARKER) or an
empty one, never the working directory or a folder holding the data or tokenizer.
"""

from __future__ import annotations

import filecmp
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import AutoModelForSeq2SeqLM

import configuration_peapod
import modeling_peapod
from configuration_peapod import (
    NAMED_SHAPES,
    PROMPT_ENCODERS,
    PeaPODInputError,
    PromptEncoder,
    UserEmbeddingNorm,
)
from datasets_scripts import load_prepared
from datasets_scripts.build_dataset import prompt_inputs
from datasets_scripts.console import parse_dataclasses, run_console_script
from datasets_scripts.files import atomic_write_text, check_replaceable
from datasets_scripts.prepared import PrepareArguments
from datasets_scripts.templates import EVAL_TEMPLATES, render
from datasets_scripts.tokenizer_loading import check_tokenizer_name, load_tokenizer
from modeling_peapod import PeaPODForConditionalGeneration
from training import api
from training.arguments import (
    DEFAULT_LEARNING_RATE,
    DataArguments,
    ModelArguments,
    PeaPODTrainingArguments,
)
from training.collator import PeaPODDataCollator
from training.evaluation import evaluate_checkpoint, markdown_table, write_report
from training.publishing.model_card import TrainingSummary, write_model_card

DEMO_MARKER = "peapod_demo.json"  # written first into a demo's output folder: what --fresh may delete
DEMO_ENTRIES = {DEMO_MARKER, "demo_result.json", "model", "prepared-synthetic", *(f"prepared-{name}" for name in (
    "beauty", "toys", "instruments"))}
REAL_DATA = {
    "beauty": ("p5_dir", "data/amazon/beauty"),
    "toys": ("p5_dir", "data/amazon/toys"),
    "instruments": ("reviews", "data/amazon-musical-instruments/reviews_Musical_Instruments_5.json.gz"),
}


@dataclass
class DemoArguments:
    output_dir: str = field(default="runs/demo", metadata={"help": "Where the prepared data and model go."})
    data: Literal["synthetic", "beauty", "toys", "instruments"] = field(
        default="synthetic", metadata={"help": "synthetic, or real Amazon data from --shared_dir."}
    )
    shared_dir: str = field(default="../shared", metadata={"help": "The folder holding data/ and tokenizers/."})
    tokenizer: str | None = field(default=None, metadata={"help": "Default: <shared_dir>/tokenizers/t5."})
    max_users: int | None = field(default=None, metadata={"help": "Use the first N users of real data."})
    shape: str = field(default="tiny", metadata={"help": "Named random T5 shape: tiny | mini | t5-small."})
    prompt_encoder: PromptEncoder = field(default=ModelArguments.prompt_encoder, metadata={"help": "mha | mlp | none."})
    max_steps: int = field(default=300, metadata={"help": "Training steps (batches)."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    learning_rate: float = field(
        default=DEFAULT_LEARNING_RATE, metadata={"help": "AdamW learning rate (the paper's 5e-3)."}
    )
    lr_scheduler_type: str = field(
        default="constant_with_warmup", metadata={"help": "transformers schedule; a short run decayed linearly to 0 "
                                                  "spends its last third at a fraction of the rate (issue 10)."},
    )
    dropout_rate: float = field(default=0.0, metadata={"help": "T5 dropout (0: a few hundred steps on small data "
                                                        "underfit rather than overfit; issue 10)."})
    embedding_dim: int = field(default=64, metadata={"help": "PMF dimension (the paper uses 512)."})
    num_neighbors: int = field(default=10, metadata={"help": "n, neighbours per user."})
    eval_users: int | None = field(default=None, metadata={"help": "First N test users evaluated (default: all)."})
    user_embedding_norm: UserEmbeddingNorm = field(
        default=ModelArguments.user_embedding_norm,
        metadata={"help": "none (paper) | l2 | layernorm (PeaPODConfig.user_embedding_norm)."},
    )
    add_user_prompt_to_tokens: bool = field(
        default=ModelArguments.add_user_prompt_to_tokens, metadata={"help": "Add the mean user prompt to every token embedding (issue 10; False: the "
                                "paper's prepended prompt only)."},
    )
    num_beams: int = field(default=20, metadata={"help": "Beams for ranking (paper: 20)."})
    seed: int = field(default=0, metadata={"help": "Seed of data, training and evaluation."})
    fresh: bool = field(default=False, metadata={"help": "Delete output_dir first."})


def check_arguments(args: DemoArguments) -> None:
    """What can be checked before anything is written (PeaPODInputError / FileNotFoundError)."""
    if args.data != "synthetic" and args.data not in REAL_DATA:
        raise PeaPODInputError(f"--data {args.data!r}: expected synthetic or one of {sorted(REAL_DATA)}")
    if args.data != "synthetic" and not (Path(args.shared_dir) / REAL_DATA[args.data][1]).exists():
        raise FileNotFoundError(f"--data {args.data} needs {Path(args.shared_dir) / REAL_DATA[args.data][1]} (set "
                                "--shared_dir to the folder holding data/)")
    if args.shape not in NAMED_SHAPES:
        raise PeaPODInputError(f"--shape {args.shape!r}: expected one of {', '.join(NAMED_SHAPES)}")
    if args.prompt_encoder not in PROMPT_ENCODERS:
        raise PeaPODInputError(f"--prompt_encoder {args.prompt_encoder!r}: expected one of {PROMPT_ENCODERS}")
    for name in ("max_steps", "batch_size", "embedding_dim", "num_neighbors", "eval_users", "num_beams"):
        if getattr(args, name) is not None and getattr(args, name) < 1:  # eval_users None = every test user
            raise PeaPODInputError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_beams < 10:
        raise PeaPODInputError(f"--num_beams must be >= 10 (the demo shows a top-10 list), got {args.num_beams}")
    if not args.learning_rate > 0:
        raise PeaPODInputError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if not 0 <= args.dropout_rate < 1:
        raise PeaPODInputError(f"--dropout_rate must be in [0, 1), got {args.dropout_rate}")
    if args.max_users is not None and args.max_users < 2:
        raise PeaPODInputError(f"--max_users must be >= 2, got {args.max_users}")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise PeaPODInputError(f"--output_dir {args.output_dir} exists and is not a folder")


def prepare_data(args: DemoArguments, tokenizer: str) -> Path:
    prepared_dir = Path(args.output_dir) / f"prepared-{args.data}"
    if prepared_dir.exists():
        return prepared_dir
    source: dict = {"synthetic": True}
    if args.data != "synthetic":
        if args.data not in REAL_DATA:
            raise ValueError(f"--data {args.data!r}: expected synthetic or one of {sorted(REAL_DATA)}")
        key, relative = REAL_DATA[args.data]
        path = Path(args.shared_dir) / relative
        if not path.exists():
            raise FileNotFoundError(f"--data {args.data} needs {path} (set --shared_dir to the folder holding data/)")
        source = {key: str(path)}
    return api.prepare(PrepareArguments(
        output_dir=str(prepared_dir), **source, seed=args.seed, tokenizer=tokenizer, embedding="pmf",
        embedding_dim=args.embedding_dim, num_neighbors=args.num_neighbors, max_users=args.max_users,
    )).path


def run_demo(argv: list[str] | None = None) -> dict:
    """`peapod-demo` as a Python function: runs the pipeline, prints it, returns the result dict."""
    logging.basicConfig(level=logging.WARNING)
    (args,) = parse_dataclasses(DemoArguments, argv, "peapod-demo")
    started = time.perf_counter()
    tokenizer_path = args.tokenizer or str(Path(args.shared_dir) / "tokenizers" / "t5")
    check_tokenizer_name(tokenizer_path, "--tokenizer" if args.tokenizer else f"--shared_dir {args.shared_dir} (its "
                         "tokenizers/t5)")
    check_arguments(args)
    output_dir = Path(args.output_dir)
    if args.fresh and output_dir.exists():
        # demo_result.json marks the folders of demos older than DEMO_MARKER.
        check_replaceable(output_dir, (DEMO_MARKER, "demo_result.json"), DEMO_ENTRIES,
                          inputs=[args.shared_dir, tokenizer_path])
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / DEMO_MARKER, json.dumps({"written_by": "peapod-demo", "arguments": vars(args)}))
    print(f"[1/5] preparing {args.data} data (splits, negatives, PMF embeddings, neighbour table)")
    prepared_dir = prepare_data(args, tokenizer_path)

    print(f"[2/5] training a {args.shape}-shaped PeaPOD ({args.prompt_encoder}) for {args.max_steps} steps")
    model_dir = Path(args.output_dir) / "model"
    run = api.train(
        ModelArguments(
            base_model=f"random:{args.shape}", tokenizer=tokenizer_path, prompt_encoder=args.prompt_encoder,
            user_embedding_norm=args.user_embedding_norm, dropout_rate=args.dropout_rate,
            add_user_prompt_to_tokens=args.add_user_prompt_to_tokens and args.prompt_encoder != "none",
        ),
        DataArguments(prepared_dir=str(prepared_dir), max_eval_samples_per_task=64, overwrite_output_dir=True),
        PeaPODTrainingArguments(
            output_dir=str(model_dir), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate, warmup_steps=args.max_steps // 20,
            lr_scheduler_type=args.lr_scheduler_type, eval_strategy="no", save_strategy="no",
            logging_steps=max(args.max_steps // 10, 1), seed=args.seed, report_to="none", dataloader_num_workers=0,
            disable_tqdm=True,
        ),
    )
    train_seconds = time.perf_counter() - started

    print("[3/5] evaluating on the test split (constrained beam search, likelihood ranking, baselines)")
    prepared = load_prepared(prepared_dir)
    tokenizer = load_tokenizer(str(model_dir))
    model = PeaPODForConditionalGeneration.from_pretrained(model_dir).eval()  # the installed class, not the folder's
    report = evaluate_checkpoint(model, tokenizer, prepared, split="test", max_users=args.eval_users,
                                 num_beams=args.num_beams, baselines=("popularity", "pmf"), seed=args.seed,
                                 max_explanation_tokens=32,  # the synthetic sentences are ~15 tokens
                                 show_progress=False)
    write_report(report, model_dir / "eval", model_name=f"PeaPOD ({args.prompt_encoder}, {args.shape})")

    print("[4/5] writing the model card and reloading the Hub-ready folder with trust_remote_code=True")
    ranking = {name: {k: v for k, v in metrics.items()} for name, metrics in report["results"].items()}
    summary = TrainingSummary(
        dataset_name=args.data,
        dataset_description=prepared.config.get("source_notes", {}).get("source", args.data),
        base_shape=args.shape, user_embedding_source=f"cornac PMF, k = {args.embedding_dim}, training interactions",
        optimisation=f"AdamW lr {args.learning_rate} ({args.lr_scheduler_type}), dropout {args.dropout_rate}, batch "
                     f"{args.batch_size}, {args.max_steps} steps",
        seed=args.seed, hardware=api.hardware_description(), train_time=f"{train_seconds:.0f} s",
        results=ranking, example_user=1, example_history=prepared.histories[1][:-2][-5:],
    )
    write_model_card(model_dir, model.config, summary)
    # What a Hub user without this package runs. Only this package's own code may run that way: the folder's code
    # files must be byte-identical to the installed modules (this run copied them there moments ago).
    check_code_files_are_installed_ones(model_dir)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    assert type(reloaded).__module__.startswith("transformers_modules"), "not loaded as remote code"

    print("[5/5] one user's recommendations and an explanation")
    shown = show_user(reloaded, tokenizer, prepared, user=1)
    print(markdown_table(report, model_name=f"PeaPOD ({args.prompt_encoder}, {args.shape})"))
    print(comparison_line(report))
    elapsed = time.perf_counter() - started
    print(f"\nDone in {elapsed:.0f} s. Hub-ready folder: {model_dir} (README.md is its model card).")
    result = {"seconds": elapsed, "train": run.metrics, "report": report, "example": shown}
    atomic_write_text(output_dir / "demo_result.json", json.dumps(result, indent=2, default=str))
    return result


def check_code_files_are_installed_ones(folder: Path) -> None:
    """Raise unless the folder's `configuration_peapod.py` / `modeling_peapod.py` equal the installed modules."""
    for module in (configuration_peapod, modeling_peapod):
        copy = folder / Path(module.__file__).name
        if not copy.is_file() or not filecmp.cmp(copy, module.__file__, shallow=False):
            raise RuntimeError(f"{copy} is not the installed {module.__name__}: refusing to run it as remote code")


def main(argv: list[str] | None = None) -> int:
    """The `peapod-demo` console script: 0 on success, 2 with one line on a user's mistake."""
    return run_console_script("peapod-demo", run_demo, argv)


def comparison_line(report: dict) -> str:
    """One line: the model's top-n (likelihood) and sequential HR@10 with their 95% bootstrap intervals over users,
    against the baselines' on the same users, e.g. "top-n HR@10 0.31 [0.26, 0.36] vs popularity 0.12, pmf 0.36"."""
    parts = []
    for task, result_name in (("topn", "topn_likelihood"), ("sequential", "sequential")):
        metrics = report["results"].get(result_name)
        if metrics is None:
            continue
        low, high = metrics.get("hr@10_ci", (float("nan"), float("nan")))
        baselines = ", ".join(f"{name} {tasks[task]['hr@10']:.2f}" for name, tasks in report["baselines"].items()
                              if task in tasks)
        label = "top-n" if task == "topn" else "sequential"
        parts.append(f"{label} HR@10 {metrics['hr@10']:.2f} [{low:.2f}, {high:.2f}]" + (f" vs {baselines}" if
                                                                                        baselines else ""))
    users = report["users"]["evaluated_per_task"]
    return "Summary: " + "; ".join(parts) + f" ({max(users.values(), default=0)} test users, 95% bootstrap intervals)."


def show_user(model, tokenizer, prepared, user: int) -> dict:
    """Top-10 items by constrained beam search for `user`'s test prompt, and an explanation of their next item."""
    history = prepared.histories[user][:-1]  # everything before the test item
    collator = PeaPODDataCollator(tokenizer)

    def encode(source: str, task: str) -> dict:
        batch = collator([prompt_inputs(tokenizer, source, user, task)])
        batch.pop("labels")
        return batch

    source = render(EVAL_TEMPLATES["sequential"], user, history=history)
    items, _scores = model.recommend(**encode(source, "sequential"), tokenizer=tokenizer, top_k=10, num_beams=20)
    print(f"  prompt: {source}")
    print(f"  top-10: {items[0].tolist()}  (held-out next item: {prepared.histories[user][-1]})")
    shown = {"prompt": source, "top10": items[0].tolist(), "target": prepared.histories[user][-1]}
    if "explanation" in model.config.tasks and any(name.startswith("explanation") for name in prepared.dataset):
        item = prepared.histories[user][-1]
        source = render(EVAL_TEMPLATES["explanation"], user, item=item)
        output = model.generate(**encode(source, "explanation"), num_beams=4, max_new_tokens=40)
        explanation = tokenizer.decode(output[0], skip_special_tokens=True)
        print(f"  {source}\n  -> {explanation}")
        shown["explanation"] = explanation
    return shown


if __name__ == "__main__":
    sys.exit(main())
