"""Raw Amazon review dumps (McAuley et al., one JSON object per line, `.json` or `.json.gz`) -> P5 format.

Pipeline (each step documented in docs/data.md):

1. **Read** every line as JSON; fields used: `reviewerID`, `asin`, `unixReviewTime`, `reviewText` (may be
   missing: treated as empty). A malformed line, a missing field, a null or empty `reviewerID`/`asin` (a user
   or item "None" would merge strangers), a non-UTF-8 byte or a truncated `.gz` is a `PeaPODInputError` naming
   file:line and the text.
   A repeated (user, item) review keeps the earliest one (then the first in the file).
2. **k-core** (default k = 5): drop users with < k distinct items and items with < k distinct users, repeated
   until nothing changes (a fixpoint: every remaining user and item has >= k interactions).
3. **Histories**: each user's reviews sorted by (unixReviewTime, asin), so equal timestamps are ordered
   deterministically. **Ids** follow P5: users are numbered 1.. by first appearance in the file, items 1.. by
   first appearance while walking the users' time-ordered histories in user-id order; the maps are saved as
   datamaps.json.
4. **Explanations** by our own extractor in the spirit of Sentires (the toolkit P5/POD used; it is not
   available offline and its lexicon construction is far heavier than needed here):

   *Feature vocabulary, mined from the corpus.* No POS tagger is available offline (NLTK/spaCy need model
   downloads), so noun-ness is estimated with a determiner test: nouns, unlike verbs/adverbs, are often
   preceded by a determiner ("the strings", "this pedal"). Text is lower-cased and split into words
   `[a-z]+('[a-z]+)?`. A word is a **unigram feature** when it has >= 3 letters, is not in `STOP_WORDS`,
   appears in >= `min_feature_count` reviews, and at least `min_determiner_ratio` of its occurrences follow
   a determiner (`DETERMINERS`). Two adjacent words form a **bigram feature** ("pop filter", "sound quality")
   when neither is a stop word and both have >= 3 letters, the second word passes the unigram determiner test,
   the pair appears in >= `min_feature_count` reviews and at least `min_determiner_ratio` of its occurrences
   follow a determiner. The vocabulary keeps the `max_features` most frequent features (by review count,
   then alphabetically).

   *One sentence per (user, item) review.* The review text is split into sentences at `.`, `!` or `?` runs
   followed by whitespace, an upper-case letter, a quote or the end (so "affordable.I did" splits, "3.5" does
   not) and at line breaks; a sentence is an exact substring of the review text. A sentence is a candidate when
   it has `min_words`..`max_words` words and contains a feature as whole words (a bigram with a single space).
   Among candidates the extractor picks the one that (a) contains an opinion word (`OPINION_WORDS`), then
   (b) names the most distinct features, then (c) comes first in the review. Its feature is the longest feature
   in it (bigram before unigram), then the one occurring first. Reviews without a candidate get no explanation
   (they still count for sequential and top-n).
5. The explanation records are split 8:1:1 by `splits.split_explanations` and everything is written in the P5
   format.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from tqdm.auto import tqdm

from configuration_peapod import PeaPODInputError

from .p5_format import P5Data, _shorten, read_text_lines
from .splits import leave_one_out, split_explanations

REQUIRED_FIELDS = ("reviewerID", "asin", "unixReviewTime")
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# End of a sentence: a run of . ! ? (with closing quotes/brackets) before whitespace, an upper-case letter,
# an opening quote or the end of the text; or a line break.
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|[A-Z\"]|$)|\n+")
DETERMINERS = frozenset(
    "the this these those that my its a an your their his her our each every any another".split()  # noqa: SIM905
)
# Function words, pronouns, auxiliaries and frequent verbs, evaluative adjectives/adverbs (they often follow
# "the": "the best", "the same") and generic nouns that are never product features ("the thing", "the way").
STOP_WORDS = frozenset(
    """
    a about above after again against all almost along already also although always am among an and another any
    anyone anything anyway are around as at away back be because been before being below best better between
    beyond both but by can cannot could did do does doing done down during each either else enough even ever
    every everything few first for from further get gets getting got had has have having he her here hers him
    his how however i if in into is it its itself just last least less like little lot lots made make makes
    making many may me might mine more most much must my myself need needs never new next no nor not nothing now
    of off often old on once one ones only or other others otherwise our ours out over own per perhaps quite
    rather really right same see seem seems several shall she should since so some someone something sometimes
    still such than that the their theirs them themselves then there these they thing things this those though
    through thus to together too toward under until up upon us use used uses using very was way ways we well
    were what whatever when where whether which while who whole whom whose why will with within without would
    yet you your yours yourself amazon product products item items review reviews star stars time times year
    years day days month months week weeks bit kind sort type fact reason part end start rest top side lots
    problem problems issue issues purchase bought buy buying order ordered money dollars bucks
    good great nice fine excellent awesome amazing perfect perfectly bad poor terrible horrible cheap cheaper
    expensive easy easier hard harder big bigger small smaller large larger long longer short high higher low
    lower real sure able free entire main certain different hard extra full half single whole couple
    recommend recommended work works worked working love loved want wanted think thought know knew say said
    go going went come comes came look looks looked feel feels felt take takes took give gives gave put keep
    try tried find found play plays played sounds added mind double two three four five six seven eight nine ten
    twelve twenty hundred thousand second third job stuff point built holds difference""".split()  # noqa: SIM905 (word lists read better as text)
)
OPINION_WORDS = frozenset(
    """
    good great nice excellent awesome amazing perfect fantastic wonderful superb solid sturdy durable flimsy
    cheap bad poor terrible horrible awful decent fine easy hard difficult comfortable loud quiet clear clean
    crisp warm bright rich smooth noisy heavy light sharp accurate reliable useful useless worth happy pleased
    disappointed love loved like liked hate impressed recommend quality best worst better worse""".split()  # noqa: SIM905 (word lists read better as text)
)


@dataclass
class ExtractorConfig:
    """Thresholds of the explanation extractor (module docstring, step 4)."""

    min_feature_count: int = 10
    min_determiner_ratio: float = 0.15
    max_features: int = 1000
    max_modifier_ratio: float = 0.5
    min_words: int = 4
    max_words: int = 40


def _raw_id(raw: dict, name: str, where: str, line: str) -> str:
    """`reviewerID` / `asin` as a non-empty string (a number is taken as its digits); null, empty or other types
    are refused: `str(None)` would make every review without an id one user "None"."""
    value = raw[name]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise PeaPODInputError(f"{where}: `{name}` is {value!r}; expected a non-empty string id: {_shorten(line)!r}")
    return value


def read_reviews(path: str | os.PathLike) -> list[dict]:
    """Read a McAuley dump; each review keeps `user`, `item`, `time`, `text`, `line` (its 1-based line number)."""
    reviews, seen = [], {}
    lines = read_text_lines(path)
    for line_number, line in tqdm(lines, desc="reading reviews", unit=" lines", leave=False):
        where = f"{path}:{line_number}"
        if not line.strip():
            raise PeaPODInputError(f"{where}: empty line; expected one JSON review object per line")
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            raise PeaPODInputError(f"{where}: malformed JSON ({error.msg}): {_shorten(line)!r}") from None
        if not isinstance(raw, dict) or any(key not in raw for key in REQUIRED_FIELDS):
            raise PeaPODInputError(
                f"{where}: expected an object with fields {list(REQUIRED_FIELDS)}: {_shorten(line)!r}"
            )
        time = raw["unixReviewTime"]
        if isinstance(time, str) and re.fullmatch(r"[0-9]+", time):
            time = int(time)
        if not isinstance(time, int) or isinstance(time, bool):
            raise PeaPODInputError(f"{where}: unixReviewTime {raw['unixReviewTime']!r} is not an integer")
        review = {
            "user": _raw_id(raw, "reviewerID", where, line),
            "item": _raw_id(raw, "asin", where, line),
            "time": time,
            "text": str(raw.get("reviewText") or ""),
            "line": line_number,
        }
        key = (review["user"], review["item"])
        if key in seen:  # keep the earliest review of a repeated pair (then the first in the file)
            if time < reviews[seen[key]]["time"]:
                reviews[seen[key]] = review
            continue
        seen[key] = len(reviews)
        reviews.append(review)
    if not reviews:
        raise PeaPODInputError(f"{path} holds no reviews")
    return reviews


def k_core(reviews: list[dict], k: int = 5) -> list[dict]:
    """Keep reviews whose user and item both have >= k interactions, iterated to a fixpoint."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    while True:
        users = Counter(review["user"] for review in reviews)
        items = Counter(review["item"] for review in reviews)
        kept = [r for r in reviews if users[r["user"]] >= k and items[r["item"]] >= k]
        if len(kept) == len(reviews):
            return kept
        reviews = kept


# Explanation extractor ----------------------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, each an exact (stripped) substring of it."""
    sentences, start = [], 0
    for match in SENTENCE_END.finditer(text):
        sentence = text[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _content_word(word: str) -> bool:
    return len(word) >= 3 and word.isalpha() and word not in STOP_WORDS


def mine_features(texts: list[str], config: ExtractorConfig | None = None) -> list[str]:
    """The feature vocabulary of a corpus (module docstring, step 4): most frequent first."""
    config = config or ExtractorConfig()
    review_count: Counter = Counter()
    occurrences: Counter = Counter()
    after_determiner: Counter = Counter()
    modifier: Counter = Counter()  # "the <word> <content word>": the word modifies a noun ("a solid stand")
    for text in tqdm(texts, desc="mining features", leave=False):
        words = words_of(text)
        bigrams = [f"{first} {second}" for first, second in pairwise(words)]
        previous = ["", *words[:-1]]  # the word before each word (and before each bigram's first word)
        occurrences.update(words)
        occurrences.update(bigrams)
        after_determiner.update(word for before, word in zip(previous, words) if before in DETERMINERS)
        after_determiner.update(bigram for before, bigram in zip(previous, bigrams) if before in DETERMINERS)
        modifier.update(
            first for before, first, second in zip(previous, words, words[1:])
            if before in DETERMINERS and _content_word(second)
        )
        review_count.update({*words, *bigrams})

    def noun_like(term: str) -> bool:
        return after_determiner[term] >= config.min_determiner_ratio * occurrences[term]

    features = []
    for term, count in review_count.items():
        if count < config.min_feature_count or not noun_like(term):
            continue
        parts = term.split(" ")
        if not all(_content_word(part) for part in parts):
            continue
        if len(parts) == 2 and not noun_like(parts[1]):
            continue
        if len(parts) == 1 and modifier[term] > config.max_modifier_ratio * after_determiner[term]:
            continue
        features.append(term)
    features.sort(key=lambda term: (-review_count[term], term))
    return features[: config.max_features]


def features_in(words: list[str], vocabulary: frozenset[str]) -> list[tuple[int, str]]:
    """(position, feature) for every feature occurrence; a unigram inside a matched bigram is not counted."""
    found, covered = [], set()
    for position in range(len(words) - 1):
        bigram = f"{words[position]} {words[position + 1]}"
        if bigram in vocabulary:
            found.append((position, bigram))
            covered.update((position, position + 1))
    found += [(p, word) for p, word in enumerate(words) if word in vocabulary and p not in covered]
    return sorted(found)


def _contains_whole_words(sentence: str, feature: str) -> bool:
    """`feature` occurs in the lower-cased sentence not glued to other letters (str.find: one regex per feature
    would thrash Python's regex cache with a 1000-term vocabulary)."""
    text = sentence.lower()
    start = text.find(feature)
    while start != -1:
        end = start + len(feature)
        before = text[start - 1] if start > 0 else " "
        after = text[end] if end < len(text) else " "
        if not (before.isalpha() or before == "'") and not (after.isalpha() or after == "'"):
            return True
        start = text.find(feature, start + 1)
    return False


def extract_explanation(
    text: str, vocabulary: frozenset[str], config: ExtractorConfig | None = None
) -> tuple[str, str] | None:
    """(sentence, feature) chosen from one review by the rules of the module docstring, or None."""
    config = config or ExtractorConfig()
    best, best_key = None, None
    for index, sentence in enumerate(split_sentences(text)):
        words = words_of(sentence)
        if not config.min_words <= len(words) <= config.max_words:
            continue
        # Verify on the raw text: a bigram matched across punctuation ("pop, filter") is not a mention.
        found = [(p, f) for p, f in features_in(words, vocabulary) if _contains_whole_words(sentence, f)]
        if not found:
            continue
        key = (any(word in OPINION_WORDS for word in words), len({f for _, f in found}), -index)
        if best_key is None or key > best_key:
            feature = min(found, key=lambda pf: (-len(pf[1].split(" ")), pf[0]))[1]
            best, best_key = (sentence, feature), key
    return best


# The whole path -------------------------------------------------------------------------------------------------


def reviews_to_p5(
    path: str | os.PathLike,
    k: int = 5,
    seed: int = 0,
    extractor: ExtractorConfig | None = None,
) -> P5Data:
    """Read a raw review dump and return P5 data with extracted, split explanations (module docstring)."""
    extractor = extractor or ExtractorConfig()
    if k < 3:
        raise ValueError(f"k={k}: leave-one-out needs every user to keep at least 3 items, use k >= 3")
    raw = read_reviews(path)
    reviews = k_core(raw, k)
    if not reviews:
        raise ValueError(f"{path}: no review survives the {k}-core filter")

    user_ids: dict[str, int] = {}
    for review in sorted(reviews, key=lambda r: r["line"]):  # first appearance in the file
        user_ids.setdefault(review["user"], len(user_ids) + 1)
    by_user = defaultdict(list)
    for review in reviews:
        by_user[user_ids[review["user"]]].append(review)
    item_ids: dict[str, int] = {}
    histories: dict[int, list[int]] = {}
    for user in sorted(by_user):
        ordered = sorted(by_user[user], key=lambda r: (r["time"], r["item"]))
        for review in ordered:
            item_ids.setdefault(review["item"], len(item_ids) + 1)
        histories[user] = [item_ids[review["item"]] for review in ordered]

    vocabulary = mine_features([review["text"] for review in reviews], extractor)
    vocabulary_set = frozenset(vocabulary)
    records = []
    for review in tqdm(reviews, desc="extracting explanations", leave=False):
        chosen = extract_explanation(review["text"], vocabulary_set, extractor)
        if chosen is not None:
            records.append(
                {
                    "user": user_ids[review["user"]],
                    "item": item_ids[review["item"]],
                    "explanation": chosen[0],
                    "feature": chosen[1],
                }
            )
    records.sort(key=lambda r: (r["user"], r["item"]))
    explanations, dropped = split_explanations(records, leave_one_out(histories), seed)
    return P5Data(
        histories=histories,
        id2user={number: raw_id for raw_id, number in user_ids.items()},
        id2item={number: raw_id for raw_id, number in item_ids.items()},
        explanations=explanations,
        extra={
            "source": f"raw reviews {Path(path).name}",
            "reviews_read": len(raw),
            "reviews_after_k_core": len(reviews),
            "k_core": k,
            "feature_vocabulary_size": len(vocabulary),
            "top_features": vocabulary[:20],
            "reviews_with_explanation": len(records),
            "explanations_dropped": dropped,
        },
    )
