"""P5/POD folders (Beauty, Toys from ../shared), leave-one-out, fixed negatives, re-indexing, bad input."""

import json

import numpy as np
import pytest

from datasets_scripts.p5_format import (
    P5Data,
    read_datamaps,
    read_negatives,
    read_p5_dir,
    read_sequential,
    write_negatives,
    write_p5_dir,
)
from datasets_scripts.splits import (
    fixed_negatives,
    leave_one_out,
    reindex_items,
    sample_negatives,
    take_first_users,
)

# ../shared/data/README.md's table: users, items, interactions, shortest and longest history.
EXPECTED = {"beauty": (22_363, 12_101, 198_502, 5, 204), "toys": (19_412, 11_924, 167_597, 5, 550)}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def amazon(request, shared_data_dir):
    folder = shared_data_dir / "amazon" / request.param
    if not folder.exists():
        pytest.skip(f"{folder} is absent")
    return request.param, read_p5_dir(folder)


def test_amazon_statistics_match_the_readme(amazon):
    name, data = amazon
    users, items, interactions, shortest, longest = EXPECTED[name]
    lengths = [len(history) for history in data.histories.values()]
    assert (data.num_users, data.num_items, data.num_interactions) == (users, items, interactions)
    assert len(data.histories) == users
    assert len({item for history in data.histories.values() for item in history}) == items
    assert (min(lengths), max(lengths)) == (shortest, longest)


def test_leave_one_out_targets_are_the_last_two_items(amazon):
    _, data = amazon
    split = leave_one_out(data.histories)
    for user, items in data.histories.items():
        assert split.train[user] + [split.validation[user], split.test[user]] == items
        assert split.validation[user] == items[-2] and split.test[user] == items[-1]


def test_fixed_negatives_are_disjoint_distinct_and_seeded(amazon, tmp_path):
    _, data = amazon
    users = sorted(data.histories)[:3000]  # a slice keeps the test fast; the sampler is per user
    histories = {user: data.histories[user] for user in users}
    validation = fixed_negatives(histories, data.num_items, "validation", seed=7)
    test = fixed_negatives(histories, data.num_items, "test", seed=7)
    for user, negatives in test.items():
        assert len(negatives) == 99 and len(set(negatives)) == 99
        assert not set(negatives) & set(histories[user])
        assert all(1 <= item <= data.num_items for item in negatives)
    assert validation != test  # each split has its own stream
    assert fixed_negatives(histories, data.num_items, "test", seed=7) == test
    assert fixed_negatives(histories, data.num_items, "test", seed=8) != test
    write_negatives(tmp_path / "negatives_test.txt", test)
    assert read_negatives(tmp_path / "negatives_test.txt", histories=histories, num_negatives=99) == test


def test_reindexing_is_a_bijection_preserving_histories(amazon):
    _, data = amazon
    reindexed, old_to_new = reindex_items(data, seed=3)
    assert sorted(old_to_new) == list(range(1, data.num_items + 1))
    assert sorted(old_to_new.values()) == list(range(1, data.num_items + 1))
    assert old_to_new != {item: item for item in old_to_new}
    for user, items in data.histories.items():
        assert reindexed.histories[user] == [old_to_new[item] for item in items]
    for old, new in old_to_new.items():
        assert reindexed.id2item[new] == data.id2item[old]
    assert reindex_items(data, seed=3)[1] == old_to_new

    # The P5 id space leaks (a test item is often max(history) + 1); the permutation removes the shortcut.
    def shortcut_rate(histories):
        return np.mean([items[-1] == max(items[:-1]) + 1 for items in histories.values()])

    assert shortcut_rate(data.histories) > 0.03
    assert shortcut_rate(reindexed.histories) < 0.01


def test_take_first_users_compacts_ids_in_order(amazon):
    _, data = amazon
    small = take_first_users(data, 50)
    assert sorted(small.histories) == list(range(1, 51))
    assert sorted(small.id2item) == list(range(1, small.num_items + 1))
    for user in range(1, 51):
        assert [small.id2item[i] for i in small.histories[user]] == [data.id2item[i] for i in data.histories[user]]


def test_sample_negatives_small_catalogue_path():
    rng = np.random.default_rng(0)
    negatives = sample_negatives(rng, excluded={1, 2, 3}, num_items=110, num_negatives=99)
    assert len(set(negatives)) == 99 and not {1, 2, 3} & set(negatives)
    with pytest.raises(ValueError, match="only 97"):
        sample_negatives(rng, excluded={1, 2, 3}, num_items=100, num_negatives=99)


def test_round_trip_of_a_p5_folder(tmp_path):
    data = P5Data(
        histories={1: [1, 2, 3], 2: [3, 2, 4, 1]},
        id2user={1: "A", 2: "B"},
        id2item={1: "i1", 2: "i2", 3: "i3", 4: "i4"},
        explanations={
            "train": [{"user": 1, "item": 1, "explanation": "Nice strings.", "feature": "strings"}],
            "validation": [],
            "test": [],
        },
    )
    write_p5_dir(tmp_path, data)
    again = read_p5_dir(tmp_path)
    assert (again.histories, again.id2user, again.id2item, again.explanations) == (
        data.histories, data.id2user, data.id2item, data.explanations
    )


# Bad input -----------------------------------------------------------------------------------------------------

BAD_SEQUENTIAL = {
    "non_integer": ("1 1 2 3\n2 4 x5 6\n", r"sequential.txt:2: non-integer token 'x5'"),
    "empty_line": ("1 1 2 3\n\n2 4 5 6\n", r"sequential.txt:2: empty line"),
    "duplicate_user": ("1 1 2 3\n1 4 5 6\n", r"sequential.txt:2: duplicate user 1"),
    "short_history": ("1 1 2 3\n2 4 5\n", r"user 2 has 2 item\(s\)"),
    "zero_id": ("1 0 2 3\n", r"sequential.txt:1: id 0"),
}


def write_folder(folder, sequential, num_users=2, num_items=6):
    folder.mkdir()
    (folder / "sequential.txt").write_text(sequential)
    maps = {
        "id2user": {str(u): f"U{u}" for u in range(1, num_users + 1)},
        "id2item": {str(i): f"I{i}" for i in range(1, num_items + 1)},
    }
    (folder / "datamaps.json").write_text(json.dumps(maps))
    return folder


@pytest.mark.parametrize("case", sorted(BAD_SEQUENTIAL))
def test_bad_sequential_files_are_rejected(case, tmp_path):
    text, message = BAD_SEQUENTIAL[case]
    folder = write_folder(tmp_path / "p5", text)
    with pytest.raises(ValueError, match=message):
        read_sequential(folder / "sequential.txt")


def test_ids_missing_from_datamaps(tmp_path):
    folder = write_folder(tmp_path / "p5", "1 1 2 3\n2 4 5 9\n")
    with pytest.raises(ValueError, match=r"items \[9\] of user 2 are missing from datamaps.json"):
        read_p5_dir(folder)
    folder = write_folder(tmp_path / "p5b", "1 1 2 3\n3 4 5 6\n", num_users=2)
    with pytest.raises(ValueError, match="user 3 is missing from datamaps.json"):
        read_p5_dir(folder)


def test_malformed_datamaps_json(tmp_path):
    folder = write_folder(tmp_path / "p5", "1 1 2 3\n2 4 5 6\n")
    (folder / "datamaps.json").write_text('{"id2user": {"1": "A",\n "2": }\n}')
    with pytest.raises(ValueError, match=r"datamaps.json:2: malformed JSON"):
        read_datamaps(folder / "datamaps.json")


def test_malformed_explanation_records(tmp_path):
    folder = write_folder(tmp_path / "p5", "1 1 2 3\n2 4 5 6\n")
    incomplete = {"train": [{"user": 1, "item": 2}], "validation": [], "test": []}
    (folder / "explanation.json").write_text(json.dumps(incomplete))
    with pytest.raises(ValueError, match=r"train\[0\]: expected an object with keys"):
        read_p5_dir(folder)
    unknown_item = {"user": 1, "item": 7, "explanation": "x y", "feature": "x"}
    (folder / "explanation.json").write_text(json.dumps({"train": [unknown_item], "validation": [], "test": []}))
    with pytest.raises(ValueError, match="names an id missing from datamaps.json"):
        read_p5_dir(folder)
