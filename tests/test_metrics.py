"""The shipped `evaluate` metrics: hand-computed values, policies, and cross-checks against sacrebleu/rouge-score."""

import math
import random

import pytest

from training.evaluation.metrics import METRIC_NAMES, load_metric, metric_path


@pytest.fixture(scope="module")
def ranking():
    return load_metric("ranking")


@pytest.fixture(scope="module")
def bleu():
    return load_metric("bleu_nmt")


@pytest.fixture(scope="module")
def rouge():
    return load_metric("rouge_f1")


def test_every_metric_loads_from_its_local_path():
    import evaluate

    for name in METRIC_NAMES:
        module = evaluate.load(metric_path(name))
        assert module.name == name  # loaded offline from the shipped directory
    with pytest.raises(ValueError, match="unknown metric"):
        metric_path("bleu")


# Ranking ------------------------------------------------------------------------------------------------------


def test_ranking_hand_computed(ranking):
    # user 1: target at rank 1; user 2: rank 3; user 3: rank 7; user 4: absent.
    predictions = [[5, 1, 2], [1, 2, 9, 4], [1, 2, 3, 4, 5, 6, 30, 8, 9, 10], [1, 2]]
    references = [5, 9, 30, 7]
    result = ranking.compute(predictions=predictions, references=references, k_values=[1, 5, 10])
    assert result["num_users"] == 4
    assert result["hr@1"] == pytest.approx(1 / 4)
    assert result["hr@5"] == pytest.approx(2 / 4)
    assert result["hr@10"] == pytest.approx(3 / 4)
    assert result["ndcg@1"] == pytest.approx(1 / 4)
    assert result["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 4)


def test_ranking_k_larger_than_list_has_no_hit_beyond_its_length(ranking):
    result = ranking.compute(predictions=[[3, 4], [], [8]], references=[4, 4, 9], k_values=[1, 2, 50])
    assert result["hr@1"] == 0.0
    assert result["hr@2"] == pytest.approx(1 / 3)
    assert result["hr@50"] == pytest.approx(1 / 3)  # the empty list and the miss stay misses
    assert result["ndcg@50"] == pytest.approx((1 / math.log2(3)) / 3)


def test_ranking_ties_are_scored_in_the_order_given(ranking):
    # Two users whose scores tie: the rankers put the lower id first (training.evaluation.baselines.rank_by_score).
    from training.evaluation.baselines import rank_by_score

    ids = rank_by_score([[0.0, 0.5, 0.5, 0.5, 0.1]], top_k=3)[0].tolist()
    assert ids == [1, 2, 3]
    result = ranking.compute(predictions=[ids, ids], references=[3, 1], k_values=[1, 2])
    assert result["hr@1"] == pytest.approx(0.5)
    assert result["hr@2"] == pytest.approx(0.5)
    assert result["ndcg@2"] == pytest.approx(0.5)


def test_ranking_rejects_duplicates_padding_and_bad_k(ranking):
    with pytest.raises(ValueError, match="repeats item id"):
        ranking.compute(predictions=[[1, 2, 1]], references=[1])
    with pytest.raises(ValueError, match="negative id"):
        ranking.compute(predictions=[[1, 2, -1]], references=[1])
    with pytest.raises(ValueError, match="k_values"):
        ranking.compute(predictions=[[1]], references=[1], k_values=[0])


def test_ranking_accumulates_batches(ranking):
    ranking.add_batch(predictions=[[1, 2]], references=[2])
    ranking.add_batch(predictions=[[3]], references=[3])
    assert ranking.compute(k_values=[1])["hr@1"] == pytest.approx(0.5)


# BLEU ---------------------------------------------------------------------------------------------------------


def test_bleu_hand_computed(bleu):
    # hyp "the the cat sat" vs ref "the cat sat on the mat": clipped unigram matches the:2, cat, sat = 4/4;
    # bigrams (the the)x, (the cat), (cat sat) = 2/3; trigrams (the the cat)x, (the cat sat) = 1/2;
    # 4-grams (the the cat sat)x = 0/1 -> geometric mean 0 without smoothing.
    result = bleu.compute(predictions=["The the cat sat"], references=["the cat sat on the mat"])
    assert result["precisions"] == pytest.approx([1.0, 2 / 3, 1 / 2, 0.0])
    assert result["bleu"] == 0.0
    # Two sentences pooled at corpus level: the 4-gram matches of the first rescue the second.
    result = bleu.compute(
        predictions=["a b c d e", "the cat sat"], references=["a b c d e", "the cat sat on the mat"]
    )
    p = [8 / 8, 6 / 6, 4 / 4, 2 / 2]
    bp = math.exp(1 - 11 / 8)
    assert result["precisions"] == pytest.approx(p)
    assert result["brevity_penalty"] == pytest.approx(bp)
    assert result["bleu"] == pytest.approx(100 * bp)


def test_bleu_empty_reference_is_an_error_and_empty_prediction_scores_zero(bleu):
    with pytest.raises(ValueError, match="reference #1 is empty"):
        bleu.compute(predictions=["a b", "c d"], references=["a b", "  "])
    assert bleu.compute(predictions=[""], references=["a b c d"])["bleu"] == 0.0


def _random_corpus(seed, size=60):
    rng = random.Random(seed)
    vocab = ["The", "cat", "sat", "on", "mat", "a", "good", "price", "Quality", "is", "great", "fit", "small"]
    sentence = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 14)))
    references = [sentence() for _ in range(size)]
    # Predictions share material with their reference so higher n-gram orders are non-zero.
    predictions = [" ".join(ref.split()[: rng.randint(2, 10)] + sentence().split()[:3]) for ref in references]
    return predictions, references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_equals_sacrebleu_with_one_reference(bleu, seed):
    import sacrebleu

    predictions, references = _random_corpus(seed)
    expected = sacrebleu.corpus_bleu(
        predictions, [references], tokenize="none", smooth_method="none", lowercase=True
    )
    result = bleu.compute(predictions=predictions, references=references)
    assert expected.score > 0
    assert result["bleu"] == pytest.approx(expected.score, rel=1e-9)
    assert result["brevity_penalty"] == pytest.approx(expected.bp, rel=1e-9)


def test_bleu_multi_reference_length_differs_from_sacrebleu(bleu):
    import sacrebleu

    # nmt takes the shortest reference length (2), sacrebleu the closest one (4): only BP differs.
    predictions = ["a b c d"]
    references = [["a b c d e", "x y"]]
    ours = bleu.compute(predictions=predictions, references=references)
    theirs = sacrebleu.corpus_bleu(predictions, [["a b c d e"], ["x y"]], tokenize="none", smooth_method="none")
    assert ours["reference_length"] == 2 and ours["brevity_penalty"] == 1.0
    assert theirs.ref_len == 5 and theirs.bp < 1.0


# ROUGE --------------------------------------------------------------------------------------------------------


def test_rouge_hand_computed(rouge):
    # pred "the cat the" vs ref "the cat sat on the mat":
    # R1 overlap the:2 + cat:1 = 3 -> P 3/3, R 3/6, F 2/3; R2 overlap (the cat) = 1 -> P 1/2, R 1/5, F 2/7;
    # LCS "the cat the" = 3 -> same as R1.
    result = rouge.compute(predictions=["The cat the"], references=["the cat sat on the mat"])
    assert result["rouge1"] == pytest.approx(100 * 2 / 3)
    assert result["rouge2"] == pytest.approx(100 * 2 / 7)
    assert result["rougeL"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="reference #0 is empty"):
        rouge.compute(predictions=["a"], references=[""])
    assert rouge.compute(predictions=[""], references=["a b"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


@pytest.mark.parametrize("seed", [0, 1])
def test_rouge_equals_rouge_score_with_a_whitespace_tokenizer(rouge, seed):
    from rouge_score import rouge_scorer

    class WhitespaceLower:
        def tokenize(self, text):
            return text.lower().split()

    predictions, references = _random_corpus(seed)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=WhitespaceLower())
    pairs = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    result = rouge.compute(predictions=predictions, references=references)
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(pair[name].fmeasure for pair in pairs) / len(pairs)
        assert result[name] == pytest.approx(expected, rel=1e-9)


def test_rouge_differs_from_rouge_score_default_tokenizer_on_punctuation(rouge):
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rouge1"]).score("great sound", "great, sound!")["rouge1"].fmeasure
    ours = rouge.compute(predictions=["great, sound!"], references=["great sound"])["rouge1"]
    assert default == pytest.approx(1.0)
    assert ours == 0.0  # whitespace tokens "great," and "sound!" match nothing


def test_rouge_nmt_variant_counts_distinct_ngrams_and_weights_lcs_by_p_over_r(rouge):
    # pred "the cat the" vs ref "the cat sat on the mat" (see test_rouge_hand_computed for the F1 variant).
    # nmt ROUGE-1: sets {the, cat} vs {the, cat, sat, on, mat}: P 2/2, R 2/5 -> F 2*0.4/1.4.
    # nmt ROUGE-2: {the cat, cat the} vs 5 distinct bigrams, overlap 1: P 1/2, R 1/5 -> F 2/7.
    # nmt ROUGE-L: LCS 3, R 3/6, P 3/3, beta = 2 -> F = 5 * 0.5 * 1 / (0.5 + 4) = 5/9.
    result = rouge.compute(predictions=["the cat the"], references=["the cat sat on the mat"], variant="nmt")
    assert result["rouge1"] == pytest.approx(100 * 0.8 / 1.4, rel=1e-6)
    assert result["rouge2"] == pytest.approx(100 * 2 / 7, rel=1e-6)
    assert result["rougeL"] == pytest.approx(100 * 5 / 9, rel=1e-6)
    with pytest.raises(ValueError, match="variant"):
        rouge.compute(predictions=["a"], references=["a"], variant="perl")
