"""The neighbour diagnostic, BPR as a user-embedding source, and `peapod-prepare --embedding best`."""

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import TOKENIZER_DIR, console_script, skip_without_shared

from datasets_scripts import load_prepared, prepare
from datasets_scripts.cli import main
from datasets_scripts.neighbor_diagnostic import (
    neighbor_hit_rate,
    neighbor_hits,
    prepared_neighbor_diagnostic,
    random_neighbor_table,
)
from datasets_scripts.prepared import (
    PrepareArguments,
    _user_table_by_diagnostic,
    describe_neighbor_diagnostic,
)
from datasets_scripts.user_embeddings import cornac_train_set, train_bpr


@pytest.fixture(scope="module")
def tokenizer_dir():
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        skip_without_shared(f"the T5 tokenizer is not at {TOKENIZER_DIR} (../shared beside the repository)")
    return str(TOKENIZER_DIR)


# The diagnostic on hand-built tables ---------------------------------------------------------------------------

# Users 1-4; each user's one neighbour is its pair-mate (1<->2, 3<->4).
TRAIN = {1: [10, 11], 2: [12, 13], 3: [14], 4: [15, 16]}
PAIRS = torch.tensor([[0], [2], [1], [4], [3]])


def test_hit_when_a_neighbour_trained_on_the_held_out_item():
    held_out = {1: 12, 2: 11, 3: 16, 4: 17}  # 1 and 2: in the mate's history; 3: in 4's; 4: in nobody's
    assert neighbor_hits(PAIRS, TRAIN, held_out).tolist() == [True, True, True, False]
    assert neighbor_hit_rate(PAIRS, TRAIN, held_out) == 0.75


def test_own_history_and_non_neighbours_do_not_count():
    # user 1's item 10 is in its own history, user 3's item 10 is in user 1's (not a neighbour of 3)
    assert neighbor_hit_rate(PAIRS, TRAIN, {1: 10, 3: 10}) == 0.0
    two = torch.tensor([[0, 0], [2, 3], [1, 4], [4, 1], [3, 2]])  # now 3 has 1 as its second neighbour
    assert neighbor_hits(two, TRAIN, {1: 10, 3: 10}).tolist() == [False, True]


def test_padding_neighbour_zero_never_matches():
    table = np.array([[0], [0], [0]])
    assert neighbor_hit_rate(table, {1: [5], 2: [5]}, {1: 5, 2: 5}) == 0.0


def test_matches_a_plain_loop_on_random_data():
    rng = np.random.default_rng(1)
    num_users, num_items = 60, 40
    train = {u: rng.choice(num_items, size=rng.integers(0, 6), replace=False).tolist() for u in range(1, num_users + 1)}
    train = {u: [i + 1 for i in items] for u, items in train.items()}
    held_out = {u: int(rng.integers(1, num_items + 1)) for u in rng.permutation(np.arange(1, num_users + 1))[:45]}
    table = random_neighbor_table(num_users, 4, seed=3)
    expected = [any(item in train[int(v)] for v in table[u]) for u, item in held_out.items()]
    assert neighbor_hits(table, train, held_out).tolist() == expected
    assert 0 < sum(expected) < len(expected)  # the case is not degenerate


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="held_out is empty"):
        neighbor_hit_rate(PAIRS, TRAIN, {})
    with pytest.raises(ValueError, match="rows 0..4"):
        neighbor_hit_rate(PAIRS, TRAIN, {5: 10})
    with pytest.raises(ValueError, match="2-D"):
        neighbor_hit_rate(torch.zeros(5, dtype=torch.long), TRAIN, {1: 10})


@pytest.mark.parametrize("num_users, num_neighbors", [(500, 7), (12, 11)])  # rejection draws; ranked keys
def test_random_neighbor_table(num_users, num_neighbors):
    table = random_neighbor_table(num_users, num_neighbors, seed=5)
    assert table.shape == (num_users + 1, num_neighbors) and not table[0].any()
    rows = table[1:]
    assert rows.min() >= 1 and rows.max() <= num_users
    assert not (rows == torch.arange(1, num_users + 1)[:, None]).any()  # never the user itself
    ordered = rows.sort(dim=1).values
    assert not (ordered[:, 1:] == ordered[:, :-1]).any()  # distinct
    assert torch.equal(table, random_neighbor_table(num_users, num_neighbors, seed=5))
    assert not torch.equal(table, random_neighbor_table(num_users, num_neighbors, seed=6))
    with pytest.raises(ValueError, match="num_neighbors"):
        random_neighbor_table(num_users, num_users, seed=0)


# BPR ------------------------------------------------------------------------------------------------------------


def test_bpr_rows_are_cornac_factors_at_our_ids():
    import cornac

    rng = np.random.default_rng(0)
    histories = {int(u): rng.choice(np.arange(1, 21), size=5, replace=False).tolist() for u in rng.permutation(8) + 1}
    users, items = train_bpr(histories, num_users=9, num_items=22, k=6, seed=4, max_iter=20)
    assert users.shape == (10, 6) and items.shape == (23, 6) and users.dtype == torch.float32
    assert not users[0].any() and not users[9].any() and not items[0].any() and not items[22].any()

    train_set = cornac_train_set(histories, 9, 22, seed=4)
    model = cornac.models.BPR(k=6, max_iter=20, learning_rate=1e-2, lambda_reg=1e-2, seed=4)
    model.fit(train_set)
    assert list(train_set.uid_map) != sorted(train_set.uid_map)  # cornac's order is not ours: the map matters
    for our_user, index in train_set.uid_map.items():
        assert torch.equal(users[our_user], torch.from_numpy(model.u_factors[index]))
    for our_item, index in train_set.iid_map.items():
        assert torch.equal(items[our_item], torch.from_numpy(model.i_factors[index]))


# Choosing a source ------------------------------------------------------------------------------------------------

# For the four users of TRAIN: a table whose neighbours trained on each validation item (GOOD) and one whose
# neighbours never did (BAD), for `best` to choose between.
GOOD = torch.tensor([[0], [2], [1], [4], [3]])
BAD = torch.tensor([[0], [3], [4], [1], [2]])
VALIDATION = {1: 12, 2: 10, 3: 15, 4: 14}  # each in the GOOD mate's history, in no BAD mate's


@pytest.mark.parametrize("good", ["pmf", "bpr"])
def test_best_keeps_the_source_with_the_higher_figure(good, monkeypatch):
    import datasets_scripts.prepared as prepared_module

    tables = {good: GOOD, ({"pmf", "bpr"} - {good}).pop(): BAD}

    def fake_user_table(args, train, num_users, num_items, matrix, method=None):
        return torch.full((5, 2), float(method == good)), tables[method], None

    monkeypatch.setattr(prepared_module, "_user_table", fake_user_table)
    args = PrepareArguments(output_dir="unused", synthetic=True, embedding="best", num_neighbors=1,
                            compare_neighbor_sources=["pmf", "bpr", "random"])
    users, neighbors, _, diagnostic = _user_table_by_diagnostic(args, TRAIN, VALIDATION, 4, 20, None)
    assert torch.equal(neighbors, GOOD) and users[1, 0] == 1.0
    assert diagnostic["hit_rates"][good] == 1.0 and diagnostic["chosen"] == good and diagnostic["selection"] == "best"
    assert set(diagnostic["hit_rates"]) == {"pmf", "bpr", "random"}
    # asked for the worse one by name: it is kept, and the other is still reported
    args.embedding = ({"pmf", "bpr"} - {good}).pop()
    _, neighbors, _, diagnostic = _user_table_by_diagnostic(args, TRAIN, VALIDATION, 4, 20, None)
    assert torch.equal(neighbors, BAD) and diagnostic["selection"] == "given" and diagnostic["chosen"] == args.embedding
    assert list(diagnostic["hit_rates"]) == [args.embedding, good, "random"] and diagnostic["hit_rates"][good] == 1.0
    assert diagnostic["hit_rates"][args.embedding] == 0.0
    sentence = describe_neighbor_diagnostic(diagnostic)
    assert sentence.endswith(f"User table from {args.embedding} (as asked; {good} scored higher: --embedding best "
                             f"would choose {good}).")
    assert f"{good} 1.0000" in sentence and f"{args.embedding} 0.0000" in sentence


def _write_p5(folder, histories, num_items):
    folder.mkdir()
    (folder / "sequential.txt").write_text("".join(f"{u} {' '.join(map(str, items))}\n" for u, items in histories.items()))
    (folder / "datamaps.json").write_text(json.dumps({
        "id2user": {str(u): f"U{u}" for u in histories}, "id2item": {str(i): f"I{i}" for i in range(1, num_items + 1)}}))
    return str(folder)


def test_the_diagnostic_never_reads_test_items(tmp_path, tokenizer_dir):
    """Two sources equal but for the test items, chosen so that the test items are all in the neighbours'
    training histories and the validation items in none: the figure is 0 for both and identical."""
    num_users, num_items = 12, 130
    rng = np.random.default_rng(0)
    base = {u: rng.choice(np.arange(1, 101), size=4, replace=False).tolist() for u in range(1, num_users + 1)}
    own_validation = {u: 100 + u for u in base}  # 101..112: in no one's training history
    matrix = tmp_path / "users.npy"
    np.save(matrix, rng.normal(size=(num_users, 4)).astype(np.float32))
    configs = []
    for name, test_item in (("a", lambda u: base[u % num_users + 1][0]), ("b", lambda u: 113 + u % 10)):
        histories = {u: [*base[u], own_validation[u], test_item(u)] for u in base}
        source = _write_p5(tmp_path / f"source-{name}", histories, num_items)
        configs.append(prepare(tmp_path / name, p5_dir=source, tokenizer=tokenizer_dir, embedding=str(matrix),
                               num_neighbors=num_users - 1, compare_neighbor_sources=["random"]))
    diagnostics = [config["neighbor_diagnostic"] for config in configs]
    assert diagnostics[0] == diagnostics[1]
    # all other users are neighbours: a test-item lookup would have hit for every user of source a
    assert diagnostics[0]["hit_rates"] == {"file users.npy": 0.0, "random": 0.0}


def test_bpr_and_best_end_to_end(tmp_path, tokenizer_dir):
    output = tmp_path / "best"
    config = prepare(output, synthetic=True, max_users=40, tokenizer=tokenizer_dir, embedding_dim=8, num_neighbors=4,
                     pmf_max_iter=10, bpr_max_iter=20, embedding="best", compare_neighbor_sources=["pmf", "bpr", "random"])
    diagnostic = config["neighbor_diagnostic"]
    rates = diagnostic["hit_rates"]
    assert set(rates) == {"pmf", "bpr", "random"} and diagnostic["num_users"] == 40
    assert diagnostic["chosen"] == max(["pmf", "bpr"], key=rates.get)  # the first of equals, as listed
    assert json.loads((output / "prepare_config.json").read_text())["neighbor_diagnostic"] == diagnostic
    card = (output / "README.md").read_text()
    assert f"{diagnostic['chosen']} {rates[diagnostic['chosen']]:.4f}" in card and "random neighbours seeded 0" in card
    # what was saved is the winner's table: its own diagnostic reproduces the winner's figure
    data = load_prepared(output, load_dataset=False)
    assert data.item_embeddings.shape == (data.num_items + 1, 8)
    again = prepared_neighbor_diagnostic(output)
    assert round(again["hit_rate"], 4) == rates[diagnostic["chosen"]] and round(again["random_hit_rate"], 4) == rates["random"]

    # --embedding bpr: the same table as train_bpr on the training items, seed and ids as for PMF
    bpr = prepare(tmp_path / "bpr", synthetic=True, max_users=40, tokenizer=tokenizer_dir, embedding_dim=8,
                  num_neighbors=4, bpr_max_iter=20, embedding="bpr")
    assert bpr["neighbor_diagnostic"]["hit_rates"]["bpr"] == rates["bpr"]
    histories = load_prepared(tmp_path / "bpr", load_dataset=False).histories
    users, items = train_bpr({u: h[:-2] for u, h in histories.items()}, 40, data.num_items, k=8, seed=0, max_iter=20)
    saved = load_prepared(tmp_path / "bpr", load_dataset=False)
    assert torch.equal(saved.user_embeddings, users) and torch.equal(saved.item_embeddings, items)


def test_unknown_source_exits_2_with_one_line(tmp_path):
    """The console script as a subprocess: a source name it does not know."""
    done = subprocess.run([console_script("peapod-prepare"), "--synthetic", "--output_dir", str(tmp_path / "out"),
                           "--compare_neighbor_sources", "pmf", "svd"], check=False, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "peapod-prepare: error: --compare_neighbor_sources 'svd': expected any of pmf, bivae, bpr, random"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--embedding", "svd"], "--embedding 'svd' is neither one of"),
    (["--embedding", "best", "--compare_neighbor_sources", "random"], "--embedding best needs a source"),
    (["--bpr_learning_rate", "0"], "--bpr_learning_rate must be > 0"),
    (["--bpr_max_iter", "0"], "--bpr_max_iter must be >= 1"),
])
def test_bad_source_flags(flags, message, tmp_path, capsys):
    assert main(["--synthetic", "--output_dir", str(tmp_path / "out"), *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peapod-prepare: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()
