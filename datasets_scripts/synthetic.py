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
        for item in history:
            features = item_features[item]
            if rng.random() < config.p_preferred_feature:
                feature = features[preferred_slot[community]]
            else:
                feature = features[int(rng.integers(len(features)))]
            opinions = COMMUNITY_OPINIONS[community]
            pattern = SENTENCE_PATTERNS[int(rng.integers(len(SENTENCE_PATTERNS)))]
            sentence = pattern.format(
                feature=feature,
                category=CATEGORY_FEATURES[item_category[item]][0],
                opinion=opinions[int(rng.integers(len(opinions)))],
            )
            records.append({"user": user, "item": item, "explanation": sentence, "feature": feature})

    explanations, dropped = split_explanations(records, leave_one_out(histories), config.seed)
    return P5Data(
        histories=histories,
        id2user={user: f"synthetic_user_{user}" for user in histories},
        id2item={item: f"synthetic_item_{item}" for item in range(1, config.num_items + 1)},
        explanations=explanations,
        extra={
            "source": "synthetic",
            "synthetic_config": vars(config).copy(),
            "explanations_dropped": dropped,
            "_structure": {
                "user_community": user_community,
                "item_category": item_category,
                "community_chains": chains,
                "item_features": item_features,
            },
        },
    )
