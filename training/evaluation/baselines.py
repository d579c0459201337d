"""Non-generative baselines under the evaluation protocol of the generative model (SPEC §3, issue 5).

* `PopularityBaseline`: every user gets the items ranked by their number of training interactions.
* `PMFBaseline`: cornac PMF (`datasets_scripts.user_embeddings.train_pmf`, the same factorisation that gives
  PeaPOD its user table), scoring user u and item i by the dot product u·v_i. cornac's PMF predicts
  sigmoid(u·v_i), a monotone function of it, so the ranking is the same.
* `BPRBaseline`: cornac BPR, the implicit-feedback matrix factorisation (b_i + u·v_i), because PMF fitted to
  implicit positives only does not learn to rank (see `PMFBaseline`).
* `MarkovChainBaseline`: a first-order Markov chain, last item -> next item, from transition counts of the
  training histories; popularity breaks ties and stands in for a last item never followed by anything.
* `PlantedOracleBaseline`: on the planted-signal synthetic variants only, the ranking by the planted ground truth
  (the ceiling; datasets_scripts/synthetic.py).

Baselines that condition on the user's items (`uses_history = True`: Markov chain, oracle) are given, for
sequential, the split's input history (the prompt's: items[:-2] for validation, items[:-1] for test) and, for
top-n, the training history items[:-2] (the top-n prompt carries no history: the model knows only what it was
trained on, and so does the baseline).

Both are trained on the training interactions only (items[:-2] of every user), like the generative model, and
both produce the ranked-list format of `training/evaluation/metrics/ranking`: for each user a list of distinct item ids,
best first.

Rules, fixed here so that the numbers sit beside the generative model's under the same protocol:
* Top-n: the same 100 fixed candidates as the model, ranked by score (`recommend_topn`).
* Sequential: a full ranking over the whole catalogue 1..num_items (`recommend_sequential`). Items of the user's
  history are NOT excluded by default, because the generative model's constrained beam search does not exclude
  them either (it may recommend an item the user already has). `exclude_history=True` removes every item of the
  history passed in, for the conventional "unseen items only" protocol; use it for both or neither.
* Ties: equal scores are ordered by the lower item id (a stable sort over ids in ascending order), the same rule
  as everywhere in the package (e.g. `modeling_peapod.build_user_neighbors`). Item 0 (padding) is never ranked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from datasets_scripts.synthetic import planted_oracle_scores
from datasets_scripts.user_embeddings import (
    cornac_train_set,
    rows_by_our_ids,
    train_pmf,
)


def _check_ids(ids: np.ndarray, upper: int, what: str) -> None:
    if ids.size and (ids.min() < 1 or ids.max() > upper):
        bad = ids[(ids < 1) | (ids > upper)][0]
        raise ValueError(f"{what} id {int(bad)} is outside 1..{upper}")


def item_popularity(train_histories: Mapping[int, Sequence[int]], num_items: int) -> np.ndarray:
    """[num_items + 1] float64: the number of training interactions of every item (index 0 = padding, -inf).

    A user who interacted with an item several times counts several times: popularity is interaction volume.
    """
    counts = np.zeros(num_items + 1, dtype=np.float64)
    for user, items in train_histories.items():
        items = np.asarray(items, dtype=np.int64)
        _check_ids(items, num_items, f"item (in the history of user {user})")
        np.add.at(counts, items, 1.0)
    counts[0] = -np.inf
    return counts


def rank_by_score(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Row-wise top-k column indices by decreasing score, equal scores lowest column first; [B, N] -> [B, k].

    -inf scores (padding, excluded items) are never returned: such positions come back as -1 at the end of a row.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scores = np.atleast_2d(scores)
    # A stable sort of -scores keeps ascending column order among equal scores: the lower id wins the tie.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    valid = np.take_along_axis(scores, order, axis=1) > -np.inf
    return np.where(valid, order, -1)


class PopularityBaseline:
    """Most-popular items over the training interactions, the same list for every user."""

    name = "popularity"

    def __init__(self, train_histories: Mapping[int, Sequence[int]], num_items: int):
        self.num_items = num_items
        self.item_scores = item_popularity(train_histories, num_items)

    def score_items(self, user_ids: Sequence[int]) -> np.ndarray:
        """[len(user_ids), num_items + 1] scores (column = item id; column 0 is -inf)."""
        return np.broadcast_to(self.item_scores, (len(user_ids), self.num_items + 1))


class PMFBaseline:
    """Probabilistic matrix factorisation (cornac PMF): score(u, i) = user_embeddings[u] · item_embeddings[i].

    Build it from factors you already have (e.g. the prepared folder's PMF user table) or with `fit`. Users or
    items without training interactions have zero factors, hence score 0 for everything (ties -> lower id).

    On implicit data `train_pmf` adds sampled unobserved items as rating 0 (one per observed item by default):
    trained on positives alone every rating is 1.0, PMF fits them all with large dot products and does not separate
    a user's items from the rest (tests/test_baselines.py). `BPRBaseline` is the pairwise-ranking alternative.
    """

    name = "pmf"

    def __init__(self, user_embeddings, item_embeddings, item_biases=None):
        self.user_embeddings = torch.as_tensor(user_embeddings, dtype=torch.float32).numpy()
        self.item_embeddings = torch.as_tensor(item_embeddings, dtype=torch.float32).numpy()
        if self.user_embeddings.ndim != 2 or self.item_embeddings.ndim != 2:
            raise ValueError("user_embeddings and item_embeddings must be 2-D [rows, k]")
        if self.user_embeddings.shape[1] != self.item_embeddings.shape[1]:
            raise ValueError(
                f"user factors have width {self.user_embeddings.shape[1]} but item factors "
                f"{self.item_embeddings.shape[1]}; they must come from the same factorisation"
            )
        self.num_users = self.user_embeddings.shape[0] - 1
        self.num_items = self.item_embeddings.shape[0] - 1
        self.item_biases = None
        if item_biases is not None:
            self.item_biases = torch.as_tensor(item_biases, dtype=torch.float32).numpy().reshape(-1)
            if self.item_biases.shape[0] != self.num_items + 1:
                raise ValueError(f"item_biases has {self.item_biases.shape[0]} rows, expected {self.num_items + 1}")

    @classmethod
    def fit(
        cls,
        train_histories: Mapping[int, Sequence[int]],
        num_users: int,
        num_items: int,
        k: int = 512,
        seed: int = 0,
        **pmf_kwargs,
    ) -> PMFBaseline:
        """Train cornac PMF on the training interactions (`train_pmf`'s defaults are the paper's)."""
        user_embeddings, item_embeddings = train_pmf(
            dict(train_histories), num_users, num_items, k=k, seed=seed, **pmf_kwargs
        )
        return cls(user_embeddings, item_embeddings)

    def score_items(self, user_ids: Sequence[int]) -> np.ndarray:
        user_ids = np.asarray(user_ids, dtype=np.int64)
        _check_ids(user_ids, self.num_users, "user")
        scores = self.user_embeddings[user_ids].astype(np.float64) @ self.item_embeddings.T.astype(np.float64)
        if self.item_biases is not None:
            scores += self.item_biases.astype(np.float64)
        scores[:, 0] = -np.inf
        return scores


class BPRBaseline(PMFBaseline):
    """Bayesian personalised ranking MF (cornac BPR): score(u, i) = b_i + u · v_i, for implicit feedback."""

    name = "bpr"

    @classmethod
    def fit(
        cls,
        train_histories: Mapping[int, Sequence[int]],
        num_users: int,
        num_items: int,
        k: int = 64,
        seed: int = 0,
        max_iter: int = 200,
        learning_rate: float = 0.01,
        lambda_reg: float = 0.01,
    ) -> BPRBaseline:
        import cornac

        # The same validated, id-mapped cornac training set as the PMF user table (datasets_scripts).

        train_set = cornac_train_set(dict(train_histories), num_users, num_items, seed)
        model = cornac.models.BPR(
            k=k, max_iter=max_iter, learning_rate=learning_rate, lambda_reg=lambda_reg, seed=seed, verbose=False
        )
        model.fit(train_set)
        users = rows_by_our_ids(model.u_factors, train_set.uid_map, num_users + 1)
        items = rows_by_our_ids(model.i_factors, train_set.iid_map, num_items + 1)
        biases = rows_by_our_ids(np.asarray(model.i_biases).reshape(-1, 1), train_set.iid_map, num_items + 1)
        return cls(users, items, biases)


class MarkovChainBaseline:
    """First-order Markov chain: score(u, i) = count(last item of u -> i) over the training histories.

    Transitions are the consecutive pairs (a, b) of every training history. Ties (including a last item with no
    recorded successor, whose counts are all zero) are broken by popularity (`item_popularity`), then by the lower
    item id: score = count + popularity / (max popularity + 1), exact in float64 because counts are integers and
    the popularity term is below 1. Counts are a scipy sparse matrix, so large catalogues fit in memory.
    """

    name = "markov"
    uses_history = True

    def __init__(self, train_histories: Mapping[int, Sequence[int]], num_items: int):
        from scipy.sparse import csr_matrix

        self.num_items = num_items
        popularity = item_popularity(train_histories, num_items)
        self.tie_break = popularity / (popularity[1:].max(initial=0.0) + 1.0)  # in [0, 1), -inf for padding
        sources, targets = [], []
        for items in train_histories.values():
            sources.extend(items[:-1])
            targets.extend(items[1:])
        self.transitions = csr_matrix(
            (np.ones(len(sources)), (np.asarray(sources, dtype=np.int64), np.asarray(targets, dtype=np.int64))),
            shape=(num_items + 1, num_items + 1),
        )  # duplicates are summed: entry (a, b) = number of a -> b steps

    def score_items(self, user_ids: Sequence[int], histories: Mapping[int, Sequence[int]]) -> np.ndarray:
        """[len(user_ids), num_items + 1] scores given each user's history (its last item is the state)."""
        missing = [user for user in user_ids if not histories.get(user)]
        if missing:
            raise ValueError(f"the Markov chain needs a non-empty history for every user; none for user {missing[0]}")
        last = np.asarray([histories[user][-1] for user in user_ids], dtype=np.int64)
        _check_ids(last, self.num_items, "last history item")
        return self.transitions[last].toarray() + self.tie_break


class PlantedOracleBaseline:
    """The ceiling on a planted-signal synthetic variant: `datasets_scripts.synthetic.planted_oracle_scores`.

    `structure` is the variant's ground truth in the ids of the data being evaluated (see
    `datasets_scripts.synthetic.planted_structure`); items of the given history are never recommended.
    """

    name = "oracle"
    uses_history = True

    def __init__(self, structure: dict, num_items: int):
        self.structure = structure
        self.num_items = num_items

    def score_items(self, user_ids: Sequence[int], histories: Mapping[int, Sequence[int]]) -> np.ndarray:
        return planted_oracle_scores(self.structure, list(user_ids), histories, self.num_items)


def baseline_scores(baseline, user_ids: Sequence[int], histories: Mapping[int, Sequence[int]] | None) -> np.ndarray:
    """`baseline.score_items`, given the users' histories when the baseline conditions on them."""
    if getattr(baseline, "uses_history", False):
        if histories is None:
            raise ValueError(f"the {baseline.name} baseline conditions on the users' histories: pass histories=")
        return baseline.score_items(user_ids, histories)
    return baseline.score_items(user_ids)


def recommend_sequential(
    baseline,
    user_ids: Sequence[int],
    top_k: int = 10,
    histories: Mapping[int, Sequence[int]] | None = None,
    exclude_history: bool = False,
    chunk_size: int = 1024,
) -> list[list[int]]:
    """Top-k of a full ranking over all items for each user (the sequential protocol), best first.

    `exclude_history=True` removes the items of `histories[user]` (required then) from that user's ranking; the
    default keeps them, matching the generative model (see the module docstring). Baselines with
    `uses_history` (Markov chain, oracle) condition on `histories` (required then).
    """
    if exclude_history and histories is None:
        raise ValueError("exclude_history=True needs the users' histories")
    ranked: list[list[int]] = []
    user_ids = list(user_ids)
    for start in range(0, len(user_ids), chunk_size):
        chunk = user_ids[start : start + chunk_size]
        scores = np.array(baseline_scores(baseline, chunk, histories), dtype=np.float64)  # a writable copy
        if exclude_history:
            for row, user in enumerate(chunk):
                scores[row, np.asarray(histories[user], dtype=np.int64)] = -np.inf
        ranked.extend([int(i) for i in row if i >= 0] for row in rank_by_score(scores, top_k))
    return ranked


def rank_candidates(candidates, scores, top_k: int = 10) -> list[list[int]]:
    """Each row's candidate ids ([B, C]) ordered by their scores ([B, C]), best first, top_k kept.

    Ties go to the lower item id. Shared by the baselines and the generative model's likelihood ranking.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if candidates.ndim != 2 or candidates.shape != scores.shape:
        raise ValueError(f"candidates {candidates.shape} and scores {scores.shape} must both be [B, C]")
    # Order each row by id first, so the stable score sort of rank_by_score breaks ties by the lower id.
    by_id = np.argsort(candidates, axis=1, kind="stable")
    candidates = np.take_along_axis(candidates, by_id, axis=1)
    scores = np.take_along_axis(scores, by_id, axis=1)
    repeated = (np.diff(candidates, axis=1) == 0).any(axis=1)
    if repeated.any():
        raise ValueError(f"candidate row {int(repeated.argmax())} repeats an item id")
    order = rank_by_score(scores, top_k)
    return [[int(candidates[row, i]) for i in positions if i >= 0] for row, positions in enumerate(order)]


def recommend_topn(
    baseline, user_ids: Sequence[int], candidates, top_k: int = 10, histories: Mapping[int, Sequence[int]] | None = None
) -> list[list[int]]:
    """Top-k of each user's own candidate list ([B, C] item ids, e.g. the 100 fixed candidates), best first.

    `histories` (the training histories under the protocol) is needed by baselines with `uses_history`.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 2 or candidates.shape[0] != len(user_ids):
        raise ValueError(f"candidates must be [num_users={len(user_ids)}, C], got shape {candidates.shape}")
    _check_ids(candidates, baseline.num_items, "candidate item")
    scores = np.take_along_axis(np.asarray(baseline_scores(baseline, list(user_ids), histories)), candidates, axis=1)
    return rank_candidates(candidates, scores, top_k)
