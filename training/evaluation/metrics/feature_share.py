"""Does a generated explanation name the item's feature? Two shares, beside BLEU-4 / ROUGE (issue 10 §2).

BLEU and ROUGE reward any overlap with the reference sentence, so a model that writes "The ... of this ... is
..." for every item scores well without saying anything about the item. On data whose explanations carry a
feature word (the `feature` column of the prepared explanation splits: the synthetic data's item features,
Amazon's extracted aspects), two shares over the generated explanations say whether the item is talked about:

* `feature_match` — the explanation names the feature of its own reference sentence (the test row's `feature`):
  PETER's Feature Matching Ratio (Li et al., 2021), the stricter of the two;
* `item_feature_share` — the explanation names *one of the item's features*, read from the training split's
  explanation rows of that item (`feature` column): for the synthetic data, whose items carry known features
  (datasets_scripts/synthetic.py), the share of explanations that name the item's own feature.

A feature is named when it occurs as a whole word (or word sequence, for multi-word aspects), case-insensitive.
Both shares are in [0, 1]; rows whose reference has no feature are left out of `feature_match`, and items with no
training explanation leave their rows out of `item_feature_share` (counted in `*_samples`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence


def names_feature(explanation: str, feature: str) -> bool:
    """True when `feature` occurs in `explanation` as a whole word or word sequence, case-insensitive."""
    words = feature.lower().split()
    if not words:
        return False
    # \b on both ends: "tone" is not named by "stones"; inner whitespace of a multi-word aspect may vary.
    pattern = r"\b" + r"\s+".join(re.escape(word) for word in words) + r"\b"
    return re.search(pattern, explanation.lower()) is not None


def item_features(item_ids: Iterable[int], features: Iterable[str]) -> dict[int, set[str]]:
    """{item: the set of non-empty features its explanation rows name} from parallel columns (a training split)."""
    table: dict[int, set[str]] = {}
    for item, feature in zip(item_ids, features):
        if feature and feature.strip():
            table.setdefault(int(item), set()).add(feature.strip())
    return table


def feature_shares(
    predictions: Sequence[str],
    item_ids: Sequence[int],
    reference_features: Sequence[str],
    features_of_item: Mapping[int, set[str]],
) -> dict:
    """The two shares of the module docstring over parallel lists (one entry per generated explanation).

    Returns {"feature_match", "feature_match_samples", "item_feature_share", "item_feature_samples",
    "feature_match_per_sample", "item_feature_per_sample"} (per-sample 0/1 lists, None where left out, so a
    caller can bootstrap an interval); a share is None when no row qualifies.
    """
    if not len(predictions) == len(item_ids) == len(reference_features):
        raise ValueError(f"feature_shares needs parallel lists, got {len(predictions)} predictions, {len(item_ids)} "
                         f"items and {len(reference_features)} reference features")
    match = [int(names_feature(text, feature)) if feature and feature.strip() else None
             for text, feature in zip(predictions, reference_features)]
    own = [int(any(names_feature(text, f) for f in features_of_item[int(item)]))
           if features_of_item.get(int(item)) else None for text, item in zip(predictions, item_ids)]

    def share(values):
        kept = [value for value in values if value is not None]
        return (sum(kept) / len(kept) if kept else None), len(kept)

    (match_share, match_count), (own_share, own_count) = share(match), share(own)
    return {
        "feature_match": match_share, "feature_match_samples": match_count,
        "item_feature_share": own_share, "item_feature_samples": own_count,
        "feature_match_per_sample": match, "item_feature_per_sample": own,
    }


def explanation_feature_scores(
    prepared, dataset, rows: Sequence[int], predictions: Sequence[str],
    interval: Callable[[Sequence[float]], list[float]] | None = None,
) -> dict:
    """The two shares of the generated explanations of `rows` of an explanation split (`dataset`), the items'
    features read from the prepared folder's `explanation_train` split (`prepared.dataset`); with `interval`
    (e.g. training.evaluation.bootstrap_interval) each share gets `<share>_ci` over its samples. {} when the data
    carries no feature column or no training features."""
    train = prepared.dataset.get("explanation_train")
    if train is None or "feature" not in dataset.column_names or "feature" not in train.column_names:
        return {}
    features_of_item = item_features(train["item_id"], train["feature"])
    if not features_of_item:
        return {}
    selected = dataset.select(list(rows))
    shares = feature_shares(predictions, selected["item_id"], selected["feature"], features_of_item)
    result = {key: value for key, value in shares.items() if not key.endswith("_per_sample")}
    if interval is not None:
        for name, per_sample in (("feature_match", shares["feature_match_per_sample"]),
                                 ("item_feature_share", shares["item_feature_per_sample"])):
            kept = [value for value in per_sample if value is not None]
            result[f"{name}_ci"] = interval(kept) if kept else None
    return result
