"""Most-popular and PMF baselines on hand-made matrices: known rankings, tie rule, history rule, candidates."""

import numpy as np
import pytest
import torch

from training.baselines import (
    BPRBaseline,
    PMFBaseline,
    PopularityBaseline,
    item_popularity,
    rank_by_score,
    rank_candidates,
    recommend_sequential,
    recommend_topn,
)

# 4 users, 6 items. Training interaction counts: item 3 -> 4, item 1 -> 3, items 2 and 5 -> 2, item 4 -> 1, 6 -> 0.
TRAIN = {1: [3, 1, 2], 2: [3, 1, 5], 3: [3, 5, 1], 4: [3, 2, 4]}
NUM_ITEMS = 6


def test_item_popularity_counts_interactions():
    counts = item_popularity(TRAIN, NUM_ITEMS)
    assert counts[0] == -np.inf
    assert counts[1:].tolist() == [3, 2, 4, 1, 2, 0]
    with pytest.raises(ValueError, match="id 7 is outside"):
        item_popularity({1: [7]}, NUM_ITEMS)


def test_popularity_sequential_ranking_with_ties_to_the_lower_id():
    baseline = PopularityBaseline(TRAIN, NUM_ITEMS)
    ranked = recommend_sequential(baseline, [1, 2], top_k=6)
    # 3 (4) > 1 (3) > 2 = 5 (2, tie -> 2 first) > 4 (1) > 6 (0); the same list for everyone; item 0 never.
    assert ranked == [[3, 1, 2, 5, 4, 6], [3, 1, 2, 5, 4, 6]]
    assert recommend_sequential(baseline, [1], top_k=3) == [[3, 1, 2]]
    assert recommend_sequential(baseline, [1], top_k=50) == [[3, 1, 2, 5, 4, 6]]  # k > catalogue: whole catalogue


def test_sequential_history_exclusion_is_an_option_off_by_default():
    baseline = PopularityBaseline(TRAIN, NUM_ITEMS)
    history = {1: TRAIN[1]}
    assert recommend_sequential(baseline, [1], top_k=3, histories=history) == [[3, 1, 2]]
    assert recommend_sequential(baseline, [1], top_k=3, histories=history, exclude_history=True) == [[5, 4, 6]]
    with pytest.raises(ValueError, match="histories"):
        recommend_sequential(baseline, [1], exclude_history=True)


def test_popularity_topn_ranks_only_the_candidates():
    baseline = PopularityBaseline(TRAIN, NUM_ITEMS)
    ranked = recommend_topn(baseline, [1, 2], [[6, 5, 2, 4], [4, 6, 1, 3]], top_k=3)
    assert ranked == [[2, 5, 4], [3, 1, 4]]
    with pytest.raises(ValueError, match="repeat"):
        recommend_topn(baseline, [1], [[2, 2, 4]])
    with pytest.raises(ValueError, match="candidate item id 9"):
        recommend_topn(baseline, [1], [[2, 9]])


def test_pmf_scores_are_dot_products():
    users = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # user 1 likes dimension 0, user 2 dimension 1
    items = torch.tensor([[0.0, 0.0], [0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.9, 0.1]])
    baseline = PMFBaseline(users, items)
    assert recommend_sequential(baseline, [1, 2], top_k=4) == [[3, 4, 2, 1], [1, 2, 3, 4]]  # 3 = 4 tie -> 3
    assert recommend_topn(baseline, [2], [[4, 2]], top_k=2) == [[2, 4]]
    with pytest.raises(ValueError, match="user id 3"):
        baseline.score_items([3])
    with pytest.raises(ValueError, match="same factorisation"):
        PMFBaseline(users, items[:, :1])


BLOCKS = {user: [1, 2, 3] if user <= 4 else [4, 5, 6] for user in range(1, 9)}  # two groups, two item blocks


def test_pmf_fit_is_seeded_and_needs_negatives_to_separate_blocks():
    first = PMFBaseline.fit(BLOCKS, num_users=8, num_items=6, k=4, seed=0, max_iter=300, learning_rate=0.05)
    second = PMFBaseline.fit(BLOCKS, num_users=8, num_items=6, k=4, seed=0, max_iter=300, learning_rate=0.05)
    np.testing.assert_array_equal(first.score_items([1, 5]), second.score_items([1, 5]))
    # With sampled unobserved items as rating 0 (train_pmf's default) PMF recovers both blocks ...
    ranked = recommend_sequential(first, [1, 5], top_k=3)
    assert sorted(ranked[0]) == [1, 2, 3] and sorted(ranked[1]) == [4, 5, 6]
    # ... while on positives alone every observed rating is 1.0 and PMF fits them all with large dot products
    # (sigmoid near 1 everywhere) without separating the blocks.
    positives_only = PMFBaseline.fit(BLOCKS, num_users=8, num_items=6, k=4, seed=0, max_iter=300,
                                     learning_rate=0.05, negatives_per_positive=0)
    assert positives_only.score_items([1, 5])[:, 1:].min() > 1.0


def test_bpr_fit_is_seeded_and_learns_the_block_structure():
    first = BPRBaseline.fit(BLOCKS, num_users=8, num_items=6, k=4, seed=0, max_iter=500, learning_rate=0.05)
    second = BPRBaseline.fit(BLOCKS, num_users=8, num_items=6, k=4, seed=0, max_iter=500, learning_rate=0.05)
    np.testing.assert_array_equal(first.score_items([1, 5]), second.score_items([1, 5]))
    ranked = recommend_sequential(first, [1, 5], top_k=3)
    assert sorted(ranked[0]) == [1, 2, 3]
    assert sorted(ranked[1]) == [4, 5, 6]


def test_rank_helpers_drop_excluded_and_break_ties_by_id():
    assert rank_by_score(np.array([[-np.inf, 1.0, -np.inf]]), top_k=3).tolist() == [[1, -1, -1]]
    assert rank_candidates([[9, 4, 7]], [[0.5, 0.5, 0.9]], top_k=3) == [[7, 4, 9]]
    with pytest.raises(ValueError, match="top_k"):
        rank_by_score(np.zeros((1, 3)), top_k=0)
