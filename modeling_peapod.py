"""PeaPOD: Personalized Prompt Distillation for Generative Recommendation (Ramos, Wu, Lipani 2025).

This file travels to a Hub repository as remote code beside `configuration_peapod.py`: it imports only torch,
transformers and that file. It reads top to bottom from building blocks to the full model:

1. ID helpers: whole-word ids of `user_…`/`item_…` spans (the paper's §3.2) and the exact neighbour table.
2. `CollaborativePromptEncoder`: eqs. (1)-(9) of the paper.
3. Constrained decoding: a prefix trie over tokenised item ids, flattened into tensors for a logits processor.
4. `PeaPODForConditionalGeneration`: a T5 whose encoder input is
   [task prompt | collaborative user prompt | token embeddings + whole-word embeddings].
5. `PeaPODRecommendationPipeline`: a transformers pipeline (user or history + task -> ranked items, or an
   explanation) that `save_pretrained` registers in config.json, so `pipeline(model=..., trust_remote_code=True)`
   builds it from the checkpoint alone.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, Pipeline, T5ForConditionalGeneration
from transformers import initialization as init
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.t5.modeling_t5 import T5LayerNorm
from transformers.utils import logging

try:  # as remote code, beside config.json in a Hub repo (transformers copies both files into one package)
    from .configuration_peapod import (
        NAMED_SHAPES,
        TASK_REGISTRY,
        PeaPODConfig,
        PeaPODInputError,
    )
except ImportError:  # installed: the two files are top-level modules
    from configuration_peapod import (
        NAMED_SHAPES,
        TASK_REGISTRY,
        PeaPODConfig,
        PeaPODInputError,
    )

logger = logging.get_logger(__name__)

# 1. ID helpers ----------------------------------------------------------------------------------------------

# An ID is written `user_123` / `item_45`. SentencePiece splits it unpredictably: ["▁user", "_", "12", "3"] after a
# space, but ["▁(", "i", "tem", "_", "123", "4)"] after punctuation. So the pieces are glued back into text, the IDs
# are found there with a regular expression, and every piece overlapping an ID's characters joins its span.
_ID_PATTERN = re.compile(r"(?<![A-Za-z0-9])(?:user|item)_[0-9]+")


def whole_word_ids_from_tokens(tokens: Sequence[str]) -> list[int]:
    """Whole-word index of every SentencePiece piece (the paper's §3.2).

    The i-th `user_…`/`item_…` span in the sequence gets index i (1-based) on each of its pieces; every other
    piece (words, punctuation, EOS, padding) gets 0.
    """
    starts, text = [], []
    length = 0
    for token in tokens:
        starts.append(length)
        piece = token.replace("▁", " ")
        text.append(piece)
        length += len(piece)
    starts.append(length)
    whole_word_ids = [0] * len(tokens)
    piece = 0
    for span_index, match in enumerate(_ID_PATTERN.finditer("".join(text)), start=1):
        while starts[piece + 1] <= match.start():  # skip pieces that end before the ID
            piece += 1
        while piece < len(tokens) and starts[piece] < match.end():
            whole_word_ids[piece] = span_index
            piece += 1
    return whole_word_ids


def compute_whole_word_ids(input_ids, tokenizer) -> list[list[int]] | torch.LongTensor:
    """`whole_word_ids_from_tokens` for a batch of token ids (a list of lists or a 2-D tensor).

    Returns the same container type it was given; padding positions get 0 like any other non-ID piece.
    """
    if isinstance(input_ids, torch.Tensor):
        rows = [whole_word_ids_from_tokens(tokenizer.convert_ids_to_tokens(row)) for row in input_ids.tolist()]
        return torch.tensor(rows, dtype=torch.long, device=input_ids.device)
    return [whole_word_ids_from_tokens(tokenizer.convert_ids_to_tokens(list(row))) for row in input_ids]


SIMILARITY_SCALE = 1e6  # cosines are multiplied by this and rounded: ranked as integers of 1e-6
# Tiles of [4096 users x 8192 users] (128 MiB of float32): measured fastest on a 2-core CPU at 22k and 200k users.
NEIGHBOR_CHUNK_SIZE, NEIGHBOR_COLUMN_BLOCK = 4096, 8192


@torch.no_grad()
def build_user_neighbors(
    user_embeddings: torch.Tensor, num_neighbors: int, chunk_size: int = NEIGHBOR_CHUNK_SIZE,
    column_block: int = NEIGHBOR_COLUMN_BLOCK, queries: torch.Tensor | None = None,
) -> torch.LongTensor:
    """The n most cosine-similar other users of every user: S_u of the paper's §4.2.

    `user_embeddings` is [num_users + 1, d_u] with row 0 the unknown user. Returns [num_users + 1, n] user ids
    ordered by decreasing similarity; the user itself and row 0 are never neighbours, ties go to the lower user
    id, and row 0's neighbours are all 0 (the unknown user attends over unknown users). Exact, and computed in
    [chunk_size x column_block] tiles whose top n + 1 are merged, so memory stays O(chunk_size x column_block),
    never a num_users² matrix (and the tiles stay cache-sized, which is faster than whole rows).
    Similarities are compared at a resolution of 1e-6: float32 matrix products give equal cosines that differ in
    their last bits depending on the tiling, and that noise must not decide who is a neighbour.

    `queries` [B, d_u]: instead, the n users of the table most similar to each of these vectors (users not in the
    table, e.g. folded in by `PeaPODForConditionalGeneration.fold_in_users`), [B, n], by the same similarity,
    resolution and tie rule; a query is not a table row, so it has no "self" to skip.
    """
    if user_embeddings.dim() != 2:
        raise ValueError(f"user_embeddings must be 2-D [num_users + 1, d_u], got shape {tuple(user_embeddings.shape)}")
    num_rows = user_embeddings.shape[0]
    check_num_neighbors(num_rows - 1, num_neighbors)
    if chunk_size < 1 or column_block < 1:
        raise ValueError(f"chunk_size and column_block must be >= 1, got {chunk_size} and {column_block}")
    if queries is not None:
        if queries.dim() != 2 or queries.shape[1] != user_embeddings.shape[1]:
            raise ValueError(
                f"queries has shape {tuple(queries.shape)}; expected [B, {user_embeddings.shape[1]}] (the table's d_u)"
            )
        # The queries become rows past the table; only table rows are columns, so they never meet each other.
        unit = F.normalize(torch.cat([user_embeddings.float(), queries.to(user_embeddings).float()]), dim=1)
        neighbors = torch.zeros(queries.shape[0], num_neighbors, dtype=torch.long, device=user_embeddings.device)
        for start in range(num_rows, unit.shape[0], chunk_size):
            end = min(start + chunk_size, unit.shape[0])
            neighbors[start - num_rows : end - num_rows] = _chunk_neighbors(
                unit, start, end, num_neighbors, column_block, num_columns=num_rows
            )
        return neighbors
    unit = F.normalize(user_embeddings.float(), dim=1)  # zero rows stay zero: similarity 0 to everyone
    neighbors = torch.zeros(num_rows, num_neighbors, dtype=torch.long, device=user_embeddings.device)
    for start in range(1, num_rows, chunk_size):
        end = min(start + chunk_size, num_rows)
        neighbors[start:end] = _chunk_neighbors(unit, start, end, num_neighbors, column_block)
    return neighbors


def check_user_embeddings(user_embeddings: torch.Tensor, where: str = "") -> None:
    """User embeddings [num_users + 1, d_u] with finite values: a NaN row would turn every loss into NaN, and every
    cosine with it (so the neighbour table) would be NaN too."""
    if user_embeddings.dim() != 2:
        raise ValueError(f"user_embeddings must be 2-D [num_users + 1, d_u], got shape {tuple(user_embeddings.shape)}")
    finite = torch.isfinite(user_embeddings)
    if not finite.all():
        bad_rows = (~finite).any(dim=1).nonzero().flatten()
        raise PeaPODInputError(
            f"{where}user_embeddings has NaN or infinite values in {bad_rows.numel()} row(s), user ids "
            f"{bad_rows[:10].tolist()}; expected finite collaborative-filtering embeddings"
        )


def check_num_neighbors(num_users: int, num_neighbors: int) -> None:
    """A user has at most num_users - 1 neighbours: everyone but itself (and never the unknown user 0)."""
    if num_neighbors < 1 or num_neighbors > num_users - 1:
        raise ValueError(
            f"num_neighbors={num_neighbors} must be between 1 and num_users - 1 = {num_users - 1} "
            f"(a user cannot be its own neighbour; the table has {num_users} users plus the unknown row 0)"
        )


def _cosines(unit: torch.Tensor, first: int, last: int, column: int, column_end: int, out=None) -> torch.Tensor:
    """Cosines of users first..last-1 against users column..column_end-1, into `out` (a flat buffer reused from
    tile to tile: allocating a fresh tile each time costs as much as the arithmetic); oneself and the unknown
    user 0 are masked with -inf."""
    shape = (last - first, column_end - column)
    tile = out[: shape[0] * shape[1]].view(shape) if out is not None else None
    tile = torch.mm(unit[first:last], unit[column:column_end].T, out=tile)
    overlap = torch.arange(max(first, column), max(min(last, column_end), max(first, column)), device=tile.device)
    tile[overlap - first, overlap - column] = -math.inf
    if column == 0:
        tile[:, 0] = -math.inf
    return tile


def _rounded(values: torch.Tensor) -> torch.Tensor:
    """Similarities as integers of 1e-6. Rounding is monotonic, so it can wait until after `topk`."""
    return (values * SIMILARITY_SCALE).round_()


def _chunk_neighbors(
    unit: torch.Tensor, start: int, end: int, n: int, column_block: int, num_columns: int | None = None
) -> torch.LongTensor:
    """Neighbours of users start..end-1 among the first `num_columns` rows (default all): each
    [chunk x column_block] tile keeps its top n + 1, then they merge."""
    num_rows = unit.shape[0] if num_columns is None else num_columns
    buffer = unit.new_empty((end - start) * min(column_block, num_rows))
    values, indices = [], []
    for column in range(0, num_rows, column_block):
        column_end = min(column + column_block, num_rows)
        tile_values, tile_indices = _cosines(unit, start, end, column, column_end, buffer).topk(
            min(n + 1, column_end - column), dim=1
        )
        values.append(tile_values)
        indices.append(tile_indices + column)
    return _top_n_lowest_index_on_ties(
        torch.cat(values, dim=1), torch.cat(indices, dim=1), n,
        full_row=lambda row: _rounded(_cosines(unit, start + row, start + row + 1, 0, num_rows)[0]),
    )


def _top_n_lowest_index_on_ties(values: torch.Tensor, indices: torch.Tensor, n: int, full_row) -> torch.LongTensor:
    """Row-wise top-n columns by decreasing score, equal scores lowest column first.

    `values`/`indices` hold raw candidate (score, column) pairs containing every row's top n + 1 scores (each
    tile's top n + 1: whatever is in the row's top n + 1 is in its tile's). Scores are compared once rounded
    (`_rounded`, monotonic). When the rounded n-th and (n+1)-th scores differ the top n are exactly the n best
    candidates. When they are equal, ties straddle the cut and `torch.topk` may have dropped a lower-index tied
    column, so that row is resolved on its full rounded scores, `full_row(row)`.
    """
    top_values, position = values.topk(n + 1, dim=1)
    top_values = _rounded(top_values)
    chosen, chosen_values = indices.gather(1, position)[:, :n].clone(), top_values[:, :n].clone()
    for row in (top_values[:, n] == top_values[:, n - 1]).nonzero().flatten().tolist():
        scores = full_row(row)
        threshold = scores.topk(n).values[-1]
        above = (scores > threshold).nonzero().flatten()
        columns = torch.cat([above, (scores == threshold).nonzero().flatten()[: n - above.numel()]])
        chosen[row], chosen_values[row] = columns, scores[columns]
    # Order by (score desc, column asc): sort by column first, then a stable sort on the score.
    chosen, by_column = chosen.sort(dim=1)
    order = chosen_values.gather(1, by_column).sort(dim=1, descending=True, stable=True).indices
    return chosen.gather(1, order)


def pmf_fold_in_problem(
    histories: Sequence[Sequence[int]], num_items: int, negatives_per_positive: int, regularization: float,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The expected-negatives objective of `fold_in_users` for each history of distinct item ids, as the inputs of
    `solve_pmf_users`: (targets [B, I + 1], weights [B, I + 1], ridge [B], drawn [B, 1]), float64.

    targets are 1 on the history's items; weights 1 there and M / (I - P) on every unobserved item (M = drawn, the
    number of negatives PMF training draws: min(m P, I - P)); column 0 (no item) weighs 0; ridge = lambda (P + M).
    """
    targets = torch.zeros(len(histories), num_items + 1, dtype=torch.float64, device=device)
    for row, items in enumerate(histories):
        targets[row, list(items)] = 1.0
    positives = targets.sum(1, keepdim=True)
    unobserved = num_items - positives
    drawn = torch.minimum(negatives_per_positive * positives, unobserved)
    weights = torch.where(targets > 0, 1.0, drawn / unobserved.clamp(min=1))
    weights[:, 0] = 0.0  # row 0 is no item
    ridge = regularization * (positives + drawn)[:, 0]  # lambda, once per rating
    return targets, weights, ridge, drawn


def solve_pmf_users(
    item_factors: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, ridge: torch.Tensor,
    max_iterations: int = 100, tolerance: float = 1e-6,
) -> torch.Tensor:
    """argmin_u sum_i weights_i (targets_i - sigmoid(u·v_i))^2 + ridge |u|^2 for each row: [B, d] float64.

    `item_factors` V [I, d]; `targets`, `weights` [B, I]; `ridge` [B]. The objective of non-linear PMF for one
    user with the item factors fixed (`PeaPODForConditionalGeneration.fold_in_users`). Gauss-Newton from u = 0:
    each iteration solves the regularised least-squares system
        (V^T diag(w_i s_i'^2) V + ridge I) delta = V^T (w_i s_i' e_i) - ridge u
    (s_i' the sigmoid's slope, e_i = targets_i - sigmoid(u·v_i)), whose matrix is positive definite, so delta
    descends; a backtracking (Armijo) line search keeps every step decreasing. Stops when every row's gradient
    norm is below `tolerance` or after `max_iterations` (it converges in ~10-20 on PMF factors).
    Hand-written: torch has no batched non-linear least squares, and each step is one batched Cholesky solve.
    """
    factors = item_factors.double()
    targets, weights = targets.to(factors), weights.to(factors)
    ridge = ridge.to(factors)[:, None]
    batch, dim = targets.shape[0], factors.shape[1]

    def loss(users: torch.Tensor) -> torch.Tensor:
        return (weights * (targets - torch.sigmoid(users @ factors.T)) ** 2).sum(1) + ridge[:, 0] * (users**2).sum(1)

    users = factors.new_zeros(batch, dim)
    current = loss(users)
    factors32 = factors.float()
    eye = torch.eye(dim, device=factors.device)
    for _ in range(max_iterations):
        predicted = torch.sigmoid(users @ factors.T)
        slope = predicted * (1 - predicted)
        gradient = ridge * users - (weights * (targets - predicted) * slope) @ factors  # half the gradient
        if gradient.norm(dim=1).max() < tolerance:
            break
        # The Gauss-Newton matrix only steers the steps (the solution is where the float64 gradient vanishes), so
        # it is built and factorised in float32, the [B, I, d] x [I, d] product being most of the cost.
        weighted = factors32[None] * (weights * slope * slope).float()[:, :, None]  # [B, I, d]
        curvature = weighted.transpose(1, 2) @ factors32 + ridge.float()[:, :, None] * eye  # GN matrix / 2
        step = -torch.cholesky_solve(gradient.float()[:, :, None], torch.linalg.cholesky(curvature))[:, :, 0].double()
        slope_along = (gradient * step).sum(1)  # < 0
        scale = torch.ones(batch, dtype=factors.dtype, device=factors.device)
        for _ in range(40):
            trial = loss(users + scale[:, None] * step)
            accepted = trial <= current + 2e-4 * scale * slope_along
            if accepted.all():
                break
            scale = torch.where(accepted, scale, scale / 2)
        users = torch.where(accepted[:, None], users + scale[:, None] * step, users)
        current = torch.where(accepted, trial, current)
    return users


# 2. Collaborative user prompt ------------------------------------------------------------------------------


class CollaborativePromptEncoder(nn.Module):
    """The collaborative user prompt p of the paper's §4 (eqs. 1-9), L_p vectors of width d_m.

    `mha`: the target user's embedding u is the query, its n neighbours' embeddings s_i the keys and values:
        Q = W_Q u + b_Q, K_i = W_K s_i + b_K, V_i = W_V s_i + b_V, K, V stacked      eqs. (1)-(4)
        head_h = softmax((Q W_h^Q)(K W_h^K)^T / sqrt(d_k)) (V W_h^V), d_k = d_m / H   eqs. (5), (7)
        z = Concat(head_1..head_H)                                                    eq. (8)
        p = W_I z + b_I, reshaped to [L_p, d_m]                                       eq. (9)
    The per-head projections W_h^{Q,K,V} of eq. (7) are stacked into one d_m x d_m map each (as in
    `nn.MultiheadAttention`); with H = 1 this is eq. (5) with its sqrt(d_m) scale.
    `mlp`: the paper's "0 heads" ablation, no neighbours: z = Q = W_Q u + b_Q (eq. 1), p = W_I z + b_I (eq. 6).
    `config.user_embedding_norm` optionally normalises u and every s_i first (`normalize_user_embeddings`);
    `config.collaborative_prompt_norm="rms"` RMS-normalises each of the L_p output vectors (a learned gain; not in
    the paper), which keeps p at the token embeddings' scale; `config.prompt_attention_norm="qk"` RMS-normalises
    each head's query and key before eq. (5) (QK-norm; not in the paper), which keeps the softmax from saturating;
    `config.neighbor_rank_bias` adds a learned bias per head and neighbour rank to eq. (5)'s logits (not in the
    paper; zero at initialisation), which lets attention use the order of the similarity-sorted neighbour list.
    """

    def __init__(self, config):
        super().__init__()
        d_user, d_model = config.user_embedding_dim, config.d_model
        self.variant = config.prompt_encoder
        self.num_heads = config.prompt_encoder_heads
        self.prompt_length = config.collaborative_prompt_length
        self.d_model = d_model
        self.user_embedding_norm = config.user_embedding_norm
        if self.user_embedding_norm == "layernorm":
            self.user_norm = nn.LayerNorm(d_user)
        self.query = nn.Linear(d_user, d_model)  # W_Q, b_Q  eq. (1)
        if self.variant == "mha":
            self.key = nn.Linear(d_user, d_model)  # W_K, b_K  eq. (2)
            self.value = nn.Linear(d_user, d_model)  # W_V, b_V  eq. (3)
            self.head_query = nn.Linear(d_model, d_model, bias=False)  # W_h^Q for all heads, eq. (7)
            self.head_key = nn.Linear(d_model, d_model, bias=False)  # W_h^K
            self.head_value = nn.Linear(d_model, d_model, bias=False)  # W_h^V
            if config.prompt_attention_norm == "qk":  # one gain vector over d_k, shared by the heads
                head_width = d_model // self.num_heads
                self.query_norm = T5LayerNorm(head_width, eps=config.layer_norm_epsilon)
                self.key_norm = T5LayerNorm(head_width, eps=config.layer_norm_epsilon)
            if config.neighbor_rank_bias:  # [H, n]: column j for the j-th most similar neighbour
                self.rank_bias = nn.Parameter(torch.zeros(self.num_heads, config.num_neighbors))
        self.to_prompt = nn.Linear(d_model, self.prompt_length * d_model)  # W_I, b_I  eq. (6) mlp, eq. (9) mha
        if config.collaborative_prompt_norm == "rms":
            self.prompt_norm = T5LayerNorm(d_model, eps=config.layer_norm_epsilon)

    def forward(
        self, user_embedding: torch.Tensor, neighbor_embeddings: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """u [B, d_u] and S_u [B, n, d_u] -> (p [B, L_p, d_m], attention weights [B, H, n] or None)."""
        user_embedding = self.normalize_user_embeddings(user_embedding)  # u [B, d_u]
        query = self.query(user_embedding)  # Q [B, d_m], eq. (1)
        if self.variant == "mlp":
            summary, attention = query, None  # z = Q [B, d_m]
        else:
            neighbor_embeddings = self.normalize_user_embeddings(neighbor_embeddings)  # S_u [B, n, d_u]
            batch, num_neighbors, _ = neighbor_embeddings.shape
            head_width = self.d_model // self.num_heads  # d_k = d_m / H
            keys = self.head_key(self.key(neighbor_embeddings))  # K W^K [B, n, d_m], eqs. (2), (4), (7)
            values = self.head_value(self.value(neighbor_embeddings))  # V W^V [B, n, d_m], eqs. (3), (4), (7)
            query = self.head_query(query)  # Q W^Q [B, d_m], eq. (7)
            # Split d_m into H heads of width d_k: [B, H, 1, d_k] against [B, H, n, d_k].
            query = query.view(batch, self.num_heads, 1, head_width)  # [B, H, 1, d_k]
            keys = keys.view(batch, num_neighbors, self.num_heads, head_width).transpose(1, 2)  # [B, H, n, d_k]
            values = values.view(batch, num_neighbors, self.num_heads, head_width).transpose(1, 2)  # [B, H, n, d_k]
            if hasattr(self, "query_norm"):  # prompt_attention_norm="qk": |logit| <= sqrt(d_k) x the gains
                query, keys = self.query_norm(query), self.key_norm(keys)
            # Scaled dot-product attention of each head over the n neighbours, eqs. (5), (7): [B, H, 1, n].
            logits = query @ keys.transpose(-1, -2) / math.sqrt(head_width)  # [B, H, 1, n]
            if hasattr(self, "rank_bias"):  # neighbor_rank_bias: + b[h, j] for the j-th most similar neighbour
                logits = logits + self.rank_bias[:, None, :]
            attention = torch.softmax(logits, dim=-1)
            summary = (attention @ values).reshape(batch, self.d_model)  # z_mha [B, d_m]: heads concatenated, eq. (8)
            attention = attention.squeeze(2)  # [B, H, n]
        prompt = self.to_prompt(summary).view(-1, self.prompt_length, self.d_model)  # p [B, L_p, d_m], eq. (6)/(9)
        if hasattr(self, "prompt_norm"):  # collaborative_prompt_norm="rms": each vector to RMS 1, times its gain
            prompt = self.prompt_norm(prompt)
        return prompt, (attention if output_attentions else None)

    def normalize_user_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """`user_embedding_norm`: "none" (the paper) leaves the rows as given; "l2" rescales each row to norm
        sqrt(d_u), i.e. unit root-mean-square, the input scale the fan-in initialised projections assume;
        "layernorm" applies the learned LayerNorm. Rows of zeros (the unknown user) stay zero under "l2"."""
        if self.user_embedding_norm == "l2":
            return F.normalize(embeddings, dim=-1) * math.sqrt(embeddings.shape[-1])
        if self.user_embedding_norm == "layernorm":
            return self.user_norm(embeddings)
        return embeddings


# 3. Constrained decoding over item ids ---------------------------------------------------------------------


class ItemIdTrie:
    """A prefix trie over the tokenised item-id targets ("1234" + EOS), for constrained decoding.

    transformers offers the hooks (`prefix_allowed_tokens_fn`, `LogitsProcessor`) but no trie, so this small one is
    written here. It is held twice: as nested dicts (`allowed_tokens(prefix)`, the readable reference used by
    `prefix_allowed_tokens_fn`) and flattened into tensors for `ItemIdConstraintLogitsProcessor`, whose per-step
    work is a few batched tensor operations instead of a Python call per beam:

    * nodes are numbered 0 (root) .. num_nodes - 1; an edge (parent, token) -> child is stored under the key
      `parent * KEY_STRIDE + token` in the sorted `edge_keys`, so a batch of transitions is one `searchsorted`;
    * sorted keys order edges by parent, then token: `child_offsets` (CSR) gives each node's outgoing edges;
    * `node_item` maps the node reached after an id's EOS to the item id (0 elsewhere); `item_paths` lists the
      nodes on each item's path, so a set of candidates becomes a mask over nodes (its sub-trie);
    * per-item tables (`item_paths`, `item_labels`) have one row per catalogue item, in the order of the sorted
      `item_ids`: `item_rows` maps ids to rows by `searchsorted`, so ids need not be contiguous (3, 17, 10**9).
    * a child's node number is larger than its parent's (nodes are numbered as they are first reached), so
      sorting nodes by number puts every node after its ancestors (what `score_candidates` relies on).

    A finished id (or a prefix that left the trie, which the constraint prevents) allows only EOS.
    """

    KEY_STRIDE = 1 << 32  # > any vocabulary size, so (parent, token) keys never collide

    def __init__(self, item_token_ids: dict[int, list[int]], eos_token_id: int):
        if not item_token_ids:
            raise ValueError("an ItemIdTrie needs at least one item id")
        self.item_token_ids = item_token_ids
        self.eos_token_id = eos_token_id
        self.root: dict[int, dict] = {}
        self.item_of_sequence: dict[tuple[int, ...], int] = {}
        for item_id, token_ids in item_token_ids.items():
            node = self.root
            for token in token_ids:
                node = node.setdefault(token, {})
            self.item_of_sequence[tuple(token_ids)] = item_id
        self.max_length = max(len(tokens) for tokens in item_token_ids.values())
        self._flatten()
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _flatten(self) -> None:
        """Number the nodes and build the tensors described in the class docstring (CPU; see `tensors`)."""
        node_of: dict[tuple[int, ...], int] = {(): 0}
        edge_keys, edge_children = [], []
        item_ids = sorted(self.item_token_ids)
        paths = torch.full((len(item_ids), self.max_length), -1, dtype=torch.long)
        labels = torch.full((len(item_ids), self.max_length), -100, dtype=torch.long)
        node_item = [0]
        for row, item_id in enumerate(item_ids):
            token_ids = self.item_token_ids[item_id]
            parent = 0
            for depth, token in enumerate(token_ids):
                prefix = tuple(token_ids[: depth + 1])
                child = node_of.get(prefix)
                if child is None:
                    child = node_of[prefix] = len(node_of)
                    node_item.append(0)
                    edge_keys.append(parent * self.KEY_STRIDE + token)
                    edge_children.append(child)
                paths[row, depth] = parent = child
            node_item[parent] = item_id
            labels[row, : len(token_ids)] = torch.tensor(token_ids)
        keys = torch.tensor(edge_keys, dtype=torch.long)
        order = keys.argsort()
        keys, children = keys[order], torch.tensor(edge_children, dtype=torch.long)[order]
        parents = keys // self.KEY_STRIDE
        self.num_nodes = len(node_of)
        self._tensors = {
            "edge_keys": keys,
            "edge_children": children,
            "edge_tokens": keys % self.KEY_STRIDE,
            "child_offsets": F.pad(torch.bincount(parents, minlength=self.num_nodes).cumsum(0), (1, 0)),
            "node_item": torch.tensor(node_item, dtype=torch.long),
            "item_ids": torch.tensor(item_ids, dtype=torch.long),  # [num_items] sorted: row i of the tables below
            "item_paths": paths,  # [num_items, max_length] node ids, -1 past the end
            "item_labels": labels,  # [num_items, max_length] token ids, -100 past the end
        }

    def tensors(self, device) -> dict[str, torch.Tensor]:
        """The flattened trie on `device` (copied once per device)."""
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = {name: value.to(device) for name, value in self._tensors.items()}
        return self._on_device[device]

    @classmethod
    def from_tokenizer(cls, tokenizer, item_ids) -> ItemIdTrie:
        item_ids = [int(item) for item in item_ids]
        if any(item < 1 for item in item_ids):
            raise ValueError(f"item ids must be >= 1, got {min(item_ids)}")
        encoded = tokenizer([str(item) for item in item_ids], add_special_tokens=True).input_ids
        return cls(dict(zip(item_ids, encoded)), tokenizer.eos_token_id)

    def check_candidates(self, candidates: torch.Tensor, batch: int) -> torch.Tensor:
        """Validate a [batch, C] tensor of candidate ids against this catalogue; returns it as a tensor."""
        candidates = torch.as_tensor(candidates)
        if candidates.dim() != 2 or candidates.shape[0] != batch:
            raise ValueError(f"candidates must be [batch={batch}, C] item ids, got shape {tuple(candidates.shape)}")
        unknown = sorted({int(item) for item in candidates.flatten().tolist()} - self.item_token_ids.keys())
        if unknown:
            raise ValueError(f"candidate item ids {unknown[:10]} are not in the catalogue of {len(self)} items")
        return candidates

    def restricted_to(self, item_ids) -> ItemIdTrie:
        """The trie of a subset (e.g. one user's top-n candidates), reusing this trie's tokenisation."""
        self.check_candidates(torch.as_tensor(item_ids).view(1, -1), 1)
        return ItemIdTrie({int(item): self.item_token_ids[int(item)] for item in item_ids}, self.eos_token_id)

    def __len__(self) -> int:
        return len(self.item_token_ids)

    def allowed_tokens(self, prefix: Sequence[int]) -> list[int]:
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:  # off the trie (cannot happen under the constraint): end the sequence
                return [self.eos_token_id]
        return list(node) or [self.eos_token_id]

    def item_of(self, token_ids: Sequence[int]) -> int | None:
        """The item id a generated token sequence spells (padding stripped), or None if it is no item id."""
        tokens = list(token_ids)
        if self.eos_token_id in tokens:
            tokens = tokens[: tokens.index(self.eos_token_id) + 1]
        return self.item_of_sequence.get(tuple(tokens))

    # -- batched, on tensors --------------------------------------------------------------------------------

    def walk(self, token_ids: torch.LongTensor) -> torch.LongTensor:
        """The node each row of decoder tokens [N, T] (start token excluded) reaches; -1 once off the trie.

        Tokens after a row's first EOS are ignored, so a finished, padded sequence stays on its leaf."""
        tensors = self.tensors(token_ids.device)
        keys = tensors["edge_keys"]
        nodes = torch.zeros(token_ids.shape[0], dtype=torch.long, device=token_ids.device)
        finished = torch.zeros_like(nodes, dtype=torch.bool)
        for step in range(token_ids.shape[1]):
            tokens = token_ids[:, step]
            wanted = nodes * self.KEY_STRIDE + tokens
            index = torch.searchsorted(keys, wanted).clamp(max=keys.numel() - 1)
            found = (keys[index] == wanted) & (nodes >= 0)
            nodes = torch.where(finished, nodes, torch.where(found, tensors["edge_children"][index], -1))
            finished |= tokens == self.eos_token_id
        return nodes

    def items_of(self, token_ids: torch.LongTensor) -> torch.LongTensor:
        """`item_of` for a batch of sequences [N, T]: item ids [N], 0 where a row spells no item id."""
        nodes = self.walk(token_ids)
        items = self.tensors(token_ids.device)["node_item"][nodes.clamp(min=0)]
        return torch.where(nodes >= 0, items, 0)

    def item_rows(self, item_ids: torch.LongTensor) -> torch.LongTensor:
        """The rows of catalogue item ids (any shape; checked by `check_candidates`) in the per-item tables."""
        return torch.searchsorted(self.tensors(item_ids.device)["item_ids"], item_ids.contiguous())

    def candidate_nodes(self, candidates: torch.LongTensor) -> torch.BoolTensor:
        """[B, num_nodes]: the nodes on the paths of each row's candidate ids [B, C] (that row's sub-trie)."""
        paths = self.tensors(candidates.device)["item_paths"][self.item_rows(candidates)].flatten(1)  # [B, C * L]
        allowed = torch.zeros(candidates.shape[0], self.num_nodes + 1, dtype=torch.bool, device=candidates.device)
        allowed.scatter_(1, torch.where(paths >= 0, paths, self.num_nodes), True)  # -1 padding -> spare column
        allowed[:, 0] = True
        return allowed[:, : self.num_nodes]


class ItemIdConstraintLogitsProcessor(LogitsProcessor):
    """Masks every token that does not extend a beam's prefix towards an item id of the trie (or of the sample's
    candidates): `PrefixConstrainedLogitsProcessor` with `ItemIdTrie.allowed_tokens`, as batched tensor ops.

    Stateless: each step re-walks the decoder tokens (item ids are a few tokens long), because beam search
    reorders the rows between steps. `candidate_nodes` [B, num_nodes] (from `ItemIdTrie.candidate_nodes`)
    restricts sample b to its candidates' sub-trie.
    """

    def __init__(self, trie: ItemIdTrie, num_beams: int, candidate_nodes: torch.BoolTensor | None = None):
        self.trie = trie
        self.num_beams = num_beams
        self.candidate_nodes = candidate_nodes

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        tensors = self.trie.tensors(input_ids.device)
        nodes = self.trie.walk(input_ids[:, 1:])  # drop the decoder start token
        on_trie = nodes.clamp(min=0)
        starts = tensors["child_offsets"][on_trie]
        counts = torch.where(nodes >= 0, tensors["child_offsets"][on_trie + 1] - starts, 0)
        # Every (row, outgoing edge) pair, flattened: row r contributes counts[r] consecutive edges from starts[r].
        rows = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), counts)
        first_of_row = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        edges = torch.repeat_interleave(starts, counts) + torch.arange(rows.numel(), device=rows.device) - first_of_row
        if self.candidate_nodes is not None:
            keep = self.candidate_nodes[rows // self.num_beams, tensors["edge_children"][edges]]
            rows, edges = rows[keep], edges[keep]
        # A finished id, or a row off the trie, may only end (what `ItemIdTrie.allowed_tokens` returns).
        dead_end = torch.ones(nodes.numel(), dtype=torch.bool, device=nodes.device)
        dead_end[rows] = False
        ending = dead_end.nonzero().squeeze(1)
        rows = torch.cat([rows, ending])
        tokens = torch.cat([tensors["edge_tokens"][edges], torch.full_like(ending, self.trie.eos_token_id)])
        # Keep the allowed scores, set the whole tensor to -inf in place, write them back: one dense pass, the rest
        # touches only allowed entries (PrefixConstrainedLogitsProcessor builds a dense mask and adds it, several
        # passes over [N, vocab]; a fresh -inf tensor per step would cost an allocation of [N, vocab] as well).
        # In place, as transformers' own processors work: generate passes log-probs it does not read again.
        allowed = scores[rows, tokens]
        # As PrefixConstrainedLogitsProcessor: if every allowed token of a sample is -inf, force the allowed ones to 0.
        samples = rows // self.num_beams
        satisfiable = torch.zeros(scores.shape[0] // self.num_beams, dtype=torch.bool, device=scores.device)
        satisfiable.index_put_((samples,), ~allowed.isneginf(), accumulate=True)
        scores.fill_(-math.inf)
        scores[rows, tokens] = torch.where(satisfiable[samples], allowed, 0.0)
        return scores


def prefix_allowed_tokens_fn(tries: ItemIdTrie | Sequence[ItemIdTrie]):
    """A `prefix_allowed_tokens_fn` for `generate`: one trie for the batch, or one per sample (top-n candidates).

    `generate` calls it with the batch index and the decoder tokens so far, whose first token is the start token.
    This per-beam Python callback is the reference `ItemIdConstraintLogitsProcessor` is tested against
    (`recommend(..., constraint="prefix_fn")`).
    """

    def allowed(batch_id: int, decoder_input_ids: torch.Tensor) -> list[int]:
        trie = tries if isinstance(tries, ItemIdTrie) else tries[batch_id]
        return trie.allowed_tokens(decoder_input_ids[1:].tolist())

    return allowed


# 4. The model ----------------------------------------------------------------------------------------------

USER_TABLE_BUFFERS = ("user_embeddings", "user_neighbors")
ITEM_FACTORS = "item_factors"  # the CF model's item factors, kept for folding in new users
UNKNOWN_USER_TEXT = "user_0"  # the id text of a user outside the table (unknown or folded in): never trained on


# The documentation of `forward`, `generate`, `recommend` and `score_candidates`: their PeaPOD inputs, written once
# (as transformers' `add_start_docstrings` does for its models), then each method's own arguments, returns and
# example; `_document_peapod_inputs` appends them to the method's docstring.
PEAPOD_INPUTS_DOCSTRING = """PeaPOD inputs (a batch of B prompts; the training package's `PeaPODDataCollator` builds them from rows):
    input_ids (`torch.LongTensor` of shape `(B, sequence_length)`):
        Token ids of the prompt text, EOS last, e.g. "Given the purchase history of user_12: item_3, item_7,
        predict the next item." PeaPOD prepends its L_t + L_p prompt vectors itself: pass the text's ids only.
    attention_mask (`torch.LongTensor` of shape `(B, sequence_length)`, *optional*):
        1 on tokens, 0 on padding; extended internally with 1s over the prompt vectors. Default: all ones.
    user_ids (`torch.LongTensor` of shape `(B,)`):
        Each prompt's row of the frozen user table: 1..num_users, 0 for the unknown user. Selects u and its
        neighbours S_u for the collaborative prompt; required unless `config.prompt_encoder == "none"`.
    task_ids (`torch.LongTensor` of shape `(B,)`):
        Each prompt's index into `config.tasks` (the task registry's order: 0 sequential, 1 top-n,
        2 explanation). Selects the task prompt; required when `config.use_task_prompts`.
    whole_word_ids (`torch.LongTensor` of shape `(B, sequence_length)`, *optional*):
        0 on ordinary tokens, i on every piece of the i-th `user_…`/`item_…` span (`compute_whole_word_ids`);
        looked up in the whole-word embeddings and added to the token embeddings. Default: all 0."""

PEAPOD_EXAMPLE_SETUP = """>>> import torch
>>> from transformers import AutoTokenizer
>>> from modeling_peapod import PeaPODForConditionalGeneration, compute_whole_word_ids
>>> tokenizer = AutoTokenizer.from_pretrained("t5-small")
>>> model = PeaPODForConditionalGeneration.from_shape(
...     "tiny", num_users=3, num_items=20, user_embedding_dim=8, num_neighbors=2)
>>> model.set_user_table(torch.randn(4, 8))  # row 0: the unknown user
>>> batch = tokenizer(["Given the purchase history of user_1: item_3, item_7, predict the next item."],
...                   return_tensors="pt")
>>> inputs = dict(**batch, user_ids=torch.tensor([1]), task_ids=torch.tensor([0]),
...               whole_word_ids=compute_whole_word_ids(batch.input_ids, tokenizer))"""


FORWARD_DOCSTRING = """Other arguments:
    labels (`torch.LongTensor` of shape `(B, target_length)`, *optional*):
        Target token ids (an item id such as "1234" + EOS, or an explanation + EOS), -100 on padding (never
        trained on). `config.loss_reduction` averages per sequence (eq. 10) or per token.
    decoder_input_ids, decoder_attention_mask, cache, use_cache: as in T5 (`decoder_input_ids` default to
        `labels` shifted right). encoder_outputs: the encoder already ran (`generate`); `attention_mask` is
        then the extended one.

Returns:
    `Seq2SeqLMOutput`: `loss` (with `labels`), `logits` of shape `(B, target_length, vocab_size)`, and T5's
    other outputs; the encoder's positions are L_t + L_p + sequence_length long.

Example:
{example_setup}
>>> labels = tokenizer(["12"], return_tensors="pt").input_ids  # the next item's id
>>> model(**inputs, labels=labels).loss.shape
torch.Size([])
"""

GENERATE_DOCSTRING = """Other arguments: `encoder_outputs` (the encoder already ran: pass the extended `attention_mask` with it)
and any `generate` keyword (`num_beams`, `max_new_tokens`, `generation_config`, ...).

Returns:
    What `generate` returns: token ids of shape `(B * num_return_sequences, generated_length)` (decoder
    start token first), or a `GenerateOutput` with `return_dict_in_generate=True`.

Example (an explanation, task 2):
{example_setup}
>>> inputs["task_ids"] = torch.tensor([2])
>>> tokenizer.batch_decode(model.generate(**inputs, num_beams=4, max_new_tokens=20), skip_special_tokens=True)
['...']
"""

RECOMMEND_DOCSTRING = """Ranking arguments:
    tokenizer / item_trie: the catalogue to decode into: an `ItemIdTrie` (`model.item_trie(tokenizer)`,
        built once and reused), or a tokenizer to build it from items 1..config.num_items.
    candidates (`torch.LongTensor` of shape `(B, C)`, *optional*): top-n; each row's candidate item ids.
    top_k, num_beams (top_k <= num_beams), length_penalty, constraint, and other `generate` keywords.

Returns:
    `(item_ids, scores)`, both of shape `(B, top_k)`: item ids by decreasing score (-1 where fewer than
    top_k distinct items were found) and their beam log-likelihoods (-inf there).

Example (sequential, task 0):
{example_setup}
>>> item_ids, scores = model.recommend(**inputs, tokenizer=tokenizer, top_k=5, num_beams=10)
>>> item_ids.shape
torch.Size([1, 5])
"""

SCORE_CANDIDATES_DOCSTRING = """Ranking arguments:
    candidates (`torch.LongTensor` of shape `(B, C)`): each row's candidate item ids (top-n: 100).
    tokenizer / item_trie: as in `recommend` (the trie holds each id's tokens).
    candidate_batch_size: about how many (sample, candidate) pairs one decoder call scores.

Returns:
    `torch.Tensor` of shape `(B, C)`: log p(id tokens + EOS | input) of each candidate; rank a row by
    sorting it (ties: lower item id first, as the evaluation does).

Example (top-n, task 1):
{example_setup}
>>> inputs["task_ids"] = torch.tensor([1])
>>> model.score_candidates(**inputs, candidates=torch.tensor([[3, 7, 12]]), tokenizer=tokenizer).shape
torch.Size([1, 3])
"""


def _document_peapod_inputs(sections: str):
    """Append the PeaPOD inputs, then the method's `sections` (its other arguments, what it returns, an example),
    to the method's docstring."""

    def decorate(method):
        text = PEAPOD_INPUTS_DOCSTRING + "\n\n" + sections.replace("{example_setup}", PEAPOD_EXAMPLE_SETUP)
        method.__doc__ = method.__doc__.rstrip() + "\n\n" + textwrap.indent(text, " " * 8)
        return method

    return decorate


class PeaPODForConditionalGeneration(T5ForConditionalGeneration):
    """T5 whose encoder reads [task prompt | collaborative user prompt | token + whole-word embeddings] (§4.4).

    Frozen persistent buffers hold the user table: `user_embeddings` [num_users + 1, d_u] (row 0 = unknown user)
    from a collaborative-filtering model and `user_neighbors` [num_users + 1, n], the ids of each user's n most
    cosine-similar users. They are saved in `model.safetensors` and never receive gradients. With
    `config.fold_in_regularization` set, a third one, `item_factors` [num_items + 1, d_u], holds the CF model's
    item factors, so users outside the table can be folded in (`fold_in_users`) and passed to every entry point as
    explicit `user_embeddings=` / `user_neighbors=` instead of `user_ids`.
    """

    config_class = PeaPODConfig
    # Decoder positions per vocabulary projection in `score_candidates`; None: max(64, d_model // 2), a CPU heuristic
    # (small models are memory-bound there and want small logit chunks, large ones big GEMMs); `trie_one_chunk` in
    # benchmarks/eval_throughput.py measures the gain over one chunk.
    SCORING_ROWS_PER_CHUNK: int | None = None
    # Our loss (eq. 10) is a mean over the batch already; Trainer must not pass num_items_in_batch.
    accepts_loss_kwargs = False

    def __init__(self, config: PeaPODConfig):
        super().__init__(config)
        d_model = config.d_model
        if config.prompt_encoder != "none":
            rows = config.num_users + 1
            self.register_buffer("user_embeddings", torch.zeros(rows, config.user_embedding_dim), persistent=True)
            self.register_buffer(
                "user_neighbors", torch.zeros(rows, config.num_neighbors, dtype=torch.long), persistent=True
            )
            self.prompt_encoder = CollaborativePromptEncoder(config)
            if config.fold_in_regularization is not None:
                self.register_buffer(
                    ITEM_FACTORS, torch.zeros(config.num_items + 1, config.user_embedding_dim), persistent=True
                )
        if config.use_task_prompts:
            # [num_tasks, L_t, d_m] stored flat as an embedding so peft's `modules_to_save` can hold it.
            self.task_prompts = nn.Embedding(len(config.tasks), config.task_prompt_length * d_model)
        self.whole_word_embeddings = nn.Embedding(config.max_whole_word_ids, d_model, padding_idx=0)
        self.post_init()
        self._init_peapod_modules()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (CollaborativePromptEncoder, PeaPODForConditionalGeneration)):
            self._init_peapod_modules()

    def _init_peapod_modules(self) -> None:
        """Initialise the parts T5 does not have (weights loaded from a checkpoint are left alone by `init.*`).

        Called explicitly from `__init__` too: transformers' `post_init` already ran inside T5's constructor, and
        the generic initialisation it gives modules added afterwards is N(0, 1) for every `nn.Linear`, which
        saturates the prompt encoder's softmax from the first step.
        """
        factor = self.config.initializer_factor
        if self.has_collaborative_prompt:
            for linear in self.prompt_encoder.modules():
                if isinstance(linear, nn.Linear):  # fan-in scaled, like T5's own projections
                    init.normal_(linear.weight, mean=0.0, std=factor * linear.in_features**-0.5)
                    if linear.bias is not None:
                        init.zeros_(linear.bias)
            if self.config.user_embedding_norm == "layernorm":
                init.ones_(self.prompt_encoder.user_norm.weight)
                init.zeros_(self.prompt_encoder.user_norm.bias)
            if self.config.collaborative_prompt_norm == "rms":
                init.ones_(self.prompt_encoder.prompt_norm.weight)
            if self.config.prompt_attention_norm == "qk":
                init.ones_(self.prompt_encoder.query_norm.weight)
                init.ones_(self.prompt_encoder.key_norm.weight)
            if self.config.neighbor_rank_bias:
                init.zeros_(self.prompt_encoder.rank_bias)
        # Prompts live in the token-embedding space, so they start at its scale (T5 embeddings are N(0, 1)).
        if self.config.use_task_prompts:
            init.normal_(self.task_prompts.weight, mean=0.0, std=factor * 1.0)
        # Index 0 (every non-ID token) adds nothing, so a pretrained T5 sees its own embeddings there.
        init.normal_(self.whole_word_embeddings.weight, mean=0.0, std=factor * 1.0)
        init.zeros_(self.whole_word_embeddings.weight[0])

    # -- user table ---------------------------------------------------------------------------------------

    @property
    def has_collaborative_prompt(self) -> bool:
        return self.config.prompt_encoder != "none"

    def set_user_table(
        self, user_embeddings: torch.Tensor, user_neighbors: torch.Tensor | None = None,
        chunk_size: int = NEIGHBOR_CHUNK_SIZE,
    ) -> None:
        """Install the frozen user table: embeddings [num_users + 1, d_u] and, optionally, the neighbour index.

        Without `user_neighbors` the index is built here (`build_user_neighbors`). A model whose config has
        num_users = 0 adopts the table's size; otherwise the sizes must match the config exactly.
        """
        if not self.has_collaborative_prompt:
            raise ValueError("prompt_encoder='none' (POD) has no user table to set")
        user_embeddings = torch.as_tensor(user_embeddings)
        expected_dim = self.config.user_embedding_dim
        if user_embeddings.dim() != 2 or user_embeddings.shape[1] != expected_dim:
            raise ValueError(
                f"user_embeddings has shape {tuple(user_embeddings.shape)}; expected [num_users + 1, {expected_dim}] "
                "(user_embedding_dim of the config)"
            )
        rows = user_embeddings.shape[0]
        if self.config.num_users and rows != self.config.num_users + 1:
            raise ValueError(
                f"user_embeddings has {rows} rows; the config has num_users={self.config.num_users}, so "
                f"{self.config.num_users + 1} rows (row 0 = unknown user) are expected"
            )
        if user_neighbors is None:
            user_neighbors = build_user_neighbors(user_embeddings, self.config.num_neighbors, chunk_size)
        user_neighbors = torch.as_tensor(user_neighbors)
        expected = (rows, self.config.num_neighbors)
        if tuple(user_neighbors.shape) != expected:
            raise ValueError(
                f"user_neighbors has shape {tuple(user_neighbors.shape)}; expected {list(expected)} "
                "([num_users + 1, num_neighbors])"
            )
        check_user_table_contents(user_embeddings, user_neighbors)
        if not self.config.num_users:
            self.config.num_users = rows - 1
        device, dtype = self.user_embeddings.device, self.user_embeddings.dtype
        self.user_embeddings = user_embeddings.to(device=device, dtype=dtype).contiguous()
        self.user_neighbors = user_neighbors.to(device=device, dtype=torch.long).contiguous()

    @property
    def has_item_factors(self) -> bool:
        """Whether the checkpoint keeps the CF item factors that `fold_in_users` needs."""
        return self.has_collaborative_prompt and self.config.fold_in_regularization is not None

    def set_item_factors(
        self, item_factors: torch.Tensor, regularization: float = 1e-3, negatives_per_positive: int = 1
    ) -> None:
        """Keep the CF model's item factors [num_items + 1, d_u] (row 0 unused) for `fold_in_users`.

        `regularization` and `negatives_per_positive` are those the user table was trained with (`train_pmf`'s
        `lambda_reg` and `negatives_per_positive`; defaults: the prepared PMF table's); they go to the config
        (`fold_in_regularization`, `fold_in_negatives_per_positive`) and the factors to a persistent buffer, so
        `save_pretrained` writes both. A config with num_items = 0 adopts the matrix's size.
        """
        if not self.has_collaborative_prompt:
            raise PeaPODInputError("prompt_encoder='none' (POD) has no user table: there is nothing to fold users into")
        item_factors = torch.as_tensor(item_factors)
        rows = self.config.num_items + 1 if self.config.num_items else None
        expected = f"[{rows if rows else 'num_items + 1'}, {self.config.user_embedding_dim}]"
        if (
            item_factors.dim() != 2 or item_factors.shape[1] != self.config.user_embedding_dim
            or (rows is not None and item_factors.shape[0] != rows) or item_factors.shape[0] < 2
            or not item_factors.dtype.is_floating_point
        ):
            raise PeaPODInputError(
                f"item_factors has shape {tuple(item_factors.shape)}, dtype {item_factors.dtype}; expected a float "
                f"matrix {expected} (num_items + 1 rows, row 0 unused; user_embedding_dim columns)"
            )
        if not torch.isfinite(item_factors).all():
            raise PeaPODInputError("item_factors holds NaN or infinite values; expected finite CF item factors")
        if type(negatives_per_positive) is not int or negatives_per_positive < 0:
            raise PeaPODInputError(f"negatives_per_positive={negatives_per_positive!r} must be an integer >= 0")
        if isinstance(regularization, bool) or not isinstance(regularization, (int, float)) or regularization < 0:
            raise PeaPODInputError(f"regularization={regularization!r} must be a number >= 0")
        self.config.num_items = item_factors.shape[0] - 1
        self.config.fold_in_regularization = float(regularization)
        self.config.fold_in_negatives_per_positive = negatives_per_positive
        factors = item_factors.to(device=self.user_embeddings.device, dtype=self.user_embeddings.dtype).contiguous()
        if hasattr(self, ITEM_FACTORS):
            setattr(self, ITEM_FACTORS, factors)
        else:
            self.register_buffer(ITEM_FACTORS, factors, persistent=True)

    @torch.no_grad()
    def fold_in_users(
        self, histories: Sequence[Sequence[int]], negatives: str = "expected", seed: int = 0,
        max_iterations: int = 100, tolerance: float = 1e-6,
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Users outside the table, from the items they interacted with: (user vectors [B, d_u], neighbours [B, n]).

        The vector is the one the CF model that built the table would have learnt for the user with its item
        factors V fixed. cornac's PMF (non-linear variant, the prepared table) fits sigmoid(u·v_i) to implicit
        ratings r_i (1 for an observed item, 0 for `config.fold_in_negatives_per_positive` = m sampled unobserved
        items per observed one) by SGD whose per-rating step is the gradient of
        (r_i - sigmoid(u·v_i))^2 + lambda (|u|^2 + |v_i|^2): the L2 term is paid once per rating. So, for a user
        with P distinct items (repeats count once, as in training) out of a catalogue of I, this solves exactly
            min_u  sum_{i observed} (1 - sigmoid(u·v_i))^2 + w sum_{j unobserved} sigmoid(u·v_j)^2
                   + lambda (P + M) |u|^2,
        with lambda = `config.fold_in_regularization`, M = min(m P, I - P) the number of negatives training
        draws and w = M / (I - P) the chance that its uniform draw picks a given unobserved item: the expectation
        of the training objective over the draw (a new user's draw cannot be replayed), `negatives="expected"`.
        `negatives="sampled"` instead draws M distinct unobserved items uniformly, as training did (seeded by
        `seed` alone, so a history always gets the same draw, whatever the batch), each with w = 1: a vector of
        the same kind as the table's, whose directions the particular draw shapes (measured on the planted data:
        the table's vectors are the exact solve of their own draw to cosine 0.997; the expected objective's are at
        cosine 0.47 to them, and the model reads them as well: docs/fold-in.md). It is solved by
        Gauss-Newton (`solve_pmf_users`): each iteration is the regularised least-squares solve
            (V^T diag(c_i s_i'^2) V + lambda (P + M) I) delta = V^T (c_i s_i' e_i) - lambda (P + M) u
        (c_i the weights above, e_i the residuals, s_i' the sigmoid's slope) with a backtracking line search,
        from u = 0, in float64, until the gradient's norm is below `tolerance` (or `max_iterations`).

        Neighbours: the n users of the table most cosine-similar to each vector, exactly as the table was built
        (`build_user_neighbors(..., queries=)`: same similarity, 1e-6 resolution, ties to the lower id).

        Pass both to `forward`/`generate`/`recommend`/`score_candidates` as `user_embeddings=`/`user_neighbors=`
        (no `user_ids`), with the user written `user_0` in the prompt text (`UNKNOWN_USER_TEXT`): the id the unknown
        user row has, which no training prompt uses, so the text claims no user the model has seen.
        A `PeaPODInputError` names the problem: a checkpoint without item factors, no histories, an empty
        history, an item id that is not an integer in 1..num_items, a history longer than the catalogue.
        """
        if not self.has_item_factors:
            raise PeaPODInputError(
                "this model keeps no CF item factors (config.fold_in_regularization is None), so it cannot fold in "
                "new users: train it on a folder prepared with --embedding pmf (peapod-train stores them), or call "
                "set_item_factors(prepared item_embeddings) and save it again"
                if self.has_collaborative_prompt
                else "prompt_encoder='none' (POD) has no user table: there is nothing to fold users into"
            )
        if negatives not in ("expected", "sampled"):
            raise PeaPODInputError(f"negatives={negatives!r}; expected 'expected' or 'sampled'")
        histories = self._check_histories(histories)
        vectors = self._fold_in_pmf(histories, negatives, seed, max_iterations, tolerance)
        neighbors = build_user_neighbors(self.user_embeddings, self.config.num_neighbors, queries=vectors)
        return vectors.to(self.user_embeddings.dtype), neighbors

    def _check_histories(self, histories) -> list[list[int]]:
        """Each history as a list of distinct catalogue ids (first occurrence order); a user mistake raises."""
        num_items = self.config.num_items
        if isinstance(histories, (str, bytes, torch.Tensor)) or not isinstance(histories, Sequence):
            raise PeaPODInputError(
                f"histories must be a list with one list of item ids per user, got {type(histories).__name__}"
            )
        if len(histories) == 0:
            raise PeaPODInputError("histories is empty: pass one list of item ids per user to fold in")
        checked = []
        for row, history in enumerate(histories):
            if isinstance(history, torch.Tensor) or type(history).__name__ == "ndarray":  # numpy is not imported here
                history = history.tolist()
            if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
                raise PeaPODInputError(f"histories[{row}] is a {type(history).__name__}; expected a list of item ids")
            if len(history) == 0:
                raise PeaPODInputError(
                    f"histories[{row}] is empty: folding in needs at least one item the user interacted with "
                    "(a user with none is the unknown user: user_ids 0)"
                )
            if len(history) > num_items:
                raise PeaPODInputError(
                    f"histories[{row}] has {len(history)} items but the catalogue has only num_items={num_items}: "
                    "is it a history of this model's item ids?"
                )
            items = []
            for item in history:
                try:
                    if isinstance(item, bool):
                        raise TypeError
                    items.append(operator.index(item))
                except TypeError:
                    raise PeaPODInputError(
                        f"histories[{row}] contains {item!r} ({type(item).__name__}); expected integer item ids"
                    ) from None
            unknown = sorted({item for item in items if not 1 <= item <= num_items})
            if unknown:
                raise PeaPODInputError(
                    f"histories[{row}] contains item ids {unknown[:10]}; expected catalogue ids 1..num_items={num_items}"
                )
            checked.append(list(dict.fromkeys(items)))
        return checked

    def _fold_in_pmf(
        self, histories: list[list[int]], negatives: str, seed: int, max_iterations: int, tolerance: float
    ) -> torch.Tensor:
        """The objective of `fold_in_users` for each history, solved: [B, d_u] float64."""
        factors = getattr(self, ITEM_FACTORS).double()  # [I + 1, d]
        targets, weights, ridge, drawn = pmf_fold_in_problem(
            histories, factors.shape[0] - 1, self.config.fold_in_negatives_per_positive,
            self.config.fold_in_regularization, device=factors.device,
        )
        if negatives == "sampled":
            for row in range(len(histories)):
                generator = torch.Generator().manual_seed(seed)
                candidates = (targets[row, 1:] == 0).nonzero().flatten().cpu() + 1
                chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[: int(drawn[row])]]
                weights[row, 1:] = targets[row, 1:]
                weights[row, chosen.to(weights.device)] = 1.0
        return solve_pmf_users(factors, targets, weights, ridge, max_iterations, tolerance)

    # -- encoder inputs -----------------------------------------------------------------------------------

    def _check_inputs(
        self, input_ids, user_ids, task_ids, whole_word_ids, attention_mask=None, user_embeddings=None,
        user_neighbors=None,
    ) -> None:
        """Every user mistake becomes a `PeaPODInputError` naming the value, before any tensor math."""
        config = self.config
        if not _is_integer_matrix(input_ids):
            raise PeaPODInputError(f"input_ids must be a 2-D integer tensor [batch, length], got {_describe(input_ids)}")
        batch = input_ids.shape[0]
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise PeaPODInputError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected that of input_ids "
                f"{tuple(input_ids.shape)}"
            )
        if self.has_collaborative_prompt:
            explicit = user_embeddings is not None or user_neighbors is not None
            if user_ids is None and not explicit:
                raise PeaPODInputError(
                    f"user_ids is required: prompt_encoder={config.prompt_encoder!r} builds a collaborative prompt "
                    "per user (use user id 0 for an unknown user, or user_embeddings=/user_neighbors= from "
                    "fold_in_users for a user outside the table)"
                )
            if user_ids is not None and explicit:
                raise PeaPODInputError(
                    "give either user_ids (users of the table) or user_embeddings=/user_neighbors= (users outside "
                    "it, e.g. from fold_in_users), not both"
                )
            if config.num_users == 0:
                raise PeaPODInputError(
                    "no user table installed: call set_user_table(...) or load a checkpoint with one"
                )
            if explicit:
                self._check_explicit_users(user_embeddings, user_neighbors, batch)
            else:
                _check_ids("user_ids", user_ids, batch, 0, config.num_users, "0 (unknown user) .. num_users")
        elif user_embeddings is not None or user_neighbors is not None:
            raise PeaPODInputError("prompt_encoder='none' (POD) has no collaborative prompt: drop user_embeddings/"
                                   "user_neighbors")
        if config.use_task_prompts:
            if task_ids is None:
                raise PeaPODInputError(
                    f"task_ids is required: one index per sample into tasks={config.tasks} (with peft, leave the "
                    "LoraConfig's task_type unset: PeftModelForSeq2SeqLM drops an argument named task_ids)"
                )
            _check_ids("task_ids", task_ids, batch, 0, len(config.tasks) - 1, f"indices into tasks={config.tasks}")
        if whole_word_ids is not None:
            if whole_word_ids.shape != input_ids.shape:
                raise PeaPODInputError(
                    f"whole_word_ids has shape {tuple(whole_word_ids.shape)}; expected that of input_ids "
                    f"{tuple(input_ids.shape)}"
                )
            _check_ids(
                "whole_word_ids", whole_word_ids.flatten(), None, 0, config.max_whole_word_ids - 1,
                f"0 .. max_whole_word_ids - 1 (the input has more ID spans than the table's {config.max_whole_word_ids})",
            )

    def _check_explicit_users(self, user_embeddings, user_neighbors, batch: int) -> None:
        """`user_embeddings` [B, d_u] finite floats and (for "mha") `user_neighbors` [B, n] ids of table users."""
        config = self.config
        if user_embeddings is None:
            raise PeaPODInputError("user_neighbors was given without user_embeddings: pass both (fold_in_users "
                                   "returns them)")
        expected = (batch, config.user_embedding_dim)
        if not isinstance(user_embeddings, torch.Tensor) or not user_embeddings.dtype.is_floating_point or tuple(
            user_embeddings.shape
        ) != expected:
            raise PeaPODInputError(
                f"user_embeddings must be a float tensor of shape {expected} ([batch, user_embedding_dim]), got "
                f"{_describe(user_embeddings)}"
            )
        if not torch.isfinite(user_embeddings).all():
            raise PeaPODInputError("user_embeddings holds NaN or infinite values")
        if config.prompt_encoder != "mha" and user_neighbors is None:
            return
        if user_neighbors is None:
            raise PeaPODInputError(
                "user_neighbors is required with user_embeddings: prompt_encoder='mha' attends over each user's "
                f"{config.num_neighbors} neighbours (fold_in_users returns them)"
            )
        if not _is_integer_matrix(user_neighbors) or tuple(user_neighbors.shape) != (batch, config.num_neighbors):
            raise PeaPODInputError(
                f"user_neighbors must be an integer tensor of shape {(batch, config.num_neighbors)} ([batch, "
                f"num_neighbors]), got {_describe(user_neighbors)}"
            )
        _check_ids("user_neighbors", user_neighbors.flatten(), None, 0, config.num_users, "user ids 0..num_users")

    def collaborative_prompt(
        self, user_ids: torch.LongTensor | None, output_attentions: bool = False,
        user_embeddings: torch.Tensor | None = None, user_neighbors: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """p for each user: [B, L_p, d_m], and the attention over its neighbours [B, H, n] on request.

        Users of the table by `user_ids`; users outside it by their vectors `user_embeddings` [B, d_u] and their
        neighbours' ids in the table `user_neighbors` [B, n] (`fold_in_users`)."""
        if user_embeddings is not None:
            user_embedding = user_embeddings.to(self.user_embeddings)
            neighbors = user_neighbors if user_neighbors is not None else self.user_neighbors[:0].new_zeros(
                user_embedding.shape[0], self.config.num_neighbors)  # "mlp" reads no neighbours
        else:
            user_embedding, neighbors = self.user_embeddings[user_ids], self.user_neighbors[user_ids]
        neighbor_embeddings = self.user_embeddings[neighbors.to(self.user_neighbors.device)]
        return self.prompt_encoder(user_embedding, neighbor_embeddings, output_attentions=output_attentions)

    def build_encoder_inputs(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
        user_ids: torch.LongTensor | None = None, task_ids: torch.LongTensor | None = None,
        whole_word_ids: torch.LongTensor | None = None, user_embeddings: torch.Tensor | None = None,
        user_neighbors: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs_embeds = [task prompt | collaborative prompt | token + whole-word embeddings], mask extended.

        With `config.add_user_prompt_to_tokens` the mean collaborative-prompt vector is added to every token's
        embedding as well. Users outside the table come as `user_embeddings`/`user_neighbors` instead of
        `user_ids` (`fold_in_users`)."""
        if input_ids is None:
            raise ValueError("input_ids is required (PeaPOD builds inputs_embeds itself)")
        self._check_inputs(
            input_ids, user_ids, task_ids, whole_word_ids, attention_mask, user_embeddings, user_neighbors
        )
        embeds = self.shared(input_ids)
        if whole_word_ids is not None:
            embeds = embeds + self.whole_word_embeddings(whole_word_ids)
        prompts = []
        if self.config.use_task_prompts:
            prompts.append(self.task_prompts(task_ids).view(-1, self.config.task_prompt_length, self.config.d_model))
        if self.has_collaborative_prompt:
            if self.training and self.config.user_prompt_dropout > 0 and user_ids is not None:
                # user_prompt_dropout (config docstring): these samples get the unknown user's prompt, row 0
                dropped = torch.rand(user_ids.shape, device=user_ids.device) < self.config.user_prompt_dropout
                user_ids = user_ids.masked_fill(dropped, 0)
            user_prompt = self.collaborative_prompt(user_ids, False, user_embeddings, user_neighbors)[0]
            prompts.append(user_prompt)
            if self.config.add_user_prompt_to_tokens:  # every position carries the user (config docstring)
                embeds = embeds + user_prompt.mean(dim=1, keepdim=True).to(embeds.dtype)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if prompts:
            prompt = torch.cat(prompts, dim=1).to(embeds.dtype)
            embeds = torch.cat([prompt, embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(prompt.shape[:2]), attention_mask], dim=1)
        return embeds, attention_mask

    def encode(
        self, input_ids, attention_mask=None, user_ids=None, task_ids=None, whole_word_ids=None,
        user_embeddings=None, user_neighbors=None,
    ):
        """Run the encoder once: (BaseModelOutput, extended attention mask).

        The padding mask is folded into T5's relative position bias once, a [B, H, S, S] tensor all layers share
        (`_run_t5_blocks`); `T5Stack` passes the bias and the mask to every layer, whose attention combines them
        again: one [B, H, S, S] pass per layer, a large part of encoding a batch of 500-token top-n prompts at the
        small shapes. The numbers are the same (tests/test_constrained_decoding.py)."""
        inputs_embeds, attention_mask = self.build_encoder_inputs(
            input_ids, attention_mask, user_ids, task_ids, whole_word_ids, user_embeddings, user_neighbors
        )
        encoder = self.get_encoder()
        length, dtype = inputs_embeds.shape[1], inputs_embeds.dtype
        bias = encoder.block[0].layer[0].SelfAttention.compute_bias(length, length, inputs_embeds.device).to(dtype)
        bias = torch.where(attention_mask[:, None, None, :].bool(), bias, torch.finfo(dtype).min).contiguous()
        return BaseModelOutput(last_hidden_state=_run_t5_blocks(encoder, inputs_embeds, bias)), attention_mask

    # -- training -----------------------------------------------------------------------------------------

    @_document_peapod_inputs(FORWARD_DOCSTRING)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        user_ids: torch.LongTensor | None = None,
        task_ids: torch.LongTensor | None = None,
        whole_word_ids: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.BoolTensor | None = None,
        encoder_outputs=None,
        cache=None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        user_embeddings: torch.Tensor | None = None,
        user_neighbors: torch.LongTensor | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """T5's forward with the PeaPOD encoder inputs; `labels` use -100 for padding (never trained on).

        A user outside the table comes as `user_embeddings` [B, d_u] and `user_neighbors` [B, n] instead of
        `user_ids` (`fold_in_users`)."""
        if labels is not None:
            _check_labels(labels, decoder_input_ids, input_ids.shape[0] if input_ids is not None else None)
        if encoder_outputs is None:
            inputs_embeds, attention_mask = self.build_encoder_inputs(
                input_ids, attention_mask, user_ids, task_ids, whole_word_ids, user_embeddings, user_neighbors
            )
        else:  # generation: the encoder ran once in `generate`, and attention_mask is already extended
            inputs_embeds = None
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self._shift_right(labels)
        outputs = super().forward(
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        if labels is not None:
            outputs.loss = self.sequence_loss(outputs.logits, labels)
        return outputs

    def sequence_loss(self, logits: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
        """Eq. (10): mean over samples of each target's mean token NLL (or the token mean, `loss_reduction`)."""
        token_nll = F.cross_entropy(
            logits.float().flatten(0, 1), labels.to(logits.device).flatten(), ignore_index=-100, reduction="none"
        ).view(labels.shape)
        target_tokens = (labels != -100).sum(dim=1)
        if self.config.loss_reduction == "token":
            return token_nll.sum() / target_tokens.sum().clamp(min=1)
        has_target = target_tokens > 0
        per_sample = token_nll.sum(dim=1)[has_target] / target_tokens[has_target]
        return per_sample.mean() if per_sample.numel() else token_nll.sum() * 0.0

    # -- generation ---------------------------------------------------------------------------------------

    @torch.no_grad()
    @_document_peapod_inputs(GENERATE_DOCSTRING)
    def generate(
        self, input_ids=None, attention_mask=None, user_ids=None, task_ids=None, whole_word_ids=None,
        encoder_outputs=None, user_embeddings=None, user_neighbors=None, **generate_kwargs,
    ):
        """`GenerationMixin.generate` with PeaPOD inputs: the encoder runs once on the prompted inputs, then the
        standard decoding loop (greedy, beam search, sampling, `prefix_allowed_tokens_fn`, logits processors) runs
        on its outputs with the extended attention mask.

        With beam search, the decoder's cross-attention keys/values are projected once per sample and repeated for
        its beams (`_beam_cache`), instead of once per beam inside the first decoder step; the result is the same.
        """
        if encoder_outputs is None:
            encoder_outputs, attention_mask = self.encode(
                input_ids, attention_mask, user_ids, task_ids, whole_word_ids, user_embeddings, user_neighbors
            )
        else:  # transformers expands the outputs' tensors for beams in place: keep the caller's object as it was
            encoder_outputs = type(encoder_outputs)(**encoder_outputs)
        # Beam search expands each sample into num_beams rows; other modes (and a generation_config argument,
        # whose settings are resolved inside generate) keep transformers' own cache.
        num_beams = generate_kwargs.get("num_beams", self.generation_config.num_beams) or 1
        if num_beams > 1 and generate_kwargs.get("use_cache", True) and not {
            "cache", "past_key_values", "generation_config", "assistant_model"
        } & set(generate_kwargs):
            generate_kwargs["cache"] = self._beam_cache(encoder_outputs.last_hidden_state, num_beams)
        return super().generate(encoder_outputs=encoder_outputs, attention_mask=attention_mask, **generate_kwargs)

    def _beam_cache(self, encoder_states: torch.Tensor, repeats: int) -> EncoderDecoderCache:
        """A decoder cache whose cross-attention keys/values are filled: projected from the [B, S, d] encoder
        states once per sample, then repeated `repeats` times (beam search expands each sample into its beams,
        whose cross-attention inputs are equal). `generate` would project them for all B * beams rows: 20x the
        work, the largest cost of decoding a long top-n prompt."""
        cross = DynamicCache(config=self.config)
        for index, block in enumerate(self.decoder.block):
            attention = block.layer[1].EncDecAttention  # T5LayerCrossAttention
            shape = (*encoder_states.shape[:2], -1, attention.key_value_proj_dim)
            keys = attention.k(encoder_states).view(shape).transpose(1, 2).repeat_interleave(repeats, 0)
            values = attention.v(encoder_states).view(shape).transpose(1, 2).repeat_interleave(repeats, 0)
            cross.update(keys, values, index)
        return EncoderDecoderCache(DynamicCache(config=self.config), cross)  # is_updated: set from the filled layers

    @staticmethod
    def _reorder_cache(cache, beam_idx: torch.LongTensor):
        """Beam search's cache reordering, without copying the cross-attention keys/values.

        Beam search picks each sample's next beams among that sample's beams only, and every beam of a sample
        attends to the same encoder states, so its cross-attention cache rows are equal: reordering them (an
        index_select of [batch * beams, heads, source length, head dim] per layer and step, the largest copy of
        a long top-n prompt's decoding) changes nothing. Only the self-attention cache is reordered.
        """
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        return cache

    def item_trie(self, tokenizer, item_ids=None) -> ItemIdTrie:
        """The trie over item ids 1..config.num_items (or the given ids)."""
        if item_ids is None:
            if not self.config.num_items:
                raise ValueError("config.num_items is 0: pass item_ids (the catalogue) or set num_items")
            item_ids = range(1, self.config.num_items + 1)
        return ItemIdTrie.from_tokenizer(tokenizer, item_ids)

    @torch.no_grad()
    @_document_peapod_inputs(RECOMMEND_DOCSTRING)
    def recommend(
        self, input_ids, attention_mask=None, user_ids=None, task_ids=None, whole_word_ids=None, *,
        tokenizer=None, item_trie: ItemIdTrie | None = None, candidates=None, top_k: int = 10, num_beams: int = 20,
        length_penalty: float = 0.0, constraint: str = "tensor", user_embeddings=None, user_neighbors=None,
        return_scores: bool = True, **generate_kwargs,
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Ranked item ids by constrained beam search: ([B, top_k] ids padded with -1, [B, top_k] scores).

        Every id is a valid catalogue id (and one of the sample's `candidates` [B, C] in top-n), distinct within
        a row. Scores are beam log-likelihoods; `length_penalty=0.0` ranks by plain sequence log-likelihood.
        `constraint="tensor"` masks with `ItemIdConstraintLogitsProcessor` (batched tensor ops per step);
        `"prefix_fn"` with the per-beam Python callback `prefix_allowed_tokens_fn` (the slower reference; the
        rankings are identical). A user outside the table: `user_embeddings`/`user_neighbors` instead of `user_ids`
        (`fold_in_users`). `return_scores=False` returns (ids, None) and spares `generate` its per-step copy of
        the [B * beams, vocab] scores (`output_scores`): the beams come back best first, so the ids are the same.
        """
        if top_k < 1 or num_beams < top_k:
            raise ValueError(f"need 1 <= top_k <= num_beams, got top_k={top_k}, num_beams={num_beams}")
        if candidates is not None:
            candidates = _check_candidate_ids(candidates, input_ids.shape[0])
        if constraint not in ("tensor", "prefix_fn"):
            raise ValueError(f"constraint must be 'tensor' or 'prefix_fn', got {constraint!r}")
        if item_trie is None:
            if tokenizer is None:
                raise ValueError("recommend needs a tokenizer or an item_trie")
            item_trie = self.item_trie(tokenizer)
        batch = input_ids.shape[0]
        if candidates is not None:
            candidates = item_trie.check_candidates(candidates, batch)
        if constraint == "tensor":
            candidate_nodes = None if candidates is None else item_trie.candidate_nodes(candidates.to(self.device))
            processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", None) or [])
            processors.append(ItemIdConstraintLogitsProcessor(item_trie, num_beams, candidate_nodes))
            generate_kwargs["logits_processor"] = processors
        else:
            tries = item_trie if candidates is None else [item_trie.restricted_to(row) for row in candidates.tolist()]
            generate_kwargs["prefix_allowed_tokens_fn"] = prefix_allowed_tokens_fn(tries)
        output = self.generate(
            input_ids, attention_mask, user_ids, task_ids, whole_word_ids,
            user_embeddings=user_embeddings, user_neighbors=user_neighbors, num_beams=num_beams, num_return_sequences=num_beams, max_new_tokens=item_trie.max_length,
            length_penalty=length_penalty, early_stopping=True, do_sample=False, output_scores=return_scores,
            return_dict_in_generate=True, **generate_kwargs,
        )
        beam_items = item_trie.items_of(output.sequences[:, 1:]).view(batch, num_beams).tolist()  # [B][beams], 0: no item
        # Beam search returns each sample's beams sorted by score, best first (ties in its own order), which is
        # what the stable sort by `sequences_scores` gives back.
        if return_scores:
            beam_scores = output.sequences_scores.view(batch, num_beams).float().cpu()  # [B, beams]
            orders = beam_scores.argsort(dim=1, descending=True, stable=True).tolist()
        else:
            beam_scores, orders = torch.zeros(batch, num_beams), [range(num_beams)] * batch
        item_ids = torch.full((batch, top_k), -1, dtype=torch.long)  # [B, top_k]
        scores = torch.full((batch, top_k), -math.inf)  # [B, top_k]
        for row, order in enumerate(orders):
            ranked: list[int] = []
            for beam in order:
                item = beam_items[row][beam]
                if item and item not in ranked:
                    item_ids[row, len(ranked)] = item
                    scores[row, len(ranked)] = beam_scores[row, beam]
                    ranked.append(item)
                    if len(ranked) == top_k:
                        break
        return item_ids, scores if return_scores else None

    @torch.no_grad()
    @_document_peapod_inputs(SCORE_CANDIDATES_DOCSTRING)
    def score_candidates(
        self, input_ids, attention_mask=None, user_ids=None, task_ids=None, whole_word_ids=None, *,
        candidates, tokenizer=None, item_trie: ItemIdTrie | None = None, candidate_batch_size: int = 512,
        user_embeddings=None, user_neighbors=None, encoder_outputs=None,
    ) -> torch.Tensor:
        """Exact log-likelihood log p(item id + EOS | input) of every candidate: [B, C].

        One encoder pass per sample. The log-probability of a target token depends only on the sample and the id
        prefix before it, i.e. on a node of the item-id trie (`ItemIdTrie`), and a sample's candidates share
        prefixes ("▁12" starts "1234" and "1299"). So the decoder runs once per unique (sample, trie node) on the
        candidates' paths, not once per candidate and depth: a sample's unique nodes are packed into one decoder
        sequence in which each node attends to its ancestors only (`_score_trie_nodes`), and the vocabulary
        projection and its normaliser (logsumexp over the vocabulary, most of the cost) run once per such node.
        The result equals teacher-forcing every candidate on its own (tests/test_constrained_decoding.py).
        About `candidate_batch_size` (sample, candidate) pairs go through each decoder call (at least one sample).
        A user outside the table: `user_embeddings`/`user_neighbors` instead of `user_ids` (`fold_in_users`).
        `encoder_outputs` with the extended `attention_mask`, both as `encode` returns them, reuse an encoder pass
        (as `generate` takes them): evaluation encodes a top-n prompt once for the beam and the likelihood ranking.
        """
        batch = input_ids.shape[0]
        if type(candidate_batch_size) is not int or candidate_batch_size < 1:  # bool is an int subclass
            raise PeaPODInputError(f"candidate_batch_size={candidate_batch_size!r} must be an integer >= 1")
        candidates = _check_candidate_ids(candidates, batch)
        if item_trie is None:
            if tokenizer is None:
                raise ValueError("score_candidates needs a tokenizer or an item_trie")
            item_trie = self.item_trie(tokenizer)
        candidates = item_trie.check_candidates(candidates, batch)
        if encoder_outputs is None:
            encoder_outputs, attention_mask = self.encode(
                input_ids, attention_mask, user_ids, task_ids, whole_word_ids, user_embeddings, user_neighbors
            )
        hidden = encoder_outputs.last_hidden_state
        rows = item_trie.item_rows(candidates.to(hidden.device))
        samples_per_call = max(1, candidate_batch_size // candidates.shape[1])
        return torch.cat([
            self._score_trie_nodes(hidden[first : first + samples_per_call],
                                   attention_mask[first : first + samples_per_call],
                                   rows[first : first + samples_per_call], item_trie)
            for first in range(0, batch, samples_per_call)
        ])

    def _score_trie_nodes(
        self, encoder_states: torch.Tensor, encoder_mask: torch.Tensor, rows: torch.LongTensor, trie: ItemIdTrie
    ) -> torch.Tensor:
        """log p(candidate) [b, C] for b samples' candidates (their `ItemIdTrie.item_rows` [b, C]).

        Decoding a candidate alone feeds [start, t_1, .., t_{L-1}] and reads the targets [t_1, .., t_L = EOS]; the
        input at depth d is the trie node reached after d tokens (the root at depth 0). Here each sample's unique
        such nodes form one decoder sequence (sorted by node number, so ancestors come first: a causal order), and
        position q attends to position k iff k's node is an ancestor of q's (or q itself): exactly the prefix
        decoding that candidate alone would attend to. T5's relative position bias depends only on the distance
        between query and key, which along a path is the depth difference, so the bias is taken from T5's own
        `compute_bias` over depths. The blocks of `self.decoder` run as in `T5Stack.forward` (`_run_t5_blocks`).
        """
        tables = trie.tensors(rows.device)
        labels = tables["item_labels"][rows]  # [b, C, L] target tokens, -100 past each id's end
        paths = tables["item_paths"][rows]  # [b, C, L] the node reached after each target
        contexts = torch.cat([torch.zeros_like(paths[..., :1]), paths[..., :-1]], -1)  # the node each target follows
        valid = labels != -100
        samples, length = rows.shape[0], labels.shape[-1]
        # One position per unique (sample, node); keys sort by sample, then node number (ancestors first).
        keys = torch.arange(samples, device=rows.device)[:, None, None] * trie.num_nodes + contexts
        unique_keys, position = torch.unique(keys[valid], return_inverse=True)  # position: of each valid target
        sample_of = unique_keys // trie.num_nodes
        counts = torch.bincount(sample_of, minlength=samples)
        slot = torch.arange(unique_keys.numel(), device=rows.device) - (counts.cumsum(0) - counts)[sample_of]
        width = int(counts.max())
        # Per position: its node, depth, decoder input token and ancestors (at each depth; -1 below it), read from
        # any target that has it as context (all such targets agree).
        depth = torch.arange(length, device=rows.device).expand_as(labels)[valid]
        path_of = contexts[:, :, None, :].expand(-1, -1, length, -1)[valid]  # [targets, L]: the candidate's contexts
        ancestors = torch.where(depth[:, None] >= torch.arange(length, device=rows.device), path_of, -1)
        inputs = torch.cat([torch.full_like(labels[..., :1], self.config.decoder_start_token_id), labels[..., :-1]], -1)
        node_grid = torch.full((samples, width), -1, dtype=torch.long, device=rows.device)  # -1: padding
        depth_grid = torch.zeros_like(node_grid)
        token_grid = torch.full_like(node_grid, self.config.pad_token_id)
        ancestor_grid = torch.full((samples, width, length), -1, dtype=torch.long, device=rows.device)
        ancestor_grid[:, :, 0] = 0  # padding positions attend to the root (any real position would do)
        node_grid[sample_of, slot] = unique_keys % trie.num_nodes
        depth_grid[sample_of[position], slot[position]] = depth
        token_grid[sample_of[position], slot[position]] = inputs[valid]
        ancestor_grid[sample_of[position], slot[position]] = ancestors
        attend = ancestor_grid.gather(2, depth_grid[:, None, :].expand(-1, width, -1)) == node_grid[:, None, :]
        attend &= node_grid[:, None, :] >= 0  # [b, query, key]

        dtype = encoder_states.dtype
        self_attention = self.decoder.block[0].layer[0].SelfAttention
        depth_bias = self_attention.compute_bias(length, length, encoder_states.device)[0].to(dtype)  # [H, L, L]
        bias = depth_bias[:, depth_grid[:, :, None], depth_grid[:, None, :]].transpose(0, 1)  # [b, H, query, key]
        bias = bias.masked_fill(~attend[:, None], torch.finfo(dtype).min)
        # Cross-attention: T5 has no bias there, only the encoder padding mask, kept [b, 1, 1, S] (not expanded:
        # sdpa and eager attention broadcast it; other kernels index every head and query).
        cross_bias = torch.zeros(encoder_mask.shape, dtype=dtype, device=encoder_mask.device)
        cross_bias = cross_bias.masked_fill(encoder_mask == 0, torch.finfo(dtype).min)[:, None, None, :]
        if self.config._attn_implementation not in ("sdpa", "eager"):
            cross_bias = cross_bias.expand(-1, bias.shape[1], width, -1)
        states = _run_t5_blocks(self.decoder, self.decoder.embed_tokens(token_grid), bias, encoder_states, cross_bias)
        if self.config.scale_decoder_outputs:  # as T5ForConditionalGeneration.forward
            states = states * (self.model_dim**-0.5)
        # Row-major order of the real positions is the order of unique_keys, so `position` indexes these rows.
        states, targets = states[node_grid >= 0], labels[valid]
        token_log_probs = torch.empty(targets.shape, dtype=torch.float, device=rows.device)
        # The vocabulary projection and log-softmax in chunks of rows: smaller [rows, vocab] logits are faster on a
        # CPU than one [positions, vocab] pass (`trie_one_chunk` in benchmarks/eval_throughput.py), and memory no
        # longer grows with the number of positions.
        chunk = self.SCORING_ROWS_PER_CHUNK or max(64, self.config.d_model // 2)
        for first in range(0, states.shape[0], chunk):
            log_probs = self.lm_head(states[first : first + chunk]).float().log_softmax(-1)
            in_chunk = (position >= first) & (position < first + chunk)
            token_log_probs[in_chunk] = log_probs[position[in_chunk] - first, targets[in_chunk]]
        candidate_of = torch.arange(rows.numel(), device=rows.device).view(*rows.shape, 1).expand_as(labels)[valid]
        return token_log_probs.new_zeros(rows.numel()).index_add_(0, candidate_of, token_log_probs).view(rows.shape)

    # -- loading and saving -------------------------------------------------------------------------------

    @classmethod
    def from_t5_pretrained(cls, t5_name_or_path: str, **peapod_fields) -> PeaPODForConditionalGeneration:
        """A PeaPOD model that keeps a T5 checkpoint's weights (`t5-small` online, a local folder offline); the
        PeaPOD parts (prompt encoder, task prompts, whole-word embeddings, user table) start fresh."""
        t5 = T5ForConditionalGeneration.from_pretrained(t5_name_or_path)
        model = cls(PeaPODConfig.from_t5(t5.config, **peapod_fields))
        missing, unexpected = model.load_state_dict(t5.state_dict(), strict=False)
        fresh = ("prompt_encoder.", "task_prompts.", "whole_word_embeddings.") + USER_TABLE_BUFFERS
        not_loaded = [key for key in missing if not key.startswith(fresh)]
        if not_loaded or unexpected:
            raise ValueError(f"{t5_name_or_path} is not a T5 checkpoint: missing {not_loaded}, unexpected {unexpected}")
        return model

    @classmethod
    def from_shape(cls, shape: str = "t5-small", **peapod_fields) -> PeaPODForConditionalGeneration:
        """A randomly initialised PeaPOD of a named T5 shape (`NAMED_SHAPES`: t5-small, mini, tiny), offline."""
        if shape not in NAMED_SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known shapes: {sorted(NAMED_SHAPES)}")
        return cls(PeaPODConfig.from_t5(shape, **peapod_fields))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, allow_missing_weights: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained` that refuses a checkpoint which does not hold exactly this model.

        A `PeaPODInputError` names the file or tensor when: a local folder lacks `config.json` or holds a truncated
        `*.safetensors` file; `model.safetensors` misses weights of the model or holds weights it does not have
        (transformers would re-initialise or drop them with a log line; tied weights count once, as transformers
        reports them); a weight has another shape than the config says; the user table is missing, mis-shaped,
        not finite or has neighbour ids outside it (as `set_user_table` checks); or `num_users`/`num_items` disagree
        with the config's `data_fingerprint`.

        allow_missing_weights (`bool`, defaults to `False`):
            Load a checkpoint with missing weights (they start from a fresh initialisation) or unexpected ones
            (ignored), for deliberate surgery; a warning names them. The user table is never optional.
        """
        want_loading_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        source = str(pretrained_model_name_or_path)
        _check_local_checkpoint(source, kwargs.get("subfolder", ""), config_given=bool(args) or "config" in kwargs)
        # Load permissively, then judge the mismatches here, so the error can name the tensors. transformers'
        # multi-line load report is held back meanwhile: a refused checkpoint gets our one-line error instead, an
        # accepted one (or a failure inside transformers) still gets the report.
        report_logger, held_reports = logging.get_logger("transformers.modeling_utils"), []

        def hold_load_report(record) -> bool:
            if "LOAD REPORT" in record.getMessage():
                held_reports.append(record)
                return False
            return True

        report_logger.addFilter(hold_load_report)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
        except BaseException:
            _emit(report_logger, held_reports)
            raise
        finally:
            report_logger.removeFilter(hold_load_report)
        model._check_loaded_weights(loading_info, source, allow_missing_weights, ignore_mismatched_sizes)
        if model.has_collaborative_prompt:
            check_user_table_contents(model.user_embeddings, model.user_neighbors, where=f"checkpoint {source}: ")
        if model.has_item_factors and not torch.isfinite(getattr(model, ITEM_FACTORS)).all():
            raise PeaPODInputError(f"checkpoint {source}: {ITEM_FACTORS} holds NaN or infinite values")
        fingerprint = model.config.data_fingerprint
        for name in ("num_users", "num_items") if fingerprint else ():
            if fingerprint[name] != getattr(model.config, name):
                raise PeaPODInputError(
                    f"checkpoint {source}: config.json has {name}={getattr(model.config, name)} but its "
                    f"data_fingerprint records {fingerprint[name]} (the data the model was trained on): config.json "
                    "was edited or mixed with another run's; restore it"
                )
        _emit(report_logger, held_reports)
        return (model, loading_info) if want_loading_info else model

    def _check_loaded_weights(
        self, loading_info: dict, source: str, allow_missing_weights: bool, ignore_mismatched_sizes: bool
    ) -> None:
        """Judge transformers' loading report: missing, unexpected and mis-shaped tensors of a checkpoint."""
        mismatched = {entry[0]: entry[1:] for entry in loading_info.get("mismatched_keys", ())}
        missing = set(loading_info.get("missing_keys", ()))
        unexpected = set(loading_info.get("unexpected_keys", ()))
        if self.has_collaborative_prompt:
            for name in USER_TABLE_BUFFERS + ((ITEM_FACTORS,) if self.has_item_factors else ()):
                expected = list(getattr(self, name).shape)
                if name in missing:
                    raise PeaPODInputError(
                        f"checkpoint {source} has no {name} buffer (expected shape {expected}): a PeaPOD checkpoint "
                        + ("carries its user table; save it with save_pretrained after set_user_table"
                           if name != ITEM_FACTORS else "whose config sets fold_in_regularization carries the CF "
                           "item factors; save it with save_pretrained after set_item_factors")
                    )
                if name in mismatched:
                    found = list(mismatched[name][0]) if mismatched[name] else "another shape"
                    raise PeaPODInputError(
                        f"checkpoint {source}: {name} has shape {found} in the checkpoint; "
                        f"expected {expected} from its config (num_users={self.config.num_users})"
                    )
        if mismatched and not ignore_mismatched_sizes:
            raise PeaPODInputError(
                f"checkpoint {source} has weights of other shapes than its config: "
                f"{sorted(mismatched)} (pass ignore_mismatched_sizes=True to re-initialise them)"
            )
        if not (missing or unexpected):
            return
        problems = []
        if missing:
            problems.append(f"missing {sorted(missing)} (they would start from random values)")
        if unexpected:
            problems.append(f"unexpected {sorted(unexpected)} (this model has no such weights)")
        if not allow_missing_weights:
            raise PeaPODInputError(
                f"checkpoint {source}: its weights do not match its config: {'; '.join(problems)}. Pass "
                "allow_missing_weights=True to load it anyway (deliberate surgery only)"
            )
        logger.warning("checkpoint %s loaded with allow_missing_weights=True: %s", source, "; ".join(problems))

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`save_pretrained` whose config maps AutoConfig, AutoModel and AutoModelForSeq2SeqLM to the remote code."""
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": "configuration_peapod.PeaPODConfig",
            "AutoModel": "modeling_peapod.PeaPODForConditionalGeneration",
            "AutoModelForSeq2SeqLM": "modeling_peapod.PeaPODForConditionalGeneration",
        }
        # transformers writes `custom_pipelines` only from `Pipeline.save_pretrained`; written here, every saved
        # folder (Trainer's included) carries the pipeline, and `push_to_hub` uploads it with the code files.
        self.config.custom_pipelines = custom_pipelines_entry()
        return super().save_pretrained(save_directory, *args, **kwargs)


def _run_t5_blocks(
    stack: nn.Module, inputs_embeds: torch.Tensor, position_bias: torch.Tensor,
    encoder_states: torch.Tensor | None = None, cross_position_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The layers of a `T5Stack` as its forward runs them (dropout, blocks, final norm), given the attention masks
    already folded into the position biases (0 / bias where attended, the dtype's minimum elsewhere): T5Stack
    itself takes a separate mask and position ids only, which can express neither a trie-shaped decoder mask with
    depth distances (`score_candidates`) nor a mask combined with the bias once for all layers (`encode`)."""
    hidden = stack.dropout(inputs_embeds)
    for block in stack.block:
        hidden = block(hidden, position_bias=position_bias, encoder_hidden_states=encoder_states,
                       encoder_decoder_position_bias=cross_position_bias)[0]
    return stack.dropout(stack.final_layer_norm(hidden))


def _check_ids(name: str, ids: torch.Tensor, batch: int | None, low: int, high: int, meaning: str) -> None:
    ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise PeaPODInputError(f"{name} must be integer ids, got dtype {ids.dtype}")
    if batch is not None and tuple(ids.shape) != (batch,):
        raise PeaPODInputError(f"{name} has shape {tuple(ids.shape)}; expected ({batch},), one per sample")
    if ids.numel() and (ids.min() < low or ids.max() > high):
        offending = ids[(ids < low) | (ids > high)].unique()[:10].tolist()
        raise PeaPODInputError(f"{name} contains {offending}; expected {meaning} = {low}..{high}")


def check_user_table_contents(user_embeddings: torch.Tensor, user_neighbors: torch.Tensor, where: str = "") -> None:
    """The user table's values: finite embeddings, integer neighbour ids that are rows of the table.

    Shapes are checked by the callers (`set_user_table`, `from_pretrained`); a NaN row would turn every loss
    into NaN and a neighbour id past the table would fail as an IndexError deep inside `forward`.
    """
    rows = user_embeddings.shape[0]
    check_user_embeddings(user_embeddings, where)
    if user_neighbors.dtype.is_floating_point or user_neighbors.dtype == torch.bool:
        raise PeaPODInputError(f"{where}user_neighbors has dtype {user_neighbors.dtype}; expected integer user ids")
    outside = (user_neighbors < 0) | (user_neighbors >= rows)
    if outside.any():
        offending = user_neighbors[outside].unique()[:10].tolist()
        raise PeaPODInputError(
            f"{where}user_neighbors contains {offending}; user_neighbors must hold integer user ids in [0, {rows - 1}] "
            f"(rows of user_embeddings)"
        )


def _looks_like_local_path(source: str) -> bool:
    """A Hub repo id is `name` or `owner/name`; anything else (absolute, ./, ~, deeper paths) is meant as a folder."""
    return os.path.exists(source) or os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1


def _check_local_checkpoint(source: str, subfolder: str, config_given: bool) -> None:
    """Refuse a local checkpoint folder transformers would misread: no folder, no config.json (transformers would
    silently use a default config: num_users=0), or a truncated safetensors file."""
    if not _looks_like_local_path(source):
        return
    folder = Path(source).expanduser() / (subfolder or "")
    if not folder.is_dir():
        raise PeaPODInputError(f"checkpoint folder {folder} does not exist (or is not a folder)")
    config_file = folder / "config.json"
    if not config_given and not config_file.is_file():
        raise PeaPODInputError(
            f"{config_file} does not exist: a PeaPOD checkpoint folder holds config.json beside "
            "model.safetensors (written by save_pretrained)"
        )
    if not config_given:  # read it once here, so a bad value is reported with the file's name
        try:
            model_type = json.loads(config_file.read_bytes()).get("model_type")
            PeaPODConfig.from_json_file(config_file)
        except (ValueError, TypeError, AttributeError) as error:  # bad JSON or UTF-8 (ValueErrors), bad values
            raise PeaPODInputError(f"{config_file}: {error}") from None
        if model_type != PeaPODConfig.model_type:
            raise PeaPODInputError(
                f"{config_file}: model_type {model_type!r}, not {PeaPODConfig.model_type!r}: not a PeaPOD checkpoint "
                "(a T5 checkpoint starts a PeaPOD model through PeaPODForConditionalGeneration.from_t5_pretrained)"
            )
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(weights)


def check_safetensors_file(path: str | os.PathLike) -> None:
    """A `PeaPODInputError` naming `path` when it is not a complete safetensors file.

    Hand-written (a few lines of the documented format: an 8-byte little-endian header length, a JSON header of
    tensor byte ranges, the data) so the error says "truncated: N of M bytes", where the safetensors library says
    "incomplete metadata", and so this remote-code file needs no import beyond torch and transformers.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        header_length = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if header_length is None or 8 + header_length > size:
            raise PeaPODInputError(
                f"{path} is truncated or not a safetensors file ({size} bytes, shorter than its header says): "
                "copy or save the checkpoint again"
            )
        try:
            header = json.loads(stream.read(header_length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):  # UnicodeDecodeError is a ValueError
            raise PeaPODInputError(f"{path} has a damaged safetensors header: not a safetensors file") from None
    expected = 8 + header_length + int(end)
    if size < expected:
        raise PeaPODInputError(
            f"{path} is truncated: {size} of the {expected} bytes its header describes (an interrupted copy or "
            "download?): copy or save the checkpoint again"
        )


def _check_candidate_ids(candidates, batch: int) -> torch.Tensor:
    """Top-n candidates must be a non-empty [batch, C] integer tensor; catalogue membership is the trie's check."""
    try:
        candidates = torch.as_tensor(candidates)
    except (ValueError, TypeError, RuntimeError) as error:
        raise PeaPODInputError(f"candidates must be a [batch={batch}, C] table of item ids: {error}") from None
    if candidates.numel() == 0:
        raise PeaPODInputError(
            f"candidates is empty (shape {tuple(candidates.shape)}): every sample needs at least one candidate item id"
        )
    if candidates.dtype.is_floating_point or candidates.dtype == torch.bool or candidates.is_complex():
        raise PeaPODInputError(f"candidates must be integer item ids, got dtype {candidates.dtype}")
    if candidates.dim() != 2 or candidates.shape[0] != batch:
        raise PeaPODInputError(f"candidates must be [batch={batch}, C] item ids, got shape {tuple(candidates.shape)}")
    return candidates


def _emit(logger_, records) -> None:
    """Hand held-back log records to their logger's handlers."""
    for record in records:
        logger_.handle(record)


def _is_integer_matrix(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 2 and not (
        value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex()
    )


def _describe(value) -> str:
    return f"shape {tuple(value.shape)}, dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__


def _check_labels(labels, decoder_input_ids, batch: int | None) -> None:
    """`labels` [batch, target length] of integer token ids (-100 = ignored), matching decoder_input_ids if given."""
    if not _is_integer_matrix(labels):
        raise PeaPODInputError(f"labels must be a 2-D integer tensor [batch, target length], got {_describe(labels)}")
    if batch is not None and labels.shape[0] != batch:
        raise PeaPODInputError(
            f"labels has shape {tuple(labels.shape)}; expected {batch} rows, one per row of input_ids"
        )
    if decoder_input_ids is not None and tuple(decoder_input_ids.shape) != tuple(labels.shape):
        raise PeaPODInputError(
            f"decoder_input_ids has shape {tuple(decoder_input_ids.shape)}; expected that of labels "
            f"{tuple(labels.shape)}"
        )


# 5. A transformers pipeline --------------------------------------------------------------------------------

# The task name under which the pipeline is registered and saved in config.json's `custom_pipelines`.
PIPELINE_TASK = "peapod-recommendation"
PIPELINE_CLASS = "modeling_peapod.PeaPODRecommendationPipeline"

# The prompt lists a user's 20 most recent items (`datasets_scripts.templates.MAX_HISTORY`, which as remote code this
# file cannot import; tests/test_pipeline.py checks the two agree).
_MAX_HISTORY = 20
# The request key each placeholder of a task's template (`TaskSpec.eval_template`) is filled from.
_PLACEHOLDER_KEYS = {"{history}": "history", "{candidates}": "candidates", "{item}": "item_id"}


def evaluation_prompt(
    task: str, user_id: int, history: Sequence[int] | None = None, candidates: Sequence[int] | None = None,
    item_id: int | None = None,
) -> str:
    """The text prompt `peapod-prepare` writes for a validation/test row of `task`: what the model was evaluated on.

    The task's `eval_template` from the task registry (`configuration_peapod.TASK_REGISTRY`), `history` cut to its
    20 most recent items, items written `item_a, item_b, ...` (as `datasets_scripts.templates.render`).
    """
    def items(ids: Sequence[int]) -> str:
        return ", ".join(f"item_{item}" for item in ids)

    return TASK_REGISTRY[task].eval_template.format(
        user=user_id, history=items(list(history or [])[-_MAX_HISTORY:]), candidates=items(candidates or []),
        item=item_id if item_id is not None else "",
    )


def _prompt_keys(template: str) -> set[str]:
    """The request keys a task's prompt is written from: its template's placeholders."""
    return {key for placeholder, key in _PLACEHOLDER_KEYS.items() if placeholder in template}


def custom_pipelines_entry() -> dict:
    """config.json's `custom_pipelines`: what `Pipeline.save_pretrained` writes for a registered pipeline, read by
    `transformers.pipeline(model=..., trust_remote_code=True)` to load the class from the folder's code."""
    return {PIPELINE_TASK: {"impl": PIPELINE_CLASS, "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}}


_REQUEST_KEYS = ("task", "user_id", "history", "candidates", "item_id")
_TOPN_RANKINGS = ("likelihood", "beam")


def _integer(value, name: str) -> int:
    """An integer id (Python, numpy or a one-element integer tensor); bools, floats and strings are refused."""
    try:
        if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise PeaPODInputError(f"{name} must be an integer id, got {value!r} ({type(value).__name__})") from None


def _item_list(values, name: str, num_items: int) -> list[int]:
    """A non-empty list of catalogue item ids (1..num_items; any id >= 1 when the config records no catalogue)."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise PeaPODInputError(f"{name} must be a flat list of item ids, got a tensor of shape {tuple(values.shape)}")
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise PeaPODInputError(f"{name} must be a list of item ids, got {type(values).__name__}")
    if not values:
        raise PeaPODInputError(f"{name} is empty: give at least one item id")
    ids = [_integer(value, f"{name}[{position}]") for position, value in enumerate(values)]
    high = num_items or max(ids)
    outside = sorted({item for item in ids if not 1 <= item <= high})
    if outside:
        catalogue = f"the catalogue's ids 1..{num_items}" if num_items else "item ids >= 1"
        raise PeaPODInputError(f"{name} contains {outside[:10]}; expected {catalogue}")
    return ids


def parse_request(request, config: PeaPODConfig) -> dict:
    """Check one pipeline input against the model's config; returns {task, user_id (None: new user), history,
    candidates, item_id} with the unused keys None. Every mistake is a `PeaPODInputError` naming the key."""
    example = '{"user_id": 7, "task": "topn", "candidates": [12, 40, 41]}'
    if not isinstance(request, dict):
        raise PeaPODInputError(f"a PeaPOD pipeline input is a dict such as {example}; got {type(request).__name__}")
    unknown = sorted(set(request) - set(_REQUEST_KEYS))
    if unknown:
        raise PeaPODInputError(f"unknown input key(s) {unknown}; the keys are {list(_REQUEST_KEYS)}")
    task = request.get("task")
    known_tasks = [name for name in config.tasks if name in TASK_REGISTRY]
    if task not in known_tasks:
        raise PeaPODInputError(f"task={task!r}: expected one of {known_tasks}, e.g. {example}")
    parsed = dict.fromkeys(_REQUEST_KEYS)
    parsed["task"] = task
    if request.get("user_id") is not None:
        user = _integer(request["user_id"], "user_id")
        if user < 0 or (config.num_users and user > config.num_users):
            raise PeaPODInputError(
                f"user_id={user} is not in the model's user table (0 = unknown user, 1..{config.num_users}); for a "
                "user the model has not seen, leave out user_id and pass their history (item ids)"
            )
        parsed["user_id"] = user
    new_user = parsed["user_id"] is None
    # Which keys the task reads: its prompt's, plus a new user's history (the fold-in reads it).
    prompt_keys = _prompt_keys(TASK_REGISTRY[task].eval_template)
    wants = {key: key in prompt_keys or (key == "history" and new_user) for key in _PLACEHOLDER_KEYS.values()}
    for key, wanted in wants.items():
        given = request.get(key) is not None
        if wanted and not given:
            why = f"the {task} prompt holds it" if key in prompt_keys else "a new user (no user_id) is folded in from it"
            raise PeaPODInputError(f"task {task!r} needs {key!r}: {why}")
        if given and not wanted:
            why = (f"task {task!r} reads a history only for a new user (no user_id)"
                   if key == "history" else f"task {task!r} does not use it")
            raise PeaPODInputError(f"unexpected {key!r} for task {task!r}: {why}")
    if wants["history"]:
        parsed["history"] = _item_list(request["history"], "history", config.num_items)
    if wants["candidates"]:
        parsed["candidates"] = _item_list(request["candidates"], "candidates", config.num_items)
        repeated = sorted({item for item in parsed["candidates"] if parsed["candidates"].count(item) > 1})
        if repeated:
            raise PeaPODInputError(f"candidates repeats item id(s) {repeated[:10]}; each candidate once")
    if wants["item_id"]:
        parsed["item_id"] = _item_list([request["item_id"]], "item_id", config.num_items)[0]
    return parsed


class PeaPODRecommendationPipeline(Pipeline):
    """Recommendations and explanations from a PeaPOD checkpoint, one request (or a list of them) at a time.

    ```python
    from transformers import pipeline
    recommender = pipeline(model="<checkpoint folder or Hub id>", trust_remote_code=True)
    recommender({"user_id": 7, "task": "topn", "candidates": [12, 40, 41]})   # [{"item_id": 40, "score": -1.3}, ...]
    recommender({"user_id": 7, "task": "sequential", "history": [12, 40]})     # the next items, whole catalogue
    recommender({"history": [12, 40], "task": "topn", "candidates": [3, 41]})  # a new user, folded in
    recommender({"user_id": 7, "task": "explanation", "item_id": 12})          # {"explanation": "..."}
    ```

    A request is a dict: `task` ("sequential", "topn" or "explanation"), `user_id` (a user of the training data,
    0 = the unknown user) or, for a user the model has never seen, no `user_id` and their `history` (item ids,
    oldest first), which `fold_in_users` turns into a collaborative prompt; the prompt's text then names the
    unknown user `user_0`. `history` is also the sequential prompt's purchase history (its 20 most recent
    items), `candidates` the top-n candidate ids, `item_id` the item to explain.

    The prompt is the evaluation's (`evaluation_prompt`, tokenised as `peapod-prepare` tokenises it), and the
    ranking the evaluation's: sequential by constrained beam search over the catalogue (`recommend`), top-n by the
    exact log-likelihood of every candidate (`score_candidates`, ties to the lower id; `topn_ranking="beam"` for
    beam search restricted to the candidates), explanations by beam search. Rankings are lists of
    `{"item_id", "score"}` (scores are log-likelihoods, best first), an explanation is `{"explanation": text}`.

    Parameters (at construction or per call): `top_k` (10) items returned, `num_beams` (20), `max_new_tokens` (64)
    of an explanation, `topn_ranking` ("likelihood"). The model is put in eval mode. A bad request raises
    `PeaPODInputError` (a `ValueError`) naming the key and what was expected.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tokenizer is None:
            raise PeaPODInputError("a PeaPOD pipeline needs the T5 tokenizer: save it into the checkpoint folder")
        self.model.eval()  # an inference pipeline: no dropout
        self._catalogue_trie: ItemIdTrie | None = None

    def __call__(self, inputs, *args, **kwargs):
        """One request (a dict) -> its result; a list of requests -> a list of results, one request per forward."""
        if (kwargs.get("batch_size") or self._batch_size or 1) != 1:
            raise PeaPODInputError(
                "batch_size must be 1: requests differ in task and length; pass a list to run several"
            )
        return super().__call__(inputs, *args, **kwargs)

    def _sanitize_parameters(self, top_k=None, num_beams=None, max_new_tokens=None, topn_ranking=None, **unknown):
        if unknown:
            raise PeaPODInputError(
                f"unknown pipeline parameter(s) {sorted(unknown)}; expected top_k, num_beams, max_new_tokens, "
                "topn_ranking"
            )
        forward, postprocess = {}, {}
        for name, value, target in (
            ("top_k", top_k, postprocess), ("num_beams", num_beams, forward), ("max_new_tokens", max_new_tokens, forward),
        ):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise PeaPODInputError(f"{name}={value!r} must be an integer >= 1")
                target[name] = value
        if "top_k" in postprocess:
            forward["top_k"] = postprocess["top_k"]
        if topn_ranking is not None:
            if topn_ranking not in _TOPN_RANKINGS:
                raise PeaPODInputError(f"topn_ranking={topn_ranking!r} must be one of {_TOPN_RANKINGS}")
            forward["topn_ranking"] = topn_ranking
        return {}, forward, postprocess

    def preprocess(self, inputs) -> dict:
        """Check the request and build the model inputs of one evaluation row (a batch of one)."""
        request = parse_request(inputs, self.model.config)
        spec = TASK_REGISTRY[request["task"]]
        if spec.target == "item" and not spec.ranks_candidates and not self.model.config.num_items:
            raise PeaPODInputError("config.num_items is 0: the checkpoint records no catalogue to recommend from")
        new_user = request["user_id"] is None
        # A new user's text names the unknown user 0 (`UNKNOWN_USER_TEXT`): it claims no user the model has seen.
        text = evaluation_prompt(
            request["task"], 0 if new_user else request["user_id"], request["history"], request["candidates"],
            request["item_id"],
        )
        # The tokenisation `peapod-prepare` gives a source (datasets_scripts.build_dataset.PieceCache reproduces it).
        input_ids = torch.tensor([self.tokenizer(text, verbose=False)["input_ids"]], dtype=torch.long)
        return {
            "task": request["task"],
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "whole_word_ids": compute_whole_word_ids(input_ids, self.tokenizer),
            "user_ids": torch.tensor([0 if new_user else request["user_id"]]),
            "task_ids": torch.tensor([list(self.model.config.tasks).index(request["task"])]),
            "candidates": None if request["candidates"] is None else torch.tensor([request["candidates"]]),
            "fold_in_history": request["history"] if new_user else None,
        }

    def _forward(self, model_inputs: dict, top_k: int = 10, num_beams: int = 20, max_new_tokens: int = 64,
                 topn_ranking: str = "likelihood") -> dict:
        task, candidates = model_inputs["task"], model_inputs["candidates"]
        spec = TASK_REGISTRY[task]
        inputs = {name: model_inputs[name] for name in ("input_ids", "attention_mask", "user_ids", "task_ids",
                                                        "whole_word_ids")}
        if model_inputs["fold_in_history"] is not None and self.model.has_collaborative_prompt:
            # A new user is given by their folded-in vector and neighbours instead of a row of the table.
            del inputs["user_ids"]
            inputs.update(self._fold_in(model_inputs["fold_in_history"]))
        if spec.target == "text":
            generated = self.model.generate(
                **inputs, num_beams=num_beams, num_return_sequences=1, do_sample=False, max_new_tokens=max_new_tokens
            )
            return {"task": task, "generated": generated}
        item_trie = self._item_trie(candidates)
        if spec.ranks_candidates and topn_ranking == "likelihood":
            scores = self.model.score_candidates(**inputs, candidates=candidates, item_trie=item_trie)
            return {"task": task, "item_ids": candidates, "scores": scores, "ranked": False}
        if top_k > num_beams:
            raise PeaPODInputError(f"top_k={top_k} needs at least as many beams, got num_beams={num_beams}")
        item_ids, scores = self.model.recommend(
            **inputs, item_trie=item_trie, candidates=candidates, top_k=top_k, num_beams=num_beams
        )
        return {"task": task, "item_ids": item_ids, "scores": scores, "ranked": True}

    def postprocess(self, model_outputs: dict, top_k: int = 10):
        if "generated" in model_outputs:
            return {"explanation": self.tokenizer.decode(model_outputs["generated"][0], skip_special_tokens=True)}
        pairs = [(int(item), float(score)) for item, score in
                 zip(model_outputs["item_ids"][0].tolist(), model_outputs["scores"][0].tolist()) if item >= 0]
        if not model_outputs["ranked"]:  # candidate likelihoods, ranked as the evaluation ranks them (ties: lower id)
            pairs.sort(key=lambda pair: (-pair[1], pair[0]))
        return [{"item_id": item, "score": score} for item, score in pairs[:top_k]]

    def _fold_in(self, history: list[int]) -> dict:
        """A new user's collaborative inputs: `fold_in_users` solves for the vector the table's CF model would have
        learnt from `history` (the checkpoint's item factors fixed) and finds its neighbours in the table."""
        user_embeddings, user_neighbors = self.model.fold_in_users([history])
        return {"user_embeddings": user_embeddings, "user_neighbors": user_neighbors}

    def _item_trie(self, candidates: torch.Tensor | None) -> ItemIdTrie:
        """The catalogue's trie (built once), or, for a checkpoint that records no catalogue, the candidates'."""
        if not self.model.config.num_items:
            return ItemIdTrie.from_tokenizer(self.tokenizer, candidates[0].tolist())
        if self._catalogue_trie is None:
            self._catalogue_trie = self.model.item_trie(self.tokenizer)
        return self._catalogue_trie


PeaPODConfig.register_for_auto_class()
PeaPODForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
if __name__ == "modeling_peapod":
    # Installed (not remote code): AutoConfig knows `peapod`, so AutoTokenizer (which reads a folder's config.json to
    # learn the model type) opens a saved folder without asking to run its copy of configuration_peapod.py and
    # without falling back to a bare config (the "model of type `peapod` to instantiate a model of type ``"
    # warning). The model class is deliberately not registered with AutoModelForSeq2SeqLM: a registered class
    # would replace the folder's code even under trust_remote_code=True, which is how Hub users load it.
    AutoConfig.register(PeaPODConfig.model_type, PeaPODConfig, exist_ok=True)
    # `transformers.pipeline("peapod-recommendation", model=model, tokenizer=tokenizer)` for a loaded model. As
    # remote code the class is found through config.json's `custom_pipelines` instead, and registering each loaded
    # copy again would only log "already registered" warnings.
    from transformers import AutoModelForSeq2SeqLM
    from transformers.pipelines import PIPELINE_REGISTRY

    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=PeaPODRecommendationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
    )

__all__ = [
    "CollaborativePromptEncoder",
    "ItemIdConstraintLogitsProcessor",
    "ItemIdTrie",
    "PeaPODConfig",
    "PeaPODForConditionalGeneration",
    "PeaPODRecommendationPipeline",
    "build_user_neighbors",
    "check_safetensors_file",
    "check_user_table_contents",
    "compute_whole_word_ids",
    "evaluation_prompt",
    "prefix_allowed_tokens_fn",
    "solve_pmf_users",
    "whole_word_ids_from_tokens",
]
