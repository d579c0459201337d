"""ROUGE-1, ROUGE-2 and ROUGE-L F1 on whitespace-tokenised lower-cased text, x100 (SPEC §3).

For each (prediction, reference) pair, with tokens = text.lower().split():

    ROUGE-N: overlap = sum_g min(count_pred(g), count_ref(g)) over n-grams g;
             P = overlap / #n-grams(pred), R = overlap / #n-grams(ref), F1 = 2PR / (P + R) (0 when P + R = 0)
    ROUGE-L: P = LCS / len(pred), R = LCS / len(ref), F1 = 2PR / (P + R)   (sentence-level LCS)

and the reported score is the mean F1 over pairs, x100. With several references per prediction the best F1
is taken (rouge-score's `score_multi`).

This equals `rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=<whitespace,
lower-case>)` averaged over pairs. It differs from rouge-score's *default* tokenizer (which also replaces every
non-alphanumeric character by a space, so "great," matches "great") and from its `BootstrapAggregator`
(whose "mid" is a bootstrap estimate, not the plain mean). It also differs from tensorflow/nmt's `rouge.py`,
which the PETER/PEPLER/POD line of reference code (and so the paper's tables) uses: that script counts each
distinct n-gram once (sets, not clipped counts) and its "ROUGE-L F" weights recall by beta = P_lcs / R_lcs
instead of F1. `variant="nmt"` computes that definition, for comparison with published numbers:

    ROUGE-N (nmt): P = |G_pred & G_ref| / |G_pred|, R = |G_pred & G_ref| / |G_ref| over n-gram *sets*,
                   F = 2PR / (P + R + 1e-8)
    ROUGE-L (nmt): beta = P / (R + 1e-12), F = (1 + beta^2) R P / (R + beta^2 P + 1e-12)

Hand-written because the `evaluate` Hub `rouge` module cannot be loaded offline and fixes rouge-score's
default tokenizer. Empty references are an error; an empty prediction scores 0.
"""

import collections

import datasets
import evaluate

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated sentences (str).
    references: list of reference sentences (str), or of lists of reference sentences.
    variant: "f1" (default: standard ROUGE F1, equal to rouge-score) or "nmt" (tensorflow/nmt rouge.py).
Returns:
    {"rouge1": float, "rouge2": float, "rougeL": float} — mean F1 x100.
Example:
    >>> metric = evaluate.load("training/evaluation/metrics/rouge_f1")
    >>> metric.compute(predictions=["the cat sat"], references=["the cat sat"])
    {'rouge1': 100.0, 'rouge2': 100.0, 'rougeL': 100.0}
"""

_CITATION = """\
@inproceedings{lin2004rouge,
  title={ROUGE: A Package for Automatic Evaluation of Summaries}, author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out}, year={2004}
}
"""


def _f1(overlap, prediction_total, reference_total):
    precision = overlap / prediction_total if prediction_total > 0 else 0.0
    recall = overlap / reference_total if reference_total > 0 else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n_f1(prediction, reference, n):
    """ROUGE-N F1 of two token lists (clipped n-gram counts)."""
    prediction_ngrams = collections.Counter(tuple(prediction[i : i + n]) for i in range(len(prediction) - n + 1))
    reference_ngrams = collections.Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    overlap = sum((prediction_ngrams & reference_ngrams).values())
    return _f1(overlap, sum(prediction_ngrams.values()), sum(reference_ngrams.values()))


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token_a == token_b else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction, reference):
    """Sentence-level ROUGE-L F1 of two token lists."""
    return _f1(lcs_length(prediction, reference), len(prediction), len(reference))


def rouge_n_nmt(prediction, reference, n):
    """tensorflow/nmt `rouge_n` F of two token lists: distinct n-grams (sets), epsilon in the denominator."""
    prediction_ngrams = {tuple(prediction[i : i + n]) for i in range(len(prediction) - n + 1)}
    reference_ngrams = {tuple(reference[i : i + n]) for i in range(len(reference) - n + 1)}
    if not prediction_ngrams or not reference_ngrams:
        return 0.0
    overlap = len(prediction_ngrams & reference_ngrams)
    precision, recall = overlap / len(prediction_ngrams), overlap / len(reference_ngrams)
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def rouge_l_nmt(prediction, reference):
    """tensorflow/nmt `rouge_l_sentence_level` F: LCS F-measure with beta = P / R."""
    if not prediction or not reference:
        return 0.0
    lcs = lcs_length(prediction, reference)
    recall, precision = lcs / len(reference), lcs / len(prediction)
    beta = precision / (recall + 1e-12)
    return (1 + beta**2) * recall * precision / (recall + beta**2 * precision + 1e-12)


_VARIANTS = {
    "f1": (lambda p, r: rouge_n_f1(p, r, 1), lambda p, r: rouge_n_f1(p, r, 2), rouge_l_f1),
    "nmt": (lambda p, r: rouge_n_nmt(p, r, 1), lambda p, r: rouge_n_nmt(p, r, 2), rouge_l_nmt),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references, variant="f1"):
        if len(predictions) == 0:
            raise ValueError("no sentences to evaluate: predictions is empty")
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, got {variant!r}")
        rouge_1, rouge_2, rouge_l = _VARIANTS[variant]
        totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for index, (prediction, refs) in enumerate(zip(predictions, references)):
            refs = [refs] if isinstance(refs, str) else list(refs)
            tokenized_refs = [reference.lower().split() for reference in refs]
            if not tokenized_refs or any(len(reference) == 0 for reference in tokenized_refs):
                raise ValueError(
                    f"reference #{index} is empty ({refs!r}): every sentence needs a non-empty reference; drop or "
                    "fix such rows before evaluation"
                )
            tokens = prediction.lower().split()
            totals["rouge1"] += max(rouge_1(tokens, reference) for reference in tokenized_refs)
            totals["rouge2"] += max(rouge_2(tokens, reference) for reference in tokenized_refs)
            totals["rougeL"] += max(rouge_l(tokens, reference) for reference in tokenized_refs)
        return {name: 100.0 * total / len(predictions) for name, total in totals.items()}
