"""The library's standing bad-input suite (issue 9): bad checkpoints, bad data files, bad model inputs.

Each case is one row of a table: how to spoil a good artefact, and the `PeaPODInputError` message that must name
the file, tensor or value at fault. The CLIs turn a `PeaPODInputError` into `<prog>: error: ...` and exit 2 (tested
in tests/test_cli.py); here the library itself is pinned. Tiny shapes only: the whole file runs in seconds.
"""

import gzip
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from configuration_peapod import PeaPODInputError
from datasets_scripts.amazon_reviews import read_reviews
from datasets_scripts.p5_format import read_datamaps, read_sequential
from datasets_scripts.prepared import (
    check_data_fingerprint,
    data_fingerprint,
    load_prepared,
)
from modeling_peapod import ItemIdTrie, PeaPODForConditionalGeneration

NUM_USERS, NUM_ITEMS, D_USER = 6, 9, 4
FINGERPRINT = {"sha256": "0123456789abcdef", "num_users": NUM_USERS, "num_items": NUM_ITEMS}


def tiny_model() -> PeaPODForConditionalGeneration:
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=NUM_USERS, num_items=NUM_ITEMS, user_embedding_dim=D_USER, num_neighbors=2,
        dropout_rate=0.0, data_fingerprint=dict(FINGERPRINT),
    )
    model.set_user_table(torch.randn(NUM_USERS + 1, D_USER))
    return model


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good") / "checkpoint"
    tiny_model().save_pretrained(folder)
    return folder


# -- bad checkpoints ------------------------------------------------------------------------------------------


def _edit_weights(edit):
    def spoil(folder: Path) -> None:
        weights = load_file(folder / "model.safetensors")
        edit(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    return spoil


def _edit_config(**fields):
    def spoil(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **fields}))

    return spoil


def _truncate(folder: Path, keep: float = 0.5) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: int(len(data) * keep)])


def _poison_embeddings(weights):
    weights["user_embeddings"][3, 1] = float("nan")


def _far_neighbour(weights):
    weights["user_neighbors"][2, 0] = 10**6


BAD_CHECKPOINTS = {
    "missing task prompts": (_edit_weights(lambda w: w.pop("task_prompts.weight")),
                             r"missing \['task_prompts.weight'\] \(they would start from random values\)"),
    "missing prompt-encoder output": (_edit_weights(lambda w: w.pop("prompt_encoder.to_prompt.weight")),
                                      r"missing \['prompt_encoder.to_prompt.weight'\]"),
    "missing shared embeddings (and so every tied copy)": (_edit_weights(lambda w: w.pop("shared.weight")),
                                                           r"missing \[.*'shared.weight'\]"),
    "unexpected tensor": (_edit_weights(lambda w: w.update({"adapter.extra.weight": torch.zeros(3)})),
                          r"unexpected \['adapter.extra.weight'\]"),
    "mis-shaped weight": (_edit_weights(lambda w: w.update({"task_prompts.weight": torch.zeros(2, 2)})),
                          r"weights of other shapes than its config: \['task_prompts.weight'\]"),
    "missing user table": (_edit_weights(lambda w: w.pop("user_embeddings")), "has no user_embeddings buffer"),
    "truncated model.safetensors": (_truncate, r"model.safetensors is truncated: \d+ of the \d+ bytes"),
    "model.safetensors cut inside its header": (lambda f: _truncate(f, keep=0.0001),
                                                "model.safetensors is truncated or not a safetensors file"),
    "model.safetensors that is not safetensors": (
        lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"),
        "model.safetensors has a damaged safetensors header"),
    "missing config.json": (lambda f: (f / "config.json").unlink(), r"config.json does not exist"),
    "NaN in user_embeddings": (_edit_weights(_poison_embeddings),
                               r"user_embeddings has NaN or infinite values in 1 row\(s\), user ids \[3\]"),
    "neighbour id outside the table": (_edit_weights(_far_neighbour),
                                       r"user_neighbors contains \[1000000\]; .*in \[0, 6\]"),
    "num_items edited in config.json": (_edit_config(num_items=50),
                                        "config.json has num_items=50 but its data_fingerprint records 9"),
    "num_users edited with a table to match": (
        lambda f: (_edit_config(num_users=5)(f), _edit_weights(lambda w: w.update(
            user_embeddings=w["user_embeddings"][:6], user_neighbors=w["user_neighbors"][:6].clamp(max=5)))(f)),
        "config.json has num_users=5 but its data_fingerprint records 6"),
    "malformed data_fingerprint": (_edit_config(data_fingerprint="abc"),
                                   r"config.json: data_fingerprint='abc' must be None or"),
    "unknown prompt encoder in config.json": (_edit_config(prompt_encoder="gru"),
                                              r"config.json: prompt_encoder='gru' is not one of"),
    "config.json that is not JSON": (lambda f: (f / "config.json").write_text('{"model_type": "peapod",'),
                                     r"config.json: Expecting property name"),
    "a T5 config.json": (_edit_config(model_type="t5"), r"config.json: model_type 't5', not 'peapod'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_refused_naming_the_culprit(case, good_checkpoint, tmp_path):
    spoil, message = BAD_CHECKPOINTS[case]
    folder = tmp_path / "checkpoint"
    shutil.copytree(good_checkpoint, folder)
    spoil(folder)
    with pytest.raises(PeaPODInputError, match=message):
        PeaPODForConditionalGeneration.from_pretrained(folder)


def test_remote_code_refuses_the_same_checkpoints(good_checkpoint, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    folder = tmp_path / "hub_repo"
    shutil.copytree(good_checkpoint, folder)
    _edit_weights(lambda w: w.pop("prompt_encoder.to_prompt.weight"))(folder)
    # The folder's own copy of modeling_peapod.py runs: its PeaPODInputError is that module's class (a ValueError).
    with pytest.raises(ValueError, match=r"missing \['prompt_encoder.to_prompt.weight'\]") as error:
        AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    assert type(error.value).__name__ == "PeaPODInputError"
    assert type(error.value).__module__.startswith("transformers_modules")


def test_missing_checkpoint_folder_is_named(tmp_path):
    with pytest.raises(PeaPODInputError, match=f"checkpoint folder {tmp_path / 'absent'} does not exist"):
        PeaPODForConditionalGeneration.from_pretrained(tmp_path / "absent")


def test_refusal_is_one_line_without_transformers_load_report(good_checkpoint, tmp_path, caplog, monkeypatch):
    folder = tmp_path / "checkpoint"
    shutil.copytree(good_checkpoint, folder)
    _edit_weights(lambda w: w.pop("task_prompts.weight"))(folder)
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)  # let caplog see its warnings
    with caplog.at_level(logging.WARNING), pytest.raises(PeaPODInputError) as error:
        PeaPODForConditionalGeneration.from_pretrained(folder)
    assert "\n" not in str(error.value) and "LOAD REPORT" not in caplog.text
    with caplog.at_level(logging.WARNING):  # an accepted checkpoint still gets transformers' report
        PeaPODForConditionalGeneration.from_pretrained(folder, allow_missing_weights=True)
    assert "LOAD REPORT" in caplog.text


def test_surgery_opt_out_and_tied_weights(good_checkpoint, tmp_path, caplog):
    folder = tmp_path / "checkpoint"
    shutil.copytree(good_checkpoint, folder)
    # Tied copies saved explicitly (as other tools do) are no mismatch: transformers reports them as tied.
    _edit_weights(lambda w: w.update({"lm_head.weight": w["shared.weight"].clone(),
                                      "encoder.embed_tokens.weight": w["shared.weight"].clone()}))(folder)
    model = PeaPODForConditionalGeneration.from_pretrained(folder)
    assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
    _edit_weights(lambda w: w.pop("task_prompts.weight"))(folder)
    with caplog.at_level(logging.WARNING):
        model, info = PeaPODForConditionalGeneration.from_pretrained(
            folder, allow_missing_weights=True, output_loading_info=True
        )
    assert info["missing_keys"] == {"task_prompts.weight"}
    assert "task_prompts.weight" in caplog.text and "allow_missing_weights=True" in caplog.text


def test_auto_tokenizer_opens_a_saved_folder_without_remote_code(good_checkpoint, tokenizer, tmp_path, caplog,
                                                                 monkeypatch):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    folder = tmp_path / "checkpoint"
    shutil.copytree(good_checkpoint, folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)  # let caplog see its warnings
    # With the package installed, `peapod` is a known config type: AutoTokenizer (which reads the model config)
    # asks no "run the custom code?" question and does not fall back to a bare config with the warning "model of
    # type `peapod` to instantiate a model of type ``".
    with caplog.at_level(logging.WARNING):
        loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
    assert type(config).__module__ == "configuration_peapod"
    assert loaded_tokenizer("item_12").input_ids == tokenizer("item_12").input_ids
    assert "to instantiate a model of type" not in caplog.text
    # The model itself still loads as the folder's remote code when asked to, as on the Hub.
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules")


# -- bad data files -------------------------------------------------------------------------------------------

GOOD_HISTORY = b"1 1 2 3\n2 2 3 4\n"
REVIEW = {"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1, "reviewText": "fine"}


def _review_lines(*reviews) -> bytes:
    return b"".join(json.dumps(review).encode() + b"\n" for review in reviews)


def _truncated_gzip(data: bytes) -> bytes:
    compressed = gzip.compress(data)
    return compressed[: len(compressed) // 2]


def _read_prepared_config(path: Path):
    load_prepared(path.parent, load_dataset=False)


BAD_FILES = {
    # case: (file name, bytes, reader, message)
    "non-UTF-8 byte in sequential.txt": ("sequential.txt", b"1 1 2 3\n2 2 \xff 4\n", read_sequential,
                                         r"sequential.txt:2: byte 0xff at column 5 is not UTF-8"),
    "Arabic-Indic digit as an id": ("sequential.txt", "1 1 2 3\n2 ١ 3 4\n".encode(), read_sequential,
                                    r"sequential.txt:2: non-integer token '١'"),
    "signed id": ("sequential.txt", b"1 1 2 3\n2 +7 3 4\n", read_sequential, r"sequential.txt:2: non-integer token '\+7'"),
    "underscored id": ("sequential.txt", b"1 1_0 2 3\n", read_sequential, r"sequential.txt:1: non-integer token '1_0'"),
    "non-UTF-8 byte in a review file": ("reviews.json", _review_lines(REVIEW) + b'{"reviewerID": "\xe9"}\n',
                                        read_reviews, r"reviews.json:2: byte 0xe9 at column 17 is not UTF-8"),
    "truncated .json.gz": ("reviews.json.gz", _truncated_gzip(_review_lines(*[REVIEW] * 2000)), read_reviews,
                           r"reviews.json.gz: truncated or damaged gzip file after line \d+"),
    "null reviewerID": ("reviews.json", _review_lines(REVIEW, {**REVIEW, "reviewerID": None}), read_reviews,
                        r"reviews.json:2: `reviewerID` is None; expected a non-empty string id"),
    "empty asin": ("reviews.json", _review_lines({**REVIEW, "asin": ""}), read_reviews,
                   r"reviews.json:1: `asin` is ''; expected a non-empty string id"),
    "duplicate datamaps key": ("datamaps.json", b'{"id2user": {"1": "A", "1": "B"}, "id2item": {"1": "X"}}',
                               read_datamaps, r"datamaps.json: duplicate key '1' in a JSON object"),
    "same id written twice in datamaps": ("datamaps.json", b'{"id2user": {"1": "A", "01": "B"}, "id2item": {}}',
                                          read_datamaps, r"datamaps.json: `id2user` key '01' repeats id 1"),
    "null raw id in datamaps": ("datamaps.json", b'{"id2user": {"1": null}, "id2item": {}}', read_datamaps,
                                r"datamaps.json: `id2user` '1' maps to None; expected a non-empty raw id string"),
    "Arabic-Indic digit as a datamaps key": ("datamaps.json", '{"id2user": {"١": "A"}, "id2item": {}}'.encode(),
                                             read_datamaps, r"datamaps.json: `id2user`: key '١' is not an integer id"),
    "malformed prepare_config.json": ("prepare_config.json", b'{"seed": 0,\n "statistics": {', _read_prepared_config,
                                      r"prepare_config.json:2: malformed JSON"),
    "prepare_config.json that is a list": ("prepare_config.json", b"[1, 2]", _read_prepared_config,
                                           r"prepare_config.json: expected a JSON object \(written by peapod-prepare\)"),
    "non-boolean flag in prepare_config.json": ("prepare_config.json", b'{"has_explanations": "yes"}',
                                                _read_prepared_config,
                                                r"prepare_config.json: `has_explanations` is 'yes'; expected true or"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_data_file_is_refused_naming_file_and_line(case, tmp_path):
    name, content, reader, message = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PeaPODInputError, match=message) as error:
        reader(path)
    assert str(path) in str(error.value)


def test_good_files_still_read(tmp_path):
    (tmp_path / "sequential.txt").write_bytes(GOOD_HISTORY)
    assert read_sequential(tmp_path / "sequential.txt") == {1: [1, 2, 3], 2: [2, 3, 4]}
    (tmp_path / "reviews.json.gz").write_bytes(gzip.compress(_review_lines(REVIEW, {**REVIEW, "reviewerID": 7})))
    assert [review["user"] for review in read_reviews(tmp_path / "reviews.json.gz")] == ["A1", "7"]


# -- bad model inputs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_inputs():
    model = tiny_model().eval()
    inputs = {
        "input_ids": torch.randint(2, 100, (2, 5)),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
        "user_ids": torch.tensor([1, 2]),
        "task_ids": torch.tensor([1, 1]),
    }
    trie = ItemIdTrie({item: [100 + item, 1] for item in range(1, NUM_ITEMS + 1)}, eos_token_id=1)
    return model, inputs, trie


def _recommend(candidates):
    return lambda model, inputs, trie: model.recommend(**inputs, item_trie=trie, candidates=candidates, top_k=1,
                                                       num_beams=2)


def _score(candidates, **kwargs):
    return lambda model, inputs, trie: model.score_candidates(**inputs, item_trie=trie, candidates=candidates,
                                                              **kwargs)


def _forward(**overrides):
    return lambda model, inputs, trie: model(**{**inputs, "labels": torch.tensor([[5, 1], [6, 1]]), **overrides})


BAD_MODEL_INPUTS = {
    "float candidates to recommend": (_recommend([[1.5, 2.0], [3.0, 4.0]]),
                                      r"candidates must be integer item ids, got dtype torch.float32"),
    "float candidates to score_candidates": (_score(torch.tensor([[1.5, 2.0], [3.0, 4.0]], dtype=torch.float64)),
                                             r"candidates must be integer item ids, got dtype torch.float64"),
    "empty candidates to recommend": (_recommend([[], []]), r"candidates is empty \(shape \(2, 0\)\)"),
    "empty candidates to score_candidates": (_score(torch.zeros(2, 0, dtype=torch.long)),
                                             r"candidates is empty \(shape \(2, 0\)\)"),
    "ragged candidates": (_score([[1, 2], [3]]), r"candidates must be a \[batch=2, C\] table of item ids"),
    "one candidate row for two samples": (_score([[1, 2]]), r"candidates must be \[batch=2, C\] item ids, got shape"),
    "candidate_batch_size=0": (_score([[1, 2], [3, 4]], candidate_batch_size=0),
                               r"candidate_batch_size=0 must be an integer >= 1"),
    "attention mask of another shape": (_forward(attention_mask=torch.ones(2, 3, dtype=torch.long)),
                                        r"attention_mask has shape \(2, 3\); expected that of input_ids \(2, 5\)"),
    "labels for three samples of two": (_forward(labels=torch.ones(3, 2, dtype=torch.long)),
                                        r"labels has shape \(3, 2\); expected 2 rows"),
    "float labels": (_forward(labels=torch.ones(2, 2)), r"labels must be a 2-D integer tensor .* dtype torch.float32"),
    "decoder_input_ids not matching labels": (_forward(decoder_input_ids=torch.zeros(2, 4, dtype=torch.long)),
                                              r"decoder_input_ids has shape \(2, 4\); expected that of labels \(2, 2\)"),
    "float input_ids": (_forward(input_ids=torch.rand(2, 5)), r"input_ids must be a 2-D integer tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL_INPUTS))
def test_bad_model_input_is_refused_naming_the_argument(case, model_and_inputs):
    call, message = BAD_MODEL_INPUTS[case]
    with pytest.raises(PeaPODInputError, match=message):
        call(*model_and_inputs)


def test_good_candidates_still_work(model_and_inputs):
    model, inputs, trie = model_and_inputs
    scores = model.score_candidates(**inputs, item_trie=trie, candidates=[[1, 2], [3, 4]], candidate_batch_size=1)
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()
    item_ids, _ = model.recommend(**inputs, item_trie=trie, candidates=[[1, 2], [3, 4]], top_k=1, num_beams=2)
    assert item_ids[0, 0] in (1, 2) and item_ids[1, 0] in (3, 4)


# -- a checkpoint paired with other data ----------------------------------------------------------------------


def _prepared_files(folder: Path, histories: bytes) -> Path:
    folder.mkdir()
    (folder / "sequential.txt").write_bytes(histories)
    (folder / "datamaps.json").write_text('{"id2user": {"1": "A", "2": "B"}, "id2item": {"1": "x"}}')
    return folder


def test_data_fingerprint_tells_data_apart(tmp_path):
    first = data_fingerprint(_prepared_files(tmp_path / "a", GOOD_HISTORY), 2, 4)
    same = data_fingerprint(_prepared_files(tmp_path / "b", GOOD_HISTORY), 2, 4)
    other = data_fingerprint(_prepared_files(tmp_path / "c", b"1 1 2 3\n2 2 4 3\n"), 2, 4)
    assert first == same and len(first["sha256"]) == 16 and first["num_items"] == 4
    assert other["sha256"] != first["sha256"]


def test_checkpoint_trained_on_other_data_is_refused(good_checkpoint, tmp_path, caplog):
    config = SimpleNamespace(data_fingerprint=dict(FINGERPRINT))
    other = {**FINGERPRINT, "sha256": "fedcba9876543210"}
    prepared = SimpleNamespace(path=tmp_path / "other-seed", fingerprint=other)
    with pytest.raises(PeaPODInputError, match=r"model's config records data_fingerprint .*0123456789abcdef.* but "
                                               rf"{prepared.path} has .*fedcba9876543210.*--allow_other_data"):
        check_data_fingerprint(config, prepared)
    with pytest.raises(PeaPODInputError, match=r"checkpoint/config.json records data_fingerprint"):
        check_data_fingerprint(SimpleNamespace(data_fingerprint=None), prepared, checkpoint=good_checkpoint)
    with caplog.at_level(logging.WARNING):
        check_data_fingerprint(config, prepared, allow_other_data=True, record=True)
    assert "allowed by allow_other_data" in caplog.text and config.data_fingerprint == other
    fresh = SimpleNamespace(data_fingerprint=None)  # a fresh model records the data it is trained on
    check_data_fingerprint(fresh, prepared, record=True)
    assert fresh.data_fingerprint == other


def test_evaluation_refuses_a_checkpoint_of_other_data(tmp_path):
    from training.evaluation import evaluate_checkpoint

    prepared = SimpleNamespace(path=tmp_path, num_users=NUM_USERS, num_items=NUM_ITEMS,
                               fingerprint={**FINGERPRINT, "sha256": "fedcba9876543210"})
    with pytest.raises(PeaPODInputError, match="trained on other data"):
        evaluate_checkpoint(tiny_model(), None, prepared, tasks=["sequential"])
