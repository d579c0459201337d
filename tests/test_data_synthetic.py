"""The synthetic demo data: deterministic per seed, with the structure it promises; templates and samples."""

import itertools

import numpy as np
import pytest

from datasets_scripts.build_dataset import build_samples
from datasets_scripts.splits import fixed_negatives, leave_one_out
from datasets_scripts.synthetic import (
    CATEGORY_FEATURES,
    PLANTED_VARIANTS,
    PlantedConfig,
    SyntheticConfig,
    clique_mates,
    generate_planted,
    generate_synthetic,
    planted_clique_mates,
    planted_oracle_scores,
    planted_structure,
    synthetic_data,
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


def test_deterministic_per_seed():
    first = generate_synthetic(SyntheticConfig(seed=5))
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
            for previous, current in itertools.pairwise(items):
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


# Planted-signal variants ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    return {variant: synthetic_data(variant, seed=0) for variant in PLANTED_VARIANTS}


def _train_histories(data):
    return leave_one_out(data.histories).train


@pytest.mark.parametrize("variant", PLANTED_VARIANTS)
def test_planted_variants_are_deterministic_per_seed_and_well_formed(variant, planted):
    data = planted[variant]
    again = synthetic_data(variant, seed=0)
    other = synthetic_data(variant, seed=1)
    assert data.histories == again.histories and data.explanations == again.explanations
    assert data.extra["_structure"] == again.extra["_structure"] and data.id2item == again.id2item
    assert data.histories != other.histories
    config = PlantedConfig.for_variant(variant)
    assert data.num_users == config.num_users and data.num_items == config.num_items
    assert sorted(data.histories) == list(range(1, config.num_users + 1))
    structure = data.extra["_structure"]
    for user, history in data.histories.items():
        hits = 0  # neighbors: min/max_history count the pool items; the clique's hits come on top
        if variant == "neighbors":
            hits = len(structure["clique_hits"][structure["user_clique"][user]]) - 2
        assert config.min_history + 2 <= len(history) - hits <= config.max_history + 2
        assert len(set(history)) == len(history) and all(1 <= i <= config.num_items for i in history)
    train_pairs = {(r["user"], r["item"]) for r in data.explanations["train"]}
    assert not train_pairs & leave_one_out(data.histories).eval_pairs()
    for record in data.explanations["train"][:200]:
        assert record["feature"] in data.extra["_structure"]["item_features"][record["item"]]


def test_history_variant_held_out_items_are_successors_of_the_last_item(planted):
    data = planted["history"]
    successor = data.extra["_structure"]["successor"]
    assert sorted(successor) == sorted(successor.values()) == list(range(1, data.num_items + 1))
    item, cycle = 1, set()
    while item not in cycle:  # one single cycle through the whole catalogue
        cycle.add(item)
        item = successor[item]
    assert len(cycle) == data.num_items
    follows = steps = 0
    for history in data.histories.values():
        train, validation, test = history[:-2], history[-2], history[-1]
        assert validation == successor[train[-1]] and test == successor[validation]
        follows += sum(successor[a] == b for a, b in itertools.pairwise(train))
        steps += len(train) - 1
    config = PlantedConfig.for_variant("history")
    assert follows / steps > 1 - 2 * config.p_noise  # training steps follow the successor too (up to noise)
    # Random ids: successors are not id + 1 (no id arithmetic helps).
    assert sum(successor[i] == i + 1 for i in successor) < 5


def test_user_variant_held_out_items_come_from_the_users_taste_set(planted):
    data = planted["user"]
    structure = data.extra["_structure"]
    taste_of = structure["item_taste"]
    in_taste, last_in_taste = [], []
    for user, history in data.histories.items():
        community = structure["user_community"][user]
        assert all(taste_of[item] == community for item in history[-2:])
        train = history[:-2]
        in_taste += [taste_of.get(item) == community for item in train]
        last_in_taste.append(taste_of.get(train[-1]) == community)
    noise = PlantedConfig.for_variant("user").p_noise
    assert abs(np.mean(in_taste) - (1 - noise)) < 0.03  # training items follow the taste, up to impulse items
    assert abs(np.mean(last_in_taste) - (1 - noise)) < 0.05  # the last item is no more telling than any other
    sets = structure["taste_items"]
    assert len({item for members in sets for item in members}) == sum(len(members) for members in sets)  # disjoint


def test_neighbors_variant_held_out_item_is_absent_from_own_history_and_taken_by_clique_mates(planted):
    data = planted["neighbors"]
    structure = data.extra["_structure"]
    train = _train_histories(data)
    mates_of = clique_mates(structure)
    assert all(user in mates_of[mate] for user, mates in mates_of.items() for mate in mates)  # symmetric
    for user, history in data.histories.items():
        clique = structure["user_clique"][user]
        mates = sorted(mates_of[user])
        assert user not in mates and len(mates) == len(structure["clique_members"][clique]) - 1
        test = history[-1]
        assert test in structure["clique_hits"][clique] and test not in train[user]
        assert all(test in train[m] for m in mates)  # every clique-mate took it in training
        community = structure["user_community"][user]
        assert test not in structure["community_pools"][community]  # foreign to the user's own taste
        # The user's own items say nothing about which foreign hit: no other user of the community outside the
        # clique took it.
        others = [u for u, c in structure["user_community"].items() if c == community and u not in mates + [user]]
        assert not any(test in train[u] for u in others)


@pytest.mark.parametrize("variant", PLANTED_VARIANTS)
def test_the_oracle_ranks_the_held_out_item_first(variant, planted):
    data = planted[variant]
    structure = data.extra["_structure"]
    users = sorted(data.histories)[:100]
    inputs = {user: data.histories[user][:-1] for user in users}  # the sequential test input
    scores = planted_oracle_scores(structure, users, inputs, data.num_items)
    top = scores.argmax(axis=1)
    targets = np.array([data.histories[user][-1] for user in users])
    if variant == "user":  # any unseen item of the cell is as good: the target is among the top-scored
        assert all(scores[row, targets[row]] == scores[row].max() for row in range(len(users)))
    else:
        assert (top == targets).all()
    train_inputs = {user: data.histories[user][:-2] for user in users}  # what the top-n model knows
    scores = planted_oracle_scores(structure, users, train_inputs, data.num_items)
    validation = [data.histories[user][-2] for user in users]
    scores[np.arange(len(users)), validation] = -np.inf  # never a test candidate (it is in the full history)
    assert all(scores[row, targets[row]] == scores[row].max() for row in range(len(users)))


def test_planted_config_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="planted variant"):
        PlantedConfig.for_variant("nope")
    with pytest.raises(ValueError, match="negatives"):
        generate_planted(PlantedConfig.for_variant("history", num_items=100))
    with pytest.raises(ValueError, match="foreign"):
        generate_planted(PlantedConfig.for_variant("neighbors", num_users=3000))


def test_prepare_threads_the_variant_through(tokenizer, tmp_path):
    from configuration_peapod import PeaPODInputError
    from datasets_scripts import load_prepared, prepare

    with pytest.raises(PeaPODInputError, match="needs --synthetic"):
        prepare(tmp_path / "x", p5_dir=str(tmp_path), synthetic_variant="user")
    with pytest.raises(PeaPODInputError, match="--synthetic_variant 'nope'"):
        prepare(tmp_path / "x", synthetic=True, synthetic_variant="nope")
    config = prepare(
        tmp_path / "history", synthetic=True, synthetic_variant="history", seed=3, tokenizer=tokenizer.name_or_path,
        embedding_dim=8, num_neighbors=4, max_users=12, pmf_max_iter=2, reindex_items=True,
    )
    assert config["arguments"]["synthetic_variant"] == "history"
    prepared = load_prepared(tmp_path / "history", load_dataset=False)
    expected = synthetic_data("history", seed=3)
    # max_users compacts the item ids and reindex_items permutes them; the datamaps keep the generator's names.
    for user in range(1, 13):
        assert [prepared.id2item[i] for i in prepared.histories[user]] == [
            expected.id2item[i] for i in expected.histories[user]
        ]
    # The ground truth maps onto the folder's ids: the oracle still finds every test item.
    structure = planted_structure(prepared)
    users = sorted(prepared.histories)
    scores = planted_oracle_scores(structure, users, {u: prepared.histories[u][:-1] for u in users}, prepared.num_items)
    assert scores.argmax(axis=1).tolist() == [prepared.histories[u][-1] for u in users]
    with pytest.raises(PeaPODInputError, match="`neighbors` variant only, not 'history'"):
        clique_mates(structure)
    assert planted_clique_mates(prepared) is None  # no clique-mates to measure attention against
    # The same through the evaluation runner: the oracle baseline finds every test item first.
    from training.evaluation import evaluate_checkpoint

    report = evaluate_checkpoint(
        None, tokenizer, load_prepared(tmp_path / "history"), tasks=("sequential", "topn"), baselines=("oracle",),
        show_progress=False,
    )
    assert {task: m["hr@1"] for task, m in report["baselines"]["oracle"].items()} == {"sequential": 1.0, "topn": 1.0}
    default = prepare(
        tmp_path / "default", synthetic=True, tokenizer=tokenizer.name_or_path, embedding_dim=8, num_neighbors=4,
        max_users=40, pmf_max_iter=2,
    )
    assert default["arguments"]["synthetic_variant"] == "default"
    with pytest.raises(PeaPODInputError, match="not a planted-signal"):
        planted_structure(load_prepared(tmp_path / "default", load_dataset=False))
