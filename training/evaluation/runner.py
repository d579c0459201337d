"""The evaluation runner: a checkpoint and a prepared folder -> the paper's metrics (SPEC §3, issue 5).

Protocol, per task, on the `{task}_{split}` rows of the prepared `DatasetDict`:

* sequential: constrained beam search (20 beams) over the whole catalogue; the top 10 distinct valid item ids
  form the ranking -> HR@{1,5,10}, NDCG@{5,10}. History items are not excluded (the model may recommend them).
* top-n: over each user's 100 fixed candidates, twice: constrained beam search restricted to the candidates
  (`topn_beam`) and exact log-likelihood ranking of all 100 candidates (`topn_likelihood`, ties -> lower id)
  -> HR@{1,5,10}, NDCG@{5,10} for each.
* explanation: beam search, one sequence -> BLEU-4 (tensorflow/nmt) and ROUGE-1/2/L F1, x100.

Users: with a collaborative prompt the checkpoint's user table must have exactly num_users + 1 rows of the data
(ValueError otherwise). Evaluation users whose id is outside the table or whose table row is all zeros (the
collaborative-filtering model never saw them, so the prompt carries nothing about them) are counted, listed in
the output and excluded from every task and every baseline; nothing is dropped silently. `max_users` keeps the
first N users by id. Explanation rows with an empty reference are an error (checked before any generation).

Everything runs in eval mode without sampling, in the dataset's row order, so the same checkpoint and data give
the same numbers twice. The baselines (training/evaluation/baselines.py) run on exactly the same users and rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import bootstrap

from configuration_peapod import DEFAULT_TASKS, TASK_REGISTRY, PeaPODInputError
from datasets_scripts.prepared import check_data_fingerprint, check_task_order_matches
from datasets_scripts.synthetic import planted_structure
from training.collator import PeaPODDataCollator

from .baselines import (
    BPRBaseline,
    MarkovChainBaseline,
    PlantedOracleBaseline,
    PMFBaseline,
    PopularityBaseline,
    rank_candidates,
    recommend_sequential,
    recommend_topn,
)
from .metrics import load_metric
from .metrics.feature_share import explanation_feature_scores
from .store import ChunkStore, collect_chunks, model_checksum

TASKS = DEFAULT_TASKS  # the task registry (configuration_peapod.TASK_REGISTRY) says how each is scored
SPLITS = ("validation", "test")
# "oracle" exists only on the planted-signal synthetic variants (datasets_scripts/synthetic.py).
BASELINES = ("popularity", "pmf", "bpr", "markov", "oracle")
RANKING_K = (1, 5, 10)
TOPN_RANKINGS = ("beam", "likelihood")  # the model's two top-n rankings (module docstring)
# 95% percentile-bootstrap intervals over users: 1,000 resamples from a fixed seed, the same resampled users for
# every metric and every method evaluated on the same rows (so their intervals are paired).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95
# The batch tensors the model's recommend / score_candidates / generate take, in their positional order.
MODEL_INPUTS = ("input_ids", "attention_mask", "user_ids", "task_ids", "whole_word_ids")
# The columns of the paper's tables (HR@1 reported for sequential too, SPEC §3).
RANKING_COLUMNS = ("hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10")
TEXT_COLUMNS = ("bleu4", "rouge1", "rouge2", "rougeL")
# Shares of explanations naming the feature (training/evaluation/metrics/feature_share.py), where the data has features.
FEATURE_SHARE_HEADERS = {"feature_match": "names ref. feature", "item_feature_share": "names item's feature"}


# Users ----------------------------------------------------------------------------------------------------------


def check_user_table(model, num_users: int) -> None:
    """A model with a collaborative prompt must carry a user table of exactly this data's size."""
    if not getattr(model, "has_collaborative_prompt", False):
        return  # POD (prompt_encoder="none"): no user table by design
    table = getattr(model, "user_embeddings", None)
    if table is None or model.config.num_users == 0:
        raise PeaPODInputError(
            "the checkpoint has no user table (config.num_users = 0 or no user_embeddings buffer): a PeaPOD "
            "checkpoint with a collaborative prompt must be saved after set_user_table(...)"
        )
    if table.shape[0] != num_users + 1:
        raise PeaPODInputError(
            f"the checkpoint's user table has {table.shape[0]} rows (num_users={table.shape[0] - 1}) but the prepared "
            f"data has num_users={num_users} ({num_users + 1} rows expected): the checkpoint was trained on other data"
        )


def users_absent_from_table(model, user_ids: Sequence[int]) -> list[int]:
    """The users the model's user table cannot represent: id beyond the table, or an all-zero row."""
    if model is None or not getattr(model, "has_collaborative_prompt", False):
        return []
    table = model.user_embeddings.detach().cpu()
    ids = torch.as_tensor(sorted({int(u) for u in user_ids}), dtype=torch.long)
    outside = (ids < 1) | (ids >= table.shape[0])
    inside = ids[~outside]
    zero = (table[inside] == 0).all(dim=1)
    return sorted(ids[outside].tolist() + inside[zero].tolist())


def select_rows(dataset, max_users: int | None, excluded_users: set[int]) -> list[int]:
    """Row indices of the users kept: not excluded, and among the first `max_users` user ids (all if None)."""
    user_column = dataset["user_id"]
    users = sorted(set(user_column) - excluded_users)
    if max_users is not None:
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1 or None, got {max_users}")
        users = users[:max_users]
    kept = set(users)
    return [index for index, user in enumerate(user_column) if user in kept]


# Model tasks ----------------------------------------------------------------------------------------------------


def _batches(dataset, rows: list[int], batch_size: int, collator, device, progress=None):
    """(row dicts, model inputs on `device`) for consecutive slices of `rows`; advances `progress` (tqdm)."""
    for start in range(0, len(rows), batch_size):
        columns = dataset[rows[start : start + batch_size]]
        records = [dict(zip(columns, values)) for values in zip(*columns.values())]
        batch = collator(records)
        inputs = {name: batch[name].to(device) for name in MODEL_INPUTS}
        yield records, inputs
        if progress is not None:
            progress.update(len(records))


def _model_inputs(inputs: dict) -> tuple:
    """Positional (input_ids, attention_mask, user_ids, task_ids, whole_word_ids) of recommend/score/generate."""
    return tuple(inputs[name] for name in MODEL_INPUTS)


def _strip_padding(item_ids: torch.Tensor) -> list[list[int]]:
    return [[int(i) for i in row if i >= 0] for row in item_ids.tolist()]


def bootstrap_interval(
    values: Sequence[float],
    num_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence_level: float = CONFIDENCE_LEVEL,
) -> list[float]:
    """[low, high]: the percentile-bootstrap interval of the mean of per-user `values` (users resampled with
    replacement; scipy.stats.bootstrap). The resamples depend only on (seed, number of users), so two metrics or
    methods on the same users are resampled identically. One user, or all values equal: [mean, mean]."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"bootstrap_interval needs a non-empty 1-D vector of per-user values, got {values.shape}")
    if values.size == 1 or np.all(values == values[0]):
        return [float(values[0]), float(values[0])]  # every resample has the same mean
    # batch: 100 resamples at a time bounds memory (100 x users) on large data; the draws are the same as unbatched.
    result = bootstrap(
        (values,), np.mean, n_resamples=num_resamples, confidence_level=confidence_level, method="percentile",
        vectorized=True, batch=100, rng=np.random.default_rng(seed),
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def _ranking_scores(ranked: list[list[int]], targets: list[int]) -> dict:
    """{metric: mean over users, metric_ci: [low, high] (95% bootstrap over users), num_users}."""
    metric = load_metric("ranking")
    result = metric.compute(predictions=ranked, references=targets, k_values=list(RANKING_K), per_user=True)
    scores = {}
    for name in RANKING_COLUMNS:
        scores[name] = result[name]
        scores[f"{name}_ci"] = bootstrap_interval(result["per_user"][name])
    return scores | {"num_users": result["num_users"]}


@torch.no_grad()
def _rank_rows(model, tokenizer, dataset, rows, task, item_trie, batch_size, num_beams, top_k, max_source_length,
               progress=None, topn_rankings: Sequence[str] = TOPN_RANKINGS) -> dict[str, list]:
    """Sequential or top-n rankings of `rows`, lists in row order: {"targets", "beam"} for sequential; for top-n
    "targets" and those of `topn_rankings` ("beam", "likelihood")."""
    collator = PeaPODDataCollator(tokenizer, max_source_length=max_source_length)
    ranks_candidates = TASK_REGISTRY[task].ranks_candidates
    rankings = topn_rankings if ranks_candidates else ("beam",)
    outputs = {"targets": []} | {name: [] for name in TOPN_RANKINGS if name in rankings}
    for records, inputs in _batches(dataset, rows, batch_size, collator, model.device, progress):
        outputs["targets"].extend(int(record["item_id"]) for record in records)
        candidates = None
        if ranks_candidates:
            candidates = torch.tensor([record["candidates"] for record in records], dtype=torch.long)
        model_inputs = _model_inputs(inputs)
        # One encoder pass serves both rankings (generate and score_candidates take encode's outputs and its
        # extended attention mask in place of the prompt inputs).
        encoder_outputs, extended_mask = model.encode(*model_inputs)
        if "beam" in outputs:
            item_ids, _ = model.recommend(
                model_inputs[0], extended_mask, encoder_outputs=encoder_outputs, item_trie=item_trie,
                candidates=candidates, top_k=top_k, num_beams=num_beams, return_scores=False,  # ids suffice
            )
            outputs["beam"].extend(_strip_padding(item_ids))
        if "likelihood" in outputs:
            # Every candidate of the batch's users is scored in a few decoder calls (score_candidates batches them).
            scores = model.score_candidates(
                model_inputs[0], extended_mask, candidates=candidates, item_trie=item_trie,
                encoder_outputs=encoder_outputs,
            )
            outputs["likelihood"].extend(rank_candidates(candidates.numpy(), scores.float().cpu().numpy(), top_k))
    return outputs


def _ranking_entries(task: str, outputs: dict[str, list]) -> dict[str, tuple[list, list]]:
    """{result name: (ranked lists, targets)} of a task's merged outputs."""
    if not TASK_REGISTRY[task].ranks_candidates:
        return {task: (outputs["beam"], outputs["targets"])}
    return {f"{task}_{name}": (outputs[name], outputs["targets"]) for name in TOPN_RANKINGS if name in outputs}


def check_explanation_references(dataset, rows: list[int], split: str) -> None:
    """Empty reference sentences are an error: BLEU/ROUGE against nothing is undefined."""
    targets = dataset[rows]["target"] if rows else []
    empty = [rows[i] for i, target in enumerate(targets) if not str(target).strip()]
    if empty:
        raise ValueError(
            f"explanation_{split} has {len(empty)} row(s) with an empty reference (first rows: {empty[:10]}); "
            "every explanation row needs a non-empty target sentence: fix the prepared data"
        )


def _explain_rows(model, tokenizer, dataset, rows, batch_size, num_beams, max_new_tokens, max_source_length,
                  progress=None) -> dict[str, list]:
    """Generated explanations of `rows` and their references: {"predictions", "references"}, in row order."""

    collator = PeaPODDataCollator(tokenizer, max_source_length=max_source_length)
    predictions, references = [], []
    for records, inputs in _batches(dataset, rows, batch_size, collator, model.device, progress):
        generated = model.generate(
            *_model_inputs(inputs), num_beams=num_beams, num_return_sequences=1, do_sample=False,
            max_new_tokens=max_new_tokens,
        )
        predictions.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
        references.extend(record["target"] for record in records)
    return {"predictions": predictions, "references": references}


def _explanation_scores(predictions: list[str], references: list[str]) -> dict:
    bleu = load_metric("bleu_nmt").compute(predictions=predictions, references=references)
    rouge_metric = load_metric("rouge_f1")
    rouge = rouge_metric.compute(predictions=predictions, references=references)
    # The reference code's (tensorflow/nmt) ROUGE, beside the standard one, for comparison with published tables.
    rouge_nmt = rouge_metric.compute(predictions=predictions, references=references, variant="nmt")
    return {
        "bleu4": bleu["bleu"], "rouge1": rouge["rouge1"], "rouge2": rouge["rouge2"], "rougeL": rouge["rougeL"],
        "rouge1_nmt": rouge_nmt["rouge1"], "rouge2_nmt": rouge_nmt["rouge2"], "rougeL_nmt": rouge_nmt["rougeL"],
        "num_samples": len(predictions),
    }


# Baselines ------------------------------------------------------------------------------------------------------


def _train_histories(histories: dict[int, list[int]]) -> dict[int, list[int]]:
    return {user: items[:-2] for user, items in histories.items()}


def build_baseline(name: str, prepared, seed: int = 0):
    """A baseline trained on the training interactions (items[:-2]) of the prepared data.

    PMF reuses the prepared folder's PMF factors (user_table.safetensors: user and item embeddings, trained on the
    training interactions only) when they are there, else trains cornac PMF with the paper's settings. BPR is
    always trained here (cornac BPR, k=64, 200 epochs). The Markov chain counts the training transitions; the
    oracle needs a planted-signal synthetic folder (its ground truth is regenerated from the folder's seed).
    """
    if name == "popularity":
        return PopularityBaseline(_train_histories(prepared.histories), prepared.num_items)
    if name == "pmf":
        if getattr(prepared, "item_embeddings", None) is not None:
            return PMFBaseline(prepared.user_embeddings, prepared.item_embeddings)
        return PMFBaseline.fit(_train_histories(prepared.histories), prepared.num_users, prepared.num_items, seed=seed)
    if name == "bpr":
        return BPRBaseline.fit(_train_histories(prepared.histories), prepared.num_users, prepared.num_items, seed=seed)
    if name == "markov":
        return MarkovChainBaseline(_train_histories(prepared.histories), prepared.num_items)
    if name == "oracle":
        return PlantedOracleBaseline(planted_structure(prepared), prepared.num_items)
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")


def evaluate_baseline(baseline, prepared, split: str, task_rows: dict, top_k: int = 10, exclude_history: bool = False):
    """The baseline's ranking metrics on the same rows as the model: {"sequential": {...}, "topn": {...}}."""
    results = {}
    for task, rows in task_rows.items():
        if TASK_REGISTRY[task].target != "item" or not rows:
            continue
        dataset = prepared.dataset[f"{task}_{split}"]
        columns = dataset[rows]
        users = [int(u) for u in columns["user_id"]]
        targets = [int(i) for i in columns["item_id"]]
        if not TASK_REGISTRY[task].ranks_candidates:
            # The input history of the split: items[:-2] for validation, items[:-1] for test (SPEC §2).
            end = -2 if split == "validation" else -1
            histories = {user: prepared.histories[user][:end] for user in users}
            ranked = recommend_sequential(baseline, users, top_k, histories, exclude_history=exclude_history)
        else:
            # The top-n prompt carries no history: baselines that condition on one get the training history.
            histories = {user: prepared.histories[user][:-2] for user in users}
            ranked = recommend_topn(baseline, users, columns["candidates"], top_k, histories)
        results[task] = _ranking_scores(ranked, targets)
    return results


# The runner -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_checkpoint(
    model,
    tokenizer,
    prepared,
    split: str = "test",
    tasks: Sequence[str] = TASKS,
    max_users: int | None = None,
    batch_size: int = 16,
    num_beams: int = 20,
    top_k: int = 10,
    baselines: Sequence[str] = (),
    exclude_history: bool = False,
    max_explanation_tokens: int = 64,
    max_source_length: int | None = None,
    show_progress: bool = True,
    seed: int = 0,
    return_rankings: bool = False,
    allow_other_data: bool = False,
    chunk_dir: str | os.PathLike | None = None,
    shard: tuple[int, int] = (0, 1),
    chunk_size: int = 1024,
    topn_rankings: Sequence[str] = TOPN_RANKINGS,
) -> dict:
    """Evaluate `model` (a PeaPODForConditionalGeneration, or None for baselines only) on `prepared`.

    `prepared` is `datasets_scripts.load_prepared(path)`. Tasks whose split is absent from the data (e.g.
    explanation on data without reviews) are skipped and listed under "skipped_tasks". `max_source_length` cuts
    inputs from the left like the training collator (None = full inputs): pass the value training used.

    Returns a JSON-ready dict: "results" {name: metrics}, "baselines" {baseline: {task: metrics}}, "users"
    (evaluated / excluded), "timing" (seconds, samples/s and users/s per task) and "settings". `return_rankings=True` adds "rankings":
    {name: {"user_ids", "targets", "ranked"}} (the model's ranked lists, row by row) for per-user analysis.
    A model whose config records another `data_fingerprint` than `prepared`'s is refused (PeaPODInputError)
    unless `allow_other_data=True` (`datasets_scripts.prepared.check_data_fingerprint`).

    `chunk_dir` makes the run resumable and shardable (`ChunkStore`): each chunk of `chunk_size` rows is written
    there when done and skipped by a rerun; `shard=(i, n)` computes only chunks c with c % n == i. When some
    chunks are still missing (other shards running), the report has no metrics and lists the tasks under
    "chunks" -> "incomplete_tasks"; the run that finds every chunk reports the same numbers as one unsharded run.

    `topn_rankings` picks the model's top-n rankings, "beam" (`topn_beam`) and/or "likelihood" (`topn_likelihood`):
    the beam search is the larger part of a full-size run, so `("likelihood",)` roughly halves top-n's time.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected a subset of {BASELINES}")
    if model is None and not baselines:
        raise ValueError("nothing to evaluate: no model and no baselines")
    if not 1 <= top_k <= num_beams:
        raise ValueError(f"need 1 <= top_k <= num_beams, got top_k={top_k}, num_beams={num_beams}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not topn_rankings or any(name not in TOPN_RANKINGS for name in topn_rankings):
        raise ValueError(f"topn_rankings must be a non-empty subset of {TOPN_RANKINGS}, got {list(topn_rankings)}")
    topn_rankings = tuple(name for name in TOPN_RANKINGS if name in topn_rankings)
    if model is not None:
        check_user_table(model, prepared.num_users)
        check_data_fingerprint(model.config, prepared, allow_other_data)
        check_task_order_matches(model.config, prepared, tasks)
        configured_items = getattr(model.config, "num_items", 0)
        if configured_items and configured_items != prepared.num_items:
            raise PeaPODInputError(
                f"the checkpoint was built for num_items={configured_items} but the prepared data has "
                f"{prepared.num_items} items"
            )
    torch.manual_seed(seed)

    # Which rows: the same for the model and every baseline.
    present = [task for task in tasks if f"{task}_{split}" in prepared.dataset]
    skipped = [task for task in tasks if task not in present]
    all_users = sorted({int(u) for task in present for u in prepared.dataset[f"{task}_{split}"]["user_id"]})
    excluded = users_absent_from_table(model, all_users)
    task_rows = {
        task: select_rows(prepared.dataset[f"{task}_{split}"], max_users, set(excluded)) for task in present
    }
    for task in (task for task in present if TASK_REGISTRY[task].target == "text"):
        check_explanation_references(prepared.dataset[f"{task}_{split}"], task_rows[task], split)

    report = {
        "split": split,
        "tasks": present,
        "skipped_tasks": {task: f"the prepared data has no {task}_{split} split" for task in skipped},
        "users": {
            "excluded_absent_from_user_table": {"count": len(excluded), "user_ids": excluded},
            "evaluated_per_task": {
                task: len({int(u) for u in prepared.dataset[f"{task}_{split}"][rows]["user_id"]}) if rows else 0
                for task, rows in task_rows.items()
            },
        },
        "results": {},
        "baselines": {},
        "timing": {},
        "settings": {
            "num_beams": num_beams, "top_k": top_k, "batch_size": batch_size, "max_users": max_users,
            "ranking_k": list(RANKING_K), "exclude_history_in_baselines": exclude_history,
            "history_excluded_by_model": False, "max_explanation_tokens": max_explanation_tokens, "seed": seed,
            "max_source_length": max_source_length, "topn_rankings": list(topn_rankings),
            "tie_break": "lower item id first",
            "intervals": {
                "method": "percentile bootstrap over users (scipy.stats.bootstrap)", "confidence": CONFIDENCE_LEVEL,
                "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED,
            },
        },
        "explanations": {},
    }

    store = None
    if chunk_dir is not None:
        fingerprint = {
            "split": split, "num_items": prepared.num_items, "num_users": prepared.num_users,
            "model": model_checksum(model) if model is not None else None,
            **{key: report["settings"][key] for key in ("num_beams", "top_k", "max_explanation_tokens",
                                                         "max_source_length", "topn_rankings")},
        }
        store = ChunkStore(chunk_dir, fingerprint, shard, chunk_size)
        report["chunks"] = {"chunk_dir": str(chunk_dir), "shard": list(shard), "chunk_size": chunk_size,
                            "incomplete_tasks": []}
    elif shard != (0, 1):
        raise ValueError("a sharded evaluation needs chunk_dir (where the shards' results meet)")

    if model is not None:
        model.eval()
        item_trie = None
        if any(TASK_REGISTRY[task].target == "item" for task in present):
            item_trie = model.item_trie(tokenizer, range(1, prepared.num_items + 1))
        computes, task_outputs = {}, {}
        for task in present:
            rows = task_rows[task]
            dataset = prepared.dataset[f"{task}_{split}"]
            num_users = report["users"]["evaluated_per_task"][task]
            if not rows:
                continue
            started = time.perf_counter()
            if TASK_REGISTRY[task].target == "text":
                def compute(chunk, progress, dataset=dataset):
                    return _explain_rows(model, tokenizer, dataset, chunk, batch_size, num_beams,
                                         max_explanation_tokens, max_source_length, progress)
            else:
                def compute(chunk, progress, dataset=dataset, task=task):
                    return _rank_rows(model, tokenizer, dataset, chunk, task, item_trie, batch_size, num_beams,
                                      top_k, max_source_length, progress, topn_rankings)
            computes[task] = compute
            unit = "sample" if TASK_REGISTRY[task].target == "text" else "user"
            task_outputs[task], computed = collect_chunks(task, rows, compute, store, show_progress, unit)
            seconds = time.perf_counter() - started
            report["timing"][task] = {
                "seconds": round(seconds, 3),
                "samples_computed": computed,
                "samples_per_second": round(computed / seconds, 3),
                "users_per_second": round(computed * num_users / len(rows) / seconds, 3),
            }
        for task, outputs in task_outputs.items():
            if outputs is None:  # other shards were still at work when this task ended here: look again now,
                # after all of this run's chunks are written, so that the shard finishing last sees every chunk
                outputs, _ = collect_chunks(task, task_rows[task], computes[task], store, False, "user")
            dataset = prepared.dataset[f"{task}_{split}"]
            rows = task_rows[task]
            if outputs is None:  # other shards' chunks are not written yet
                report["chunks"]["incomplete_tasks"].append(task)
            elif TASK_REGISTRY[task].target == "text":
                report["results"][task] = _explanation_scores(outputs["predictions"], outputs["references"])
                # Does each explanation name the item's feature? (metrics/feature_share.py)
                report["results"][task] |= explanation_feature_scores(
                    prepared, dataset, rows, outputs["predictions"], interval=bootstrap_interval)
                report["explanations"] = {"first_predictions": outputs["predictions"][:5]}
            else:
                for name, (ranked, targets) in _ranking_entries(task, outputs).items():
                    report["results"][name] = _ranking_scores(ranked, targets)
                    if return_rankings:
                        report.setdefault("rankings", {})[name] = {
                            "user_ids": [int(u) for u in dataset[rows]["user_id"]],
                            "targets": targets,
                            "ranked": ranked,
                        }
        if store is not None and report["chunks"]["incomplete_tasks"]:
            return report  # a shard's part is done; the run that finds every chunk computes metrics and baselines

    for name in baselines:
        started = time.perf_counter()
        baseline = build_baseline(name, prepared, seed=seed)
        report["baselines"][name] = evaluate_baseline(baseline, prepared, split, task_rows, top_k, exclude_history)
        report["timing"][f"baseline_{name}"] = {"seconds": round(time.perf_counter() - started, 3)}
    return report
