"""`peapod-evaluate`: evaluate a checkpoint (and/or the baselines) on a prepared folder (training/evaluation/runner.py).

    peapod-evaluate --checkpoint runs/beauty-peapod --prepared_dir prepared/beauty --split test \
        --output_dir runs/beauty-peapod/eval-test --baselines popularity pmf

writes `results.json` (every number, the excluded users, timing and settings) and `results.md` (the tables), and
prints the tables. Without --checkpoint only the baselines run.

The checkpoint and its tokenizer are loaded with the installed classes (`PeaPODForConditionalGeneration`,
`datasets_scripts.tokenizer_loading.load_tokenizer`): code files or an `auto_map` inside a checkpoint folder are
never executed. Every argument is checked before anything is loaded, so a bad `--output_dir` is reported before an
evaluation that could not be saved. `main()` is the console script (exit status 0, or 2 with one line);
`evaluate(argv)` returns the report dict.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from configuration_peapod import PeaPODInputError
from datasets_scripts.console import parse_dataclasses, run_console_script
from datasets_scripts.prepared import load_prepared
from datasets_scripts.tokenizer_loading import check_tokenizer_name, load_tokenizer
from modeling_peapod import PeaPODForConditionalGeneration
from training.publishing.model_card import add_evaluation_to_card

from .report import markdown_table, write_report
from .runner import BASELINES, SPLITS, TASKS, evaluate_checkpoint


@dataclass
class EvaluateArguments:
    prepared_dir: str = field(metadata={"help": "A folder written by peapod-prepare."})
    checkpoint: str | None = field(
        default=None, metadata={"help": "A saved PeaPOD model folder; omit to run only --baselines."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or name (default: the checkpoint's own tokenizer)."}
    )
    split: str = field(default="test", metadata={"help": f"One of {SPLITS}."})
    tasks: list[str] = field(default_factory=lambda: list(TASKS), metadata={"help": f"A subset of {TASKS}."})
    max_users: int | None = field(default=None, metadata={"help": "Evaluate only the first N users (by id)."})
    batch_size: int = field(default=16, metadata={"help": "Samples per generation batch."})
    num_beams: int = field(default=20, metadata={"help": "Beams of the (constrained) beam search (paper: 20)."})
    top_k: int = field(default=10, metadata={"help": "Length of the ranked lists (paper: 10)."})
    max_explanation_tokens: int = field(default=64, metadata={"help": "Longest generated explanation, in tokens."})
    max_source_length: int | None = field(
        default=None, metadata={"help": "Cut inputs from the left like training did (default: full inputs)."}
    )
    baselines: list[str] = field(default_factory=list, metadata={"help": f"Baselines to add: any of {BASELINES}."})
    exclude_history: bool = field(
        default=False,
        metadata={"help": "Baselines' sequential ranking skips the user's history items (the model does not)."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where to write results.json and results.md."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda when available)."})
    seed: int = field(default=0, metadata={"help": "Seed set before evaluation (decoding itself is deterministic)."})
    allow_other_data: bool = field(
        default=False, metadata={"help": "Evaluate a checkpoint whose data fingerprint is not the prepared folder's."}
    )
    chunk_dir: str | None = field(
        default=None,
        metadata={"help": "Write each chunk of users' results here; a rerun skips finished chunks (resume)."},
    )
    shard: str = field(
        default="0/1",
        metadata={"help": "i/N: compute only chunks c with c % N == i (needs --chunk_dir); 'auto' takes RANK/"
                          "WORLD_SIZE from `accelerate launch` or torchrun. The run that finds every chunk reports."},
    )
    chunk_size: int = field(default=1024, metadata={"help": "Rows (users) per chunk file of --chunk_dir."})
    update_model_card: bool = field(
        default=False, metadata={"help": "Write the results into the checkpoint's model card (table + model-index)."}
    )


def parse_shard(text: str) -> tuple[int, int]:
    """`i/N` -> (i, N); `auto` -> (RANK, WORLD_SIZE) of the launcher's environment (0/1 without one)."""
    if text == "auto":
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise PeaPODInputError(f"--shard must be i/N with 0 <= i < N (e.g. 0/2) or 'auto', got {text!r}")
    return int(index), int(count)


def check_arguments(args: EvaluateArguments) -> None:
    """Everything that can be checked before loading data or a model (PeaPODInputError / FileNotFoundError)."""
    if args.split not in SPLITS:
        raise PeaPODInputError(f"--split must be one of {SPLITS}, got {args.split!r}")
    if args.checkpoint is None and not args.baselines:
        raise PeaPODInputError("give --checkpoint, --baselines, or both")
    unknown = [task for task in args.tasks if task not in TASKS]
    if unknown or not args.tasks:
        raise PeaPODInputError(f"--tasks {args.tasks}: expected a non-empty subset of {list(TASKS)}")
    unknown = [name for name in args.baselines if name not in BASELINES]
    if unknown:
        raise PeaPODInputError(f"--baselines {unknown}: expected any of {list(BASELINES)}")
    for name in ("batch_size", "num_beams", "top_k", "max_explanation_tokens", "chunk_size"):
        if getattr(args, name) < 1:
            raise PeaPODInputError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("max_users", "max_source_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise PeaPODInputError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.top_k > args.num_beams:
        raise PeaPODInputError(f"--top_k {args.top_k} needs at least as many beams (--num_beams {args.num_beams})")
    if args.update_model_card and args.checkpoint is None:
        raise PeaPODInputError("--update_model_card needs --checkpoint (the card to update is the checkpoint's README.md)")
    if not Path(args.prepared_dir).is_dir():
        raise FileNotFoundError(f"--prepared_dir {args.prepared_dir} does not exist (make one with peapod-prepare)")
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"--checkpoint folder {args.checkpoint} does not exist")
    if args.checkpoint is not None and not (Path(args.checkpoint) / "config.json").is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} holds no config.json (a folder saved by peapod-train)")
    if args.update_model_card and not (Path(args.checkpoint) / "README.md").is_file():
        raise FileNotFoundError(f"--update_model_card: {Path(args.checkpoint) / 'README.md'} does not exist (peapod-train "
                                "writes it; training.publishing.model_card.write_model_card writes one)")
    if args.output_dir is not None:
        output = Path(args.output_dir)
        if output.exists() and not output.is_dir():
            raise PeaPODInputError(f"--output_dir {output} exists and is not a folder")
        if any(parent.exists() and not parent.is_dir() for parent in output.parents):
            raise PeaPODInputError(f"--output_dir {output}: a part of the path is a file, not a folder")
    if args.tokenizer is not None:
        check_tokenizer_name(args.tokenizer)


def evaluate(argv: list[str] | None = None) -> dict:
    """`peapod-evaluate` as a Python function: returns the report (raises on a user's mistake)."""
    (args,) = parse_dataclasses(EvaluateArguments, argv, "peapod-evaluate")
    check_arguments(args)

    shard = parse_shard(args.shard)
    if shard[1] > 1 and args.chunk_dir is None:
        raise PeaPODInputError(f"--shard {args.shard} needs --chunk_dir (the folder where the shards' results meet)")

    import torch

    prepared = load_prepared(args.prepared_dir)
    model = tokenizer = None
    if args.checkpoint is not None:
        # One GPU per process under `accelerate launch` / torchrun (LOCAL_RANK), the first one otherwise.
        device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
        model = PeaPODForConditionalGeneration.from_pretrained(args.checkpoint).to(device)
        tokenizer = load_tokenizer(args.tokenizer or args.checkpoint,
                                   flag="--tokenizer" if args.tokenizer else "--checkpoint (its tokenizer)")

    report = evaluate_checkpoint(
        model, tokenizer, prepared, split=args.split, tasks=args.tasks, max_users=args.max_users,
        batch_size=args.batch_size, num_beams=args.num_beams, top_k=args.top_k, baselines=args.baselines,
        exclude_history=args.exclude_history, max_explanation_tokens=args.max_explanation_tokens,
        max_source_length=args.max_source_length, seed=args.seed, allow_other_data=args.allow_other_data,
        chunk_dir=args.chunk_dir, shard=shard, chunk_size=args.chunk_size,
    )
    incomplete = report.get("chunks", {}).get("incomplete_tasks")
    if incomplete:
        print(f"shard {shard[0]}/{shard[1]} done: its chunks are in {args.chunk_dir}; chunks of other shards are "
              f"missing for {', '.join(incomplete)}. When every shard has finished, the last one to finish (or a "
              "rerun without --shard, which loads every chunk) writes the results.")
        return report
    report["checkpoint"] = args.checkpoint
    report["prepared_dir"] = str(args.prepared_dir)
    model_name = Path(args.checkpoint).name if args.checkpoint else "model"
    if args.output_dir:
        json_path, markdown_path = write_report(report, args.output_dir, model_name)
        print(f"wrote {json_path} and {markdown_path}")
    else:
        print(json.dumps(report["results"], indent=2))
    print(markdown_table(report, model_name))
    if args.update_model_card:
        users = report["users"]["evaluated_per_task"]
        how = {"sequential": f"sequential by {args.num_beams}-beam search constrained to valid item ids",
               "topn": "top-n over the 100 fixed candidates by constrained beam search and by likelihood",
               "explanation": "explanation by beam search"}
        description = (f"`peapod-evaluate` on `{Path(args.prepared_dir).name}`, {args.split} split, "
                       f"{max(users.values(), default=0)} users: "
                       + "; ".join(how[task] for task in report["tasks"] if task in how) + ".")
        card = add_evaluation_to_card(args.checkpoint, report, description, dataset_name=Path(args.prepared_dir).name)
        print(f"updated {card}")
    return report


def main(argv: list[str] | None = None) -> int:
    """The `peapod-evaluate` console script: 0 on success, 2 with one line on a user's mistake."""
    return run_console_script("peapod-evaluate", evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
