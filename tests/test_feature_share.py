"""The explanation feature shares (training/evaluation/metrics/feature_share.py): a prediction naming the feature counts, one
that doesn't doesn't; the items' features come from the prepared data; evaluation reports the shares."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from training.evaluation.metrics.feature_share import (
    explanation_feature_scores,
    feature_shares,
    item_features,
    names_feature,
)

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "t5"


def test_a_feature_is_named_as_a_whole_word_case_insensitive():
    assert names_feature("The Strings of this guitar are superb.", "strings")
    assert names_feature("great sound  quality overall", "sound quality")  # multi-word aspects, any spacing
    assert not names_feature("These stones are heavy.", "tone")  # inside another word: not named
    assert not names_feature("a.", "lens")
    assert not names_feature("anything", "  ")


def test_shares_count_the_predictions_that_name_the_feature():
    features_of_item = {1: {"lens", "zoom"}, 2: {"strings"}}
    shares = feature_shares(
        predictions=["The lens is sharp.", "The zoom is slow.", "a.", "Nice strings."],
        item_ids=[1, 1, 2, 3],  # item 3 has no training feature: left out of the item share
        reference_features=["lens", "lens", "strings", ""],  # the last row has no reference feature
        features_of_item=features_of_item,
    )
    # Reference feature named by row 1 only of the 3 rows with one; the item's own feature by rows 1 and 2 of 3.
    assert shares["feature_match"] == pytest.approx(1 / 3) and shares["feature_match_samples"] == 3
    assert shares["item_feature_share"] == pytest.approx(2 / 3) and shares["item_feature_samples"] == 3
    assert shares["feature_match_per_sample"] == [1, 0, 0, None]
    assert shares["item_feature_per_sample"] == [1, 1, 0, None]
    with pytest.raises(ValueError, match="parallel"):
        feature_shares(["x"], [1, 2], ["lens"], features_of_item)


def test_item_features_ignore_empty_features():
    assert item_features([1, 1, 2, 3], ["lens", "zoom", "", " strings "]) == {1: {"lens", "zoom"}, 3: {"strings"}}


@pytest.fixture(scope="module")
def synthetic():
    """Tiny synthetic data built as peapod-prepare builds it, with its planted item features for comparison."""
    if not TOKENIZER.is_dir():
        pytest.skip(f"the T5 tokenizer is not at {TOKENIZER}")
    from transformers import AutoTokenizer

    from datasets_scripts.build_dataset import build_dataset_dict
    from datasets_scripts.splits import (
        enforce_explanation_rules,
        fixed_negatives,
        leave_one_out,
    )
    from datasets_scripts.synthetic import SyntheticConfig, generate_synthetic

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    data = generate_synthetic(SyntheticConfig(num_users=12, seed=0))
    explanations, _ = enforce_explanation_rules(data.explanations, leave_one_out(data.histories))
    negatives = {name: fixed_negatives(data.histories, data.num_items, name, 0) for name in ("validation", "test")}
    dataset = build_dataset_dict(data.histories, data.num_items, negatives, explanations, tokenizer, 0)
    return SimpleNamespace(data=data, dataset=dataset, tokenizer=tokenizer)


def test_the_items_features_are_read_from_the_prepared_data(synthetic):
    prepared = SimpleNamespace(dataset=synthetic.dataset)
    test = synthetic.dataset["explanation_test"]
    rows = list(range(len(test)))
    read = item_features(synthetic.dataset["explanation_train"]["item_id"],
                         synthetic.dataset["explanation_train"]["feature"])
    planted = synthetic.data.extra["_structure"]["item_features"]
    assert read and all(features <= set(planted[item]) for item, features in read.items())

    references = explanation_feature_scores(prepared, test, rows, test["target"])
    assert references["feature_match"] == 1.0  # every reference sentence names its own feature
    assert references["item_feature_share"] == 1.0
    silent = explanation_feature_scores(prepared, test, rows, ["a."] * len(rows))
    assert silent["feature_match"] == 0.0 and silent["item_feature_share"] == 0.0
    # A fluent sentence about another category's feature: not the item's feature.
    foreign = [f"The {next(iter(f for f in ('microphone', 'lens') if f not in planted[item]))} is great."
               for item in test["item_id"]]
    assert explanation_feature_scores(prepared, test, rows, foreign)["item_feature_share"] == 0.0
    with_ci = explanation_feature_scores(prepared, test, rows[:2], test["target"][:2],
                                         interval=lambda values: [min(values), max(values)])
    assert with_ci["feature_match_ci"] == [1, 1] and with_ci["feature_match_samples"] == 2


def test_data_without_features_gives_no_shares(synthetic):
    bare = {name: split.remove_columns("feature") for name, split in synthetic.dataset.items()}
    assert explanation_feature_scores(SimpleNamespace(dataset=bare), bare["explanation_test"], [0, 1], ["x", "y"]) == {}


def test_evaluation_reports_the_shares_beside_bleu_and_rouge(synthetic):
    from datasets_scripts.prepared import PreparedData
    from modeling_peapod import PeaPODConfig, PeaPODForConditionalGeneration
    from training.evaluation import evaluate_checkpoint, markdown_table

    data = synthetic.data
    prepared = PreparedData(
        path=Path("."), config={}, histories=data.histories, num_users=data.num_users, num_items=data.num_items,
        negatives={}, user_embeddings=torch.zeros(data.num_users + 1, 8), user_neighbors=None,
        item_embeddings=None, dataset=synthetic.dataset, explanations=None, item_reindex=None,
        id2user=data.id2user, id2item=data.id2item,
    )
    torch.manual_seed(0)
    config = PeaPODConfig(vocab_size=32128, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                          prompt_encoder="none", num_items=data.num_items)
    model = PeaPODForConditionalGeneration(config).eval()
    report = evaluate_checkpoint(model, synthetic.tokenizer, prepared, tasks=("explanation",), max_users=2,
                                 batch_size=4, num_beams=2, top_k=2, max_explanation_tokens=6, show_progress=False)
    scores = report["results"]["explanation"]
    assert {"bleu4", "rougeL", "feature_match", "item_feature_share", "feature_match_ci"} <= set(scores)
    assert 0.0 <= scores["item_feature_share"] <= 1.0
    assert scores["feature_match_samples"] == scores["num_samples"]
    assert "names item's feature" in markdown_table(report)
