"""Validated reader and writer of the P5/POD directory format (SPEC §2, ../shared/data/README.md).

A P5 directory holds

* `sequential.txt`: one user per line, `user_id item_id item_id ...`, items in time order, 1-based ids;
* `datamaps.json`: `{"id2user": {"1": "<reviewerID>", ...}, "id2item": {"1": "<ASIN>", ...}}`;
* optionally `explanation.json`: `{"train": [...], "validation": [...], "test": [...]}`, each record
  `{"user": int, "item": int, "explanation": str, "feature": str}`;
* optionally negative files in P5's `negative_samples.txt` format: `user_id neg1 ... neg99` per line.

Every reader fails fast with a `PeaPODInputError` (a ValueError) naming the file, the line and the offending text,
so that bad input is caught before any heavy work: non-UTF-8 bytes, ids that are not ASCII digits `[0-9]+` (no
`+7`, no `١`, no `1_0`), duplicate keys in a JSON object, a truncated `.gz` file. Every writer goes through a
temp file + rename, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from configuration_peapod import PeaPODInputError

from .files import atomic_write_json, atomic_write_text

EXPLANATION_SPLITS = ("train", "validation", "test")
EXPLANATION_KEYS = ("user", "item", "explanation", "feature")
MIN_HISTORY_LENGTH = 3  # leave-one-out needs at least one training item besides the validation and test items
# An id is plain ASCII digits: `int()` alone would also take "+7", " 7", "1_0" and other scripts' digits ("١").
ASCII_ID = re.compile(r"[0-9]+")


@dataclass
class P5Data:
    """Everything a P5 directory holds, in memory, in its integer id space.

    `histories` maps user id -> time-ordered item ids and is kept sorted by user id. `explanations` is None when
    the source has no review text, else a dict with the three split names of `EXPLANATION_SPLITS`.
    """

    histories: dict[int, list[int]]
    id2user: dict[int, str]
    id2item: dict[int, str]
    explanations: dict[str, list[dict]] | None = None
    extra: dict = field(default_factory=dict)  # provenance notes (e.g. extractor statistics) for the card

    @property
    def num_users(self) -> int:
        return len(self.id2user)

    @property
    def num_items(self) -> int:
        return len(self.id2item)

    @property
    def num_interactions(self) -> int:
        return sum(len(items) for items in self.histories.values())


def _shorten(text: str, limit: int = 120) -> str:
    text = text.rstrip("\n")
    return text if len(text) <= limit else text[:limit] + "..."


# Writing ------------------------------------------------------------------------------------------------------


def write_id_lists(path: str | os.PathLike, rows: dict[int, list[int]]) -> None:
    """`key v1 v2 ...` per line, keys ascending: the format of sequential.txt and of P5 negative files."""
    lines = [" ".join(map(str, [key, *rows[key]])) for key in sorted(rows)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_sequential(path: str | os.PathLike, histories: dict[int, list[int]]) -> None:
    write_id_lists(path, histories)


def write_negatives(path: str | os.PathLike, negatives: dict[int, list[int]]) -> None:
    write_id_lists(path, negatives)


def write_datamaps(path: str | os.PathLike, id2user: dict[int, str], id2item: dict[int, str]) -> None:
    atomic_write_json(
        path,
        {
            "id2user": {str(key): id2user[key] for key in sorted(id2user)},
            "id2item": {str(key): id2item[key] for key in sorted(id2item)},
        },
    )


def write_explanations(path: str | os.PathLike, explanations: dict[str, list[dict]]) -> None:
    atomic_write_json(path, {split: [dict(record) for record in explanations[split]] for split in EXPLANATION_SPLITS})


def write_p5_dir(directory: str | os.PathLike, data: P5Data) -> None:
    """Write `data` as a P5 directory (sequential.txt, datamaps.json, explanation.json if any)."""
    directory = Path(directory)
    write_sequential(directory / "sequential.txt", data.histories)
    write_datamaps(directory / "datamaps.json", data.id2user, data.id2item)
    if data.explanations is not None:
        write_explanations(directory / "explanation.json", data.explanations)


# Reading ------------------------------------------------------------------------------------------------------


def _decode(path: Path, line_number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PeaPODInputError(
            f"{path}:{line_number}: byte 0x{raw[error.start]:02x} at column {error.start + 1} is not UTF-8; "
            "expected a UTF-8 text file"
        ) from None


def read_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a UTF-8 text file, gzip-compressed when its name ends in `.gz`.

    Decoding line by line (not by the stream) lets a non-UTF-8 byte be reported with its line, and a truncated or
    damaged `.gz` becomes an error naming the file instead of an EOFError from inside gzip.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    compressed = path.suffix == ".gz"
    line_number = 0
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
        try:
            for line_number, raw in enumerate(stream, start=1):
                yield line_number, _decode(path, line_number, raw)
        except (EOFError, OSError, zlib.error) as error:
            if not compressed:
                raise
            raise PeaPODInputError(
                f"{path}: truncated or damaged gzip file after line {line_number} ({error}); download or copy it again"
            ) from None


def parse_id(token: str, where: str, what: str = "id") -> int:
    """An id written as ASCII digits `[0-9]+`, else a `PeaPODInputError` naming `where` and the token."""
    if not ASCII_ID.fullmatch(token):
        raise PeaPODInputError(f"{where}: {what} {token!r} is not an integer id (expected ASCII digits 0-9 only)")
    return int(token)


def _parse_int_row(path: Path, line_number: int, line: str) -> list[int]:
    if not line.strip():
        raise PeaPODInputError(
            f"{path}:{line_number}: empty line; expected `id id id ...` (whitespace-separated integers)"
        )
    values = []
    for token in line.split():
        if not ASCII_ID.fullmatch(token):
            raise PeaPODInputError(
                f"{path}:{line_number}: non-integer token {token!r} in line {_shorten(line)!r}; expected integer ids "
                "(ASCII digits 0-9 only)"
            )
        value = int(token)
        if value < 1:
            raise PeaPODInputError(
                f"{path}:{line_number}: id {value} in line {_shorten(line)!r}; ids are 1-based (>= 1)"
            )
        values.append(value)
    return values


def read_id_lists(path: str | os.PathLike, what: str = "user") -> dict[int, list[int]]:
    """Read `key v1 v2 ...` lines; rejects empty lines, non-integer tokens, ids < 1 and duplicate keys."""
    path = Path(path)
    rows: dict[int, list[int]] = {}
    for line_number, line in read_text_lines(path):
        key, *values = _parse_int_row(path, line_number, line)
        if key in rows:
            raise PeaPODInputError(
                f"{path}:{line_number}: duplicate {what} {key} (each {what} must appear on one line)"
            )
        rows[key] = values
    if not rows:
        raise PeaPODInputError(f"{path} is empty; expected one `{what}_id ...` line per {what}")
    return dict(sorted(rows.items()))


def read_sequential(path: str | os.PathLike, min_length: int = MIN_HISTORY_LENGTH) -> dict[int, list[int]]:
    """Read sequential.txt into {user: time-ordered items}; every history needs >= `min_length` items."""
    histories = read_id_lists(path, what="user")
    for user, items in histories.items():
        if len(items) < min_length:
            raise PeaPODInputError(
                f"{path}: user {user} has {len(items)} item(s) {items}; leave-one-out needs at least {min_length}"
            )
    return histories


def read_negatives(
    path: str | os.PathLike, histories: dict[int, list[int]] | None = None, num_negatives: int | None = None
) -> dict[int, list[int]]:
    """Read a P5 negative file; optionally check it against the histories (disjoint, distinct, count)."""
    negatives = read_id_lists(path, what="user")
    for user, items in negatives.items():
        if num_negatives is not None and len(items) != num_negatives:
            raise PeaPODInputError(f"{path}: user {user} has {len(items)} negatives, expected {num_negatives}")
        if len(set(items)) != len(items):
            raise PeaPODInputError(f"{path}: user {user} has duplicate negatives")
        if histories is not None:
            if user not in histories:
                raise PeaPODInputError(f"{path}: user {user} is not in the histories")
            clash = set(items) & set(histories[user])
            if clash:
                raise PeaPODInputError(f"{path}: negatives {sorted(clash)} of user {user} are in the user's history")
    if histories is not None and set(negatives) != set(histories):
        missing = sorted(set(histories) - set(negatives))[:5]
        raise PeaPODInputError(f"{path}: no negatives for users {missing}...")
    return negatives


def load_json(path: str | os.PathLike):
    """A JSON file, refusing non-UTF-8 bytes, malformed JSON and duplicate keys with a `PeaPODInputError` naming
    the file and line (json.loads would let a repeated key silently override the first)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = raw[: error.start].count(b"\n") + 1
        raise PeaPODInputError(
            f"{path}:{line_number}: byte 0x{raw[error.start]:02x} is not UTF-8; expected a UTF-8 JSON file"
        ) from None

    def refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise PeaPODInputError(f"{path}: duplicate key {key!r} in a JSON object (each key may appear once)")
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as error:
        bad_line = text.splitlines()[error.lineno - 1] if text.strip() else ""
        raise PeaPODInputError(
            f"{path}:{error.lineno}: malformed JSON ({error.msg}) in {_shorten(bad_line)!r}"
        ) from None


def _int_keyed_map(path: Path, raw, name: str) -> dict[int, str]:
    if not isinstance(raw, dict):
        raise PeaPODInputError(
            f"{path}: `{name}` must be an object {{\"1\": \"<raw id>\", ...}}, got {type(raw).__name__}"
        )
    mapping = {}
    for key, value in raw.items():
        number = parse_id(key, f"{path}: `{name}`", "key")
        if number in mapping:  # "1" and "01" are the same id
            raise PeaPODInputError(f"{path}: `{name}` key {key!r} repeats id {number}")
        if not isinstance(value, str) or not value:
            raise PeaPODInputError(f"{path}: `{name}` {key!r} maps to {value!r}; expected a non-empty raw id string")
        mapping[number] = value
    return mapping


def read_datamaps(path: str | os.PathLike) -> tuple[dict[int, str], dict[int, str]]:
    """Read datamaps.json -> (id2user, id2item) with integer keys."""
    path = Path(path)
    raw = load_json(path)
    if not isinstance(raw, dict) or "id2user" not in raw or "id2item" not in raw:
        raise PeaPODInputError(f"{path}: expected an object with keys `id2user` and `id2item`")
    return _int_keyed_map(path, raw["id2user"], "id2user"), _int_keyed_map(path, raw["id2item"], "id2item")


def read_explanations(path: str | os.PathLike) -> dict[str, list[dict]]:
    """Read explanation.json: {split: [{user, item, explanation, feature}, ...]} for train/validation/test."""
    path = Path(path)
    raw = load_json(path)
    if not isinstance(raw, dict) or set(raw) != set(EXPLANATION_SPLITS):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise PeaPODInputError(f"{path}: expected an object with exactly the keys {list(EXPLANATION_SPLITS)}, got {found}")
    explanations = {}
    for split in EXPLANATION_SPLITS:
        records = []
        for index, record in enumerate(raw[split]):
            where = f"{path}: {split}[{index}]"
            if not isinstance(record, dict) or any(key not in record for key in EXPLANATION_KEYS):
                raise PeaPODInputError(f"{where}: expected an object with keys {list(EXPLANATION_KEYS)}, got {record!r}")
            if not all(isinstance(record[key], int) and record[key] >= 1 for key in ("user", "item")):
                raise PeaPODInputError(f"{where}: `user` and `item` must be integer ids >= 1, got {record!r}")
            if not all(isinstance(record[key], str) and record[key].strip() for key in ("explanation", "feature")):
                raise PeaPODInputError(f"{where}: `explanation` and `feature` must be non-empty strings, got {record!r}")
            records.append({key: record[key] for key in EXPLANATION_KEYS})
        explanations[split] = records
    return explanations


def validate_ids(
    where: str, histories: dict[int, list[int]], id2user: dict[int, str], id2item: dict[int, str]
) -> None:
    """Every user and item of `histories` must be in the datamaps, and the datamaps' ids must be 1..N."""
    for name, mapping in (("id2user", id2user), ("id2item", id2item)):
        if sorted(mapping) != list(range(1, len(mapping) + 1)):
            raise PeaPODInputError(f"{where}: datamaps `{name}` ids must be contiguous 1..{len(mapping)}")
    for user, items in histories.items():
        if user not in id2user:
            raise PeaPODInputError(f"{where}: user {user} is missing from datamaps.json `id2user`")
        missing = [item for item in items if item not in id2item]
        if missing:
            raise PeaPODInputError(f"{where}: items {missing[:5]} of user {user} are missing from datamaps.json `id2item`")


def read_p5_dir(directory: str | os.PathLike, min_length: int = MIN_HISTORY_LENGTH) -> P5Data:
    """Read and validate a P5 directory (explanation.json is optional)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; expected a P5 folder with sequential.txt")
    histories = read_sequential(directory / "sequential.txt", min_length=min_length)
    id2user, id2item = read_datamaps(directory / "datamaps.json")
    validate_ids(str(directory / "sequential.txt"), histories, id2user, id2item)
    if set(histories) != set(id2user):
        extra = sorted(set(id2user) - set(histories))[:5]
        raise PeaPODInputError(f"{directory}: datamaps.json lists users {extra}... that have no line in sequential.txt")
    explanations = None
    if (directory / "explanation.json").exists():
        explanations = read_explanations(directory / "explanation.json")
        for split, records in explanations.items():
            for record in records:
                if record["user"] not in id2user or record["item"] not in id2item:
                    raise PeaPODInputError(
                        f"{directory / 'explanation.json'}: {split} record {record!r} names an id missing from "
                        "datamaps.json"
                    )
    return P5Data(histories=histories, id2user=id2user, id2item=id2item, explanations=explanations)
