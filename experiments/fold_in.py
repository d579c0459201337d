"""New users without retraining (issue 13 §1): top-n HR@10 of held-out users folded in, against in-table users.

    python experiments/fold_in.py                      # prepare, train (900 steps) and evaluate, as in README
    python experiments/fold_in.py --max_steps 300      # a shorter run (own checkpoint folder)
    python experiments/fold_in.py --paired_only --prepared_dir prepared/syn --checkpoint runs/model --output OUT
                                                       # the paired check alone, on any model and its data
    python experiments/fold_in.py --checkpoint runs/fold-in-mha-4800 --output OUT   # a model trained elsewhere
    python experiments/fold_in.py --output OUT --table  # rewrite OUT/fold-in.md from OUT/fold-in.json

1. Prepares the planted `user` synthetic variant with a seeded 10% of users held out of everything the model and
   the CF model learn from (`peapod-prepare --synthetic --synthetic_variant user --held_out_users 0.1`, PMF k = 512,
   20 neighbours, data seed 0), unless `--prepared_dir` exists.
2. Trains PeaPOD (mha) with the recipe of README "Learning curves on the planted user variant" (tiny shape,
   sequential + top-n, batch 32, lr 5e-3, 15 warmup steps then constant, dropout 0, seed 0) unless the checkpoint
   folder holds a model. A checkpoint trained before `peapod-train` kept the PMF item factors gets them from the
   prepared folder (the same numbers `peapod-train` would store).
3. Evaluates top-n HR@10 / NDCG@10 by exact candidate likelihood (`score_candidates`) on the test item against the
   99 fixed negatives, for EVERY test user of each group, with 95% bootstrap intervals over users:
   (a) in-table users (their user ids, the prepared test split);
   (b) held-out users folded in from their training-part items (`fold_in_users`, negatives "expected" and
       "sampled"), prompt text `user_0`, explicit `user_embeddings`/`user_neighbors`;
   (c) the same held-out users as the unknown user (user id 0, the same `user_0` prompts);
   (d) popularity (training-interaction counts of the table users), on the held-out users;
   plus the PMF dot product with the table vectors (in-table users) and with the folded-in vectors (held-out users),
   and, on the first `--paired_users` in-table users (default all), a paired check: the same users by their table
   row vs treated as new users (prompt `user_0`): folded in from their own training items (cosine of the two
   vectors, neighbour overlap) or as the unknown user (row 0).
   The held-out comparison states the target's ratio (held-out folded in / in-table HR@10, the two groups
   bootstrapped independently) and the held-out users' paired gain over row 0 and over popularity.
   `--paired_only` runs this check alone (with popularity and PMF on the same users), so it needs no held-out users:
   it asks of any trained model, e.g. one trained far longer than step 2 would, whether a folded-in vector keeps
   what the model learnt to read from the table's.
Writes `<output>/fold-in.json` (every figure, the per-user hits, the checkpoint's trained steps) and
`<output>/fold-in.md` (the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from transformers import AutoTokenizer

from datasets_scripts import load_prepared, prepare
from datasets_scripts.templates import EVAL_TEMPLATES, render
from modeling_peapod import (
    PeaPODForConditionalGeneration,
    build_user_neighbors,
    compute_whole_word_ids,
)
from training import cli
from training.api import hardware_description
from training.evaluation import bootstrap_interval
from training.evaluation.baselines import rank_candidates
from training.evaluation.runner import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from training.factory import install_item_factors

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "t5"
RECIPE = {"prompt_encoder": "mha", "dropout_rate": "0.0", "lr_scheduler_type": "constant_with_warmup"}


def prepare_data(folder: Path, args) -> None:
    prepare(folder, synthetic=True, synthetic_variant="user", held_out_users=args.held_out_users,
            embedding_dim=512, num_neighbors=20, seed=args.data_seed, tokenizer=args.tokenizer,
            pmf_implementation="cornac")  # as the recorded results' folder was (experiments/run.py DEFAULTS)


def train_model(folder: Path, args) -> None:
    arguments = [
        "--prepared_dir", str(args.prepared_dir), "--output_dir", str(folder), "--base_model", "random:tiny",
        "--tokenizer", args.tokenizer, "--tasks", "sequential", "topn", "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", "32", "--learning_rate", "5e-3", "--warmup_steps", "15",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "50", "--seed", str(args.seed),
        "--report_to", "none", "--dataloader_num_workers", "0", "--overwrite_output_dir", "True",
        "--disable_tqdm", "True",
    ]
    for key, value in RECIPE.items():
        arguments += [f"--{key}", value]
    cli.train(arguments)


def load_model(folder: Path, prepared):
    model = PeaPODForConditionalGeneration.from_pretrained(folder).eval()
    if not model.has_item_factors:
        install_item_factors(model, prepared)
    return model


def held_out_prompts(prepared, seed: int) -> list[dict]:
    """Top-n test prompts of the held-out users, written as the prepared test prompts are (EVAL template, the
    test item among its 99 fixed negatives, shuffled with a seeded generator), the user named `user_0`."""
    rng = np.random.default_rng([seed, 15])
    prompts = []
    for record in prepared.held_out_users:
        candidates = rng.permutation(np.array([record["test"], *record["negatives_test"]])).tolist()
        prompts.append({"source": render(EVAL_TEMPLATES["topn"], 0, candidates=candidates),
                        "candidates": candidates, "item_id": record["test"], "train": record["train"]})
    return prompts


def table_prompts(prepared) -> list[dict]:
    columns = prepared.dataset["topn_test"]
    return [{"source": source, "candidates": list(candidates), "item_id": int(item), "user_id": int(user)}
            for source, candidates, item, user in zip(columns["source"], columns["candidates"], columns["item_id"],
                                                      columns["user_id"])]


@torch.no_grad()
def model_hits(model, tokenizer, prompts: list[dict], users, batch_size: int) -> dict:
    """HR@10/NDCG@10 of `prompts` by candidate likelihood. `users(rows)` gives the user inputs of a batch: either
    {"user_ids": ...} or {"user_embeddings": ..., "user_neighbors": ...}."""
    trie = model.item_trie(tokenizer)
    task = model.config.tasks.index("topn")
    ranked, targets = [], []
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start : start + batch_size]
        encoded = tokenizer([row["source"] for row in rows], return_tensors="pt", padding=True)
        candidates = torch.tensor([row["candidates"] for row in rows])
        scores = model.score_candidates(
            encoded.input_ids, encoded.attention_mask, task_ids=torch.full((len(rows),), task),
            whole_word_ids=compute_whole_word_ids(encoded.input_ids, tokenizer), candidates=candidates,
            item_trie=trie, **users(start, rows),
        )
        ranked += rank_candidates(candidates.numpy(), scores.float().numpy(), 10)
        targets += [row["item_id"] for row in rows]
    return ranking_summary(ranked, targets)


def ranking_summary(ranked: list[list[int]], targets: list[int]) -> dict:
    hits = [int(target in row[:10]) for row, target in zip(ranked, targets)]
    gains = [1.0 / np.log2(row.index(target) + 2) if target in row[:10] else 0.0 for row, target in zip(ranked, targets)]
    return {"hr@10": float(np.mean(hits)), "hr@10_ci": bootstrap_interval(hits), "ndcg@10": float(np.mean(gains)),
            "ndcg@10_ci": bootstrap_interval(gains), "num_users": len(hits), "hits": hits}


def score_hits(prompts: list[dict], score_rows) -> dict:
    """Ranking by a scoring function of (row index, candidate ids) -> scores (the baselines)."""
    candidates = np.array([row["candidates"] for row in prompts])
    scores = np.stack([score_rows(index, row) for index, row in enumerate(candidates)])
    return ranking_summary(rank_candidates(candidates, scores, 10), [row["item_id"] for row in prompts])


def evaluate(args) -> dict:
    prepared_dir, checkpoint = Path(args.prepared_dir), Path(args.checkpoint)
    timings = {}
    started = time.perf_counter()
    if not (prepared_dir / "prepare_config.json").exists():
        prepare_data(prepared_dir, args)
        timings["prepare_s"] = round(time.perf_counter() - started, 1)
    prepared = load_prepared(prepared_dir)
    if args.paired_only:
        if not (checkpoint / "model.safetensors").exists():
            raise SystemExit(f"--paired_only evaluates a trained model: {checkpoint} holds no model.safetensors")
    elif not prepared.held_out_users:
        raise SystemExit(f"{prepared_dir} holds no held-out users: prepare it with --held_out_users 0.1")
    if not (checkpoint / "model.safetensors").exists():
        started = time.perf_counter()
        train_model(checkpoint, args)
        timings["train_s"] = round(time.perf_counter() - started, 1)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = load_model(checkpoint, prepared)
    in_table = table_prompts(prepared)[: args.eval_users]
    if args.paired_only:
        started = time.perf_counter()
        paired = paired_check(model, tokenizer, prepared, in_table[: args.paired_users], args)
        timings["paired_check_s"] = round(time.perf_counter() - started, 1)
        return {**report_header(args, prepared, timings), "groups": in_table_baselines(prepared, in_table),
                "paired_in_table": paired}
    held_out = held_out_prompts(prepared, args.seed)[: args.eval_users]
    groups: dict[str, dict] = {}

    started = time.perf_counter()
    groups["in_table"] = model_hits(model, tokenizer, in_table, lambda start, rows: {
        "user_ids": torch.tensor([row["user_id"] for row in rows])}, args.batch_size)
    timings["in_table_eval_s"] = round(time.perf_counter() - started, 1)
    folded = {}
    for negatives in ("expected", "sampled"):
        started = time.perf_counter()
        vectors, neighbors = model.fold_in_users([row["train"] for row in held_out], negatives=negatives,
                                                 seed=args.seed)
        timings[f"fold_in_{negatives}_s"] = round(time.perf_counter() - started, 1)
        folded[negatives] = (vectors, neighbors)
        groups[f"fold_in_{negatives}"] = model_hits(
            model, tokenizer, held_out, explicit_users(vectors, neighbors), args.batch_size)
    groups["unknown_user_row_0"] = model_hits(model, tokenizer, held_out, lambda start, rows: {
        "user_ids": torch.zeros(len(rows), dtype=torch.long)}, args.batch_size)

    counts = popularity_counts(prepared)
    groups["popularity_held_out"] = score_hits(held_out, lambda index, candidates: counts[candidates])
    groups.update(in_table_baselines(prepared, in_table))
    items = prepared.item_embeddings.double().numpy()
    for negatives, (vectors, _) in folded.items():
        folded_vectors = vectors.double().numpy()
        groups[f"pmf_fold_in_{negatives}"] = score_hits(
            held_out, lambda index, candidates, v=folded_vectors: items[candidates] @ v[index])

    paired = paired_check(model, tokenizer, prepared, in_table[: args.paired_users], args)
    return {**report_header(args, prepared, timings), "num_held_out_users": len(held_out), "groups": groups,
            "held_out_comparison": held_out_comparison(groups), "paired_in_table": paired}


def report_header(args, prepared, timings: dict) -> dict:
    return {
        "command": args.command, "prepared_dir": str(args.prepared_dir), "checkpoint": str(args.checkpoint),
        "num_table_users": prepared.num_users, "num_items": prepared.num_items,
        # the steps the evaluated checkpoint was trained for (a given --checkpoint need not be --max_steps')
        "trained_steps": trained_steps(Path(args.checkpoint)), "eval_users": args.eval_users, "seed": args.seed,
        "data_seed": args.data_seed,
        "hardware": args.hardware or f"{hardware_description()}, {torch.get_num_threads()} torch thread(s)",
        "timings": timings,
    }


def trained_steps(checkpoint: Path) -> int | None:
    """The optimizer steps `peapod-train` reports for `checkpoint` (train_metrics.json), or None."""
    metrics = checkpoint / "train_metrics.json"
    return json.loads(metrics.read_text()).get("global_step") if metrics.exists() else None


def held_out_comparison(groups: dict) -> dict:
    """The held-out users folded in (expected negatives) against the issue's references: the in-table users (a
    ratio of two independent groups, each resampled on its own) and, on the same held-out users, the unknown-user
    row 0 and popularity (paired per-user differences)."""
    folded = np.asarray(groups["fold_in_expected"]["hits"], dtype=np.float64)
    in_table = np.asarray(groups["in_table"]["hits"], dtype=np.float64)
    ratio = float(folded.mean() / in_table.mean()) if in_table.mean() else None
    interval = None
    if ratio is not None:
        # scipy's bootstrap, the samples resampled independently (paired=False), percentile like bootstrap_interval
        result = stats.bootstrap((folded, in_table), lambda a, b, axis: a.mean(axis) / np.maximum(b.mean(axis), 1e-12),
                                 paired=False, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                                 rng=np.random.default_rng(BOOTSTRAP_SEED))
        interval = [float(result.confidence_interval.low), float(result.confidence_interval.high)]
    return {"hr@10_ratio_to_in_table": ratio, "hr@10_ratio_to_in_table_ci": interval,
            "minus_unknown_user_row_0": paired_difference(folded, groups["unknown_user_row_0"]["hits"]),
            "minus_popularity": paired_difference(folded, groups["popularity_held_out"]["hits"])}


def popularity_counts(prepared) -> np.ndarray:
    """Training-interaction counts per item id (the last two items of each history are validation and test)."""
    return np.bincount(np.concatenate([items[:-2] for items in prepared.histories.values()]),
                       minlength=prepared.num_items + 1).astype(np.float64)


def in_table_baselines(prepared, in_table: list[dict]) -> dict:
    """Popularity and the PMF dot product (table vectors) on the in-table users' top-n test prompts."""
    counts = popularity_counts(prepared)
    items = prepared.item_embeddings.double().numpy()
    table = prepared.user_embeddings.double().numpy()
    return {"popularity_in_table": score_hits(in_table, lambda index, candidates: counts[candidates]),
            "pmf_in_table": score_hits(
                in_table, lambda index, candidates: items[candidates] @ table[in_table[index]["user_id"]])}


def explicit_users(vectors: torch.Tensor, neighbors: torch.Tensor):
    """The `users(start, rows)` inputs of `model_hits` for users given by vectors and neighbour lists, not ids."""
    return lambda start, rows: {"user_embeddings": vectors[start : start + len(rows)],
                                "user_neighbors": neighbors[start : start + len(rows)]}


def paired_check(model, tokenizer, prepared, prompts: list[dict], args) -> dict:
    """The first in-table users as if they were new: by their table row (their id in the prompt), and with the
    prompt naming `user_0` either folded in from their own training items or as the unknown user (row 0). The same
    users in every condition, so the comparison is paired."""
    users = torch.tensor([row["user_id"] for row in prompts])
    items = prepared.item_embeddings.double().numpy()
    anonymous = [{**row, "source": render(EVAL_TEMPLATES["topn"], 0, candidates=row["candidates"])} for row in prompts]
    result = {"num_users": len(prompts),
              "table_row": model_hits(model, tokenizer, prompts, lambda start, rows: {
                  "user_ids": users[start : start + len(rows)]}, args.batch_size),
              "unknown_user_row_0": model_hits(model, tokenizer, anonymous, lambda start, rows: {
                  "user_ids": torch.zeros(len(rows), dtype=torch.long)}, args.batch_size)}
    table_neighbors = model.user_neighbors[users]
    folded = {}
    for negatives in ("expected", "sampled"):
        vectors, neighbors = model.fold_in_users([prepared.histories[int(u)][:-2] for u in users],
                                                 negatives=negatives, seed=args.seed)
        folded[negatives] = vectors
        result[f"fold_in_{negatives}"] = {
            "cosine_to_table_row": float(F.cosine_similarity(vectors, model.user_embeddings[users]).mean()),
            "norm_ratio": float((vectors.norm(dim=1) / model.user_embeddings[users].norm(dim=1)).mean()),
            "own_row_is_first_neighbour": float((neighbors[:, 0] == users).float().mean()),
            # the folded-in user's list holds itself first; the table's never does, so compare the rest
            "neighbour_overlap": float(np.mean([len(set(a[1:].tolist()) & set(b.tolist())) / len(b)
                                                for a, b in zip(neighbors, table_neighbors)])),
            **model_hits(model, tokenizer, anonymous, explicit_users(vectors, neighbors), args.batch_size),
        }
        # the PMF dot product with the folded-in vectors, on the same users: is the vector itself better or worse?
        folded_vectors = vectors.double().numpy()
        result[f"pmf_fold_in_{negatives}"] = score_hits(
            prompts, lambda index, candidates, v=folded_vectors: items[candidates] @ v[index])
    # Which half of the fold-in makes the difference: the expected vector as the query with the table's own
    # neighbour list (which never holds the user; a folded-in list holds the user's table row first, mostly) ...
    expected = folded["expected"]
    result["fold_in_expected_table_neighbours"] = model_hits(
        model, tokenizer, anonymous, explicit_users(expected, table_neighbors), args.batch_size)
    # ... and what a genuinely new user gets: the same neighbour search with the user's own table row left out (a
    # held-out user has none), i.e. the n most similar table users other than itself.
    searched = build_user_neighbors(model.user_embeddings, model.config.num_neighbors + 1, queries=expected.float())
    without_own_row = torch.stack([row[row != user][: model.config.num_neighbors] for row, user in zip(searched, users)])
    result["fold_in_expected_without_own_row"] = model_hits(
        model, tokenizer, anonymous, explicit_users(expected, without_own_row), args.batch_size)
    for name in ("unknown_user_row_0", "fold_in_expected", "fold_in_sampled", "fold_in_expected_table_neighbours",
                 "fold_in_expected_without_own_row"):
        result[name]["hr@10_paired_difference"] = paired_difference(result[name]["hits"], result["table_row"]["hits"])
    return result


def paired_difference(hits: list[int], reference_hits: list[int]) -> dict:
    """Mean per-user HR@10 difference to the same users' reference hits, with its 95% bootstrap interval."""
    differences = [float(a - b) for a, b in zip(hits, reference_hits, strict=True)]
    return {"mean": float(np.mean(differences)), "ci": bootstrap_interval(differences)}


LABELS = {
    "in_table": "(a) PeaPOD, in-table users (their user ids)",
    "fold_in_expected": "(b) PeaPOD, held-out users folded in (expected negatives, the default)",
    "fold_in_sampled": "(b') PeaPOD, held-out users folded in (sampled negatives)",
    "unknown_user_row_0": "(c) PeaPOD, held-out users as the unknown user (row 0)",
    "popularity_held_out": "(d) popularity, held-out users",
    "popularity_in_table": "popularity, in-table users",
    "pmf_in_table": "PMF dot product, in-table users (table vectors)",
    "pmf_fold_in_expected": "PMF dot product, held-out users (folded-in vectors, expected)",
    "pmf_fold_in_sampled": "PMF dot product, held-out users (folded-in vectors, sampled)",
}


def markdown(report: dict) -> str:
    def cell(result, metric):
        low, high = result[f"{metric}_ci"]
        return f"{result[metric]:.3f} [{low:.3f}, {high:.3f}]"

    def difference(result):
        low, high = result["hr@10_paired_difference"]["ci"]
        return f"{result['hr@10_paired_difference']['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"

    groups = report["groups"]
    in_table = (groups.get("in_table") or report["paired_in_table"]["table_row"])["hr@10"]
    lines = ["| group | users | top-n HR@10 [95% CI] | top-n NDCG@10 [95% CI] | HR@10 / in-table |", "|---|---|---|---|---|"]
    for name, label in LABELS.items():
        if name not in groups:  # --paired_only: no held-out groups
            continue
        result = groups[name]
        ratio = f"{result['hr@10'] / in_table:.2f}" if in_table else "–"
        lines.append(f"| {label} | {result['num_users']} | {cell(result, 'hr@10')} | {cell(result, 'ndcg@10')} | {ratio} |")
    comparison = report.get("held_out_comparison")
    if comparison:
        ratio, interval = comparison["hr@10_ratio_to_in_table"], comparison["hr@10_ratio_to_in_table_ci"]
        ratio_text = f"{ratio:.2f} x [95% CI {interval[0]:.2f}, {interval[1]:.2f}]" if ratio is not None else "– x"
        minus = {name: comparison[f"minus_{name}"] for name in ("unknown_user_row_0", "popularity")}
        lines += ["", f"Held-out users folded in (expected): {ratio_text} the in-table users' HR@10 (the two groups "
                  f"resampled independently); minus the unknown-user row 0 on the same users "
                  + "{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}], minus popularity ".format(**minus["unknown_user_row_0"])
                  + "{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] (paired).".format(**minus["popularity"])]
    paired = report["paired_in_table"]
    lines += ["", f"Paired check: the first {paired['num_users']} in-table users treated as new users (prompt `user_0`).",
              "", ("| the same users, as | top-n HR@10 [95% CI] | minus their table row's, paired [95% CI] | "
                   "cosine to the table row | own row first neighbour | neighbour overlap |"), "|---|---|---|---|---|---|",
              f"| their table row (their id) | {cell(paired['table_row'], 'hr@10')} | | | | |",
              (f"| the unknown user (row 0) | {cell(paired['unknown_user_row_0'], 'hr@10')} | "
               f"{difference(paired['unknown_user_row_0'])} | | | |")]
    for negatives in ("expected", "sampled"):
        entry = paired[f"fold_in_{negatives}"]
        lines.append(
            f"| folded in from their training items ({negatives}) | {cell(entry, 'hr@10')} | {difference(entry)} | "
            f"{entry['cosine_to_table_row']:.3f} | {entry['own_row_is_first_neighbour']:.2f} | "
            f"{entry['neighbour_overlap']:.2f} |"
        )
    for name, label in (("fold_in_expected_table_neighbours", "folded in (expected), their table row's neighbour list"),
                        ("fold_in_expected_without_own_row",
                         "folded in (expected), neighbours searched without their own table row (as for a new user)")):
        lines.append(f"| {label} | {cell(paired[name], 'hr@10')} | {difference(paired[name])} | | | |")
    table_pmf = report["groups"]["pmf_in_table"]  # over the first --eval_users, the paired check's first --paired_users
    same_users = table_pmf["num_users"] == paired["num_users"]
    lines += ["", "| the same users, PMF dot product with | top-n HR@10 [95% CI] |", "|---|---|",
              f"| their table vectors | {cell(table_pmf, 'hr@10') if same_users else '(other users: see above)'} |"]
    lines += [f"| vectors folded in from their training items ({negatives}) | "
              f"{cell(paired[f'pmf_fold_in_{negatives}'], 'hr@10')} |" for negatives in ("expected", "sampled")]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def rewrite_table(output: Path) -> str:
    """`--table`: fold-in.md again from fold-in.json, with the figures an older report lacks derived from its
    stored per-user hits and its checkpoint's train_metrics.json."""
    source = output / "fold-in.json"
    report = json.loads(source.read_text())
    derived = {}
    if "in_table" in report["groups"] and "held_out_comparison" not in report:
        derived["held_out_comparison"] = held_out_comparison(report["groups"])
    steps = trained_steps(Path(report["checkpoint"]))
    if report.get("trained_steps") is None and steps is not None:
        derived["trained_steps"] = steps
        report.pop("max_steps", None)  # older reports stated --max_steps, not the steps of a checkpoint given
    if derived:
        report.update(derived)
        write_atomic(source, json.dumps(report, indent=1))
    table = markdown(report)
    write_atomic(output / "fold-in.md", table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared_dir", default=str(ROOT / "prepared" / "synthetic-user-heldout10"))
    parser.add_argument("--checkpoint", help="Model folder (trained here if it holds no model); default "
                        "runs/fold-in-mha-<max_steps>")
    parser.add_argument("--output", default=str(ROOT / "experiments" / "results" / "fold-in"))
    parser.add_argument("--held_out_users", type=float, default=0.1)
    parser.add_argument("--max_steps", type=int, default=900)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--paired_users", type=int, default=None, help="In-table users of the paired check "
                        "(default: all)")
    parser.add_argument("--eval_users", type=int, default=None, help="First N users of each group (quick checks; "
                        "default: every test user)")
    parser.add_argument("--paired_only", action="store_true", help="Only the paired check (and popularity/PMF on "
                        "the same users), on an existing --checkpoint; the data need no held-out users.")
    parser.add_argument("--tokenizer", default=str(TOKENIZER))
    parser.add_argument("--hardware", help="Hardware description for the report.")
    parser.add_argument("--table", action="store_true", help="Rewrite <output>/fold-in.md from its fold-in.json "
                        "(adding the figures derived from the stored per-user hits that an older report lacks) and exit.")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if args.table:
        if not (output / "fold-in.json").exists():
            parser.error(f"--table reads {output / 'fold-in.json'}, which does not exist")
        print(rewrite_table(output))
        return
    args.checkpoint = args.checkpoint or str(ROOT / "runs" / f"fold-in-mha-{args.max_steps}")
    args.command = "python experiments/fold_in.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = evaluate(args)
    output.mkdir(parents=True, exist_ok=True)
    write_atomic(output / "fold-in.json", json.dumps(report, indent=1))
    table = markdown(report)
    write_atomic(output / "fold-in.md", table)
    print(table)


if __name__ == "__main__":
    main()
