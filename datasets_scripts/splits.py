"""Splits, fixed negatives and leakage-free re-indexing (SPEC §2).

* Leave-one-out for sequential and top-n: items[:-2] train, items[-2] validation, items[-1] test.
* 8:1:1 explanation split with every user and item present in train, and without any (user, item) pair that is
  a sequential/top-n validation or test pair in explanation train (the reference data leaks them).
* Fixed, seeded 99-negative files for validation and test (the P5 `negative_samples.txt` is not available, so
  they are regenerated): uniform over the items the user never interacted with (full history), distinct.
* Leakage-free item re-indexing: a seeded random bijection of the item ids. The P5 id space numbers items by
  first appearance in time-sorted histories, so `max(history) + 1` is often the next item; a random
  permutation removes that shortcut.

All randomness comes from `numpy.random.default_rng` seeded with the caller's seed (plus a fixed per-purpose
offset so that validation and test negatives differ), so every output is a function of (data, seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .p5_format import P5Data

NUM_NEGATIVES = 99
# Offsets added to the seed so that each random draw has its own stream (same seed -> different purposes differ).
SEED_OFFSETS = {"validation": 1, "test": 2, "explanation": 3, "reindex": 4, "held_out_users": 5,
                "held_out_validation": 6, "held_out_test": 7}


@dataclass
class LeaveOneOut:
    """items[:-2] train histories, items[-2] validation targets, items[-1] test targets, per user."""

    train: dict[int, list[int]]
    validation: dict[int, int]
    test: dict[int, int]

    def eval_pairs(self) -> set[tuple[int, int]]:
        """The (user, item) pairs of the sequential/top-n validation and test sets."""
        return {*self.validation.items(), *self.test.items()}


def leave_one_out(histories: dict[int, list[int]]) -> LeaveOneOut:
    for user, items in histories.items():
        if len(items) < 3:
            raise ValueError(f"user {user} has {len(items)} items; leave-one-out needs at least 3")
    return LeaveOneOut(
        train={user: items[:-2] for user, items in histories.items()},
        validation={user: items[-2] for user, items in histories.items()},
        test={user: items[-1] for user, items in histories.items()},
    )


def sample_negatives(
    rng: np.random.Generator, excluded: set[int], num_items: int, num_negatives: int
) -> list[int]:
    """`num_negatives` distinct items drawn uniformly from 1..num_items minus `excluded`.

    Rejection sampling: cheap because a user's history is a tiny fraction of the catalogue. Falls back to an
    explicit draw from the allowed set when the history is large relative to the catalogue (small data).
    """
    available = num_items - len({item for item in excluded if 1 <= item <= num_items})
    if available < num_negatives:
        raise ValueError(
            f"cannot draw {num_negatives} negatives: only {available} of {num_items} items are outside the history"
        )
    if available < 4 * num_negatives:
        allowed = np.array([item for item in range(1, num_items + 1) if item not in excluded])
        return rng.choice(allowed, size=num_negatives, replace=False).tolist()
    chosen: dict[int, None] = {}  # insertion-ordered set: the order of the draw is the order written
    while len(chosen) < num_negatives:
        for item in rng.integers(1, num_items + 1, size=2 * num_negatives).tolist():
            if item not in excluded and item not in chosen:
                chosen[item] = None
                if len(chosen) == num_negatives:
                    break
    return list(chosen)


def fixed_negatives(
    histories: dict[int, list[int]], num_items: int, split: str, seed: int, num_negatives: int = NUM_NEGATIVES
) -> dict[int, list[int]]:
    """The fixed negative file of `split` ("validation" or "test"): never in the user's full history."""
    rng = np.random.default_rng([seed, SEED_OFFSETS[split]])
    return {
        user: sample_negatives(rng, set(histories[user]), num_items, num_negatives) for user in sorted(histories)
    }


def split_explanations(
    records: list[dict],
    split: LeaveOneOut,
    seed: int,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """8:1:1 split of explanation records with the two guarantees of SPEC §2.

    Rules, in order:
    1. Records whose (user, item) is a sequential/top-n validation or test pair can never go to train; they
       fill the validation and test quotas first (shuffled, alternating), and any excess is dropped.
    2. Among the other records (shuffled), the first record of each user and then of each still-uncovered item
       goes to train, so every user and item with an allowed record appears in train.
    3. The remaining records fill what is left of the validation/test quotas, then train.
    4. Validation/test records whose user or item is absent from train are dropped (their pair could not be
       learned from train; with k-core data this is rare).
    Returns the splits (each sorted by (user, item)) and counts of what was dropped.
    """
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"explanation split ratios must sum to 1, got {ratios}")
    rng = np.random.default_rng([seed, SEED_OFFSETS["explanation"]])
    order = rng.permutation(len(records)).tolist()
    eval_pairs = split.eval_pairs()
    quota = {"validation": round(ratios[1] * len(records)), "test": round(ratios[2] * len(records))}
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    dropped = {"eval_pair_over_quota": 0, "user_or_item_not_in_train": 0}

    forced, free = [], []
    for index in order:
        (forced if (records[index]["user"], records[index]["item"]) in eval_pairs else free).append(records[index])
    for position, record in enumerate(forced):
        preferred = ("validation", "test") if position % 2 == 0 else ("test", "validation")
        target = next((name for name in preferred if len(out[name]) < quota[name]), None)
        if target is None:
            dropped["eval_pair_over_quota"] += 1
        else:
            out[target].append(record)

    users_in_train, items_in_train = set(), set()
    rest = []
    for record in free:
        if record["user"] not in users_in_train:
            out["train"].append(record)
            users_in_train.add(record["user"])
            items_in_train.add(record["item"])
        else:
            rest.append(record)
    remaining = []
    for record in rest:
        if record["item"] not in items_in_train:
            out["train"].append(record)
            items_in_train.add(record["item"])
        else:
            remaining.append(record)
    for record in remaining:
        target = next((name for name in ("validation", "test") if len(out[name]) < quota[name]), "train")
        out[target].append(record)

    for name in ("validation", "test"):
        kept = [r for r in out[name] if r["user"] in users_in_train and r["item"] in items_in_train]
        dropped["user_or_item_not_in_train"] += len(out[name]) - len(kept)
        out[name] = kept
    for split_records in out.values():
        split_records.sort(key=lambda r: (r["user"], r["item"]))
    return out, dropped


def enforce_explanation_rules(
    explanations: dict[str, list[dict]], split: LeaveOneOut
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Apply SPEC §2's guarantees to an explanation split given by the source (e.g. a P5 explanation.json).

    Train records that are sequential/top-n evaluation pairs are removed (the reference data leaks them), then
    evaluation records whose user or item no longer appears in train are removed. Returns the counts removed.
    """
    eval_pairs = split.eval_pairs()
    train = [r for r in explanations["train"] if (r["user"], r["item"]) not in eval_pairs]
    users = {r["user"] for r in train}
    items = {r["item"] for r in train}
    out = {"train": train}
    removed = {"eval_pair_in_train": len(explanations["train"]) - len(train), "user_or_item_not_in_train": 0}
    for name in ("validation", "test"):
        out[name] = [r for r in explanations[name] if r["user"] in users and r["item"] in items]
        removed["user_or_item_not_in_train"] += len(explanations[name]) - len(out[name])
    return out, removed


def reindex_items(data: P5Data, seed: int) -> tuple[P5Data, dict[int, int]]:
    """Leakage-free variant: a seeded random bijection old item id -> new item id over 1..num_items.

    Histories, datamaps and explanations are all rewritten in the new id space; the mapping is returned so
    it can be saved (item_reindex.json).
    """
    num_items = data.num_items
    permutation = np.random.default_rng([seed, SEED_OFFSETS["reindex"]]).permutation(num_items) + 1
    old_to_new = {old: int(new) for old, new in zip(range(1, num_items + 1), permutation.tolist())}
    explanations = None
    if data.explanations is not None:
        explanations = {
            name: sorted(
                ({**record, "item": old_to_new[record["item"]]} for record in records),
                key=lambda r: (r["user"], r["item"]),
            )
            for name, records in data.explanations.items()
        }
    reindexed = P5Data(
        histories={user: [old_to_new[item] for item in items] for user, items in data.histories.items()},
        id2user=dict(data.id2user),
        id2item={old_to_new[old]: raw for old, raw in data.id2item.items()},
        explanations=explanations,
        extra=dict(data.extra),
    )
    reindexed.id2item = dict(sorted(reindexed.id2item.items()))
    return reindexed, old_to_new


def take_first_users(data: P5Data, max_users: int) -> P5Data:
    """The first `max_users` users (by id) with the items they touch, ids compacted order-preservingly.

    For quick runs. Keeping the relative order of item ids keeps the id space's properties (including the
    `max(history) + 1` shortcut of P5 ids, which `reindex_items` removes).
    """
    if max_users < 1:
        raise ValueError(f"max_users must be >= 1, got {max_users}")
    users = sorted(data.histories)[:max_users]
    user_map = {old: new for new, old in enumerate(users, start=1)}
    items = sorted({item for user in users for item in data.histories[user]})
    item_map = {old: new for new, old in enumerate(items, start=1)}
    explanations = None
    if data.explanations is not None:
        explanations = {
            name: [
                {**r, "user": user_map[r["user"]], "item": item_map[r["item"]]}
                for r in records
                if r["user"] in user_map and r["item"] in item_map
            ]
            for name, records in data.explanations.items()
        }
    return P5Data(
        histories={user_map[u]: [item_map[i] for i in data.histories[u]] for u in users},
        id2user={user_map[u]: data.id2user[u] for u in users},
        id2item={item_map[i]: data.id2item[i] for i in items},
        explanations=explanations,
        extra=dict(data.extra),
    )


def hold_out_users(data: P5Data, fraction: float, seed: int) -> tuple[P5Data, dict[int, list[int]]]:
    """A seeded `fraction` of the users taken out of `data` entirely, for measuring new users (fold-in).

    Returns (the remaining data, {source user id: full history} of the held-out users). round(fraction * users)
    users are drawn (at least 1, at most all but 2: a neighbour table needs users) with
    `default_rng([seed, SEED_OFFSETS["held_out_users"]])`. The remaining users are renumbered 1..U' in their
    original order (the user table has no hole); item ids and the catalogue are unchanged, so a held-out user's
    items keep their ids (an item only held-out users took stays in the catalogue, with no training interaction).
    Their explanation records are dropped: nothing the model or the CF model learns from mentions them.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    users = sorted(data.histories)
    count = min(max(1, round(fraction * len(users))), len(users) - 2)
    if count < 1:
        raise ValueError(f"cannot hold out users from {len(users)} users: at least 3 are needed")
    rng = np.random.default_rng([seed, SEED_OFFSETS["held_out_users"]])
    held_out = set(rng.choice(users, size=count, replace=False).tolist())
    kept = [user for user in users if user not in held_out]
    user_map = {old: new for new, old in enumerate(kept, start=1)}
    explanations = None
    if data.explanations is not None:
        explanations = {
            name: [{**record, "user": user_map[record["user"]]} for record in records if record["user"] in user_map]
            for name, records in data.explanations.items()
        }
    remaining = P5Data(
        histories={user_map[user]: list(data.histories[user]) for user in kept},
        id2user={user_map[user]: data.id2user[user] for user in kept},
        id2item=dict(data.id2item),
        explanations=explanations,
        extra=dict(data.extra),
    )
    return remaining, {user: list(data.histories[user]) for user in sorted(held_out)}


def held_out_records(
    histories: dict[int, list[int]], id2user: dict[int, str], num_items: int, seed: int,
    num_negatives: int = NUM_NEGATIVES,
) -> list[dict]:
    """What evaluating held-out users needs, per user: the leave-one-out split of the model's own protocol
    (`train` = items[:-2], the history a new user arrives with; `validation` = items[-2]; `test` = items[-1]) and
    fixed negatives drawn as `fixed_negatives` does (own seed streams), never in the user's full history."""
    split = leave_one_out(histories)
    negatives = {
        name: fixed_negatives(histories, num_items, name, seed, num_negatives)
        for name in ("held_out_validation", "held_out_test")
    }
    return [
        {
            "source_user_id": user, "user": id2user[user], "train": split.train[user],
            "validation": split.validation[user], "test": split.test[user],
            "negatives_validation": negatives["held_out_validation"][user],
            "negatives_test": negatives["held_out_test"][user],
        }
        for user in sorted(histories)
    ]
