"""Seeded synthetic data with real collaborative structure: PeaPOD's embedded demo data (no files needed).

The generative story (every draw from one `numpy.random.default_rng(seed)`, so the data is a function of the
seed and the config):

* **Item categories.** Items are dealt at random into `num_categories` categories (so an item's id says
  nothing about its category). Each category has its own feature words (e.g. a guitar has "strings", "tone");
  each item gets `features_per_item` of them.
* **User communities.** Users are dealt at random into `num_communities` communities. Community c shops in
  category c mod num_categories, so two communities share each category (with the defaults) ...
* **Sequential habits.** ... but each community walks its category's items in its **own** random cyclic order
  (its chain). A user starts at a random point of the chain; each next item is the next unseen item of the
  chain with probability `p_chain`, a random unseen item of the category with probability `p_category`, and a
  random unseen item of the whole catalogue otherwise. Knowing which users behave like a user (its community)
  tells which chain it follows: collaborative signal genuinely helps next-item prediction.
* **Explanations.** One review sentence per interaction. Its feature is the item's feature the user's community
  cares most about (with probability `p_preferred_feature`, else another feature of the item) and its opinion
  word comes from the community's own vocabulary, so the sentence depends on both the item and the community.

The ground truth (communities, categories, chains) is kept in `P5Data.extra["_structure"]` for tests and demos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from configuration_peapod import PeaPODInputError

from .p5_format import P5Data
from .splits import leave_one_out, split_explanations

CATEGORY_FEATURES = (
    ("guitar", ("strings", "tone", "neck", "frets", "pickups", "tuners")),
    ("camera", ("lens", "battery", "zoom", "shutter", "flash", "sensor")),
    ("blender", ("blade", "motor", "jar", "lid", "speed", "base")),
    ("backpack", ("zipper", "straps", "pockets", "fabric", "padding", "buckle")),
    ("lamp", ("bulb", "switch", "shade", "cord", "dimmer", "stand")),
    ("headphones", ("bass", "cushions", "cable", "headband", "volume", "microphone")),
)
COMMUNITY_OPINIONS = (
    ("excellent", "superb", "outstanding"),
    ("flimsy", "disappointing", "weak"),
    ("solid", "reliable", "sturdy"),
    ("gorgeous", "elegant", "stylish"),
    ("cheap", "rough", "noisy"),
    ("smooth", "precise", "responsive"),
    ("decent", "acceptable", "okay"),
    ("amazing", "fantastic", "wonderful"),
)
SENTENCE_PATTERNS = (
    "The {feature} of this {category} is {opinion}.",
    "I found the {feature} {opinion} on this {category}.",
    "This {category} has a {opinion} {feature}.",
    "Honestly the {feature} feels {opinion}.",
)


@dataclass
class SyntheticConfig:
    num_users: int = 300
    num_items: int = 240
    num_categories: int = 4
    num_communities: int = 8
    min_history: int = 5
    max_history: int = 15
    p_chain: float = 0.75
    p_category: float = 0.15
    features_per_item: int = 2
    p_preferred_feature: float = 0.8
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.num_categories <= len(CATEGORY_FEATURES):
            raise ValueError(f"num_categories must be in 1..{len(CATEGORY_FEATURES)}, got {self.num_categories}")
        if not 1 <= self.num_communities <= len(COMMUNITY_OPINIONS):
            raise ValueError(f"num_communities must be in 1..{len(COMMUNITY_OPINIONS)}, got {self.num_communities}")
        if not 3 <= self.min_history <= self.max_history:
            raise ValueError(f"need 3 <= min_history <= max_history, got {self.min_history}, {self.max_history}")
        if self.num_items // self.num_categories < self.max_history + 1:
            raise ValueError("each category needs more items than max_history (raise num_items)")
        if self.num_items < self.max_history + 100:
            raise ValueError("num_items must exceed max_history + 99 so that 99 negatives exist for every user")
        if not 0 <= self.p_chain + self.p_category <= 1:
            raise ValueError("p_chain + p_category must be within [0, 1]")


def _review_records(
    rng: np.random.Generator,
    user: int,
    history: list[int],
    community: int,
    item_features: dict[int, list[str]],
    item_category: dict[int, int],
    preferred_slot: int,
    p_preferred_feature: float,
) -> list[dict]:
    """One review sentence per item of `history`: the community's preferred feature (or another of the item's
    features) with an opinion word of the community's vocabulary (`COMMUNITY_OPINIONS[community % 8]`)."""
    records = []
    opinions = COMMUNITY_OPINIONS[community % len(COMMUNITY_OPINIONS)]
    for item in history:
        features = item_features[item]
        if rng.random() < p_preferred_feature:
            feature = features[preferred_slot]
        else:
            feature = features[int(rng.integers(len(features)))]
        pattern = SENTENCE_PATTERNS[int(rng.integers(len(SENTENCE_PATTERNS)))]
        sentence = pattern.format(
            feature=feature,
            category=CATEGORY_FEATURES[item_category[item]][0],
            opinion=opinions[int(rng.integers(len(opinions)))],
        )
        records.append({"user": user, "item": item, "explanation": sentence, "feature": feature})
    return records


def generate_synthetic(config: SyntheticConfig | None = None) -> P5Data:
    """The synthetic data set as P5 data (histories, datamaps, split explanations); see the module docstring."""
    config = config or SyntheticConfig()
    config.validate()
    rng = np.random.default_rng(config.seed)
    items = rng.permutation(config.num_items) + 1
    item_category = {int(item): index % config.num_categories for index, item in enumerate(items)}
    category_items = [sorted(i for i, c in item_category.items() if c == cat) for cat in range(config.num_categories)]
    item_features = {}
    for item in range(1, config.num_items + 1):
        words = CATEGORY_FEATURES[item_category[item]][1]
        chosen = rng.choice(len(words), size=config.features_per_item, replace=False)
        item_features[item] = [words[index] for index in chosen]
    community_category = [c % config.num_categories for c in range(config.num_communities)]
    chains = [rng.permutation(category_items[cat]).tolist() for cat in community_category]
    # The feature slot a community cares about (index into an item's features), so communities differ.
    preferred_slot = [c % config.features_per_item for c in range(config.num_communities)]
    user_community = {
        user: int(c) for user, c in enumerate(rng.integers(config.num_communities, size=config.num_users), start=1)
    }

    histories, records = {}, []
    for user in range(1, config.num_users + 1):
        community = user_community[user]
        chain = chains[community]
        category = community_category[community]
        length = int(rng.integers(config.min_history, config.max_history + 1))
        position = int(rng.integers(len(chain)))
        history = [chain[position]]
        seen = {chain[position]}
        while len(history) < length:
            draw = rng.random()
            if draw < config.p_chain:
                while chain[position] in seen:  # the next unseen item of the chain
                    position = (position + 1) % len(chain)
                item = chain[position]
            else:
                pool = category_items[category] if draw < config.p_chain + config.p_category else range(
                    1, config.num_items + 1
                )
                unseen = [i for i in pool if i not in seen]
                item = int(unseen[rng.integers(len(unseen))])
            history.append(item)
            seen.add(item)
        histories[user] = history
        records += _review_records(
            rng, user, history, community, item_features, item_category, preferred_slot[community],
            config.p_preferred_feature,
        )

    structure = {"user_community": user_community, "item_category": item_category, "community_chains": chains,
                 "item_features": item_features}
    return _synthetic_p5_data(histories, records, config, "synthetic", structure)


def _synthetic_p5_data(histories, records, config, source: str, structure: dict) -> P5Data:
    """The generated histories and review records as P5Data: explanation split, ids' raw names, ground truth."""
    explanations, dropped = split_explanations(records, leave_one_out(histories), config.seed)
    return P5Data(
        histories=histories,
        id2user={user: f"synthetic_user_{user}" for user in histories},
        id2item={item: f"synthetic_item_{item}" for item in range(1, config.num_items + 1)},
        explanations=explanations,
        extra={"source": source, "synthetic_config": vars(config).copy(), "explanations_dropped": dropped,
               "_structure": structure},
    )


# Planted-signal variants ------------------------------------------------------------------------------------------
#
# Each variant plants ONE known source for the held-out items (the validation item items[-2] and the test item
# items[-1] of every user), so that what a model must learn is known and an oracle can be written down:
#
# * `history`: a fixed random successor permutation `successor` (one cycle through the whole catalogue). Each
#   training step follows it (with probability 1 - p_noise, else a random unseen item); the held-out items always
#   do: validation = successor(last training item), test = successor(validation). The sequential task's answer
#   is the successor of the last item of its input; a first-order Markov chain on the training histories is a
#   near-oracle. Users carry no signal (communities only colour the review words).
# * `user`: the items are dealt into `num_communities` disjoint taste sets; a user belongs to one community and
#   takes its training items from the community's set, in random order (no order signal), with probability
#   p_noise an "impulse" item from another set instead; its held-out items are unseen items of its own set. The
#   answer follows from the long-term taste, which the whole history (and the CF user vector) reveals; the last
#   item alone is an impulse item with probability p_noise and says nothing about which of the set's items.
# * `neighbors`: users sit in communities (each with its own pool of items) and, inside them, in cliques of
#   `clique_size` users. Each clique has 2 x clique_size "hit" items taken from OTHER communities' pools, so they
#   are foreign to the clique's own taste. Member j holds out hits 2j (validation) and 2j + 1 (test) and takes
#   every other hit of its clique in training, with min..max_history items of its community pool, in random
#   order. So the held-out item is absent from the user's own history, foreign to its taste, and present in the
#   training histories of all its clique-mates (its most similar users): only they reveal it.
#
# Item ids are a seeded random bijection of the latent item order, so no id arithmetic helps; the ground truth
# (successor, tastes, cliques...) is in `P5Data.extra["_structure"]`, and `planted_oracle_scores` ranks by it.

PLANTED_VARIANTS = ("history", "user", "neighbors")
SYNTHETIC_VARIANTS = ("default", *PLANTED_VARIANTS)


@dataclass
class PlantedConfig:
    """Sizes of a planted variant (CPU-friendly by default). History lengths count training items only; every
    user has two held-out items more."""

    variant: str = "history"
    num_users: int = 600
    num_items: int = 400
    min_history: int = 6
    max_history: int = 12
    p_noise: float = 0.1
    features_per_item: int = 2
    p_preferred_feature: float = 0.8
    num_communities: int = 8  # history: opinion vocabularies only; user: taste sets; neighbors: item pools
    clique_size: int = 5  # neighbors
    pool_size: int = 40  # neighbors: items per community pool
    seed: int = 0

    @classmethod
    def for_variant(cls, variant: str, seed: int = 0, **overrides) -> PlantedConfig:
        """The documented defaults of `variant` (docs/data.md), with `overrides`."""
        if variant not in PLANTED_VARIANTS:
            raise ValueError(f"unknown planted variant {variant!r}; expected one of {PLANTED_VARIANTS}")
        sizes = {
            "history": {"num_users": 600, "num_items": 400, "min_history": 6, "max_history": 12},
            "user": {"num_users": 720, "num_items": 432, "num_communities": 24, "min_history": 6, "max_history": 10,
                     "p_noise": 0.2},
            # neighbors: min/max_history count the community-pool items; every user also takes 2 x (clique_size - 1)
            # hits of its clique in training.
            "neighbors": {"num_users": 600, "num_items": 400, "min_history": 3, "max_history": 6},
        }[variant]
        return cls(**{"variant": variant, "seed": seed, **sizes, **overrides})

    def validate(self) -> None:
        if self.variant not in PLANTED_VARIANTS:
            raise ValueError(f"unknown planted variant {self.variant!r}; expected one of {PLANTED_VARIANTS}")
        if not 2 <= self.min_history <= self.max_history:
            raise ValueError(f"need 2 <= min_history <= max_history, got {self.min_history}, {self.max_history}")
        longest = self.max_history + (2 * self.clique_size + 2 if self.variant == "neighbors" else 2)
        if self.num_items < longest + 99:
            raise ValueError("num_items too small: 99 negatives must exist outside every user's history")
        if not 0 <= self.p_noise < 1:
            raise ValueError(f"p_noise must be in [0, 1), got {self.p_noise}")
        if self.variant == "user" and self.num_items // self.num_communities < self.max_history + 3:
            raise ValueError("user: each taste set needs max_history + 3 items (raise num_items or lower communities)")
        if self.variant == "neighbors":
            pools = self.num_communities * self.pool_size
            if self.num_communities < 2 or self.clique_size < 3 or pools > self.num_items:
                raise ValueError("neighbors: need >= 2 communities, clique_size >= 3, communities * pool_size <= items")
            cliques = -(-self.num_users // self.clique_size)
            per_community = -(-cliques // self.num_communities)
            if per_community * 2 * (self.clique_size + 2) > pools - self.pool_size:
                raise ValueError("neighbors: not enough foreign pool items for distinct clique hits (raise pool_size)")
            if self.max_history > self.pool_size:
                raise ValueError("neighbors: max_history (community-pool items per user) must be <= pool_size")


def _unseen(rng: np.random.Generator, pool, seen: set[int]) -> int:
    """A uniform draw from `pool` minus `seen`."""
    candidates = [item for item in pool if item not in seen]
    return int(candidates[int(rng.integers(len(candidates)))])


def _history_variant(config: PlantedConfig, rng: np.random.Generator, items: np.ndarray):
    num_items = config.num_items
    cycle = items.tolist()  # already a random order of the ids: one cycle through the catalogue
    successor = {cycle[k]: cycle[(k + 1) % num_items] for k in range(num_items)}
    catalogue = range(1, num_items + 1)
    histories = {}
    for user in range(1, config.num_users + 1):
        length = int(rng.integers(config.min_history, config.max_history + 1))
        while True:  # redraw the rare user whose held-out successors it already has
            history = [int(rng.integers(1, num_items + 1))]
            seen = {history[0]}
            while len(history) < length:
                item = successor[history[-1]]
                if rng.random() < config.p_noise or item in seen:
                    item = _unseen(rng, catalogue, seen)
                history.append(item)
                seen.add(item)
            validation = successor[history[-1]]
            test = successor[validation]
            if validation not in seen and test not in seen and test != validation:
                break
        histories[user] = [*history, validation, test]
    user_community = {user: int(c) for user, c in enumerate(
        rng.integers(config.num_communities, size=config.num_users), start=1)}
    return histories, user_community, {"successor": successor}


def _user_variant(config: PlantedConfig, rng: np.random.Generator, items: np.ndarray):
    communities = config.num_communities
    size = config.num_items // communities
    latent = items.tolist()
    # Disjoint taste sets; the leftover items (num_items mod communities) are only ever impulse items.
    taste_items = [latent[c * size : (c + 1) * size] for c in range(communities)]
    item_community = {item: c for c, members in enumerate(taste_items) for item in members}
    histories, user_community = {}, {}
    for user in range(1, config.num_users + 1):
        community = int(rng.integers(communities))
        user_community[user] = community
        taste = taste_items[community]
        elsewhere = [item for item in latent if item_community.get(item) != community]
        length = int(rng.integers(config.min_history, config.max_history + 1))
        history: list[int] = []
        seen: set[int] = set()
        while len(history) < length:
            item = _unseen(rng, elsewhere if rng.random() < config.p_noise else taste, seen)
            history.append(item)
            seen.add(item)
        held_out = rng.choice([item for item in taste if item not in seen], size=2, replace=False)
        histories[user] = [*history, *(int(i) for i in held_out)]
    structure = {"taste_items": taste_items, "item_taste": item_community}
    # Reviews: a taste set's items share a category (its community's, mod the number of categories).
    item_category = {int(item): item_community.get(int(item), 0) % len(CATEGORY_FEATURES) for item in latent}
    return histories, user_community, structure, item_category


def _neighbors_variant(config: PlantedConfig, rng: np.random.Generator, items: np.ndarray):
    size, communities = config.clique_size, config.num_communities
    latent = items.tolist()
    pools = [latent[c * config.pool_size : (c + 1) * config.pool_size] for c in range(communities)]
    pooled = {item for pool in pools for item in pool}
    outside = [item for item in latent if item not in pooled]  # only ever drawn as noise
    users = (rng.permutation(config.num_users) + 1).tolist()
    cliques = [users[start : start + size] for start in range(0, len(users), size)]
    if len(cliques) > 1 and len(cliques[-1]) < 3:  # a clique of 1-2 users cannot hold out from each other
        cliques[-2] += cliques.pop()
    clique_community = [k % communities for k in range(len(cliques))]
    # Two hits per member, distinct within a community, drawn from the other communities' pools (foreign to the
    # clique's own taste).
    clique_hits: list[list[int]] = []
    foreign_left = {c: rng.permutation([i for p, pool in enumerate(pools) if p != c for i in pool]).tolist()
                    for c in range(communities)}
    for k, members in enumerate(cliques):
        left = foreign_left[clique_community[k]]
        clique_hits.append([int(left.pop()) for _ in range(2 * len(members))])
    histories, user_community, user_clique = {}, {}, {}
    for k, members in enumerate(cliques):
        community, hits = clique_community[k], clique_hits[k]
        for j, user in enumerate(members):
            validation, test = hits[2 * j], hits[2 * j + 1]
            training = [h for h in hits if h not in (validation, test)]
            length = len(training) + int(rng.integers(config.min_history, config.max_history + 1))
            seen = set(hits)  # never draw any hit of the clique as a pool or noise item
            while len(training) < length:
                pool = (outside or latent) if rng.random() < config.p_noise else pools[community]
                item = _unseen(rng, pool, seen)
                training.append(item)
                seen.add(item)
            histories[user] = [*(int(i) for i in rng.permutation(training)), validation, test]
            user_community[user], user_clique[user] = community, k
    histories = dict(sorted(histories.items()))
    structure = {
        "community_pools": pools,
        "clique_members": cliques,
        "clique_hits": clique_hits,
        "user_clique": dict(sorted(user_clique.items())),
    }
    return histories, dict(sorted(user_community.items())), structure


def generate_planted(config: PlantedConfig) -> P5Data:
    """A planted-signal variant (see the comment above `PLANTED_VARIANTS`) as P5 data with reviews."""
    config.validate()
    rng = np.random.default_rng([config.seed, 100 + PLANTED_VARIANTS.index(config.variant)])
    items = rng.permutation(config.num_items) + 1  # the latent item order -> random ids
    item_category = None
    if config.variant == "history":
        histories, user_community, structure = _history_variant(config, rng, items)
    elif config.variant == "user":
        histories, user_community, structure, item_category = _user_variant(config, rng, items)
    else:
        histories, user_community, structure = _neighbors_variant(config, rng, items)
    if item_category is None:  # categories only colour the reviews: dealt at random
        categories = min(len(CATEGORY_FEATURES), 4)
        item_category = {int(item): int(rng.integers(categories)) for item in range(1, config.num_items + 1)}
    item_features = {}
    for item in range(1, config.num_items + 1):
        words = CATEGORY_FEATURES[item_category[item]][1]
        chosen = rng.choice(len(words), size=config.features_per_item, replace=False)
        item_features[item] = [words[index] for index in chosen]
    records = []
    for user, history in histories.items():
        community = user_community[user]
        records += _review_records(
            rng, user, history, community, item_features, item_category, community % config.features_per_item,
            config.p_preferred_feature,
        )
    structure = {"variant": config.variant, "user_community": user_community, "item_category": item_category,
                 "item_features": item_features, **structure}
    return _synthetic_p5_data(histories, records, config, f"synthetic ({config.variant} planted signal)", structure)


def synthetic_data(variant: str = "default", seed: int = 0) -> P5Data:
    """The synthetic data of `peapod-prepare --synthetic --synthetic_variant VARIANT --seed SEED`."""
    if variant == "default":
        return generate_synthetic(SyntheticConfig(seed=seed))
    if variant not in PLANTED_VARIANTS:
        raise ValueError(f"unknown synthetic variant {variant!r}; expected one of {SYNTHETIC_VARIANTS}")
    return generate_planted(PlantedConfig.for_variant(variant, seed=seed))


def planted_oracle_scores(structure: dict, user_ids, histories, num_items: int) -> np.ndarray:
    """[len(user_ids), num_items + 1] scores of the oracle that knows the planted rule (-inf: padding or an item of
    the user's given history, `histories[user]`, the history known at prediction time).

    * history: successor^k(last item) scores -k (k = 1..num_items), so the next unseen item of the chain wins
      (with the training history as input, the test item is two steps on: the validation item is not a candidate).
    * user: 1 for the items of the user's taste set, 0 otherwise.
    * neighbors: 1 for the hits of the user's clique, 0 otherwise.
    """
    variant = structure["variant"]
    scores = np.zeros((len(user_ids), num_items + 1), dtype=np.float64)
    for row, user in enumerate(user_ids):
        history = list(histories[user])
        if variant == "history":
            item = history[-1]
            for step in range(1, num_items + 1):
                item = structure["successor"][item]
                scores[row, item] = -step  # one cycle: every item is reached exactly once
        elif variant == "user":
            scores[row, structure["taste_items"][structure["user_community"][user]]] = 1.0
        elif variant == "neighbors":
            scores[row, structure["clique_hits"][structure["user_clique"][user]]] = 1.0
        else:
            raise ValueError(f"no oracle for variant {variant!r}; expected one of {PLANTED_VARIANTS}")
        scores[row, np.asarray(history, dtype=np.int64)] = -np.inf
    scores[:, 0] = -np.inf
    return scores


def planted_structure(prepared) -> dict:
    """The ground truth of a prepared planted-variant folder (`datasets_scripts.load_prepared`), in its own ids.

    The prepared folder keeps no ground truth; the generator is a function of (variant, seed), so it is generated
    again from prepare_config.json and mapped onto the folder's ids through the datamaps' names (which survive
    `max_users` compaction and `reindex_items`). The histories must then agree exactly.
    A folder that is not a planted variant, or whose histories differ, is a `PeaPODInputError` (a ValueError).
    """
    arguments = prepared.config.get("arguments", {})
    variant = arguments.get("synthetic_variant", "default")
    if not arguments.get("synthetic") or variant not in PLANTED_VARIANTS:
        raise PeaPODInputError(
            f"{prepared.path}: not a planted-signal synthetic folder (prepare it with --synthetic "
            f"--synthetic_variant one of {', '.join(PLANTED_VARIANTS)}); the oracle needs the planted ground truth"
        )
    data = synthetic_data(variant, seed=prepared.config["seed"])
    item_by_name = {name: item for item, name in prepared.id2item.items()}
    user_by_name = {name: user for user, name in prepared.id2user.items()}
    items = {old: item_by_name[name] for old, name in data.id2item.items() if name in item_by_name}
    users = {old: user_by_name[name] for old, name in data.id2user.items() if name in user_by_name}
    for old, user in users.items():
        if [items.get(item) for item in data.histories[old]] != prepared.histories[user]:
            raise PeaPODInputError(
                f"{prepared.path}: user {user}'s history differs from the regenerated {variant} data (seed "
                f"{prepared.config['seed']}): the folder was changed after preparing, or made by another version"
            )
    source = data.extra["_structure"]

    def item_list(values):
        return [items[item] for item in values if item in items]

    structure = {
        "variant": variant,
        "user_community": {users[u]: c for u, c in source["user_community"].items() if u in users},
        "item_category": {items[i]: c for i, c in source["item_category"].items() if i in items},
        "item_features": {items[i]: f for i, f in source["item_features"].items() if i in items},
    }
    if variant == "history":
        # The cycle restricted to the items kept (max_users may drop some): each kept item's next kept item.
        cycle, item = [], next(iter(source["successor"]))
        for _ in range(len(source["successor"])):
            if item in items:
                cycle.append(items[item])
            item = source["successor"][item]
        structure["successor"] = {cycle[k]: cycle[(k + 1) % len(cycle)] for k in range(len(cycle))}
    elif variant == "user":
        structure["taste_items"] = [item_list(members) for members in source["taste_items"]]
        structure["item_taste"] = {items[i]: c for i, c in source["item_taste"].items() if i in items}
    else:
        structure["community_pools"] = [item_list(pool) for pool in source["community_pools"]]
        structure["clique_hits"] = [item_list(hits) for hits in source["clique_hits"]]
        structure["clique_members"] = [
            [users[u] for u in members if u in users] for members in source["clique_members"]
        ]
        structure["user_clique"] = {users[u]: k for u, k in source["user_clique"].items() if u in users}
    return structure


def planted_clique_mates(prepared) -> dict[int, set[int]] | None:
    """`clique_mates` of a prepared planted `neighbors` folder (where the attention should go); None for other data."""
    arguments = prepared.config.get("arguments", {})
    if not (arguments.get("synthetic") and arguments.get("synthetic_variant") == "neighbors"):
        return None
    return clique_mates(planted_structure(prepared))


def clique_mates(structure: dict) -> dict[int, set[int]]:
    """`neighbors` variant: each user's clique-mates (the users whose training items reveal its held-out hits),
    from `planted_structure(prepared)` (or the generator's own structure): the neighbours its prompt encoder
    should attend to."""
    if "user_clique" not in structure:
        raise PeaPODInputError(
            f"clique-mates exist in the `neighbors` variant only, not {structure.get('variant', 'this structure')!r}"
        )
    members = structure["clique_members"]
    return {user: set(members[clique]) - {user} for user, clique in structure["user_clique"].items()}
