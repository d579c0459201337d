"""Raw Amazon reviews -> P5 (Musical Instruments from ../shared), the extractor's rules, and bad review files."""

import gzip
import json
import re

import pytest

from datasets_scripts.amazon_reviews import (
    extract_explanation,
    k_core,
    mine_features,
    read_reviews,
    reviews_to_p5,
    split_sentences,
)
from datasets_scripts.build_dataset import build_samples
from datasets_scripts.splits import fixed_negatives, leave_one_out


@pytest.fixture(scope="module")
def instruments(shared_data_dir):
    path = shared_data_dir / "amazon-musical-instruments" / "reviews_Musical_Instruments_5.json.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    with gzip.open(path, "rt") as stream:
        raw = [json.loads(line) for line in stream]
    return reviews_to_p5(path, k=5, seed=0), raw


def test_instruments_counts_and_time_order(instruments):
    data, raw = instruments
    assert (data.num_users, data.num_items, data.num_interactions) == (1429, 900, 10261)  # already 5-core
    time_of = {(r["reviewerID"], r["asin"]): r["unixReviewTime"] for r in raw}
    for user, items in data.histories.items():
        times = [time_of[(data.id2user[user], data.id2item[item])] for item in items]
        assert times == sorted(times)
    assert min(len(items) for items in data.histories.values()) >= 5


def test_every_explanation_is_a_sentence_of_its_review_with_its_feature(instruments):
    data, raw = instruments
    text_of = {(r["reviewerID"], r["asin"]): r.get("reviewText", "") for r in raw}
    total = 0
    for records in data.explanations.values():
        for record in records:
            review = text_of[(data.id2user[record["user"]], data.id2item[record["item"]])]
            assert record["explanation"] in split_sentences(review)
            assert record["explanation"] in review
            assert re.search(rf"(?<![a-z']){re.escape(record['feature'])}(?![a-z'])", record["explanation"].lower())
            total += 1
    assert total > 0.7 * data.num_interactions  # most reviews yield an explanation


def test_explanation_split_protocol(instruments):
    data, _ = instruments
    split = leave_one_out(data.histories)
    sizes = {name: len(records) for name, records in data.explanations.items()}
    assert all(sizes.values())
    assert 0.75 < sizes["train"] / sum(sizes.values()) < 0.85
    train_pairs = {(r["user"], r["item"]) for r in data.explanations["train"]}
    assert not train_pairs & split.eval_pairs()
    users = {r["user"] for r in data.explanations["train"]}
    items = {r["item"] for r in data.explanations["train"]}
    for name in ("validation", "test"):
        assert all(r["user"] in users and r["item"] in items for r in data.explanations[name])
    all_pairs = [(r["user"], r["item"]) for records in data.explanations.values() for r in records]
    assert len(all_pairs) == len(set(all_pairs))


def test_the_raw_review_path_produces_all_three_tasks(instruments):
    data, _ = instruments
    histories = {user: data.histories[user] for user in list(data.histories)[:100]}
    explanations = {
        name: [r for r in records if r["user"] in histories] for name, records in data.explanations.items()
    }
    negatives = {name: fixed_negatives(histories, data.num_items, name, 0) for name in ("validation", "test")}
    samples = build_samples(histories, data.num_items, negatives, explanations, seed=0)
    for task in ("sequential", "topn", "explanation"):
        for split in ("train", "validation", "test"):
            assert len(samples[f"{task}_{split}"]["source"]) > 0, f"{task}_{split} is empty"


def test_feature_mining_and_sentence_choice_rules():
    texts = [f"Day {i}. The pop filter works. The filter and this pop filter sit on my mic." for i in range(12)]
    texts += ["Quickly and happily I went there." for _ in range(12)]
    features = mine_features(texts)
    assert "pop filter" in features and "mic" in features
    assert "quickly" not in features and "went" not in features  # never after a determiner / stop word
    assert "pop" not in features  # after a determiner it always modifies a noun ("the pop filter")
    vocabulary = frozenset(features)
    # The opinion-bearing sentence wins over the earlier neutral one; the bigram is preferred as the feature.
    sentence, feature = extract_explanation("This mic arrived on time. The pop filter is great on the mic.", vocabulary)
    assert (sentence, feature) == ("The pop filter is great on the mic.", "pop filter")
    assert extract_explanation("Nothing relevant here at all today.", vocabulary) is None
    # A bigram split by punctuation is not a mention of it.
    assert extract_explanation("I bought a pop, filter works great now.", frozenset({"pop filter"})) is None


def test_sentence_splitting_keeps_exact_substrings():
    text = "Works well.I did not know!  Price is 3.5 dollars? Yes\nnew line here"
    sentences = split_sentences(text)
    assert sentences == ["Works well.", "I did not know!", "Price is 3.5 dollars?", "Yes", "new line here"]
    assert all(sentence in text for sentence in sentences)


def test_k_core_iterates_to_a_fixpoint():
    # u1..u3 x i1..i3 is a 3-core; u4 touches i1..i3 and i4, i4 has only u4, so u4 drops to 3 items after i4 goes.
    reviews = [{"user": f"u{u}", "item": f"i{i}"} for u in (1, 2, 3) for i in (1, 2, 3)]
    reviews += [{"user": "u4", "item": f"i{i}"} for i in (1, 2, 4)] + [{"user": "u5", "item": "i1"}]
    kept = k_core(reviews, 3)
    assert {r["user"] for r in kept} == {"u1", "u2", "u3"}
    assert {r["item"] for r in kept} == {"i1", "i2", "i3"}
    for name, counter in (("user", {}), ("item", {})):
        for review in kept:
            counter[review[name]] = counter.get(review[name], 0) + 1
        assert min(counter.values()) >= 3


def test_malformed_review_lines_name_file_line_and_text(tmp_path):
    good = json.dumps({"reviewerID": "A", "asin": "B", "unixReviewTime": 1, "reviewText": "x"})
    path = tmp_path / "reviews.json"
    path.write_text(good + "\n{not json at all\n")
    with pytest.raises(ValueError, match=r"reviews.json:2: malformed JSON .*\{not json at all"):
        read_reviews(path)
    path.write_text(good + "\n" + json.dumps({"reviewerID": "A", "unixReviewTime": 1}) + "\n")
    with pytest.raises(ValueError, match=r"reviews.json:2: expected an object with fields"):
        read_reviews(path)
    path.write_text(good + "\n\n" + good + "\n")
    with pytest.raises(ValueError, match=r"reviews.json:2: empty line"):
        read_reviews(path)
    gz = tmp_path / "reviews.json.gz"
    with gzip.open(gz, "wt") as stream:
        stream.write(good + "\n" + json.dumps({"reviewerID": "A", "asin": "C", "unixReviewTime": "soon"}) + "\n")
    with pytest.raises(ValueError, match=r"reviews.json.gz:2: unixReviewTime 'soon'"):
        read_reviews(gz)
