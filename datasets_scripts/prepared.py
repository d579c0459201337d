"""`prepare`: a data source -> a prepared folder; `load_prepared`: a prepared folder -> everything in memory.

A prepared folder (fixed layout, the trainer and evaluator depend on it):

    sequential.txt             histories in the final id space (re-indexed when asked)
    datamaps.json              id2user / id2item of that id space
    explanation.json           train/validation/test explanation records (when the source has reviews)
    item_reindex.json          {"seed", "old_to_new"} (only with reindex_items)
    negatives_validation.txt   99 fixed negatives per user (P5 `user neg1 ... neg99` format)
    negatives_test.txt
    user_table.safetensors     user_embeddings [U+1, d] (row 0 zeros), user_neighbors [U+1, n],
                               item_embeddings [I+1, d] for PMF and BPR
    dataset/                   the tokenised DatasetDict (save_to_disk)
    README.md                  dataset card
    prepare_config.json        arguments, seed, statistics, the neighbour diagnostic
    held_out_users.json        (only with held_out_users > 0) the users held out of everything above: per user
                               its source id and name, `train` items (the history a new user arrives with),
                               `validation`/`test` items and 99 fixed negatives each (`splits.held_out_records`)

Everything is built in a temporary sibling folder and renamed at the end, so a failure leaves the output folder
as it was. Input is validated (and the user matrix loaded) before the heavy steps.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from configuration_peapod import PeaPODInputError, check_task_order

from . import splits as splits_module
from . import user_embeddings
from .amazon_reviews import reviews_to_p5
from .build_dataset import build_dataset_dict, write_dataset_card
from .files import (
    atomic_write_json,
    check_replaceable,
    give_default_permissions,
    remove_stale_temporaries,
    replace_folder,
    temporary_sibling_folder,
)
from .neighbor_diagnostic import neighbor_hit_rate, random_neighbor_table
from .p5_format import (
    P5Data,
    load_json,
    read_datamaps,
    read_explanations,
    read_negatives,
    read_p5_dir,
    read_sequential,
    write_negatives,
    write_p5_dir,
)
from .synthetic import SYNTHETIC_VARIANTS, synthetic_data
from .tokenizer_loading import check_tokenizer_name, load_tokenizer, looks_like_path

EMBEDDING_METHODS = ("pmf", "bivae", "bpr")
BEST = "best"  # --embedding best: the source of --compare_neighbor_sources with the highest neighbour diagnostic
RANDOM_SOURCE = "random"  # the random-neighbours reference, always reported; accepted in --compare_neighbor_sources
DEFAULT_BEST_SOURCES = ("pmf", "bpr")
REQUIRED_FILES = (
    "sequential.txt",
    "datamaps.json",
    "negatives_validation.txt",
    "negatives_test.txt",
    "user_table.safetensors",
    "dataset/dataset_dict.json",
    "README.md",
    "prepare_config.json",
)
MARKER_FILE = "prepare_config.json"  # written last: a folder holding it was made by `prepare`
# Everything `prepare` may write: an --overwrite target holding anything else is not replaced.
PREPARED_ENTRIES = {
    *(name.split("/")[0] for name in REQUIRED_FILES), "explanation.json", "item_reindex.json", "held_out_users.json"
}
HELD_OUT_FILE = "held_out_users.json"


@dataclass
class PrepareArguments:
    """Arguments of `peapod-prepare` / `prepare` (exactly one of p5_dir, reviews, synthetic)."""

    output_dir: str = field(metadata={"help": "The prepared folder to create."})
    p5_dir: str | None = field(default=None, metadata={"help": "A P5/POD folder: sequential.txt, datamaps.json."})
    reviews: str | None = field(default=None, metadata={"help": "A raw McAuley review dump (.json or .json.gz)."})
    synthetic: bool = field(default=False, metadata={"help": "Use the seeded synthetic demo data."})
    synthetic_variant: str = field(
        default="default",
        metadata={
            "help": "With --synthetic: default (communities and chains), or a planted-signal variant whose held-out "
            "items come from one known source: history (successor of the last item), user (the user's long-term "
            "taste), neighbors (what the user's clique-mates took). See docs/data.md.",
            "choices": ["default", "history", "user", "neighbors"],
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of every random draw (splits, negatives, sampling)."})
    reindex_items: bool = field(
        default=False, metadata={"help": "Leakage-free variant: re-index items with a seeded random bijection."}
    )
    tokenizer: str = field(
        default="t5-small", metadata={"help": "Tokenizer name or path (offline: a local T5 tokenizer folder)."}
    )
    embedding: str = field(
        default="pmf",
        metadata={
            "help": "User embeddings: pmf, bpr, bivae, a user matrix file (.npy/.safetensors/.csv), or best (the "
            "source of --compare_neighbor_sources, default pmf bpr, with the highest neighbour diagnostic)."
        },
    )
    compare_neighbor_sources: list[str] | None = field(
        default=None,
        metadata={
            "help": "Also report the neighbour diagnostic (validation items in the neighbours' training histories) "
            "of these sources: pmf, bpr, bivae, random. With --embedding best, the candidates.",
            "nargs": "+",
        },
    )
    embedding_dim: int = field(default=512, metadata={"help": "Dimension of PMF/BPR/BiVAE user embeddings."})
    num_neighbors: int = field(default=20, metadata={"help": "Neighbours per user in the neighbour table."})
    max_users: int | None = field(default=None, metadata={"help": "Keep only the first N users (quick runs)."})
    held_out_users: float = field(
        default=0.0,
        metadata={
            "help": "Hold out this seeded fraction of users (e.g. 0.1) from everything the model and the CF model "
            "learn from (sequential.txt, negatives, user table, dataset); their train/validation/test items and "
            "negatives go to held_out_users.json, to evaluate new users (fold-in, docs/data.md). 0: none."
        },
    )
    allow_pickle: bool = field(default=False, metadata={"help": "Allow a pickled user matrix (runs code!)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})
    k_core: int = field(default=5, metadata={"help": "k of the k-core filter of raw reviews."})
    pmf_max_iter: int = field(default=100, metadata={"help": "PMF epochs (paper: 100)."})
    pmf_implementation: str = field(
        default="numba",
        metadata={
            "help": "How PMF is trained: numba (cornac's training loop compiled in float32, ~10x faster: "
            "datasets_scripts/fast_pmf.py) or cornac (cornac's own float64 loop; folders prepared before this "
            "option existed used it).",
            "choices": list(user_embeddings.PMF_IMPLEMENTATIONS),
        },
    )
    bpr_max_iter: int = field(default=100, metadata={"help": "BPR epochs (cornac's default 100)."})
    bpr_learning_rate: float = field(default=0.01, metadata={"help": "BPR learning rate (docs/embeddings.md)."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})


@dataclass
class PreparedData:
    """A prepared folder in memory (see the module docstring)."""

    path: Path
    config: dict
    histories: dict[int, list[int]]
    num_users: int
    num_items: int
    negatives: dict[str, dict[int, list[int]]]
    user_embeddings: torch.Tensor
    user_neighbors: torch.Tensor
    item_embeddings: torch.Tensor | None
    dataset: object  # datasets.DatasetDict
    explanations: dict[str, list[dict]] | None
    item_reindex: dict[int, int] | None
    id2user: dict[int, str]
    id2item: dict[int, str]
    fingerprint: dict | None = None  # `data_fingerprint(path)`, what `PeaPODConfig.data_fingerprint` records
    held_out_users: list[dict] | None = None  # held_out_users.json's "users" (`splits.held_out_records`), if any


def _check_arguments(args: PrepareArguments) -> None:
    """Every check that needs no data: run before anything is read, so a mistake costs nothing."""
    given = {"p5_dir": args.p5_dir, "reviews": args.reviews, "synthetic": args.synthetic}
    sources = [name for name, value in given.items() if value]
    if len(sources) != 1:
        raise PeaPODInputError(
            f"give exactly one data source of --p5_dir, --reviews, --synthetic (got {sources or 'none'})"
        )
    if args.p5_dir and not Path(args.p5_dir).is_dir():
        raise FileNotFoundError(f"--p5_dir {args.p5_dir} is not a folder")
    if args.reviews and not Path(args.reviews).is_file():
        raise FileNotFoundError(f"--reviews {args.reviews} is not a file")
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise PeaPODInputError(f"--output_dir {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        if (output / MARKER_FILE).is_file():
            raise FileExistsError(f"--output_dir {output} holds a prepared folder; pass --overwrite to replace it")
        raise FileExistsError(
            f"--output_dir {output} exists, is not empty and is not a prepared folder (no {MARKER_FILE}): choose "
            "another folder (--overwrite replaces only prepared folders)"
        )
    inputs = [path for path in (args.p5_dir, args.reviews) if path]
    if args.embedding not in (*EMBEDDING_METHODS, BEST):
        if not Path(args.embedding).exists():
            raise FileNotFoundError(
                f"--embedding {args.embedding!r} is neither one of {(*EMBEDDING_METHODS, BEST)} nor an existing "
                "user-matrix file"
            )
        inputs.append(args.embedding)
    _check_neighbor_sources(args)
    # Checked even without --overwrite: writing a prepared folder over (or around) the source is never right.
    check_replaceable(output, MARKER_FILE, PREPARED_ENTRIES, inputs=inputs, flag="--output_dir")
    for name in ("embedding_dim", "num_neighbors", "k_core", "pmf_max_iter", "bpr_max_iter"):
        if getattr(args, name) < 1:
            raise PeaPODInputError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.bpr_learning_rate > 0:
        raise PeaPODInputError(f"--bpr_learning_rate must be > 0, got {args.bpr_learning_rate}")
    if not 0.0 <= args.held_out_users < 1.0:
        raise PeaPODInputError(
            f"--held_out_users must be a fraction in [0, 1) (e.g. 0.1 for 10% of users), got {args.held_out_users}"
        )
    if args.max_users is not None and args.max_users < 2:
        raise PeaPODInputError(f"--max_users must be >= 2, got {args.max_users}")
    if args.num_proc is not None and args.num_proc < 1:
        raise PeaPODInputError(f"--num_proc must be >= 1, got {args.num_proc}")


def _check_neighbor_sources(args: PrepareArguments) -> None:
    """--compare_neighbor_sources names known sources; --embedding best has at least one learnt candidate."""
    sources = args.compare_neighbor_sources or []
    unknown = [source for source in sources if source not in (*EMBEDDING_METHODS, RANDOM_SOURCE)]
    if unknown:
        raise PeaPODInputError(
            f"--compare_neighbor_sources {unknown[0]!r}: expected any of {', '.join((*EMBEDDING_METHODS, RANDOM_SOURCE))}"
        )
    if args.embedding == BEST and sources and not set(sources) - {RANDOM_SOURCE}:
        raise PeaPODInputError(
            "--embedding best needs a source to choose: --compare_neighbor_sources names only random (the reference, "
            "which has no user embeddings); add pmf, bpr or bivae"
        )


def _check_synthetic_variant(args: PrepareArguments) -> None:
    """--synthetic_variant: a known variant, and only with --synthetic."""

    if args.synthetic_variant not in SYNTHETIC_VARIANTS:
        raise PeaPODInputError(
            f"--synthetic_variant {args.synthetic_variant!r}: expected one of {', '.join(SYNTHETIC_VARIANTS)}"
        )
    if args.synthetic_variant != "default" and not args.synthetic:
        raise PeaPODInputError(f"--synthetic_variant {args.synthetic_variant} needs --synthetic")


def _load_source(args: PrepareArguments) -> P5Data:
    _check_synthetic_variant(args)  # first: before the source is read
    if args.p5_dir:
        data = read_p5_dir(args.p5_dir)
        data.extra.setdefault("source", f"P5 folder {Path(args.p5_dir).name}")
        return data
    if args.reviews:
        return reviews_to_p5(args.reviews, k=args.k_core, seed=args.seed)

    return synthetic_data(args.synthetic_variant, seed=args.seed)


def _user_table(
    args: PrepareArguments, train: dict[int, list[int]], num_users: int, num_items: int, matrix,
    method: str | None = None,
):
    """(user_embeddings, user_neighbors, item_embeddings or None) from `method` (default: --embedding)."""
    method = method or args.embedding
    item_embeddings = None
    if method not in EMBEDDING_METHODS:
        users = matrix
    elif method == "pmf":
        users, item_embeddings = user_embeddings.train_pmf(
            train, num_users, num_items, k=args.embedding_dim, seed=args.seed, max_iter=args.pmf_max_iter,
            implementation=args.pmf_implementation, verbose=True,  # each epoch reported: progress on full data
        )
    elif method == "bpr":
        users, item_embeddings = user_embeddings.train_bpr(
            train, num_users, num_items, k=args.embedding_dim, seed=args.seed, max_iter=args.bpr_max_iter,
            learning_rate=args.bpr_learning_rate, verbose=True,
        )
    else:
        users = user_embeddings.train_bivae(
            train, num_users, num_items, k=args.embedding_dim, seed=args.seed, verbose=True  # cornac's epoch bar
        )
    return users, user_embeddings.build_neighbor_table(users, args.num_neighbors), item_embeddings


def prepare(output_dir: str | os.PathLike, **kwargs) -> dict:
    """Build a prepared folder from one source; returns its prepare_config (arguments and statistics).

    Keyword arguments are the fields of `PrepareArguments` (the CLI flags without dashes), e.g.
    `prepare("out", synthetic=True, tokenizer="path/to/t5", embedding_dim=16)`.
    """
    args = PrepareArguments(output_dir=str(output_dir), **kwargs)
    # First what a killed earlier run left (a folder it had moved aside comes back), so the checks see the truth.
    remove_stale_temporaries(Path(args.output_dir).resolve())
    _check_arguments(args)
    if looks_like_path(args.tokenizer):  # a missing folder at once; a Hub name when loaded, before the heavy steps
        check_tokenizer_name(args.tokenizer, flag="--tokenizer")
    started = time.time()
    stages = tqdm(total=6, desc="prepare", unit="stage")
    try:
        return _prepare(args, stages, started)
    finally:
        stages.close()


def _prepare(args: PrepareArguments, stages, started: float) -> dict:
    """The stages of `prepare` (reading, splits, user table, samples, files, rename)."""
    stages.set_postfix_str("reading the source")
    data = _load_source(args)
    source_num_users = data.num_users
    if args.max_users is not None:
        data = splits_module.take_first_users(data, args.max_users)
    if args.num_neighbors > data.num_users - 1:
        raise ValueError(
            f"num_neighbors={args.num_neighbors} but only {data.num_users} users: at most {data.num_users - 1} "
            "neighbours each (a user is not its own neighbour)"
        )
    # Fail fast on a bad user matrix and an unloadable tokenizer, before any heavy work.
    matrix = None
    if args.embedding not in (*EMBEDDING_METHODS, BEST):
        matrix = user_embeddings.load_user_matrix(args.embedding, source_num_users, allow_pickle=args.allow_pickle)
        matrix = matrix[: data.num_users + 1]  # max_users keeps the first users, whose ids are unchanged

    tokenizer = load_tokenizer(args.tokenizer, flag="--tokenizer")
    stages.update()

    stages.set_postfix_str("splits and negatives")
    item_reindex = None
    if args.reindex_items:
        data, item_reindex = splits_module.reindex_items(data, args.seed)
    held_out = None
    if args.held_out_users:  # after re-indexing: the held-out records are in the final item ids
        all_users = data.id2user
        data, held_out_histories = splits_module.hold_out_users(data, args.held_out_users, args.seed)
        held_out = splits_module.held_out_records(held_out_histories, all_users, data.num_items, args.seed)
        if args.num_neighbors > data.num_users - 1:
            raise PeaPODInputError(
                f"--num_neighbors {args.num_neighbors} but only {data.num_users} users remain after "
                f"--held_out_users {args.held_out_users}: at most {data.num_users - 1} neighbours each"
            )
    loo = splits_module.leave_one_out(data.histories)
    explanation_notes = {}
    if data.explanations is not None:
        data.explanations, explanation_notes = splits_module.enforce_explanation_rules(data.explanations, loo)
    negatives = {
        name: splits_module.fixed_negatives(data.histories, data.num_items, name, args.seed)
        for name in ("validation", "test")
    }
    stages.update()

    output = Path(args.output_dir).resolve()
    with temporary_sibling_folder(output) as temporary:
        stages.set_postfix_str("user embeddings and neighbours")

        users, neighbors, items, diagnostic = _user_table_by_diagnostic(
            args, loo.train, loo.validation, data.num_users, data.num_items, matrix
        )
        user_embeddings.save_user_table(temporary / "user_table.safetensors", users, neighbors, items)
        stages.update()

        stages.set_postfix_str("samples and tokenisation")
        dataset = build_dataset_dict(
            data.histories, data.num_items, negatives, data.explanations, tokenizer, args.seed, num_proc=args.num_proc
        )
        dataset.save_to_disk(str(temporary / "dataset"))
        give_default_permissions(temporary / "dataset")
        stages.update()

        stages.set_postfix_str("writing files")
        write_p5_dir(temporary, data)
        for name, rows in negatives.items():
            write_negatives(temporary / f"negatives_{name}.txt", rows)
        if held_out is not None:
            atomic_write_json(
                temporary / HELD_OUT_FILE, {"fraction": args.held_out_users, "seed": args.seed, "users": held_out}
            )
        if item_reindex is not None:
            atomic_write_json(
                temporary / "item_reindex.json",
                {"seed": args.seed, "old_to_new": {str(old): new for old, new in item_reindex.items()}},
            )
        statistics = {
            "num_users": data.num_users,
            "num_items": data.num_items,
            "num_interactions": data.num_interactions,
            "split_sizes": {name: len(split) for name, split in dataset.items()},
            "user_embedding_shape": list(users.shape),
            "user_neighbors_shape": list(neighbors.shape),
            "num_held_out_users": len(held_out or ()),
        }
        notes = {key: value for key, value in data.extra.items() if not key.startswith("_")}
        if explanation_notes:
            notes["explanation_records_removed_when_preparing"] = explanation_notes
        config = {
            "arguments": asdict(args),
            "seed": args.seed,
            "has_explanations": data.explanations is not None,
            # what folding in new users needs to solve as PMF did (PeaPODConfig.fold_in_regularization)
            "pmf": _pmf_settings(args) if diagnostic["chosen"] == "pmf" else None,
            "reindexed_items": item_reindex is not None,
            "statistics": statistics,
            "source_notes": notes,
            "neighbor_diagnostic": diagnostic,
            "seconds": round(time.time() - started, 1),
        }
        provenance = _provenance(args, notes) + [describe_neighbor_diagnostic(diagnostic)]
        write_dataset_card(temporary / "README.md", output.name, statistics, provenance)
        atomic_write_json(temporary / MARKER_FILE, config)  # last: it marks the folder as complete
        stages.update()

        stages.set_postfix_str("moving into place")
        replace_folder(temporary, output)
        stages.update()
    return config


def _source_label(args: PrepareArguments, method: str) -> str:
    return method if method in EMBEDDING_METHODS else f"file {Path(method).name}"


def _user_table_by_diagnostic(
    args: PrepareArguments, train: dict[int, list[int]], validation: dict[int, int], num_users: int, num_items: int,
    matrix,
) -> tuple:
    """The user table of --embedding (or, for `best`, of the winning source) and the neighbour diagnostic.

    Every compared source is trained on the training items and scored by `neighbor_hit_rate` on the validation
    items (never the test items), beside random neighbours (seeded with --seed). Only the table kept so far is
    held in memory. Returns (users, neighbors, items, diagnostic) where diagnostic is what prepare_config.json
    records under "neighbor_diagnostic".
    """
    compared = [source for source in args.compare_neighbor_sources or [] if source != RANDOM_SOURCE]
    if args.embedding == BEST:
        candidates = list(dict.fromkeys(compared or DEFAULT_BEST_SOURCES))
    else:
        candidates = list(dict.fromkeys([args.embedding, *compared]))
    hit_rates: dict[str, float] = {}
    kept, kept_rate = None, -1.0
    for method in candidates:
        table = _user_table(args, train, num_users, num_items, matrix, method=method)
        rate = neighbor_hit_rate(table[1], train, validation)
        hit_rates[_source_label(args, method)] = round(rate, 4)
        # --embedding best keeps the first source with the highest rate; otherwise the one named
        if (args.embedding == BEST and rate > kept_rate) or method == args.embedding:
            kept, kept_rate, chosen = table, rate, method
    random_table = random_neighbor_table(num_users, args.num_neighbors, seed=args.seed)
    hit_rates[RANDOM_SOURCE] = round(neighbor_hit_rate(random_table, train, validation), 4)
    diagnostic = {
        "split": "validation",
        "num_users": len(validation),
        "num_neighbors": args.num_neighbors,
        "hit_rates": hit_rates,
        "random_seed": args.seed,
        "chosen": _source_label(args, chosen),
        "selection": "best" if args.embedding == BEST else "given",
    }
    return (*kept, diagnostic)


def describe_neighbor_diagnostic(diagnostic: dict) -> str:
    """One sentence for the summary and the dataset card: what was measured, each source's figure, the choice."""
    hit_rates = diagnostic["hit_rates"]
    rates = ", ".join(f"{source} {rate:.4f}" for source, rate in hit_rates.items())
    how = "chosen as the best by this diagnostic" if diagnostic["selection"] == "best" else "as asked"
    better = [source for source, rate in hit_rates.items()
              if source != RANDOM_SOURCE and rate > hit_rates[diagnostic["chosen"]]]
    if better:
        how += f"; {' and '.join(better)} scored higher: --embedding best would choose {better[0]}"
    return (
        f"Neighbour diagnostic (share of {diagnostic['num_users']:,} users whose validation item is in the training "
        f"history of one of their {diagnostic['num_neighbors']} nearest neighbours; random neighbours seeded "
        f"{diagnostic['random_seed']}): {rates}. User table from {diagnostic['chosen']} ({how})."
    )
def _pmf_settings(args: PrepareArguments) -> dict:
    """What `PeaPODConfig.fold_in_regularization` needs to solve as PMF did (the table's own settings), and how
    the table was trained."""
    return {
        "lambda_reg": user_embeddings.PMF_LAMBDA_REG,
        "negatives_per_positive": user_embeddings.PMF_NEGATIVES_PER_POSITIVE,
        "implementation": args.pmf_implementation,
    }


def _provenance(args: PrepareArguments, notes: dict) -> list[str]:
    if args.p5_dir:
        source = f"P5/POD folder `{Path(args.p5_dir).name}` (sequential.txt, datamaps.json), read and validated."
    elif args.reviews:
        source = (
            f"Raw Amazon reviews `{Path(args.reviews).name}` (McAuley et al.), {args.k_core}-core filtered; "
            "explanations extracted by PeaPOD's own Sentires-style extractor (docs/data.md)."
        )
    else:
        source = "Seeded synthetic data (datasets_scripts.synthetic): communities, categories, item chains."
        if args.synthetic_variant != "default":
            source = (
                f"Seeded synthetic data (datasets_scripts.synthetic), planted-signal variant `{args.synthetic_variant}`: "
                "the held-out items follow from one known source (docs/data.md)."
            )
    embedding = args.embedding
    if embedding == BEST:
        embedding = "the best source by the neighbour diagnostic (below)"
    elif embedding not in EMBEDDING_METHODS:
        embedding = f"user-supplied matrix {Path(args.embedding).name}"
    elif embedding == "pmf":
        embedding = f"pmf ({args.pmf_implementation} training loop)"
    ids = "in the source id space"
    if args.reindex_items:
        ids = "re-indexed with a seeded random bijection (item_reindex.json)"
    lines = [
        source,
        f"Seed {args.seed}; items {ids}.",
        f"User embeddings: {embedding}; {args.num_neighbors} cosine neighbours per user.",
        f"Tokenizer: `{args.tokenizer}`.",
    ]
    if args.max_users:
        lines.append(f"Slice: the first {args.max_users} users only.")
    if args.held_out_users:
        lines.append(
            f"Held-out users: a seeded {args.held_out_users:.0%} of users is absent from every file above and from "
            f"the user table; their items are in `{HELD_OUT_FILE}`, to evaluate new users (fold-in)."
        )
    if "explanations_dropped" in notes:
        lines.append(f"Explanation records dropped by the split rules: {notes['explanations_dropped']}.")
    return lines


def rebuild_dataset(path: str | os.PathLike, tokenizer: str | None = None, num_proc: int | None = None) -> Path:
    """Re-create a prepared folder's tokenised `dataset/` from the folder's own files; returns its path.

    The samples are a pure function of what the folder keeps (histories, fixed negatives, explanation splits,
    seed) and the tokenizer, so the rebuilt dataset equals the one `prepare` wrote. This lets a prepared folder
    travel without `dataset/`, most of its bytes (e.g. to a lent GPU machine, experiments/gpu/), and be rebuilt
    there. `tokenizer` defaults to the one recorded in prepare_config.json; it must be the same tokenizer (a path
    to a copy of it is fine). The new `dataset/` replaces the old one only once it is completely written.
    """
    path = Path(path)
    prepared = load_prepared(path, load_dataset=False)
    tokenizer_name = tokenizer or prepared.config.get("arguments", {}).get("tokenizer")
    if not tokenizer_name:
        raise ValueError(f"{path / 'prepare_config.json'} names no tokenizer; pass tokenizer=")
    if "seed" not in prepared.config:
        raise ValueError(f"{path / 'prepare_config.json'} has no seed: cannot rebuild the samples it describes")
    dataset = build_dataset_dict(
        prepared.histories, prepared.num_items, prepared.negatives, prepared.explanations,
        load_tokenizer(tokenizer_name, flag="tokenizer"), prepared.config["seed"], num_proc=num_proc,
    )
    with temporary_sibling_folder(path / "dataset") as temporary:
        dataset.save_to_disk(str(temporary))
        give_default_permissions(temporary)
        replace_folder(temporary, path / "dataset")
    return path / "dataset"


def load_prepared(path: str | os.PathLike, load_dataset: bool = True) -> PreparedData:
    """Read a prepared folder, checking that every piece is there (a clear error names the missing file)."""
    from datasets import load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"prepared folder {path} does not exist")
    config_path = path / "prepare_config.json"
    config = load_json(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise PeaPODInputError(
            f"{config_path}: expected a JSON object (written by peapod-prepare), got {type(config).__name__}"
        )
    for name in ("has_explanations", "reindexed_items"):
        if not isinstance(config.get(name, False), bool):
            raise PeaPODInputError(f"{config_path}: `{name}` is {config[name]!r}; expected true or false")
    required = [name for name in REQUIRED_FILES if load_dataset or not name.startswith("dataset/")]
    if config.get("has_explanations"):
        required.append("explanation.json")
    if config.get("reindexed_items"):
        required.append("item_reindex.json")
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(f"prepared folder {path} is incomplete: missing {', '.join(missing)}")

    histories = read_sequential(path / "sequential.txt")
    id2user, id2item = read_datamaps(path / "datamaps.json")
    negatives = {
        name: read_negatives(path / f"negatives_{name}.txt", histories=histories)
        for name in ("validation", "test")
    }
    table = user_embeddings.load_user_table(path / "user_table.safetensors")
    if table["user_embeddings"].shape[0] != len(id2user) + 1:
        raise ValueError(
            f"{path / 'user_table.safetensors'}: {table['user_embeddings'].shape[0]} rows, expected num_users + 1 = "
            f"{len(id2user) + 1}"
        )
    item_reindex = None
    if config.get("reindexed_items"):
        reindex_path = path / "item_reindex.json"
        raw = load_json(reindex_path)
        try:
            item_reindex = {int(old): int(new) for old, new in raw["old_to_new"].items()}
        except (KeyError, TypeError, AttributeError, ValueError):
            raise PeaPODInputError(
                f"{reindex_path}: expected {{\"seed\": ..., \"old_to_new\": {{\"<old id>\": <new id>, ...}}}}"
            ) from None
    return PreparedData(
        path=path,
        config=config,
        histories=histories,
        num_users=len(id2user),
        num_items=len(id2item),
        negatives=negatives,
        user_embeddings=table["user_embeddings"],
        user_neighbors=table["user_neighbors"],
        item_embeddings=table.get("item_embeddings"),
        dataset=load_from_disk(str(path / "dataset")) if load_dataset else None,
        explanations=read_explanations(path / "explanation.json") if config.get("has_explanations") else None,
        item_reindex=item_reindex,
        id2user=id2user,
        id2item=id2item,
        fingerprint=data_fingerprint(path, num_users=len(id2user), num_items=len(id2item)),
        held_out_users=load_json(path / HELD_OUT_FILE)["users"] if (path / HELD_OUT_FILE).is_file() else None,
    )


# The files that say what the data is (users, items, interactions, explanation splits, item re-indexing); their
# bytes are the data fingerprint. Negatives, the user table and the tokenised dataset are derived from them.
FINGERPRINT_FILES = ("sequential.txt", "datamaps.json", "explanation.json", "item_reindex.json")
logger = logging.getLogger(__name__)


def data_fingerprint(path: str | os.PathLike, num_users: int, num_items: int) -> dict:
    """The identity of a prepared folder's data: {"sha256": 16 hex digits, "num_users", "num_items"}.

    The hash runs over the bytes of `FINGERPRINT_FILES` present in the folder (each preceded by its name), so two
    folders agree exactly when they hold the same users, items, interactions, explanation splits and item ids; the
    synthetic data of another seed, another `--max_users` slice or re-indexed items all differ. The counts ride
    along so a config edited by hand can be caught without the data (`PeaPODForConditionalGeneration.from_pretrained`).
    """
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        file = Path(path) / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return {"sha256": digest.hexdigest()[:16], "num_users": num_users, "num_items": num_items}


def data_task_ids(dataset) -> dict[str, int]:
    """{task name: the task_id its rows carry} of a prepared `DatasetDict`, read from the first row of each
    `{task}_{split}` split (every row of a split has the same task)."""
    task_ids: dict[str, int] = {}
    for name, split in dataset.items():
        if len(split) and "task_id" in split.column_names:
            task_ids.setdefault(name.rsplit("_", 1)[0], int(split[0]["task_id"]))
    return task_ids


def check_task_order_matches(config, prepared: PreparedData, tasks: Sequence[str] | None = None) -> None:
    """Refuse a model whose `config.tasks` order differs from the prepared data's task ids (PeaPODInputError
    naming both orders): the ids would silently select another task's prompt. `tasks`: only those the run uses
    (default all the data holds), so a model without a task the data adds can still run on the others."""
    task_ids = {name: task_id for name, task_id in data_task_ids(prepared.dataset).items()
                if tasks is None or name in tasks}
    check_task_order(config.tasks, task_ids, "the model's config", str(prepared.path))


def check_data_fingerprint(
    config, prepared: PreparedData, allow_other_data: bool = False, record: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> None:
    """Refuse to pair a model with a prepared folder other than the one it was trained on.

    `config` is the model's `PeaPODConfig`; its `data_fingerprint` (recorded by `peapod-train`) must equal
    `prepared.fingerprint`, else a `PeaPODInputError` names both fingerprints. `checkpoint` (a folder, e.g. the one
    training resumes from) has its `config.json`'s fingerprint compared as well. `allow_other_data=True` (the CLIs'
    `--allow_other_data`) turns the error into a warning. A side without a fingerprint (a checkpoint from before
    the field existed) is not compared. `record=True` then stores the folder's fingerprint in `config` (training:
    the model is now trained on this data).
    """
    current = getattr(prepared, "fingerprint", None)
    recorded = {"the model's config": getattr(config, "data_fingerprint", None)}
    if checkpoint is not None and (Path(checkpoint) / "config.json").is_file():
        recorded[str(Path(checkpoint) / "config.json")] = load_json(Path(checkpoint) / "config.json").get(
            "data_fingerprint"
        )
    for where, fingerprint in recorded.items():
        if not fingerprint or not current or fingerprint == current:
            continue
        message = (
            f"the model was trained on other data than {prepared.path}: {where} records data_fingerprint "
            f"{fingerprint} but {prepared.path} has {current}"
        )
        if not allow_other_data:
            raise PeaPODInputError(
                f"{message}. Use the prepared folder the model was trained on, or pass --allow_other_data "
                "(allow_other_data=True) if the ids mean the same users and items"
            )
        logger.warning("%s (allowed by allow_other_data)", message)
    if record and current:
        config.data_fingerprint = dict(current)
