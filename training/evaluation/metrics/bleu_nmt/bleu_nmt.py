"""Corpus BLEU-4 as defined by tensorflow/nmt's `compute_bleu` (no smoothing), x100 (SPEC §3).

This is the BLEU of the paper's explanation tables (the reference code calls tensorflow/nmt's script). Written
here from its definition rather than imported, because that script is not a maintained package. Text is
lower-cased and split on whitespace; nothing else is normalised. Over the whole corpus:

    p_n  = sum_sentences sum_{g in n-grams(hyp)} min(count_hyp(g), max_ref count_ref(g))
           / sum_sentences max(0, len(hyp) - n + 1)                              (clipped precision, n = 1..4)
    geo  = exp(mean_n log p_n), or 0 when any p_n is 0 (no smoothing)
    c    = total hypothesis length, r = total of each sentence's shortest reference length
    BP   = 1 if c > r else exp(1 - r / c)  (0 when c = 0)
    BLEU = 100 * geo * BP

Where it differs from `sacrebleu.corpus_bleu(..., tokenize="none", smooth_method="none", lowercase=True)`: with
one reference per sentence the two are equal. With several references, nmt takes each sentence's *shortest*
reference length for r, sacrebleu the reference length *closest* to the hypothesis. sacrebleu also rounds its
reported score (to 2 decimals in `.score` formatting only; `.score` itself is exact).

Empty references are an error (a sentence with nothing to match would only lower the score silently);
empty predictions are allowed (a model that generates nothing scores 0 for that sentence).
"""

import collections
import math

import datasets
import evaluate

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated sentences (str).
    references: list of reference sentences (str), or of lists of reference sentences.
    max_order: the largest n-gram order (default 4).
Returns:
    {"bleu": float (x100), "precisions": [p_1..p_max_order] (fractions), "brevity_penalty": float,
     "length_ratio": c / r, "translation_length": c, "reference_length": r}
Example:
    >>> metric = evaluate.load("training/evaluation/metrics/bleu_nmt")
    >>> metric.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])["bleu"]
    100.0
"""

_CITATION = """\
@inproceedings{papineni2002bleu,
  title={BLEU: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}
}
"""


def _tokenize(text):
    return text.lower().split()


def _ngram_counts(tokens, max_order):
    counts = collections.Counter()
    for order in range(1, max_order + 1):
        for start in range(len(tokens) - order + 1):
            counts[tuple(tokens[start : start + order])] += 1
    return counts


def compute_bleu(reference_corpus, translation_corpus, max_order=4):
    """nmt `compute_bleu` without smoothing over token lists: returns (bleu in [0,1], precisions, bp, ratio, c, r)."""
    matches_by_order = [0] * max_order
    possible_matches_by_order = [0] * max_order
    reference_length = 0
    translation_length = 0
    for references, translation in zip(reference_corpus, translation_corpus):
        reference_length += min(len(reference) for reference in references)
        translation_length += len(translation)
        # Clipping: a hypothesis n-gram is credited at most as often as it occurs in any one reference.
        max_reference_counts = collections.Counter()
        for reference in references:
            max_reference_counts |= _ngram_counts(reference, max_order)
        overlap = _ngram_counts(translation, max_order) & max_reference_counts
        for ngram, count in overlap.items():
            matches_by_order[len(ngram) - 1] += count
        for order in range(1, max_order + 1):
            possible_matches_by_order[order - 1] += max(0, len(translation) - order + 1)
    precisions = [
        matches / possible if possible > 0 else 0.0
        for matches, possible in zip(matches_by_order, possible_matches_by_order)
    ]
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0
    ratio = translation_length / reference_length
    if ratio > 1.0:
        brevity_penalty = 1.0
    elif translation_length == 0:
        brevity_penalty = 0.0  # nmt divides by zero here; the limit of exp(1 - r/c) as c -> 0 is 0
    else:
        brevity_penalty = math.exp(1.0 - 1.0 / ratio)
    return geo_mean * brevity_penalty, precisions, brevity_penalty, ratio, translation_length, reference_length


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BleuNmt(evaluate.Metric):
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

    def _compute(self, predictions, references, max_order=4):
        if len(predictions) == 0:
            raise ValueError("no sentences to evaluate: predictions is empty")
        if max_order < 1:
            raise ValueError(f"max_order must be >= 1, got {max_order}")
        reference_corpus = []
        for index, refs in enumerate(references):
            refs = [refs] if isinstance(refs, str) else list(refs)
            tokenized = [_tokenize(reference) for reference in refs]
            if not tokenized or any(len(reference) == 0 for reference in tokenized):
                raise ValueError(
                    f"reference #{index} is empty ({refs!r}): every sentence needs a non-empty reference; drop or "
                    "fix such rows before evaluation"
                )
            reference_corpus.append(tokenized)
        translation_corpus = [_tokenize(prediction) for prediction in predictions]
        bleu, precisions, brevity_penalty, ratio, c, r = compute_bleu(reference_corpus, translation_corpus, max_order)
        return {
            "bleu": 100.0 * bleu,
            "precisions": precisions,
            "brevity_penalty": brevity_penalty,
            "length_ratio": ratio,
            "translation_length": c,
            "reference_length": r,
        }
