"""PeaPOD: Personalized Prompt Distillation for Generative Recommendation (Ramos, Wu, Lipani 2025).

This file travels to a Hub repository as remote code beside `configuration_peapod.py`: it imports only torch,
transformers and that file. It reads top to bottom from building blocks to the full model:

1. ID helpers: whole-word ids of `user_…`/`item_…` spans (SPEC §1) and the exact neighbour table.
2. `CollaborativePromptEncoder`: eqs. (1)-(9) of the paper.
3. Constrained decoding: a prefix trie over tokenised item ids.
4. `PeaPODForConditionalGeneration`: a T5 whose encoder input is
   [task prompt | collaborative user prompt | token embeddings + whole-word embeddings].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# 1. ID helpers ----------------------------------------------------------------------------------------------

# An ID is written `user_123` / `item_45`. SentencePiece splits it as ["▁user", "_", "12", "3"] (the "▁" marks
# a word start; the prefix may lack it after punctuation such as "(" or ","), so a span is: the prefix piece,
# an "_" piece, then one or more pieces made only of digits.
_ID_PREFIX_PIECES = {"▁user", "user", "▁item", "item"}
_DIGITS = re.compile(r"^[0-9]+$")


def whole_word_ids_from_tokens(tokens: Sequence[str]) -> list[int]:
    """Whole-word index of every SentencePiece piece (SPEC §1, the paper's §3.2).

    The i-th `user_…`/`item_…` span in the sequence gets index i (1-based) on each of its pieces; every other
    piece (words, punctuation, EOS, padding) gets 0.
    """
    whole_word_ids = [0] * len(tokens)
    span_index = 0
    position = 0
    while position < len(tokens):
        is_span = (
            tokens[position] in _ID_PREFIX_PIECES
            and position + 2 < len(tokens)
            and tokens[position + 1] == "_"
            and _DIGITS.match(tokens[position + 2]) is not None
        )
        if not is_span:
            position += 1
            continue
        span_index += 1
        end = position + 2
        while end < len(tokens) and _DIGITS.match(tokens[end]) is not None:
            end += 1
        for piece in range(position, end):
            whole_word_ids[piece] = span_index
        position = end
    return whole_word_ids


def compute_whole_word_ids(input_ids, tokenizer) -> list[list[int]] | torch.LongTensor:
    """`whole_word_ids_from_tokens` for a batch of token ids (a list of lists or a 2-D tensor).

    Returns the same container type it was given; padding positions get 0 like any other non-ID piece.
    """
    if isinstance(input_ids, torch.Tensor):
        rows = [whole_word_ids_from_tokens(tokenizer.convert_ids_to_tokens(row)) for row in input_ids.tolist()]
        return torch.tensor(rows, dtype=torch.long, device=input_ids.device)
    return [whole_word_ids_from_tokens(tokenizer.convert_ids_to_tokens(list(row))) for row in input_ids]


@torch.no_grad()
def build_user_neighbors(
    user_embeddings: torch.Tensor, num_neighbors: int, chunk_size: int = 2048
) -> torch.LongTensor:
    """The n most cosine-similar other users of every user: S_u of the paper's §4.2.

    `user_embeddings` is [num_users + 1, d_u] with row 0 the unknown user. Returns [num_users + 1, n] user ids
    ordered by decreasing similarity; the user itself and row 0 are never neighbours, ties go to the lower user
    id, and row 0's neighbours are all 0 (the unknown user attends over unknown users). Exact, and computed
    `chunk_size` rows at a time so memory stays O(chunk_size x num_users), never a num_users² matrix.
    """
    if user_embeddings.dim() != 2:
        raise ValueError(f"user_embeddings must be 2-D [num_users + 1, d_u], got shape {tuple(user_embeddings.shape)}")
    num_rows = user_embeddings.shape[0]
    num_users = num_rows - 1
    if num_neighbors < 1 or num_neighbors > num_users - 1:
        raise ValueError(
            f"num_neighbors={num_neighbors} must be between 1 and num_users - 1 = {num_users - 1} "
            f"(a user cannot be its own neighbour; the table has {num_users} users plus the unknown row 0)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    unit = F.normalize(user_embeddings.float(), dim=1)  # zero rows stay zero: similarity 0 to everyone
    neighbors = torch.zeros(num_rows, num_neighbors, dtype=torch.long, device=user_embeddings.device)
    for start in range(1, num_rows, chunk_size):
        end = min(start + chunk_size, num_rows)
        similarity = unit[start:end] @ unit.T  # [chunk, num_rows]
        rows = torch.arange(end - start, device=similarity.device)
        similarity[rows, rows + start] = -math.inf  # self
        similarity[:, 0] = -math.inf  # the unknown user
        neighbors[start:end] = _top_n_lowest_index_on_ties(similarity, num_neighbors)
    return neighbors


def _top_n_lowest_index_on_ties(scores: torch.Tensor, n: int) -> torch.LongTensor:
    """Row-wise top-n column indices by decreasing score; equal scores are taken lowest column first.

    `torch.topk` picks arbitrarily among ties, so rows whose n-th value is tied with values outside the top n
    are resolved here: keep everything strictly above the threshold, then the first tied columns by index.
    """
    values, indices = scores.topk(n, dim=1)
    threshold = values[:, -1:]
    at_threshold = scores == threshold
    ambiguous = at_threshold.sum(1) > (values == threshold).sum(1)
    if ambiguous.any():
        for row in ambiguous.nonzero().flatten().tolist():
            above = (scores[row] > threshold[row]).nonzero().flatten()
            tied = at_threshold[row].nonzero().flatten()[: n - above.numel()]
            indices[row] = torch.cat([above, tied])
    # Order by (score desc, index asc): sort by index first, then a stable sort on the score.
    indices, _ = indices.sort(dim=1)
    order = scores.gather(1, indices).sort(dim=1, descending=True, stable=True).indices
    return indices.gather(1, order)
