"""HR@k and NDCG@k over ranked item lists with one relevant item per user (SPEC §3, the paper's §5.3).

For a user with ranked list L = (l_1, l_2, ...) (best first) and relevant item t:

    rank    = the 1-based position of t in L, or infinity when t is not in L
    HR@k    = 1 if rank <= k else 0
    NDCG@k  = 1 / log2(rank + 1) if rank <= k else 0      (one relevant item, so the ideal DCG is 1)

both averaged over users. Hand-written because neither `evaluate` nor `sklearn` has a leave-one-out HR/NDCG over
ranked id lists (sklearn's `ndcg_score` wants a dense score matrix and breaks ties its own way).

Policies:
* A list must hold distinct non-negative item ids: a duplicate would let one item count twice (the reference
  code's fault, SPEC §3), so it is a ValueError. Padding (e.g. -1 from `model.recommend`) must be stripped first.
* k larger than a list: the list is used as it is; a list shorter than k simply has no hit beyond its length
  (an empty list is a miss). No error, no padding with random items.
* Ties: the metric scores the order it is given. Whoever turns scores into a list breaks ties; the package's
  rankers (`training.evaluation.baselines.rank_by_score`, candidate likelihood ranking) put the lower item id first.
"""

import math

import datasets
import evaluate

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of ranked lists of item ids (ints, best first, distinct, no padding).
    references: list of the relevant item id of each user (int).
    k_values: cut-offs to report (default (1, 5, 10)); each must be >= 1.
    per_user: also return every user's own HR@k / NDCG@k (default False), e.g. for bootstrap intervals.
Returns:
    {"hr@k": float, "ndcg@k": float for every k in k_values, "num_users": int}, and with per_user=True
    "per_user": {"hr@k": [float per user], "ndcg@k": [...]} in the order of the predictions.
Example:
    >>> metric = evaluate.load("training/evaluation/metrics/ranking")
    >>> metric.compute(predictions=[[3, 1, 2], [5, 4]], references=[1, 9], k_values=[1, 2])
    {'hr@1': 0.0, 'ndcg@1': 0.0, 'hr@2': 0.5, 'ndcg@2': 0.31546487678572877, 'num_users': 2}
"""

_CITATION = """\
@inproceedings{ramos2025peapod,
  title={Personalized Prompt Distillation for Generative Recommendation (PeaPOD)},
  author={Ramos, Jerome and Wu, Bin and Lipani, Aldo}, year={2025}
}
"""


def _rank_of(ranked_items, relevant_item, user_index):
    """1-based position of `relevant_item` in `ranked_items`, or None; validates the list on the way."""
    if len(set(ranked_items)) != len(ranked_items):
        seen, duplicates = set(), set()
        for item in ranked_items:
            (duplicates if item in seen else seen).add(item)
        raise ValueError(
            f"ranked list of user #{user_index} repeats item id(s) {sorted(duplicates)}: a ranked list must hold "
            "distinct items (a repeated item would be counted twice)"
        )
    if any(item < 0 for item in ranked_items):
        raise ValueError(
            f"ranked list of user #{user_index} holds a negative id {min(ranked_items)}: strip padding "
            "(e.g. the -1 of model.recommend) before computing ranking metrics"
        )
    for position, item in enumerate(ranked_items, start=1):
        if item == relevant_item:
            return position
    return None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ranking(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k_values=(1, 5, 10), per_user=False):
        k_values = list(k_values)
        if not k_values or any(int(k) != k or k < 1 for k in k_values):
            raise ValueError(f"k_values must be a non-empty list of integers >= 1, got {k_values}")
        if len(predictions) == 0:
            raise ValueError("no users to evaluate: predictions is empty")
        ranks = [
            _rank_of(list(ranked), int(target), index)
            for index, (ranked, target) in enumerate(zip(predictions, references))
        ]
        result, users = {}, {}
        for k in k_values:
            hits = [rank is not None and rank <= k for rank in ranks]
            users[f"hr@{k}"] = [float(hit) for hit in hits]
            users[f"ndcg@{k}"] = [1.0 / math.log2(rank + 1) if hit else 0.0 for rank, hit in zip(ranks, hits)]
            result[f"hr@{k}"] = sum(hits) / len(ranks)
            result[f"ndcg@{k}"] = sum(users[f"ndcg@{k}"]) / len(ranks)
        result["num_users"] = len(ranks)
        if per_user:
            result["per_user"] = users
        return result
