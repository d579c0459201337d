"""Most-popular, PMF and Markov-chain baselines on hand-made data: known rankings, tie rule, history rule,
candidates."""

import numpy as np
import pytest
import torch

from training.evaluation.baselines import (
    BPRBaseline,
    MarkovChainBaseline,
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


# Training transitions of TRAIN: 3->1 (users 1, 2), 1->2, 1->5, 3->5, 5->1, 3->2, 2->4; nothing follows 4 or 6.
# Popularity (the tie-break): 3 (4) > 1 (3) > 2 = 5 (2) > 4 (1) > 6 (0).


def test_markov_chain_ranks_by_transition_counts_then_popularity_then_id():
    baseline = MarkovChainBaseline(TRAIN, NUM_ITEMS)
    histories = {1: [2, 3], 2: [6, 1], 3: [4], 4: [1, 5]}
    ranked = recommend_sequential(baseline, [1, 2, 3, 4], top_k=6, histories=histories)
    assert ranked == [
        [1, 2, 5, 3, 4, 6],  # after 3: 1 (2 steps), then 2 and 5 (1 each; equal popularity -> lower id), the rest
        [2, 5, 3, 1, 4, 6],  # after 1: 2 and 5, then by popularity
        [3, 1, 2, 5, 4, 6],  # after 4: never followed by anything -> pure popularity
        [1, 3, 2, 5, 4, 6],  # after 5: 1, then by popularity
    ]
    # Only the last item of the history matters.
    assert recommend_sequential(baseline, [1], 3, {1: [6, 4, 2, 1]}) == recommend_sequential(baseline, [1], 3, {1: [1]})
    assert recommend_sequential(baseline, [1], 3, {1: [1]}, exclude_history=True) == [[2, 5, 3]]


def test_markov_chain_top_n_and_missing_histories():
    baseline = MarkovChainBaseline(TRAIN, NUM_ITEMS)
    ranked = recommend_topn(baseline, [1, 2], [[6, 5, 2, 4], [6, 4, 2, 1]], top_k=4, histories={1: [1], 2: [5]})
    assert ranked == [[2, 5, 4, 6], [1, 2, 4, 6]]
    with pytest.raises(ValueError, match="pass histories"):
        recommend_topn(baseline, [1], [[6, 5]])
    with pytest.raises(ValueError, match="non-empty history for every user; none for user 2"):
        recommend_sequential(baseline, [1, 2], histories={1: [3]})
    with pytest.raises(ValueError, match="id 9 is outside"):
        recommend_sequential(baseline, [1], histories={1: [9]})


def test_markov_chain_is_a_near_oracle_on_the_history_variant_and_weak_on_user():
    from datasets_scripts.splits import leave_one_out
    from datasets_scripts.synthetic import synthetic_data

    hit_rates = {}
    for variant in ("history", "user"):
        data = synthetic_data(variant, seed=0)
        split = leave_one_out(data.histories)
        users = sorted(data.histories)
        baseline = MarkovChainBaseline(split.train, data.num_items)
        inputs = {user: data.histories[user][:-1] for user in users}
        ranked = recommend_sequential(baseline, users, 10, inputs)
        hit_rates[variant] = np.mean([split.test[user] in row for user, row in zip(users, ranked)])
    assert hit_rates["history"] > 0.95 and hit_rates["user"] < 0.6
