"""`prepare` / `load_prepared` / `peapod-prepare` end to end on synthetic data, and failures that leave no trace."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets_scripts import load_prepared, prepare, rebuild_dataset
from datasets_scripts.build_dataset import TOKEN_FEATURES
from datasets_scripts.cli import format_summary, main
from modeling_peapod import compute_whole_word_ids

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "t5"
TASKS = ("sequential", "topn", "explanation")
SPLIT_NAMES = {f"{task}_{split}" for task in TASKS for split in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def tokenizer_dir():
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"the T5 tokenizer is not at {TOKENIZER_DIR} (../shared beside the repository)")
    return str(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def user_matrix(tmp_path_factory):
    path = tmp_path_factory.mktemp("matrix") / "users.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))  # synthetic has 300 users
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer_dir, user_matrix):
    output = tmp_path_factory.mktemp("prepared") / "synthetic"
    config = prepare(
        output, synthetic=True, max_users=40, tokenizer=tokenizer_dir, embedding=str(user_matrix), num_neighbors=5
    )
    return output, config


def leftovers(folder: Path, name: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def test_prepared_folder_loads_with_every_piece(prepared, tokenizer_dir):
    output, config = prepared
    data = load_prepared(output)
    assert set(data.dataset) == SPLIT_NAMES
    assert data.num_users == 40 == len(data.histories) == config["statistics"]["num_users"]
    assert data.num_items == config["statistics"]["num_items"]
    assert {name: len(split) for name, split in data.dataset.items()} == config["statistics"]["split_sizes"]
    assert tuple(data.user_embeddings.shape) == (41, 8) and not data.user_embeddings[0].any()
    expected = np.load(config["arguments"]["embedding"])[:40]
    assert np.allclose(data.user_embeddings[1:].numpy(), expected)
    assert tuple(data.user_neighbors.shape) == (41, 5) and data.item_embeddings is None
    for user, negatives in data.negatives["test"].items():
        assert len(set(negatives)) == 99 and not set(negatives) & set(data.histories[user])
    assert "| users | 40 |" in (output / "README.md").read_text()
    assert json.loads((output / "prepare_config.json").read_text())["seed"] == 0
    assert leftovers(output.parent, output.name) == []


def test_tokenised_columns(prepared, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = load_prepared(prepared[0])
    for name in sorted(SPLIT_NAMES):
        split = data.dataset[name]
        assert split.format["type"] is None  # tokenised in the Arrow format, saved without one
        assert {column: split.features[column] for column in TOKEN_FEATURES} == TOKEN_FEATURES
        columns = split.select_columns(["source", "target", *TOKEN_FEATURES]).to_dict()
        expected = tokenizer(columns["source"], verbose=False)["input_ids"]  # every row, as the tokenizer gives it
        assert columns["input_ids"] == expected and columns["attention_mask"] == [[1] * len(ids) for ids in expected]
        assert columns["whole_word_ids"] == compute_whole_word_ids(expected, tokenizer)
        assert columns["labels"] == tokenizer(columns["target"], verbose=False)["input_ids"]
        rows = split.select(range(min(3, len(split))))
        for row in rows:
            assert row["task_id"] == TASKS.index(row["task"])
            assert len(row["attention_mask"]) == len(row["input_ids"]) == len(row["whole_word_ids"])
            assert max(row["whole_word_ids"]) == row["source"].count("user_") + row["source"].count("item_")
            assert tokenizer.decode(row["labels"], skip_special_tokens=True) == row["target"]
            assert row["labels"][-1] == tokenizer.eos_token_id
            if row["task"] == "topn":
                assert len(row["candidates"]) == 100 and row["item_id"] in row["candidates"]
            else:
                assert row["candidates"] == []
            if row["task"] != "explanation":
                assert row["target"] == str(row["item_id"])
    test = data.dataset["sequential_test"]
    assert test["item_id"] == [data.histories[user][-1] for user in test["user_id"]]


def test_reindexed_pmf_variant(prepared, tmp_path, tokenizer_dir):
    output = tmp_path / "reindexed"
    prepare(
        output, synthetic=True, max_users=40, tokenizer=tokenizer_dir, embedding="pmf", embedding_dim=8,
        pmf_max_iter=5, num_neighbors=5, reindex_items=True,
    )
    plain, reindexed = load_prepared(prepared[0], load_dataset=False), load_prepared(output, load_dataset=False)
    mapping = reindexed.item_reindex
    assert sorted(mapping) == sorted(mapping.values()) == list(range(1, plain.num_items + 1))
    for user, items in plain.histories.items():
        assert reindexed.histories[user] == [mapping[item] for item in items]
    assert tuple(reindexed.item_embeddings.shape) == (plain.num_items + 1, 8)
    assert tuple(reindexed.user_embeddings.shape) == (41, 8)
    train_pairs = {(r["user"], r["item"]) for r in reindexed.explanations["train"]}
    eval_pairs = {(user, items[-k]) for user, items in reindexed.histories.items() for k in (1, 2)}
    assert not train_pairs & eval_pairs


@pytest.mark.parametrize("reindex_items", [False, True])
def test_rebuilt_dataset_equals_the_prepared_one(prepared, tmp_path, tokenizer_dir, user_matrix, reindex_items):
    original = prepared[0]
    if reindex_items:
        original = tmp_path / "reindexed"
        prepare(original, synthetic=True, max_users=40, tokenizer=tokenizer_dir, embedding=str(user_matrix),
                num_neighbors=5, reindex_items=True)
    light = tmp_path / "light"
    shutil.copytree(original, light, ignore=shutil.ignore_patterns("dataset"))
    with pytest.raises(FileNotFoundError, match="missing dataset/dataset_dict.json"):
        load_prepared(light)
    rebuild_dataset(light, tokenizer=tokenizer_dir)
    expected, rebuilt = load_prepared(original).dataset, load_prepared(light).dataset
    assert set(rebuilt) == set(expected) and "explanation_train" in rebuilt
    for name in expected:
        assert rebuilt[name].features == expected[name].features
        assert rebuilt[name].to_dict() == expected[name].to_dict(), name
    assert [p.name for p in light.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_missing_piece_is_named(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared[0], copy)
    (copy / "negatives_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing negatives_test.txt"):
        load_prepared(copy)


def test_summary_table(prepared):
    config = prepared[1]
    lines = format_summary(config).splitlines()
    rows = dict(line.rsplit(None, 1) for line in lines[2:-3])  # "name   count" rows between header and footer
    statistics = config["statistics"]
    expected = {"users": statistics["num_users"], "items": statistics["num_items"],
                "interactions": statistics["num_interactions"], **statistics["split_sizes"]}
    assert {name.strip(): int(count.replace(",", "")) for name, count in rows.items()} == expected
    assert expected["users"] == 40 and len(rows) == 3 + 9
    assert lines[-3] == "user table [41, 8], neighbours [41, 5]"
    rates = config["neighbor_diagnostic"]["hit_rates"]
    assert list(rates) == ["file users.npy", "random"] and config["neighbor_diagnostic"]["split"] == "validation"
    assert lines[-2].startswith("Neighbour diagnostic (share of 40 users whose validation item is in the training "
                                "history of one of their 5 nearest neighbours") and f"random {rates['random']:.4f}" in lines[-2]
    assert lines[-1].endswith(f"-> {config['arguments']['output_dir']}")


# Failures leave the output folder as it was --------------------------------------------------------------------


def bad_p5(folder: Path, sequential: str, num_items: int = 200) -> str:
    folder.mkdir()
    (folder / "sequential.txt").write_text(sequential)
    users = len(sequential.strip().splitlines())
    maps = {"id2user": {str(u): f"U{u}" for u in range(1, users + 1)},
            "id2item": {str(i): f"I{i}" for i in range(1, num_items + 1)}}
    (folder / "datamaps.json").write_text(json.dumps(maps))
    return str(folder)


BAD_SOURCES = {
    "non_integer": ("1 1 2 3\n2 4 five 6\n", "non-integer token 'five'"),
    "empty_line": ("1 1 2 3\n\n2 4 5 6\n", "empty line"),
    "duplicate_user": ("1 1 2 3\n1 4 5 6\n", "duplicate user 1"),
    "short_history": ("1 1 2 3\n2 4 5\n", "user 2 has 2 item"),
    "missing_id": ("1 1 2 3\n2 4 5 999\n", "missing from datamaps.json"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_p5_input_leaves_no_output_folder(case, tmp_path):
    text, message = BAD_SOURCES[case]
    source = bad_p5(tmp_path / "source", text)
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        prepare(output, p5_dir=source, tokenizer="unused", embedding_dim=4, num_neighbors=1)
    assert not output.exists() and leftovers(tmp_path, "out") == []


def test_malformed_reviews_leave_no_output_folder(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_text('{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}\n{"reviewerID": "A", "asin"\n')
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=r"reviews.json:2: malformed JSON"):
        prepare(output, reviews=str(reviews), tokenizer="unused")
    assert not output.exists() and leftovers(tmp_path, "out") == []


@pytest.mark.parametrize(
    "suffix, rows, message",
    [(".pkl", 300, "refusing to load a pickle"), (".npy", 17, "shape"), (".parquet", 300, "unsupported")],
)
def test_bad_user_matrix_leaves_no_output_folder(tmp_path, suffix, rows, message):
    matrix = tmp_path / f"users{suffix}"
    if suffix == ".npy":
        np.save(matrix, np.zeros((rows, 4), dtype=np.float32))
    else:
        matrix.write_bytes(b"\x80\x04K\x01.")
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        prepare(output, synthetic=True, tokenizer="unused", embedding=str(matrix), num_neighbors=5)
    assert not output.exists() and leftovers(tmp_path, "out") == []


def test_late_failure_keeps_the_existing_output(tmp_path, monkeypatch, user_matrix, tokenizer_dir):
    output = tmp_path / "out"
    output.mkdir()
    (output / "prepare_config.json").write_text("previous run")  # a prepared folder: --overwrite may replace it

    def explode(*args, **kwargs):
        raise RuntimeError("tokenisation failed")

    monkeypatch.setattr("datasets_scripts.prepared.build_dataset_dict", explode)
    with pytest.raises(RuntimeError, match="tokenisation failed"):
        prepare(output, synthetic=True, max_users=20, tokenizer=tokenizer_dir, embedding=str(user_matrix),
                num_neighbors=3, overwrite=True)
    assert [p.name for p in output.iterdir()] == ["prepare_config.json"]
    assert (output / "prepare_config.json").read_text() == "previous run"
    assert leftovers(tmp_path, "out") == []


def test_argument_errors(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "file").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare(existing, synthetic=True)
    with pytest.raises(ValueError, match="exactly one data source"):
        prepare(tmp_path / "a", synthetic=True, p5_dir=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one data source"):
        prepare(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="neither one of"):
        prepare(tmp_path / "a", synthetic=True, embedding="nonsense")
    with pytest.raises(ValueError, match="num_neighbors=400"):
        prepare(tmp_path / "a", synthetic=True, num_neighbors=400, tokenizer="unused")
    assert main(["--output_dir", str(existing), "--synthetic"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in existing.iterdir()] == ["file"] and not (tmp_path / "a").exists()


def test_cyclic_gc_paused_restores_the_collector():
    import gc

    from datasets_scripts.build_dataset import cyclic_gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="inside"), cyclic_gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("inside")
    assert gc.isenabled()  # back on after an error too
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a caller's disabled collector stays disabled
    finally:
        gc.enable()
