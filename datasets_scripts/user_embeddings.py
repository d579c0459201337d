"""User embeddings and the user-neighbour table (the paper's §4.1-4.2, SPEC §1).

PeaPOD's collaborative prompt reads two frozen tables indexed by our 1-based user ids (row 0 = the unknown user):

* `user_embeddings` [num_users + 1, d_u]: PMF user factors by default (cornac's `PMF`, whose defaults are the
  paper's hyper-parameters: 100 epochs, learning rate 1e-3, lambda 1e-3; d_u = 512), BiVAE's user means as the
  paper's ablation (cornac's `BiVAECF`), or any matrix a user supplies (`.npy`, `.safetensors`, `.csv`).
  Trained on the training interactions only: the caller passes those, never the validation or test items.
* `user_neighbors` [num_users + 1, n]: the n most cosine-similar other users of each user, exact, computed in
  chunks by `modeling_peapod.build_user_neighbors` (or with faiss for millions of users).

Both are stored in one safetensors file (`save_user_table` / `load_user_table`), with PMF's item factors beside
them (kept for folding in cold-start users later).

cornac numbers users and items by first appearance; every function here maps its factors back to our ids through
the training set's `uid_map` / `iid_map`, so row u is always our user u.
"""

from __future__ import annotations

import csv
import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeling_peapod import (
    build_user_neighbors,
    check_num_neighbors,
    check_user_embeddings,
)

from .files import atomic_path

USER_EMBEDDINGS = "user_embeddings"
USER_NEIGHBORS = "user_neighbors"
ITEM_EMBEDDINGS = "item_embeddings"
MATRIX_SUFFIXES = (".npy", ".safetensors", ".csv")
PICKLE_SUFFIXES = (".pkl", ".pickle")
NEIGHBOR_BACKENDS = ("exact", "faiss")
# PMF's regularisation and negative sampling, the defaults of `train_pmf`: a model folding in new users from the
# PMF item factors must solve with the same ones (`PeaPODConfig.fold_in_regularization`), so prepare records them.
PMF_LAMBDA_REG = 1e-3
PMF_NEGATIVES_PER_POSITIVE = 1
# How PMF is trained: cornac's loop compiled in float32 (`fast_pmf`, the default) or cornac's own float64 loop.
PMF_IMPLEMENTATIONS = ("numba", "cornac")


# Collaborative-filtering models (cornac) -------------------------------------------------------------------


def cornac_train_set(
    train_histories: Mapping[int, Sequence[int]], num_users: int, num_items: int, seed: int,
    negatives_per_positive: int = 0,
):
    """A cornac `Dataset` of implicit (user, item, 1.0) triples, validated against our id ranges first.

    A repeated (user, item) pair is kept once (cornac would drop it with a warning anyway): an implicit rating
    says "interacted", not how often. `negatives_per_positive` > 0 adds, per user, that many times as many
    (user, item, 0.0) triples for items the user never interacted with, drawn uniformly with `seed`.
    """
    import cornac

    rng = np.random.default_rng(seed)
    triples = []
    for user, items in train_histories.items():
        if not 1 <= int(user) <= num_users:
            raise ValueError(f"user id {user} is outside 1..num_users={num_users}")
        positives = list(dict.fromkeys(int(item) for item in items))
        for item in positives:
            if not 1 <= item <= num_items:
                raise ValueError(f"item id {item} of user {user} is outside 1..num_items={num_items}")
            triples.append((int(user), item, 1.0))
        wanted = min(negatives_per_positive * len(positives), num_items - len(positives))
        negatives: set[int] = set()
        seen = set(positives)
        while len(negatives) < wanted:
            for item in rng.integers(1, num_items + 1, size=2 * (wanted - len(negatives))).tolist():
                if item not in seen and len(negatives) < wanted:
                    negatives.add(item)
        triples += [(int(user), item, 0.0) for item in sorted(negatives)]
    if not triples:
        raise ValueError("train_histories holds no interactions: there is nothing to train the embeddings on")
    return cornac.data.Dataset.from_uir(triples, seed=seed)


def rows_by_our_ids(factors: np.ndarray, id_map: Mapping[int, int], num_rows: int) -> torch.Tensor:
    """[num_rows, k] float32 with row `our_id` = factors[cornac_index]; rows cornac never saw stay zero."""
    table = torch.zeros(num_rows, factors.shape[1], dtype=torch.float32)
    our_ids = torch.tensor(list(id_map.keys()), dtype=torch.long)
    cornac_indices = torch.tensor(list(id_map.values()), dtype=torch.long)
    table[our_ids] = torch.from_numpy(np.asarray(factors, dtype=np.float32))[cornac_indices]
    return table


def fit_factorisation(model_class, train_set, **hyper_parameters):
    """A cornac matrix-factorisation model (`PMF`, `BPR`) of `hyper_parameters`, fitted on `train_set`."""
    model = model_class(**hyper_parameters)
    model.fit(train_set)
    return model


def train_pmf(
    train_histories: dict[int, list[int]],
    num_users: int,
    num_items: int,
    k: int = 512,
    seed: int = 0,
    max_iter: int = 100,
    learning_rate: float = 1e-3,
    lambda_reg: float = PMF_LAMBDA_REG,
    negatives_per_positive: int = PMF_NEGATIVES_PER_POSITIVE,
    verbose: bool = False,
    implementation: str = PMF_IMPLEMENTATIONS[0],
) -> tuple[torch.Tensor, torch.Tensor]:
    """PMF user and item factors (Mnih & Salakhutdinov 2008) with cornac, the paper's default user embedding.

    Every observed (user, item) pair is an implicit rating 1.0 (cornac's default non-linear variant maps ratings
    to [0, 1] and fits sigmoid(u·v) to them). With positives alone, sigmoid(u·v) -> 1 is fitted by pointing every
    user the same way (median cosine between two Beauty users 0.999999), which leaves nothing for the neighbour
    table to find; so, as is usual for PMF on implicit feedback, `negatives_per_positive` unobserved items per
    observed one are added with rating 0 (seeded). The paper does not say how it handled this; 0 restores the
    positives-only fit. `implementation` "numba" (default) runs cornac's training loop compiled in float32
    (`fast_pmf`: same data, start and updates, ~10x faster), "cornac" cornac's own float64 loop. Returns
    `user_embeddings` [num_users + 1, k] and `item_embeddings` [num_items + 1, k], float32, aligned to our ids;
    row 0 and users/items without training interactions are zeros (so the unknown user has cosine similarity 0 to
    everyone).
    """
    import cornac

    if implementation not in PMF_IMPLEMENTATIONS:
        raise ValueError(f"PMF implementation {implementation!r}: expected one of {', '.join(PMF_IMPLEMENTATIONS)}")
    train_set = cornac_train_set(train_histories, num_users, num_items, seed, negatives_per_positive)
    hyper_parameters = {"k": k, "max_iter": max_iter, "learning_rate": learning_rate, "lambda_reg": lambda_reg,
                        "seed": seed, "verbose": verbose}
    if implementation == "numba":
        from .fast_pmf import fit_pmf

        user_factors, item_factors = fit_pmf(train_set, **hyper_parameters)
    else:
        model = fit_factorisation(cornac.models.PMF, train_set, **hyper_parameters)
        user_factors, item_factors = model.U, model.V
    return (rows_by_our_ids(user_factors, train_set.uid_map, num_users + 1),
            rows_by_our_ids(item_factors, train_set.iid_map, num_items + 1))


def train_bivae(
    train_histories: dict[int, list[int]],
    num_users: int,
    num_items: int,
    k: int = 512,
    seed: int = 0,
    **kwargs,
) -> torch.Tensor:
    """BiVAE user means (Truong et al. 2021) with cornac's `BiVAECF`: the paper's "PeaPOD-BiVAE" ablation.

    `kwargs` go to `cornac.models.BiVAECF` (e.g. `n_epochs`, `batch_size`, `encoder_structure`, `likelihood`,
    `learning_rate`, `use_gpu`). Returns [num_users + 1, k] float32 aligned to our ids, zero rows as in
    `train_pmf`. cornac seeds torch's global generator; that is confined here so callers' RNG state is untouched.
    """
    import cornac

    train_set = cornac_train_set(train_histories, num_users, num_items, seed)
    model = cornac.models.BiVAECF(k=k, seed=seed, **kwargs)
    with torch.random.fork_rng(devices=[]):
        model.fit(train_set)
    return rows_by_our_ids(model.get_user_vectors(), train_set.uid_map, num_users + 1)


def train_bpr_with_biases(
    train_histories: dict[int, list[int]],
    num_users: int,
    num_items: int,
    k: int = 512,
    seed: int = 0,
    max_iter: int = 100,
    learning_rate: float = 1e-2,
    lambda_reg: float = 1e-2,
    verbose: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BPR user and item factors (Rendle et al. 2009) with cornac's `BPR`: a user-embedding source beyond the paper.

    BPR learns from (user, observed item, unobserved item) triples it samples itself, the pairwise ranking loss
    -log sigmoid(u·v_i + b_i - u·v_j - b_j), so unlike PMF it needs no sampled zero ratings (and must not get them:
    cornac's BPR takes every stored pair as observed). Defaults are cornac's (100 epochs, lambda 1e-2) but for
    the learning rate, 1e-2 instead of 1e-3: from cornac's ±0.5/k initialisation, 100 epochs at 1e-3 barely move
    the factors (neighbour diagnostic on the first 2,000 Beauty users, k = 512: 0.066 at 1e-3, random neighbours
    0.058; 0.129 at 1e-2; docs/embeddings.md). k = 512 like PMF; with `seed` set cornac trains single-threaded,
    so runs are repeatable.
    Returns `user_embeddings` [num_users + 1, k], `item_embeddings` [num_items + 1, k] and `item_biases`
    [num_items + 1, 1] (cornac's `u_factors`, `i_factors`, `i_biases`; the user table keeps no biases: cosine
    neighbours do not use them), float32, aligned to our ids exactly as `train_pmf`'s, zero rows for row 0 and
    users/items without training interactions.
    """
    import cornac

    train_set = cornac_train_set(train_histories, num_users, num_items, seed, negatives_per_positive=0)
    model = fit_factorisation(cornac.models.BPR, train_set, k=k, max_iter=max_iter, learning_rate=learning_rate,
                              lambda_reg=lambda_reg, seed=seed, verbose=verbose)
    return (rows_by_our_ids(model.u_factors, train_set.uid_map, num_users + 1),
            rows_by_our_ids(model.i_factors, train_set.iid_map, num_items + 1),
            rows_by_our_ids(np.asarray(model.i_biases).reshape(-1, 1), train_set.iid_map, num_items + 1))


def train_bpr(train_histories: dict[int, list[int]], num_users: int, num_items: int, **bpr_kwargs):
    """`train_bpr_with_biases` without the item biases [num_items + 1, 1]: (user_embeddings, item_embeddings)."""
    return train_bpr_with_biases(train_histories, num_users, num_items, **bpr_kwargs)[:2]


# A user-supplied matrix --------------------------------------------------------------------------------------


def _read_csv_matrix(path: Path) -> np.ndarray:
    """Numeric rows of a CSV file; a first row with a non-numeric cell is taken as a header.

    Hand-written rather than `np.loadtxt` so a bad cell is reported as file:line with its text.
    """
    rows: list[list[float]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line_number, cells in enumerate(csv.reader(handle), start=1):
            if not cells or all(not cell.strip() for cell in cells):
                continue
            try:
                row = [float(cell) for cell in cells]
            except ValueError:
                if line_number == 1:  # a header such as "d0,d1,..."
                    continue
                bad = next(cell for cell in cells if not _is_float(cell))
                raise ValueError(f"{path}:{line_number}: non-numeric cell {bad!r} in the user-embedding matrix")
            if rows and len(row) != len(rows[0]):
                raise ValueError(f"{path}:{line_number}: {len(row)} columns, but the first data row has {len(rows[0])}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no numeric rows in the user-embedding matrix")
    return np.asarray(rows, dtype=np.float32)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_safetensors_matrix(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if USER_EMBEDDINGS in tensors:
        return tensors[USER_EMBEDDINGS]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ValueError(
        f"{path}: holds tensors {sorted(tensors)}; expected one named {USER_EMBEDDINGS!r} or a single tensor"
    )


def load_user_matrix(path, num_users: int, allow_pickle: bool = False) -> torch.Tensor:
    """A user-embedding matrix supplied by the user, as [num_users + 1, d] float32 (row 0 = unknown user).

    Formats: `.npy`, `.safetensors` (the tensor `user_embeddings`, or the file's only tensor), `.csv` (numeric
    rows, optional header). Pickles (`.pkl`, `.pickle`) can run arbitrary code when loaded, so they are refused
    unless `allow_pickle=True`. The matrix has either num_users rows (row u-1 = user u; a zero row 0 is
    prepended) or num_users + 1 rows (already in our layout).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MATRIX_SUFFIXES + PICKLE_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported user-embedding file type {suffix or '(no suffix)'!r}; "
            f"supported: {', '.join(MATRIX_SUFFIXES)} (and {', '.join(PICKLE_SUFFIXES)} with allow_pickle)"
        )
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ValueError(
            f"{path}: refusing to load a pickle (loading one can execute arbitrary code); convert it to .npy or "
            f".safetensors, or pass allow_pickle=True (--allow_pickle) if you trust the file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"user-embedding file {path} does not exist")

    if suffix == ".npy":
        try:
            matrix = np.load(path, allow_pickle=allow_pickle)
        except ValueError as error:  # numpy's message for object arrays, or a corrupt header
            raise ValueError(f"{path}: cannot load as a numeric .npy array ({error})") from error
    elif suffix == ".safetensors":
        matrix = _read_safetensors_matrix(path)
    elif suffix == ".csv":
        matrix = _read_csv_matrix(path)
    else:
        with open(path, "rb") as handle:
            matrix = pickle.load(handle)

    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy() if matrix.dtype != torch.bfloat16 else matrix.float().numpy()
    matrix = np.asarray(matrix)
    if matrix.dtype.kind not in "biuf":
        raise ValueError(f"{path}: dtype {matrix.dtype} is not numeric; expected a float matrix")
    if matrix.ndim != 2 or matrix.shape[0] not in (num_users, num_users + 1):
        raise ValueError(
            f"{path}: shape {tuple(matrix.shape)}, expected a 2-D matrix with num_users={num_users} rows "
            f"(row u-1 = user u) or num_users+1={num_users + 1} rows (row 0 = unknown user)"
        )
    table = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    if not torch.isfinite(table).all():
        row = int((~torch.isfinite(table)).any(1).nonzero()[0])
        raise ValueError(f"{path}: row {row} holds NaN or infinite values")
    if table.shape[0] == num_users:
        table = torch.cat([table.new_zeros(1, table.shape[1]), table])
    return table


# Neighbour table -----------------------------------------------------------------------------------------------


def build_neighbor_table(
    user_embeddings: torch.Tensor, num_neighbors: int, backend: str = "exact", chunk_size: int = 4096
) -> torch.LongTensor:
    """[num_users + 1, n] ids of each user's n most cosine-similar other users (S_u of §4.2).

    Both backends give the same table: decreasing similarity, ties to the lower user id, self and row 0 never
    neighbours, row 0 all zeros. "exact" is `modeling_peapod.build_user_neighbors` (chunked torch matmul + topk);
    "faiss" (optional extra `faiss-cpu`) searches an `IndexFlatIP` of the L2-normalised rows, for millions of users.
    """
    if backend not in NEIGHBOR_BACKENDS:
        raise ValueError(f"backend={backend!r}; expected one of {NEIGHBOR_BACKENDS}")
    check_user_embeddings(user_embeddings)  # a NaN row would make its cosines (and so the table) NaN
    if backend == "exact":  # the one builder, `modeling_peapod.build_user_neighbors`
        return build_user_neighbors(user_embeddings, num_neighbors, chunk_size=chunk_size)
    return _faiss_neighbors(user_embeddings, num_neighbors, chunk_size)


def _faiss_neighbors(user_embeddings: torch.Tensor, num_neighbors: int, chunk_size: int) -> torch.LongTensor:
    """The faiss backend of `build_neighbor_table`, made exact including ties.

    faiss returns the top k of each query in arbitrary order among equal scores. We ask for n + 2 (room for the
    user itself plus one), re-sort candidates by (score desc, id asc) and keep the first n that are not self.
    That is the exact answer unless the n-th kept score equals the last retrieved one (tied users may lie beyond
    what faiss returned); those rows, rare except for duplicate or all-zero users, are recomputed in full.
    """
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "backend='faiss' needs faiss: pip install faiss-cpu (or peapod-rec[faiss]); backend='exact' needs nothing"
        ) from error

    num_rows = user_embeddings.shape[0]
    num_users = num_rows - 1
    check_num_neighbors(num_users, num_neighbors)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    unit = F.normalize(user_embeddings.detach().cpu().float(), dim=1)  # zero rows stay zero
    users = unit[1:].numpy()  # row 0 is never a neighbour, so it is not in the index; index position = id - 1
    index = faiss.IndexFlatIP(users.shape[1])
    index.add(users)
    retrieved = min(num_neighbors + 2, num_users)
    neighbors = torch.zeros(num_rows, num_neighbors, dtype=torch.long)
    ambiguous_rows = []
    for start in range(0, num_users, chunk_size):
        end = min(start + chunk_size, num_users)
        scores, positions = index.search(users[start:end], retrieved)
        ids = positions + 1
        own_ids = np.arange(start + 1, end + 1)[:, None]
        candidate_scores = np.where(ids == own_ids, -np.inf, scores)  # self sorts last
        order = np.lexsort((ids, -candidate_scores), axis=1)[:, :num_neighbors]
        neighbors[start + 1 : end + 1] = torch.from_numpy(np.take_along_axis(ids, order, axis=1))
        if retrieved < num_users:
            nth_score = np.take_along_axis(candidate_scores, order[:, -1:], axis=1)[:, 0]
            ambiguous_rows.extend((own_ids[nth_score <= scores.min(axis=1), 0]).tolist())
    for row_start in range(0, len(ambiguous_rows), chunk_size):
        rows = torch.tensor(ambiguous_rows[row_start : row_start + chunk_size])
        similarity = unit[rows] @ unit.T
        similarity[torch.arange(len(rows)), rows] = -math.inf
        similarity[:, 0] = -math.inf
        # a stable sort of the ascending column order puts equal scores lowest id first
        neighbors[rows] = similarity.sort(dim=1, descending=True, stable=True).indices[:, :num_neighbors]
    return neighbors


# The saved table -------------------------------------------------------------------------------------------------


def save_user_table(path, user_embeddings: torch.Tensor, user_neighbors: torch.Tensor, item_embeddings=None) -> None:
    """Write `user_embeddings`, `user_neighbors` (and `item_embeddings`) to one safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {
        USER_EMBEDDINGS: user_embeddings.detach().cpu().float().contiguous(),
        USER_NEIGHBORS: user_neighbors.detach().cpu().long().contiguous(),
    }
    if item_embeddings is not None:
        tensors[ITEM_EMBEDDINGS] = item_embeddings.detach().cpu().float().contiguous()
    _validate_user_table(tensors, path)

    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})


def load_user_table(path) -> dict[str, torch.Tensor]:
    """Read a file written by `save_user_table`, checking it before anyone builds a model on it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"user table {path} does not exist")
    try:
        tensors = load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    _validate_user_table(tensors, path)
    return tensors


def _validate_user_table(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    missing = [name for name in (USER_EMBEDDINGS, USER_NEIGHBORS) if name not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing}; found {sorted(tensors)}")
    users, neighbors = tensors[USER_EMBEDDINGS], tensors[USER_NEIGHBORS]
    if users.dim() != 2 or neighbors.dim() != 2:
        raise ValueError(
            f"{path}: {USER_EMBEDDINGS} {tuple(users.shape)} and {USER_NEIGHBORS} {tuple(neighbors.shape)} "
            f"must both be 2-D"
        )
    if users.shape[0] != neighbors.shape[0]:
        raise ValueError(
            f"{path}: {USER_EMBEDDINGS} has {users.shape[0]} rows but {USER_NEIGHBORS} has {neighbors.shape[0]}; "
            f"both must have num_users + 1 rows"
        )
    if neighbors.dtype.is_floating_point or neighbors.dtype == torch.bool:
        raise ValueError(f"{path}: {USER_NEIGHBORS} has dtype {neighbors.dtype}; expected integer user ids")
    if neighbors.numel() and (neighbors.min() < 0 or neighbors.max() >= users.shape[0]):
        raise ValueError(
            f"{path}: {USER_NEIGHBORS} holds ids outside 0..{users.shape[0] - 1} "
            f"(min {int(neighbors.min())}, max {int(neighbors.max())})"
        )
    items = tensors.get(ITEM_EMBEDDINGS)
    if items is not None and (items.dim() != 2 or items.shape[1] != users.shape[1]):
        raise ValueError(
            f"{path}: {ITEM_EMBEDDINGS} has shape {tuple(items.shape)}; expected [num_items + 1, {users.shape[1]}] "
            f"(the width of {USER_EMBEDDINGS})"
        )
