"""The neighbour diagnostic: how much collaborative signal a user-neighbour table carries, without training anything.

For every user u with a held-out item i, does i appear in the training history of any of u's n nearest neighbours
(the table's S_u, paper §4.2)? The share of users for whom it does is the table's *neighbour hit rate*. PeaPOD's
collaborative prompt can only point at what the neighbours did, so a table whose neighbours never took the next item
gives the prompt little to say. A table of n random other users (`random_neighbor_table`, seeded) is the reference
that makes the figure interpretable: a source is useful to the extent that it beats random.

`peapod-prepare` computes it on the *validation* items (items[-2]) against the neighbours' *training* histories
(items[:-2]); the test items are never read, so choosing a source by this figure does not look at the test set.

    rate = neighbor_hit_rate(table["user_neighbors"], train_histories, validation_items)
    reference = neighbor_hit_rate(random_neighbor_table(num_users, 20, seed=0), train_histories, validation_items)
    prepared_neighbor_diagnostic("prepared/beauty")   # any prepared folder: its own table, plus the reference
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .splits import leave_one_out


def _training_keys(train_histories: Mapping[int, Sequence[int]], stride: int) -> np.ndarray:
    """Sorted unique user * stride + item codes of every training (user, item) pair: one int64 per pair."""
    lengths = np.fromiter((len(items) for items in train_histories.values()), dtype=np.int64, count=len(train_histories))
    users = np.repeat(np.fromiter(train_histories.keys(), dtype=np.int64, count=len(train_histories)), lengths)
    items = np.fromiter((item for items in train_histories.values() for item in items), dtype=np.int64,
                        count=int(lengths.sum()))
    return np.unique(users * stride + items)


def neighbor_hits(
    user_neighbors: torch.Tensor | np.ndarray,
    train_histories: Mapping[int, Sequence[int]],
    held_out: Mapping[int, int],
) -> np.ndarray:
    """[len(held_out)] bool, in `held_out`'s order: is user u's held-out item in a neighbour's training history?

    `user_neighbors` is [num_users + 1, n] (row u = user u's neighbours; id 0 = no neighbour, never matches),
    `train_histories` {user: [item, ...]} the training items, `held_out` {user: item} one item per user (for
    leave-one-out, the validation items). Vectorised: each (neighbour, item) query is one int64 code looked up in
    the sorted codes of the training pairs (`np.isin`): full Beauty (22k users x 20 neighbours) in under a second
    (benchmarks/neighbor_diagnostic_speed.py).
    """
    neighbors = np.asarray(user_neighbors.cpu() if isinstance(user_neighbors, torch.Tensor) else user_neighbors)
    if neighbors.ndim != 2:
        raise ValueError(f"user_neighbors must be 2-D [num_users + 1, n], got shape {tuple(neighbors.shape)}")
    users = np.fromiter(held_out.keys(), dtype=np.int64, count=len(held_out))
    items = np.fromiter(held_out.values(), dtype=np.int64, count=len(held_out))
    if len(users) and (users.min() < 1 or users.max() >= neighbors.shape[0]):
        raise ValueError(
            f"held-out users span {users.min()}..{users.max()} but the neighbour table has rows 0..{neighbors.shape[0] - 1}"
        )
    if len(items) and items.min() < 1:
        raise ValueError(f"held-out item id {items.min()} is not a 1-based item id")
    largest_item = max([int(items.max()) if len(items) else 0,
                        *(max(history) for history in train_histories.values() if history)])
    stride = largest_item + 1
    queries = neighbors[users].astype(np.int64) * stride + items[:, None]  # neighbour 0 has no training pairs
    return np.isin(queries, _training_keys(train_histories, stride)).any(axis=1)


def neighbor_hit_rate(
    user_neighbors: torch.Tensor | np.ndarray,
    train_histories: Mapping[int, Sequence[int]],
    held_out: Mapping[int, int],
) -> float:
    """The share of `held_out`'s users whose held-out item is in a neighbour's training history (see `neighbor_hits`)."""
    if not held_out:
        raise ValueError("held_out is empty: the neighbour hit rate needs at least one user with a held-out item")
    return float(neighbor_hits(user_neighbors, train_histories, held_out).mean())


def random_neighbor_table(num_users: int, num_neighbors: int, seed: int = 0) -> torch.LongTensor:
    """[num_users + 1, n]: n distinct other users per user, uniformly at random (seeded); row 0 all zeros.

    The reference for `neighbor_hit_rate`. Vectorised: draw n of the num_users - 1 other ids per row with
    replacement (id r >= u shifts to r + 1, so u never draws itself), then redraw only the rows holding a
    repeat; for n << num_users that is ~n²/(2·num_users) of the rows, and it ends after a few rounds.
    """
    if not 1 <= num_neighbors <= num_users - 1:
        raise ValueError(f"num_neighbors={num_neighbors}: expected 1..num_users - 1 = {num_users - 1}")
    rng = np.random.default_rng(seed)
    own = np.arange(1, num_users + 1)[:, None]
    table = np.zeros((num_users + 1, num_neighbors), dtype=np.int64)
    if num_neighbors**2 > num_users:  # repeats would be common: rank random keys instead (small tables only)
        ranks = rng.random((num_users, num_users - 1)).argsort(axis=1)[:, :num_neighbors] + 1
        table[1:] = ranks + (ranks >= own)
        return torch.from_numpy(table)
    pending = np.arange(num_users)  # row index - 1 of rows still to draw
    while len(pending):
        draws = rng.integers(1, num_users, size=(len(pending), num_neighbors))  # 1..num_users - 1
        draws += draws >= own[pending]
        ordered = np.sort(draws, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        table[pending[~repeated] + 1] = draws[~repeated]
        pending = pending[repeated]
    return torch.from_numpy(table)


def prepared_neighbor_diagnostic(path: str | os.PathLike, seed: int = 0) -> dict:
    """The diagnostic of a prepared folder's own neighbour table on its validation items, beside random's.

    Returns {"split": "validation", "num_users", "num_neighbors", "hit_rate", "random_hit_rate", "random_seed"}.
    Works on any folder `load_prepared` reads, whichever source its table came from.
    """
    from .prepared import load_prepared  # here: prepared imports this module

    prepared = load_prepared(path, load_dataset=False)
    split = leave_one_out(prepared.histories)  # split.test is never looked at
    train, validation = split.train, split.validation
    num_neighbors = prepared.user_neighbors.shape[1]
    return {
        "split": "validation",
        "num_users": len(validation),
        "num_neighbors": num_neighbors,
        "hit_rate": neighbor_hit_rate(prepared.user_neighbors, train, validation),
        "random_hit_rate": neighbor_hit_rate(
            random_neighbor_table(prepared.num_users, num_neighbors, seed), train, validation
        ),
        "random_seed": seed,
    }
