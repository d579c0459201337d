"""`evaluate`: the typed evaluation API under `peapod-evaluate` (training/evaluation/cli.py parses its flags into
`EvaluateArguments` and calls it).

The checkpoint and its tokenizer are loaded with the installed classes (`PeaPODForConditionalGeneration`,
`datasets_scripts.tokenizer_loading.load_tokenizer`): code files or an `auto_map` inside a checkpoint folder are
never executed. Every argument is checked before anything is loaded, so a bad `output_dir` is reported before an
evaluation that could not be saved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from configuration_peapod import DEFAULT_TASKS, PeaPODInputError
from datasets_scripts.prepared import load_prepared
from datasets_scripts.tokenizer_loading import check_tokenizer_name, load_tokenizer
from modeling_peapod import PeaPODForConditionalGeneration
from training.publishing.model_card import add_evaluation_to_card

from .report import write_report
from .runner import BASELINES, SPLITS, TOPN_RANKINGS, evaluate_checkpoint

TASKS = DEFAULT_TASKS


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
    topn_rankings: list[str] = field(
        default_factory=lambda: list(TOPN_RANKINGS),
        metadata={"help": "The model's top-n rankings: beam (constrained beam search over the candidates) and/or "
                          "likelihood (every candidate scored). likelihood alone skips the slower beam search."},
    )
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
        metadata={"help": "i/N: compute only chunks c with c %% N == i (needs --chunk_dir); 'auto' takes RANK/"
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
    unknown = [name for name in args.topn_rankings if name not in TOPN_RANKINGS]
    if unknown or not args.topn_rankings:
        raise PeaPODInputError(f"--topn_rankings {args.topn_rankings}: expected a non-empty subset of {list(TOPN_RANKINGS)}")
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


@dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate` computed: the report (every number, the excluded users, timing, settings), whether it is
    complete (False: a shard's part is done, other shards' chunks are missing), and the files it wrote."""

    report: dict
    complete: bool
    written: tuple[Path, ...] = ()

    @property
    def results(self) -> dict:
        """{result name: metrics}, e.g. `results["sequential"]["hr@10"]`, `results["topn_likelihood"]`."""
        return self.report["results"]


def evaluate(args: EvaluateArguments) -> EvaluationResult:
    """Evaluate a checkpoint (and/or the baselines) on a prepared folder; what `peapod-evaluate` runs.

    Writes results.json and results.md into `args.output_dir` when given, and the results into the checkpoint's
    model card with `args.update_model_card`. Raises on a user's mistake before anything is loaded.
    """
    check_arguments(args)
    shard = parse_shard(args.shard)
    if shard[1] > 1 and args.chunk_dir is None:
        raise PeaPODInputError(f"--shard {args.shard} needs --chunk_dir (the folder where the shards' results meet)")
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
        chunk_dir=args.chunk_dir, shard=shard, chunk_size=args.chunk_size, topn_rankings=args.topn_rankings,
    )
    if report.get("chunks", {}).get("incomplete_tasks"):
        return EvaluationResult(report, complete=False)
    report["checkpoint"] = args.checkpoint
    report["prepared_dir"] = str(args.prepared_dir)
    written: tuple[Path, ...] = ()
    if args.output_dir:
        written = write_report(report, args.output_dir, model_name(args))
    if args.update_model_card:
        users = report["users"]["evaluated_per_task"]
        how = {"sequential": f"sequential by {args.num_beams}-beam search constrained to valid item ids",
               "topn": "top-n over the 100 fixed candidates by constrained beam search and by likelihood",
               "explanation": "explanation by beam search"}
        description = (f"`peapod-evaluate` on `{Path(args.prepared_dir).name}`, {args.split} split, "
                       f"{max(users.values(), default=0)} users: "
                       + "; ".join(how[task] for task in report["tasks"] if task in how) + ".")
        card = add_evaluation_to_card(args.checkpoint, report, description, dataset_name=Path(args.prepared_dir).name)
        written += (card,)
    return EvaluationResult(report, complete=True, written=written)


def model_name(args: EvaluateArguments) -> str:
    """The name of the evaluated model in the report's tables: the checkpoint folder's."""
    return Path(args.checkpoint).name if args.checkpoint else "model"
