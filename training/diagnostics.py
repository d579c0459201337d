"""Does a trained PeaPOD model use its collaborative prompt? Measurements for a checkpoint and during training.

Issue 10: a trained model can learn to ignore its user prompt and rank like a popularity list. These functions
measure it (the `experiments/diagnose.py` command prints them for a checkpoint):

* `prompt_norms`: the L2 norm of the task-prompt and collaborative-prompt vectors against the token embeddings
  (the prompt lives in the token-embedding space, so it must be of comparable size to be read).
* `shuffle_test`: the user table permuted across users at test time (embeddings and neighbour lists moved
  together, so user u receives exactly the prompt of user pi(u)); a model that uses the prompt must get worse.
  Reported: the test loss per task (teacher forcing) and top-n HR@10/NDCG@10 by exact candidate likelihood
  (`score_candidates`), optionally sequential HR@10 by beam search, with the table as is and permuted, and how
  far the candidates' log-likelihoods move against their spread within a user.
* `attention_health`: per-user entropy of the prompt encoder's attention over the n neighbours, and how often the
  most-attended neighbour is simply the one with the largest embedding norm (attention bought by norm, not by
  similarity).
* `PromptDiagnosticsCallback`: during training, the gradient norm reaching the prompt encoder, the task prompts,
  the whole-word embeddings and the T5 body, and the prompt norms every `every` steps (`history` is a list of
  dicts, also written to `<output_dir>/prompt_diagnostics.json` at the end of training).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from datasets_scripts.files import atomic_write_json

from .collator import PeaPODDataCollator
from .evaluation.baselines import rank_candidates
from .evaluation.runner import (
    _batches,
    _model_inputs,
    _ranking_scores,
    evaluate_checkpoint,
    select_rows,
)

# Parameter groups whose gradients are reported separately; everything else is the T5 body.
PROMPT_PARAMETER_GROUPS = ("prompt_encoder", "task_prompts", "whole_word_embeddings")


# Norms ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def prompt_norms(model, user_ids: Sequence[int] | None = None) -> dict[str, float]:
    """Mean L2 norms: token embeddings (over the vocabulary), task-prompt vectors, collaborative-prompt vectors
    (over `user_ids`, default every known user) and the raw user embeddings u."""
    result = {"token_embedding": model.shared.weight.norm(dim=1).mean().item()}
    if model.config.use_task_prompts:
        vectors = model.task_prompts.weight.view(-1, model.config.d_model)
        result["task_prompt"] = vectors.norm(dim=1).mean().item()
    if model.has_collaborative_prompt:
        users = torch.arange(1, model.config.num_users + 1) if user_ids is None else torch.as_tensor(user_ids)
        users = users.to(model.user_embeddings.device)
        prompt, _ = model.collaborative_prompt(users)
        result["collaborative_prompt"] = prompt.norm(dim=-1).mean().item()
        # How much the prompt differs across users, relative to its size (0: the same prompt for everyone).
        result["collaborative_prompt_spread"] = ((prompt - prompt.mean(0)).norm(dim=-1).mean() / prompt.norm(
            dim=-1).mean().clamp(min=1e-12)).item()
        result["user_embedding"] = model.user_embeddings[users].norm(dim=1).mean().item()
    return result


# The shuffle test -------------------------------------------------------------------------------------------


def permuted_user_table(embeddings: torch.Tensor, neighbors: torch.Tensor, seed: int = 0):
    """The user table with users permuted: user u gets user pi(u)'s embedding and pi(u)'s neighbours.

    Row 0 (the unknown user) stays. Neighbour ids are renamed into the new rows, so the neighbour *embeddings*
    user u attends over are exactly pi(u)'s: the prompt of u under the permuted table is pi(u)'s prompt.
    Returns (embeddings, neighbors, pi) with pi[u] the user whose table row u now holds (a derangement when
    num_users > 1: no user keeps its own row).
    """
    num_users = embeddings.shape[0] - 1
    generator = torch.Generator().manual_seed(seed)
    # A random cyclic shift of a random order is a derangement: nobody keeps their own row.
    order = torch.randperm(num_users, generator=generator) + 1
    shift = int(torch.randint(1, max(num_users, 2), (1,), generator=generator)) if num_users > 1 else 0
    permutation = torch.arange(num_users + 1)
    permutation[order] = order.roll(shift)
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(num_users + 1)
    new_neighbors = inverse.to(neighbors.device)[neighbors[permutation.to(neighbors.device)]]
    return embeddings[permutation.to(embeddings.device)], new_neighbors, permutation


@contextmanager
def user_table_swapped(model, embeddings: torch.Tensor, neighbors: torch.Tensor):
    """Temporarily install another user table of the same shape (restored afterwards, even on error)."""
    saved = model.user_embeddings, model.user_neighbors
    model.user_embeddings, model.user_neighbors = embeddings, neighbors
    try:
        yield model
    finally:
        model.user_embeddings, model.user_neighbors = saved


@torch.no_grad()
def _loss_and_topn(
    model, tokenizer, prepared, split: str, max_users: int | None, batch_size: int,
    sequential_likelihood: bool = False,
) -> dict:
    """Teacher-forced test loss per task, and top-n ranking by exact candidate likelihood (per-user scores kept).

    `sequential_likelihood=True` also ranks the whole catalogue for every sequential prompt by exact likelihood
    (`score_candidates` over items 1..num_items; history items not excluded, as in the beam-search protocol):
    the exact full ranking that 20-beam constrained search approximates, at a fraction of its cost."""
    collator = PeaPODDataCollator(tokenizer)
    item_trie = model.item_trie(tokenizer, range(1, prepared.num_items + 1))
    catalogue = torch.arange(1, prepared.num_items + 1)
    result: dict = {}
    for task in ("sequential", "topn"):
        name = f"{task}_{split}"
        if name not in prepared.dataset or task not in model.config.tasks:
            continue
        ranks_by_likelihood = task == "topn" or sequential_likelihood
        dataset = prepared.dataset[name]
        rows = select_rows(dataset, max_users, set())
        losses, scores, ranked, targets = [], [], [], []
        for records, inputs in _batches(dataset, rows, batch_size, collator, model.device):
            labels = collator(records)["labels"].to(model.device)
            logits = model(*_model_inputs(inputs), labels=labels).logits
            token_nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
            losses += (token_nll.sum(1) / (labels != -100).sum(1)).tolist()
            if ranks_by_likelihood:
                candidates = (torch.tensor([record["candidates"] for record in records], dtype=torch.long)
                              if task == "topn" else catalogue.repeat(len(records), 1))
                batch_scores = model.score_candidates(*_model_inputs(inputs), candidates=candidates,
                                                      item_trie=item_trie).float().cpu()
                scores.append(batch_scores)
                ranked += rank_candidates(candidates.numpy(), batch_scores.numpy(), 10)
                targets += [int(record["item_id"]) for record in records]
        result[f"{task}_loss"] = float(np.mean(losses))
        if ranks_by_likelihood:
            metrics = _ranking_scores(ranked, targets)
            result[f"{task}_hr@10"], result[f"{task}_ndcg@10"] = metrics["hr@10"], metrics["ndcg@10"]
            result[f"{task}_hits"] = [int(target in row) for row, target in zip(ranked, targets)]
            result[f"_{task}_scores"] = torch.cat(scores)
    return result


def shuffle_test(
    model, tokenizer, prepared, split: str = "test", max_users: int | None = None, seed: int = 0,
    sequential: bool = False, num_beams: int = 20, batch_size: int = 16, sequential_likelihood: bool = False,
) -> dict:
    """The model's test loss and top-n HR@10 (likelihood) with its user table as is and permuted across users.

    Returns {"as_is": {...}, "permuted": {...}, "drop": {...}, "loglik_change": {...}}; "drop" holds, per metric,
    as_is - permuted for HR/NDCG and permuted - as_is for losses (positive: the permutation hurts).
    `loglik_change` compares how far the permutation moves each candidate's log-likelihood (mean and max
    absolute change) with the spread of log-likelihoods across one user's candidates (mean of max - min): a
    model that ignores its prompt moves them by a tiny fraction of that spread. `sequential=True` adds sequential
    HR@10/NDCG@10 by constrained beam search (slower); `sequential_likelihood=True` the same by exact likelihood
    over the whole catalogue, with per-user hits (`_loss_and_topn`). POD (no user table) raises ValueError.
    """
    if not model.has_collaborative_prompt:
        raise ValueError("shuffle_test needs a model with a collaborative prompt (POD has no user table)")
    model.eval()
    embeddings, neighbors, _ = permuted_user_table(model.user_embeddings, model.user_neighbors, seed)
    runs = {}
    for name, table in (("as_is", None), ("permuted", (embeddings, neighbors))):
        with user_table_swapped(model, *table) if table else _nothing():
            runs[name] = _loss_and_topn(model, tokenizer, prepared, split, max_users, batch_size,
                                        sequential_likelihood)
            runs[name].pop("_sequential_scores", None)  # the top-n scores alone measure the log-likelihood change
            if sequential:
                report = evaluate_checkpoint(model, tokenizer, prepared, split=split, tasks=["sequential"],
                                             max_users=max_users, num_beams=num_beams, show_progress=False)
                for metric in ("hr@10", "ndcg@10"):
                    runs[name][f"sequential_{metric}"] = report["results"]["sequential"][metric]
    result = {"split": split, "seed": seed, "users": len(runs["as_is"].get("topn_hits", []))}
    if "_topn_scores" in runs["as_is"]:
        before, after = runs["as_is"].pop("_topn_scores"), runs["permuted"].pop("_topn_scores")
        change = (after - before).abs()
        result["loglik_change"] = {
            "mean_abs": change.mean().item(), "max_abs": change.max().item(),
            "mean_spread_within_user": (before.max(1).values - before.min(1).values).mean().item(),
        }
    result["as_is"], result["permuted"] = runs["as_is"], runs["permuted"]
    result["drop"] = {
        key: runs["permuted"][key] - runs["as_is"][key] if key.endswith("_loss")
        else runs["as_is"][key] - runs["permuted"][key]
        for key in runs["as_is"] if isinstance(runs["as_is"][key], float)
    }
    return result


@contextmanager
def _nothing():
    yield


# Attention health -------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_health(
    model, user_ids: Sequence[int] | None = None, true_neighbors: dict[int, set[int]] | None = None
) -> dict:
    """Per-user attention entropy of the mha prompt encoder, and how often its most-attended neighbour is the
    neighbour with the largest raw embedding norm (chance: 1/n when norms and attention are unrelated).

    Entropies are in nats, reported with log(n) (uniform attention) beside them; `argmax_is_largest_norm` is the
    share of (user, head) pairs; `heads_agree` the share of users whose heads all pick the same neighbour.
    `true_neighbors` (user -> the users whose items carry its signal, e.g. `datasets_scripts.synthetic.clique_mates`
    on planted `neighbors` data) adds where the attention goes: `attention_on_true_neighbors`, the mean attention
    mass on them, against `true_neighbor_share`, their mean share of the n neighbours (what uniform attention
    gives), and `argmax_is_true_neighbor`, the share of (user, head) pairs whose top neighbour is one of them.
    """
    if model.config.prompt_encoder != "mha":
        return {"prompt_encoder": model.config.prompt_encoder, "note": "no attention (mlp or none)"}
    users = torch.arange(1, model.config.num_users + 1) if user_ids is None else torch.as_tensor(user_ids)
    users = users.to(model.user_embeddings.device)
    _, attention = model.collaborative_prompt(users, output_attentions=True)  # [U, H, n]
    attention = attention.float()
    entropy = -(attention * attention.clamp(min=1e-12).log()).sum(-1)  # [U, H]
    neighbor_norms = model.user_embeddings[model.user_neighbors[users]].norm(dim=-1)  # [U, n]
    largest = neighbor_norms.argmax(-1, keepdim=True)  # [U, 1]
    top = attention.argmax(-1)  # [U, H]
    num_neighbors = attention.shape[-1]
    truth = {}
    if true_neighbors is not None:
        neighbors = model.user_neighbors[users].tolist()  # [U][n]
        is_true = torch.tensor([[neighbor in true_neighbors.get(user, ()) for neighbor in row]
                                for user, row in zip(users.tolist(), neighbors)], device=attention.device)  # [U, n]
        truth = {
            "attention_on_true_neighbors": (attention * is_true[:, None, :]).sum(-1).mean().item(),
            "true_neighbor_share": is_true.float().mean().item(),
            "argmax_is_true_neighbor": is_true.gather(1, top).float().mean().item(),
        }
    return {
        "users": int(users.numel()), "num_neighbors": num_neighbors, "heads": attention.shape[1],
        "entropy_mean": entropy.mean().item(), "entropy_per_head": entropy.mean(0).tolist(),
        "entropy_uniform": math.log(num_neighbors),
        "max_weight_mean": attention.max(-1).values.mean().item(),
        "argmax_is_largest_norm": (top == largest).float().mean().item(),
        "chance": 1 / num_neighbors,
        "heads_agree": (top == top[:, :1]).all(-1).float().mean().item(),
        **truth,
    }


# During training --------------------------------------------------------------------------------------------


def gradient_norms(model) -> dict[str, float]:
    """L2 norm of the current gradients of each parameter group (`PROMPT_PARAMETER_GROUPS`, else "t5_body")."""
    squares: dict[str, float] = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            continue
        group = next((g for g in PROMPT_PARAMETER_GROUPS if name.startswith(g) or f".{g}." in name), "t5_body")
        squares[group] = squares.get(group, 0.0) + parameter.grad.detach().float().pow(2).sum().item()
    return {group: math.sqrt(value) for group, value in squares.items()}


class PromptDiagnosticsCallback(TrainerCallback):
    """Records, every `every` optimizer steps, the gradient norm per parameter group (before clipping is not
    observable through callbacks: these are after clipping, as the optimizer sees them) and `prompt_norms`.

    `history` holds one dict per record; at the end of training it is written to
    `<output_dir>/prompt_diagnostics.json` (atomically).
    """

    def __init__(self, every: int = 25):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.history: list[dict] = []
        self._pending: dict | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1  # the step this optimizer update completes
        if model is not None and (step % self.every == 0 or step == 1):
            self._pending = {"step": step, "grad_norm": gradient_norms(model)}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._pending is not None and model is not None:
            was_training = model.training
            model.eval()
            self._pending["norms"] = prompt_norms(model)
            model.train(was_training)
            self.history.append(self._pending)
            self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        if args.output_dir and state.is_world_process_zero:
            atomic_write_json(Path(args.output_dir) / "prompt_diagnostics.json", self.history)


@torch.no_grad()
def cross_attention_on_prompt(model, tokenizer, dataset, rows: Sequence[int], batch_size: int = 16) -> dict:
    """How much of the decoder's cross-attention (first target token, mean over layers, heads and samples) lands
    on the task-prompt and collaborative-prompt positions, against their share of the encoder positions (what
    uniform attention would give). A decoder that reads its prompt puts far more than that share on it."""
    collator = PeaPODDataCollator(tokenizer)
    config = model.config
    previous = config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa kernels return no attention weights
    task_length = config.task_prompt_length if config.use_task_prompts else 0
    user_length = config.collaborative_prompt_length if model.has_collaborative_prompt else 0
    mass = {"task_prompt": [], "collaborative_prompt": []}
    share = {"task_prompt": [], "collaborative_prompt": []}
    for records, inputs in _batches(dataset, list(rows), batch_size, collator, model.device):
        labels = collator(records)["labels"].to(model.device)
        outputs = model(*_model_inputs(inputs), labels=labels, output_attentions=True)
        attention = torch.stack(outputs.cross_attentions)[:, :, :, 0]  # [layers, B, heads, source]
        attention = attention.mean(dim=(0, 2))  # [B, source]
        positions = inputs["attention_mask"].sum(1).float() + task_length + user_length
        for name, start, length in (("task_prompt", 0, task_length), ("collaborative_prompt", task_length,
                                                                       user_length)):
            if length:
                mass[name] += attention[:, start:start + length].sum(1).tolist()
                share[name] += (length / positions).tolist()
    model.set_attn_implementation(previous)
    return {name: {"attention": float(np.mean(mass[name])), "uniform": float(np.mean(share[name]))}
            for name in mass if mass[name]}
