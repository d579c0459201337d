"""`prepare`: a data source -> a prepared folder; `load_prepared`: a prepared folder -> everything in memory.

A prepared folder (fixed layout, the trainer and evaluator depend on it):

    sequential.txt             histories in the final id space (re-indexed when asked)
    datamaps.json              id2user / id2item of that id space
    explanation.json           train/validation/test explanation records (when the source has reviews)
    item_reindex.json          {"seed", "old_to_new"} (only with reindex_items)
    negatives_validation.txt   99 fixed negatives per user (P5 `user neg1 ... neg99` format)
    negatives_test.txt
    user_table.safetensors     user_embeddings [U+1, d] (row 0 zeros), user_neighbors [U+1, n],
                               item_embeddings [I+1, d] for PMF
    dataset/                   the tokenised DatasetDict (save_to_disk)
    README.md                  dataset card
    prepare_config.json        arguments, seed, statistics

Everything is built in a temporary sibling folder and renamed at the end, so a failure leaves the output folder
as it was. Input is validated (and the user matrix loaded) before the heavy steps.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import splits as splits_module
from .build_dataset import build_dataset_dict, write_dataset_card
from .p5_format import (
    P5Data,
    atomic_write_json,
    permissions_as_umask_allows,
    read_datamaps,
    read_explanations,
    read_negatives,
    read_p5_dir,
    read_sequential,
    write_negatives,
    write_p5_dir,
)

EMBEDDING_METHODS = ("pmf", "bivae")
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
        default="pmf", metadata={"help": "User embeddings: pmf, bivae, or a user matrix file (.npy/.safetensors/.csv)."}
    )
    embedding_dim: int = field(default=512, metadata={"help": "Dimension of PMF/BiVAE user embeddings."})
    num_neighbors: int = field(default=20, metadata={"help": "Neighbours per user in the neighbour table."})
    max_users: int | None = field(default=None, metadata={"help": "Keep only the first N users (quick runs)."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow a pickled user matrix (runs code!)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})
    k_core: int = field(default=5, metadata={"help": "k of the k-core filter of raw reviews."})
    pmf_max_iter: int = field(default=100, metadata={"help": "PMF epochs (paper: 100)."})
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


def _check_arguments(args: PrepareArguments) -> None:
    given = {"p5_dir": args.p5_dir, "reviews": args.reviews, "synthetic": args.synthetic}
    sources = [name for name, value in given.items() if value]
    if len(sources) != 1:
        raise ValueError(f"give exactly one data source of --p5_dir, --reviews, --synthetic (got {sources or 'none'})")
    from configuration_peapod import PeaPODInputError

    from .synthetic import SYNTHETIC_VARIANTS

    if args.synthetic_variant not in SYNTHETIC_VARIANTS:
        raise PeaPODInputError(
            f"--synthetic_variant {args.synthetic_variant!r}: expected one of {', '.join(SYNTHETIC_VARIANTS)}"
        )
    if args.synthetic_variant != "default" and not args.synthetic:
        raise PeaPODInputError(f"--synthetic_variant {args.synthetic_variant} needs --synthetic")
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output_dir {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise FileExistsError(f"output_dir {output} exists and is not empty; pass --overwrite to replace it")
    if args.embedding not in EMBEDDING_METHODS and not Path(args.embedding).exists():
        raise FileNotFoundError(
            f"--embedding {args.embedding!r} is neither one of {EMBEDDING_METHODS} nor an existing user-matrix file"
        )
    for name in ("embedding_dim", "num_neighbors", "k_core", "pmf_max_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)}")


def _load_source(args: PrepareArguments) -> P5Data:
    if args.p5_dir:
        data = read_p5_dir(args.p5_dir)
        data.extra.setdefault("source", f"P5 folder {Path(args.p5_dir).name}")
        return data
    if args.reviews:
        from .amazon_reviews import reviews_to_p5

        return reviews_to_p5(args.reviews, k=args.k_core, seed=args.seed)
    from .synthetic import synthetic_data

    return synthetic_data(args.synthetic_variant, seed=args.seed)


def _user_table(args: PrepareArguments, train: dict[int, list[int]], num_users: int, num_items: int, matrix):
    from . import user_embeddings

    item_embeddings = None
    if matrix is not None:
        users = matrix
    elif args.embedding == "pmf":
        users, item_embeddings = user_embeddings.train_pmf(
            train, num_users, num_items, k=args.embedding_dim, seed=args.seed, max_iter=args.pmf_max_iter
        )
    else:
        users = user_embeddings.train_bivae(train, num_users, num_items, k=args.embedding_dim, seed=args.seed)
    return users, user_embeddings.build_neighbor_table(users, args.num_neighbors), item_embeddings


def prepare(output_dir: str | os.PathLike, **kwargs) -> dict:
    """Build a prepared folder from one source; returns its prepare_config (arguments and statistics).

    Keyword arguments are the fields of `PrepareArguments` (the CLI flags without dashes), e.g.
    `prepare("out", synthetic=True, tokenizer="path/to/t5", embedding_dim=16)`.
    """
    args = PrepareArguments(output_dir=str(output_dir), **kwargs)
    _check_arguments(args)
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
    if args.embedding not in EMBEDDING_METHODS:
        from .user_embeddings import load_user_matrix

        matrix = load_user_matrix(args.embedding, source_num_users, allow_pickle=args.allow_pickle)
        matrix = matrix[: data.num_users + 1]  # max_users keeps the first users, whose ids are unchanged
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    stages.update()

    stages.set_postfix_str("splits and negatives")
    item_reindex = None
    if args.reindex_items:
        data, item_reindex = splits_module.reindex_items(data, args.seed)
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
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        permissions_as_umask_allows(temporary, 0o777)
        stages.set_postfix_str("user embeddings and neighbours")
        from .user_embeddings import save_user_table

        users, neighbors, items = _user_table(args, loo.train, data.num_users, data.num_items, matrix)
        save_user_table(temporary / "user_table.safetensors", users, neighbors, items)
        permissions_as_umask_allows(temporary / "user_table.safetensors")
        stages.update()

        stages.set_postfix_str("samples and tokenisation")
        dataset = build_dataset_dict(
            data.histories, data.num_items, negatives, data.explanations, tokenizer, args.seed, num_proc=args.num_proc
        )
        dataset.save_to_disk(str(temporary / "dataset"))
        stages.update()

        stages.set_postfix_str("writing files")
        write_p5_dir(temporary, data)
        for name, rows in negatives.items():
            write_negatives(temporary / f"negatives_{name}.txt", rows)
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
        }
        notes = {key: value for key, value in data.extra.items() if not key.startswith("_")}
        if explanation_notes:
            notes["explanation_records_removed_when_preparing"] = explanation_notes
        config = {
            "arguments": asdict(args),
            "seed": args.seed,
            "has_explanations": data.explanations is not None,
            "reindexed_items": item_reindex is not None,
            "statistics": statistics,
            "source_notes": notes,
            "seconds": round(time.time() - started, 1),
        }
        atomic_write_json(temporary / "prepare_config.json", config)
        write_dataset_card(temporary / "README.md", output.name, statistics, _provenance(args, notes))
        stages.update()

        stages.set_postfix_str("moving into place")
        _replace_folder(temporary, output)
        stages.update()
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return config


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
    if embedding not in EMBEDDING_METHODS:
        embedding = f"user-supplied matrix {Path(args.embedding).name}"
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
    from transformers import AutoTokenizer

    path = Path(path)
    prepared = load_prepared(path, load_dataset=False)
    tokenizer_name = tokenizer or prepared.config.get("arguments", {}).get("tokenizer")
    if not tokenizer_name:
        raise ValueError(f"{path / 'prepare_config.json'} names no tokenizer; pass tokenizer=")
    if "seed" not in prepared.config:
        raise ValueError(f"{path / 'prepare_config.json'} has no seed: cannot rebuild the samples it describes")
    dataset = build_dataset_dict(
        prepared.histories, prepared.num_items, prepared.negatives, prepared.explanations,
        AutoTokenizer.from_pretrained(tokenizer_name), prepared.config["seed"], num_proc=num_proc,
    )
    temporary = Path(tempfile.mkdtemp(dir=path, prefix=".dataset.tmp-"))
    try:
        dataset.save_to_disk(str(temporary / "dataset"))
        _replace_folder(temporary / "dataset", path / "dataset")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return path / "dataset"


def _replace_folder(temporary: Path, output: Path) -> None:
    """Rename `temporary` to `output`; an existing output is moved aside first and deleted only afterwards."""
    backup = None
    if output.exists():
        backup = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, backup)
    try:
        os.replace(temporary, output)
    except BaseException:
        if backup is not None:
            os.replace(backup, output)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def load_prepared(path: str | os.PathLike, load_dataset: bool = True) -> PreparedData:
    """Read a prepared folder, checking that every piece is there (a clear error names the missing file)."""
    from datasets import load_from_disk

    from .user_embeddings import load_user_table

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"prepared folder {path} does not exist")
    config_path = path / "prepare_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
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
    table = load_user_table(path / "user_table.safetensors")
    if table["user_embeddings"].shape[0] != len(id2user) + 1:
        raise ValueError(
            f"{path / 'user_table.safetensors'}: {table['user_embeddings'].shape[0]} rows, expected num_users + 1 = "
            f"{len(id2user) + 1}"
        )
    item_reindex = None
    if config.get("reindexed_items"):
        raw = json.loads((path / "item_reindex.json").read_text(encoding="utf-8"))
        item_reindex = {int(old): int(new) for old, new in raw["old_to_new"].items()}
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
    )
