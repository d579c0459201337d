"""The synthetic demo data: deterministic per seed, with the structure it promises; templates and samples."""

import itertools
import time

import numpy as np
import pytest

from datasets_scripts.build_dataset import build_samples
from datasets_scripts.splits import fixed_negatives, leave_one_out
from datasets_scripts.synthetic import (
    CATEGORY_FEATURES,
    SyntheticConfig,
    generate_synthetic,
)
from datasets_scripts.templates import (
    EVAL_TEMPLATES,
    MAX_HISTORY,
    TASKS,
    TRAIN_TEMPLATES,
    render,
)


@pytest.fixture(scope="module")
def synthetic():
    return generate_synthetic(SyntheticConfig(seed=0))


def test_deterministic_per_seed_and_fast():
    started = time.perf_counter()
    first = generate_synthetic(SyntheticConfig(seed=5))
    assert time.perf_counter() - started < 5
    again = generate_synthetic(SyntheticConfig(seed=5))
    other = generate_synthetic(SyntheticConfig(seed=6))
    assert first.histories == again.histories and first.explanations == again.explanations
    assert first.histories != other.histories


def test_shape_and_explanation_split(synthetic):
    config = SyntheticConfig()
    assert synthetic.num_users == config.num_users and synthetic.num_items == config.num_items
    assert all(config.min_history <= len(h) <= config.max_history for h in synthetic.histories.values())
    assert all(len(set(h)) == len(h) for h in synthetic.histories.values())
    split = leave_one_out(synthetic.histories)
    train_pairs = {(r["user"], r["item"]) for r in synthetic.explanations["train"]}
    assert not train_pairs & split.eval_pairs()
    assert all(len(synthetic.explanations[name]) > 0 for name in ("validation", "test"))


def test_communities_share_items_far_more_than_strangers(synthetic):
    community = synthetic.extra["_structure"]["user_community"]
    item_sets = {user: set(items) for user, items in synthetic.histories.items()}
    same, across = [], []
    for a, b in itertools.combinations(sorted(item_sets), 2):
        jaccard = len(item_sets[a] & item_sets[b]) / len(item_sets[a] | item_sets[b])
        (same if community[a] == community[b] else across).append(jaccard)
    assert np.mean(same) > 4 * np.mean(across)


def test_sequential_habits_follow_the_community_chain(synthetic):
    structure = synthetic.extra["_structure"]
    config = SyntheticConfig()
    chains = structure["community_chains"]

    def chain_step_rate(pick_chain):
        follows, steps = 0, 0
        for user, items in synthetic.histories.items():
            chain = pick_chain(structure["user_community"][user])
            position = {item: index for index, item in enumerate(chain)}
            for previous, current in zip(items, items[1:]):
                steps += 1
                if previous in position and current in position:
                    gap = (position[current] - position[previous]) % len(chain)
                    follows += 1 <= gap <= 3  # the next unseen chain item (a few may have been seen already)
        return follows / steps

    own = chain_step_rate(lambda community: chains[community])
    # The other community shopping in the same category walks it in another order.
    other = chain_step_rate(lambda community: chains[(community + config.num_categories) % config.num_communities])
    assert sorted(chains[0]) == sorted(chains[config.num_categories])
    assert own > 0.5 and other < 0.15 and own > 5 * other


def test_explanations_name_features_of_their_item(synthetic):
    structure = synthetic.extra["_structure"]
    for record in synthetic.explanations["train"]:
        assert record["feature"] in structure["item_features"][record["item"]]
        assert record["feature"] in record["explanation"]
        category = CATEGORY_FEATURES[structure["item_category"][record["item"]]][1]
        assert record["feature"] in category


def test_templates_render_ids_and_truncate_history():
    for task in TASKS:
        assert len(TRAIN_TEMPLATES[task]) >= 3 and EVAL_TEMPLATES[task] not in TRAIN_TEMPLATES[task]
        for template in (*TRAIN_TEMPLATES[task], EVAL_TEMPLATES[task]):
            text = render(template, user=7, history=list(range(1, 31)), candidates=[4, 5], item=9)
            assert "user_7" in text
            if task == "sequential":
                assert "item_11, item_12" in text and "item_10," not in text and text.count("item_") == MAX_HISTORY
            if task == "topn":
                assert "item_4, item_5" in text
            if task == "explanation":
                assert "item_9" in text


def test_samples_follow_the_protocol(synthetic):
    histories = {user: synthetic.histories[user] for user in range(1, 61)}
    explanations = {
        name: [r for r in records if r["user"] in histories] for name, records in synthetic.explanations.items()
    }
    negatives = {name: fixed_negatives(histories, synthetic.num_items, name, 0) for name in ("validation", "test")}
    samples = build_samples(histories, synthetic.num_items, negatives, explanations, seed=0)
    again = build_samples(histories, synthetic.num_items, negatives, explanations, seed=0)
    assert samples == again
    assert samples["topn_train"]["candidates"] != build_samples(
        histories, synthetic.num_items, negatives, explanations, seed=1
    )["topn_train"]["candidates"]

    sequential = samples["sequential_train"]
    assert len(sequential["source"]) == sum(len(h) - 3 for h in histories.values())
    for user, item, target in zip(sequential["user_id"], sequential["item_id"], sequential["target"]):
        assert target == str(item) and item in histories[user][:-2]
    assert len(set(sequential["source"])) > 1
    assert samples["sequential_test"]["item_id"] == [histories[u][-1] for u in sorted(histories)]
    assert samples["sequential_validation"]["item_id"] == [histories[u][-2] for u in sorted(histories)]

    topn = samples["topn_train"]
    assert len(topn["source"]) == sum(len(h) - 2 for h in histories.values())
    for user, item, candidates in zip(topn["user_id"], topn["item_id"], topn["candidates"]):
        assert len(candidates) == 100 and len(set(candidates)) == 100 and item in candidates
        assert set(candidates) & set(histories[user]) == {item}
    positions = [candidates.index(item) for item, candidates in zip(topn["item_id"], topn["candidates"])]
    assert len(set(positions)) > 10  # shuffled, not always first
    for user, item, candidates in zip(*(samples["topn_test"][c] for c in ("user_id", "item_id", "candidates"))):
        assert sorted(candidates) == sorted([item, *negatives["test"][user]])
    plain_prefix = EVAL_TEMPLATES["topn"].split("{candidates}")[0].format(user=1)
    assert samples["topn_test"]["source"][0].startswith(plain_prefix)

    explanation = samples["explanation_train"]
    assert explanation["target"] == [r["explanation"] for r in explanations["train"]]
    assert set(samples["explanation_test"]["task_id"]) == {2}
