"""User embeddings (cornac PMF / BiVAE, user-supplied matrices) and the neighbour table (SPEC §1)."""

import pickle
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from datasets_scripts.user_embeddings import (
    build_neighbor_table,
    load_user_matrix,
    load_user_table,
    save_user_table,
    train_bivae,
    train_pmf,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
BEAUTY = SHARED / "data" / "amazon" / "beauty" / "sequential.txt"
BACKENDS = ["exact", pytest.param("faiss", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("faiss") is None, reason="faiss not installed (optional extra faiss-cpu)"
))]


def _community_histories(seed=0):
    """Two communities over disjoint item sets; users listed in shuffled order so cornac's indices != our ids.

    Users 9 and 10 have no training interactions; user 3 and user 8 share an identical history.
    """
    rng = np.random.default_rng(seed)
    histories = {}
    for user in range(1, 9):
        items = range(1, 11) if user % 2 else range(11, 21)
        histories[user] = rng.choice(list(items), size=6, replace=False).tolist()
    histories[8] = list(histories[3])  # different communities by parity; identical history on purpose
    histories[9] = []
    order = rng.permutation(list(histories))
    return {int(user): histories[int(user)] for user in order}


# cornac models -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation, tolerance", [("cornac", 1e-5), ("numba", 1e-4)])  # numba: float32
def test_pmf_rows_are_cornac_factors_at_our_ids(implementation, tolerance):
    import cornac

    histories = _community_histories()
    # Positives only here, so that an independent cornac fit on the same triples can be compared row by row.
    users, items = train_pmf(histories, num_users=10, num_items=20, k=8, seed=3, max_iter=30,
                             negatives_per_positive=0, implementation=implementation)
    assert users.shape == (11, 8) and items.shape == (21, 8) and users.dtype == torch.float32
    assert users[0].abs().sum() == 0 and items[0].abs().sum() == 0
    assert users[9].abs().sum() == 0 and users[10].abs().sum() == 0  # no training interactions
    assert all(users[u].abs().sum() > 0 for u in range(1, 9))

    # An independent cornac fit on the same triples: its raw score u·v (cornac's `score(user)` over all its items;
    # with a single rating value its per-item score is rescaled to a constant) must equal our row · our item row.
    triples = [(u, i, 1.0) for u, hist in histories.items() for i in hist]
    train_set = cornac.data.Dataset.from_uir(triples, seed=3)
    model = cornac.models.PMF(k=8, max_iter=30, seed=3).fit(train_set)
    assert list(train_set.uid_map) != sorted(train_set.uid_map)  # the remapping really is non-trivial
    for user in range(1, 9):
        cornac_scores = model.score(train_set.uid_map[user])
        for item in train_set.iid_map:
            expected = float(cornac_scores[train_set.iid_map[item]])
            assert (users[user] @ items[item]).item() == pytest.approx(expected, rel=tolerance, abs=1e-6)


def test_pmf_separates_communities():
    users, _ = train_pmf(_community_histories(), num_users=10, num_items=20, k=8, seed=0)
    neighbors = build_neighbor_table(users[:9], num_neighbors=1)  # users 1..8, all with interactions
    community = {user: user % 2 for user in range(1, 8)} | {8: 1}  # user 8 copies user 3's odd-community history
    for user in range(1, 9):
        nearest = int(neighbors[user, 0])
        assert community[nearest] == community[user], f"user {user}'s nearest user is {nearest}"


def test_pmf_is_seeded():
    histories = _community_histories()
    first, _ = train_pmf(histories, 10, 20, k=4, seed=1, max_iter=5)
    again, _ = train_pmf(histories, 10, 20, k=4, seed=1, max_iter=5)
    other, _ = train_pmf(histories, 10, 20, k=4, seed=2, max_iter=5)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_pmf_rejects_ids_out_of_range():
    with pytest.raises(ValueError, match="item id 21"):
        train_pmf({1: [1, 21]}, num_users=2, num_items=20, k=2, max_iter=1)
    with pytest.raises(ValueError, match="user id 3"):
        train_pmf({3: [1]}, num_users=2, num_items=20, k=2, max_iter=1)
    with pytest.raises(ValueError, match="no interactions"):
        train_pmf({1: []}, num_users=2, num_items=20, k=2, max_iter=1)


def test_pmf_on_real_beauty_slice():
    if not BEAUTY.is_file():
        pytest.skip(f"real Beauty data not found at {BEAUTY}")
    histories = {}
    with open(BEAUTY) as handle:
        for line, _ in zip(handle, range(300)):
            user, *items = map(int, line.split())
            histories[user] = items[:-2]  # leave-one-out: validation and test items are not trained on
    num_items = max(max(items) for items in histories.values())
    users, items = train_pmf(histories, num_users=300, num_items=num_items, k=512, seed=0)  # paper's settings
    assert users.shape == (301, 512) and items.shape == (num_items + 1, 512)
    assert users[0].abs().sum() == 0
    trained_items = {i for hist in histories.values() for i in hist}
    assert all(items[i].abs().sum() > 0 for i in trained_items)
    # Items never trained on as positives get factors only when drawn as sampled negatives (rating 0).
    _, positives_only_items = train_pmf(histories, num_users=300, num_items=num_items, k=16,
                                                           seed=0, negatives_per_positive=0)
    assert all(positives_only_items[i].abs().sum() == 0 for i in set(range(1, num_items + 1)) - trained_items)
    # Aligned: a user scores its own training items above the items of the other users' histories on average.
    scores = users[1:] @ items.T
    own = torch.zeros_like(scores, dtype=torch.bool)
    for user, hist in histories.items():
        own[user - 1, hist] = True
    assert scores[own].mean() > scores[~own & (items.abs().sum(1) > 0)].mean()


def test_bivae_smoke_identical_histories_identical_rows():
    histories = _community_histories()
    users = train_bivae(histories, num_users=10, num_items=20, k=4, seed=0, n_epochs=3, batch_size=4, use_gpu=False)
    assert users.shape == (11, 4) and users.dtype == torch.float32
    assert users[0].abs().sum() == 0 and users[9].abs().sum() == 0 and users[10].abs().sum() == 0
    assert torch.equal(users[3], users[8])  # same history -> same encoder input -> same mean, at OUR ids
    assert not torch.equal(users[1], users[3])


def test_bivae_leaves_global_torch_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_bivae(_community_histories(), 10, 20, k=2, seed=0, n_epochs=1, use_gpu=False)
    assert torch.equal(torch.rand(3), expected)


# Neighbour table ---------------------------------------------------------------------------------------------


def _brute_force_neighbors(matrix: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: every pair in float64, sorted by (cosine desc, id asc), self and row 0 excluded."""
    unit = torch.nn.functional.normalize(matrix.double(), dim=1)
    rows = [[0] * n]
    for user in range(1, len(matrix)):
        scores = (unit[user] @ unit.T).tolist()
        others = sorted((v for v in range(1, len(matrix)) if v != user), key=lambda v: (-scores[v], v))
        rows.append(others[:n])
    return torch.tensor(rows)


def _exact_integer_neighbors(matrix: torch.Tensor, n: int) -> torch.Tensor:
    """Reference for integer data in exact rational arithmetic: sign(u·v)(u·v)² / (|u|²|v|²) orders like cosine,
    so ties are ties exactly, not up to rounding."""
    rows_int = [[int(x) for x in row] for row in matrix.tolist()]
    squared_norms = [sum(x * x for x in row) for row in rows_int]
    table = [[0] * n]
    for user in range(1, len(rows_int)):
        def key(other, user=user):
            dot = sum(a * b for a, b in zip(rows_int[user], rows_int[other]))
            denominator = squared_norms[user] * squared_norms[other]
            cosine_key = Fraction(dot * abs(dot), denominator) if denominator else Fraction(0)
            return (-cosine_key, other)

        table.append(sorted((v for v in range(1, len(rows_int)) if v != user), key=key)[:n])
    return torch.tensor(table)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_neighbors", [1, 7, 149])
def test_neighbors_equal_brute_force_on_random_data(backend, num_neighbors):
    matrix = torch.randn(151, 24, generator=torch.Generator().manual_seed(num_neighbors))
    matrix[0] = 0
    table = build_neighbor_table(matrix, num_neighbors, backend=backend, chunk_size=32)
    assert table.dtype == torch.long and table.shape == (151, num_neighbors)
    expected = _brute_force_neighbors(matrix, num_neighbors)
    # The float32 GEMM may order two users whose cosines differ by less than its rounding (~1e-7) either way:
    # a differing id is allowed only where the float64 cosine at that rank is the same to 1e-6.
    unit = torch.nn.functional.normalize(matrix.double(), dim=1)
    cosine_at_rank = lambda ids: (unit[:, None, :] * unit[ids]).sum(-1)
    near_tie = (cosine_at_rank(table) - cosine_at_rank(expected)).abs() < 1e-6
    assert ((table == expected) | near_tie).all()
    assert (table == expected).all(1).float().mean() > 0.9
    assert all(len(set(row)) == num_neighbors and user not in row and 0 not in row
               for user, row in enumerate(table.tolist()) if user)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_neighbors", [1, 5, 20])
def test_neighbors_break_ties_by_lower_id(backend, num_neighbors):
    """Integer rows drawn from 12 directions, scaled by 1, 2 or 4, plus all-zero users: most scores are tied."""
    generator = torch.Generator().manual_seed(num_neighbors)
    directions = torch.randint(-5, 6, (12, 16), generator=generator)
    matrix = directions[torch.randint(0, 12, (90,), generator=generator)]
    matrix = matrix * 2 ** torch.randint(0, 3, (90, 1), generator=generator)
    matrix[torch.tensor([0, 4, 17, 55])] = 0
    expected = _exact_integer_neighbors(matrix, num_neighbors)
    table = build_neighbor_table(matrix.float(), num_neighbors, backend=backend, chunk_size=16)
    assert torch.equal(table, expected)
    # the zero users tie with everyone at cosine 0 below the positive scores; user 4's list starts at the lowest ids
    # among its ties and never contains itself or row 0
    assert 4 not in table[4].tolist() and 0 not in table[1:].flatten().tolist()
    assert torch.equal(table[0], torch.zeros(num_neighbors, dtype=torch.long))


@pytest.mark.parametrize("backend", BACKENDS)
def test_neighbors_reject_too_many_neighbors_and_bad_input(backend):
    matrix = torch.randn(11, 4)  # 10 users: at most 9 neighbours
    assert build_neighbor_table(matrix, 9, backend=backend).shape == (11, 9)
    for bad in (10, 11, 0):
        with pytest.raises(ValueError, match="num_neighbors"):
            build_neighbor_table(matrix, bad, backend=backend)
    matrix[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        build_neighbor_table(matrix, 2, backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        build_neighbor_table(torch.randn(11), 2, backend=backend)


def test_unknown_backend_and_missing_faiss(monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        build_neighbor_table(torch.randn(11, 4), 2, backend="annoy")
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match="faiss-cpu"):
        build_neighbor_table(torch.randn(11, 4), 2, backend="faiss")


# User-supplied matrices ----------------------------------------------------------------------------------------


@pytest.fixture
def matrix():
    return np.arange(15, dtype=np.float32).reshape(5, 3) + 1  # 5 users, d = 3


def _expected(matrix):
    return torch.cat([torch.zeros(1, 3), torch.from_numpy(matrix)])


def test_load_npy_with_and_without_row_zero(tmp_path, matrix):
    np.save(tmp_path / "users.npy", matrix)
    assert torch.equal(load_user_matrix(tmp_path / "users.npy", num_users=5), _expected(matrix))
    np.save(tmp_path / "with_zero.npy", _expected(matrix).numpy())
    assert torch.equal(load_user_matrix(tmp_path / "with_zero.npy", num_users=5), _expected(matrix))
    loaded = load_user_matrix(tmp_path / "users.npy", num_users=4)  # 5 rows = num_users + 1: taken as is
    assert torch.equal(loaded, torch.from_numpy(matrix))


def test_load_npy_object_array_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy"):
        load_user_matrix(tmp_path / "objects.npy", num_users=2)


def test_load_safetensors(tmp_path, matrix):
    tensor = torch.from_numpy(matrix)
    save_file({"user_embeddings": tensor, "other": torch.ones(2)}, tmp_path / "named.safetensors")
    save_file({"whatever": tensor}, tmp_path / "single.safetensors")
    save_file({"a": tensor, "b": tensor.clone()}, tmp_path / "two.safetensors")
    assert torch.equal(load_user_matrix(tmp_path / "named.safetensors", 5), _expected(matrix))
    assert torch.equal(load_user_matrix(tmp_path / "single.safetensors", 5), _expected(matrix))
    with pytest.raises(ValueError, match=r"two\.safetensors.*'user_embeddings'"):
        load_user_matrix(tmp_path / "two.safetensors", 5)


def test_load_csv_with_and_without_header(tmp_path, matrix):
    rows = "\n".join(",".join(str(x) for x in row) for row in matrix.tolist())
    (tmp_path / "plain.csv").write_text(rows + "\n")
    (tmp_path / "header.csv").write_text("d0,d1,d2\n" + rows + "\n")
    assert torch.equal(load_user_matrix(tmp_path / "plain.csv", 5), _expected(matrix))
    assert torch.equal(load_user_matrix(tmp_path / "header.csv", 5), _expected(matrix))


def test_load_csv_bad_cell_and_ragged_row(tmp_path):
    (tmp_path / "bad.csv").write_text("1,2,3\n4,five,6\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: non-numeric cell 'five'"):
        load_user_matrix(tmp_path / "bad.csv", 2)
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(ValueError, match=r"ragged\.csv:2: 2 columns"):
        load_user_matrix(tmp_path / "ragged.csv", 2)
    (tmp_path / "empty.csv").write_text("d0,d1\n")
    with pytest.raises(ValueError, match="no numeric rows"):
        load_user_matrix(tmp_path / "empty.csv", 2)


def test_load_wrong_row_count_names_file_and_shapes(tmp_path, matrix):
    np.save(tmp_path / "users.npy", matrix)
    with pytest.raises(ValueError, match=r"users\.npy: shape \(5, 3\).*num_users=7.*8 rows"):
        load_user_matrix(tmp_path / "users.npy", num_users=7)
    np.save(tmp_path / "vector.npy", matrix[0])
    with pytest.raises(ValueError, match="2-D"):
        load_user_matrix(tmp_path / "vector.npy", num_users=3)


def test_load_non_finite_refused(tmp_path, matrix):
    matrix[2, 1] = np.inf
    np.save(tmp_path / "inf.npy", matrix)
    with pytest.raises(ValueError, match="row 2"):
        load_user_matrix(tmp_path / "inf.npy", 5)


def test_load_pickle_refused_unless_allowed(tmp_path, matrix):
    with open(tmp_path / "users.pkl", "wb") as handle:
        pickle.dump(matrix, handle)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_user_matrix(tmp_path / "users.pkl", 5)
    assert torch.equal(load_user_matrix(tmp_path / "users.pkl", 5, allow_pickle=True), _expected(matrix))


def test_load_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "users.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.parquet.*\.npy, \.safetensors, \.csv"):
        load_user_matrix(tmp_path / "users.parquet", 5)
    with pytest.raises(FileNotFoundError, match="absent.npy"):
        load_user_matrix(tmp_path / "absent.npy", 5)


# Saved table -------------------------------------------------------------------------------------------------


def test_user_table_round_trip(tmp_path):
    users = torch.randn(6, 4)
    users[0] = 0
    neighbors = build_neighbor_table(users, 2)
    items = torch.randn(9, 4)
    save_user_table(tmp_path / "table.safetensors", users, neighbors, items)
    loaded = load_user_table(tmp_path / "table.safetensors")
    assert set(loaded) == {"user_embeddings", "user_neighbors", "item_embeddings"}
    assert torch.equal(loaded["user_embeddings"], users) and torch.equal(loaded["user_neighbors"], neighbors)
    assert torch.equal(loaded["item_embeddings"], items)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.safetensors"]  # no temp file left over
    save_user_table(tmp_path / "no_items.safetensors", users, neighbors)
    assert set(load_user_table(tmp_path / "no_items.safetensors")) == {"user_embeddings", "user_neighbors"}


def test_user_table_invalid_input_leaves_old_file(tmp_path):
    users = torch.randn(6, 4)
    neighbors = build_neighbor_table(users, 2)
    path = tmp_path / "table.safetensors"
    save_user_table(path, users, neighbors)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"table\.safetensors.*6 rows.*5"):
        save_user_table(path, users, neighbors[:5])
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_load_user_table_errors(tmp_path):
    save_file({"user_embeddings": torch.randn(6, 4)}, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"missing\.safetensors.*user_neighbors"):
        load_user_table(tmp_path / "missing.safetensors")
    save_file(
        {"user_embeddings": torch.randn(6, 4), "user_neighbors": torch.zeros(4, 2, dtype=torch.long)},
        tmp_path / "rows.safetensors",
    )
    with pytest.raises(ValueError, match=r"rows\.safetensors.*6 rows.*4"):
        load_user_table(tmp_path / "rows.safetensors")
    save_file(
        {"user_embeddings": torch.randn(6, 4), "user_neighbors": torch.full((6, 2), 6, dtype=torch.long)},
        tmp_path / "ids.safetensors",
    )
    with pytest.raises(ValueError, match="outside 0..5"):
        load_user_table(tmp_path / "ids.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_user_table(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_user_table(tmp_path / "absent.safetensors")
