"""Folding in users who are not in the user table (issue 13 §1): the solve, the neighbours, the explicit inputs,
the checkpoint, the held-out users of `peapod-prepare`, and bad input."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, TOKENIZER_DIR, console_script
from transformers.utils import HF_MODULES_CACHE

from configuration_peapod import PeaPODInputError
from modeling_peapod import (
    UNKNOWN_USER_TEXT,
    PeaPODForConditionalGeneration,
    build_user_neighbors,
    compute_whole_word_ids,
)

NUM_USERS, NUM_ITEMS, D_USER, NUM_NEIGHBORS = 24, 30, 6, 4


def random_histories(num_users: int, num_items: int, seed: int = 0) -> dict[int, list[int]]:
    rng = np.random.default_rng(seed)
    return {
        user: rng.choice(np.arange(1, num_items + 1), size=int(rng.integers(3, 9)), replace=False).tolist()
        for user in range(1, num_users + 1)
    }


def fold_in_model(prompt_encoder: str = "mha", seed: int = 0, **fields) -> PeaPODForConditionalGeneration:
    """A tiny model with a random user table and random item factors (fold-in enabled)."""
    generator = torch.Generator().manual_seed(seed)
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=NUM_USERS, num_items=NUM_ITEMS, user_embedding_dim=D_USER, num_neighbors=NUM_NEIGHBORS,
        dropout_rate=0.0, prompt_encoder=prompt_encoder, **fields,
    ).eval()
    if model.has_collaborative_prompt:
        model.set_user_table(torch.randn(NUM_USERS + 1, D_USER, generator=generator))
        model.set_item_factors(torch.randn(NUM_ITEMS + 1, D_USER, generator=generator))
    return model


def reference_objective(user, factors, history, regularization, negatives_per_positive):
    """fold_in_users' objective written out independently, for one user (torch, differentiable)."""
    num_items = factors.shape[0] - 1
    observed = torch.zeros(num_items + 1, dtype=torch.bool)
    observed[history] = True
    scores = torch.sigmoid(factors[1:] @ user)
    positives = int(observed.sum())
    drawn = min(negatives_per_positive * positives, num_items - positives)
    weight = drawn / (num_items - positives)
    loss = ((1 - scores[observed[1:]]) ** 2).sum() + weight * (scores[~observed[1:]] ** 2).sum()
    return loss + regularization * (positives + drawn) * user.dot(user)


# -- the solve -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("negatives_per_positive", [0, 1, 3])
def test_fold_in_recovers_a_table_user_that_is_the_exact_solve(negatives_per_positive):
    """A table whose users ARE the CF solve (minimised here by an independent optimiser, L-BFGS on the objective
    written out) must be recovered from each user's own items."""
    histories = random_histories(NUM_USERS, NUM_ITEMS)
    factors = torch.randn(NUM_ITEMS + 1, D_USER, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    regularization = 0.05
    table = torch.zeros(NUM_USERS + 1, D_USER, dtype=torch.float64)
    for user, history in histories.items():
        vector = torch.zeros(D_USER, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([vector], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                      line_search_fn="strong_wolfe")

        def closure(vector=vector, history=history, optimizer=optimizer):
            optimizer.zero_grad()
            loss = reference_objective(vector, factors, history, regularization, negatives_per_positive)
            loss.backward()
            return loss

        optimizer.step(closure)
        table[user] = vector.detach()
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=NUM_USERS, num_items=NUM_ITEMS, user_embedding_dim=D_USER, num_neighbors=NUM_NEIGHBORS
    )
    model.double()
    model.set_user_table(table)
    model.set_item_factors(factors, regularization=regularization, negatives_per_positive=negatives_per_positive)
    vectors, neighbors = model.fold_in_users([histories[user] for user in sorted(histories)], tolerance=1e-10)
    torch.testing.assert_close(vectors, table[1:], atol=1e-6, rtol=1e-6)
    # Each folded-in user is its own table row's closest match, so the table row is its first neighbour.
    assert neighbors[:, 0].tolist() == sorted(histories)


def test_fold_in_matches_cornac_pmf_trained_on_every_unobserved_item():
    """Against cornac itself, at its default lambda: PMF trained with every unobserved item as a negative (so the
    sampled objective is the expected one) and run long. cornac's RMSprop rescales each rating's step by a running
    average of recent squared gradients, so its fixed point is near, not at, the objective's minimum: the folded-in
    users point where cornac's do (cosine > 0.99; measured min 0.994) and each is nearest its own table user."""
    pytest.importorskip("cornac")
    from datasets_scripts.user_embeddings import train_pmf

    histories = random_histories(30, 20)
    users, items = train_pmf(histories, 30, 20, k=4, seed=0, max_iter=3000, learning_rate=1e-3,
                             negatives_per_positive=20)
    model = PeaPODForConditionalGeneration.from_shape("tiny", num_users=30, num_items=20, user_embedding_dim=4,
                                                      num_neighbors=3)
    model.set_user_table(users)
    model.set_item_factors(items, regularization=1e-3, negatives_per_positive=20)
    vectors, neighbors = model.fold_in_users([histories[user] for user in range(1, 31)])
    assert F.cosine_similarity(vectors, users[1:]).min() > 0.99
    assert neighbors[:, 0].tolist() == list(range(1, 31))


def test_repeated_items_count_once_and_sampled_negatives_depend_on_the_history_only():
    model = fold_in_model()
    once, _ = model.fold_in_users([[3, 7, 9]])
    repeated, _ = model.fold_in_users([[3, 7, 3, 9, 7]])
    torch.testing.assert_close(once, repeated)
    alone, _ = model.fold_in_users([[3, 7, 9]], negatives="sampled", seed=5)
    in_batch, _ = model.fold_in_users([[1, 2], [3, 7, 9]], negatives="sampled", seed=5)
    torch.testing.assert_close(alone[0], in_batch[1])
    other_seed, _ = model.fold_in_users([[3, 7, 9]], negatives="sampled", seed=6)
    assert not torch.allclose(alone, other_seed)
    assert not torch.allclose(alone, once)


# -- neighbours ------------------------------------------------------------------------------------------------


def test_fold_in_neighbors_are_the_table_builders_own():
    """The neighbours of a folded-in vector are what `build_user_neighbors` gives that vector as one more table row
    (same cosine, resolution and tie rule), including ties: the table holds duplicated users."""
    model = fold_in_model()
    table = model.user_embeddings.clone()
    table[5], table[9], table[17] = table[2], table[2], 3 * table[2]  # exact ties with user 2
    model.set_user_table(table)
    histories = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [30], list(range(1, 16))]
    vectors, neighbors = model.fold_in_users(histories)
    vectors = torch.cat([vectors, table[2:3]])  # a query tied with four users
    neighbors = torch.cat([neighbors, build_user_neighbors(table, NUM_NEIGHBORS, queries=table[2:3])])
    assert neighbors[-1].tolist() == [2, 5, 9, 17]
    for row, vector in enumerate(vectors):
        with_user = build_user_neighbors(torch.cat([table, vector[None]]), NUM_NEIGHBORS)
        assert neighbors[row].tolist() == with_user[-1].tolist()


# -- explicit inputs ---------------------------------------------------------------------------------------------


@pytest.fixture
def inputs(tokenizer):
    sources = ["user_3 bought item_4 , item_17 and item_9 . What next?", "Recommend to user_5 : item_12"]
    encoded = tokenizer(sources, return_tensors="pt", padding=True)
    labels = tokenizer(["12", "7"], return_tensors="pt", padding=True).input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    return {
        "input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask,
        "whole_word_ids": compute_whole_word_ids(encoded.input_ids, tokenizer),
        "task_ids": torch.tensor([0, 1]), "labels": labels,
    }


@pytest.mark.parametrize("prompt_encoder", ["mha", "mlp"])
def test_explicit_user_inputs_equal_user_ids_for_a_table_user(prompt_encoder, inputs, tokenizer):
    model = fold_in_model(prompt_encoder)
    user_ids = torch.tensor([3, 5])
    explicit = {"user_embeddings": model.user_embeddings[user_ids], "user_neighbors": model.user_neighbors[user_ids]}
    by_id = model(**inputs, user_ids=user_ids)
    by_vector = model(**inputs, **explicit)
    torch.testing.assert_close(by_vector.logits, by_id.logits, rtol=0, atol=0)
    torch.testing.assert_close(by_vector.loss, by_id.loss, rtol=0, atol=0)
    plain = {name: inputs[name] for name in ("input_ids", "attention_mask", "task_ids", "whole_word_ids")}
    trie = model.item_trie(tokenizer)
    candidates = torch.tensor([[4, 12, 7], [1, 2, 3]])
    torch.testing.assert_close(
        model.score_candidates(**plain, **explicit, candidates=candidates, item_trie=trie),
        model.score_candidates(**plain, user_ids=user_ids, candidates=candidates, item_trie=trie), rtol=0, atol=0,
    )
    ranked_by_vector = model.recommend(**plain, **explicit, item_trie=trie, top_k=3, num_beams=4)
    ranked_by_id = model.recommend(**plain, user_ids=user_ids, item_trie=trie, top_k=3, num_beams=4)
    assert torch.equal(ranked_by_vector[0], ranked_by_id[0])
    generated = model.generate(**plain, **explicit, max_new_tokens=4, num_beams=2)
    assert torch.equal(generated, model.generate(**plain, user_ids=user_ids, max_new_tokens=4, num_beams=2))


def test_a_folded_in_user_gets_its_own_prompt(inputs):
    """The collaborative prompt of a folded-in user differs from the unknown user's (row 0) and follows its items."""
    model = fold_in_model()
    vectors, neighbors = model.fold_in_users([[1, 2, 3], [20, 21, 22, 23]])
    prompt = model.collaborative_prompt(None, user_embeddings=vectors, user_neighbors=neighbors)[0]
    unknown = model.collaborative_prompt(torch.tensor([0, 0]))[0]
    assert not torch.allclose(prompt, unknown)
    assert not torch.allclose(prompt[0], prompt[1])
    assert UNKNOWN_USER_TEXT == "user_0"


# -- the checkpoint ----------------------------------------------------------------------------------------------


def test_item_factors_round_trip_and_old_checkpoints_still_load(tmp_path):
    model = fold_in_model()
    model.set_item_factors(model.item_factors, regularization=0.02, negatives_per_positive=2)
    model.save_pretrained(tmp_path / "with")
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "with" / "model.safetensors")["item_factors"], model.item_factors)
    loaded = PeaPODForConditionalGeneration.from_pretrained(tmp_path / "with")
    assert torch.equal(loaded.item_factors, model.item_factors)
    assert (loaded.config.fold_in_regularization, loaded.config.fold_in_negatives_per_positive) == (0.02, 2)
    torch.testing.assert_close(loaded.fold_in_users([[1, 5, 9]]), model.fold_in_users([[1, 5, 9]]), rtol=0, atol=0)

    plain = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=NUM_USERS, num_items=NUM_ITEMS, user_embedding_dim=D_USER, num_neighbors=NUM_NEIGHBORS
    )
    plain.set_user_table(torch.randn(NUM_USERS + 1, D_USER))
    plain.save_pretrained(tmp_path / "without")  # a checkpoint from before fold-in: no item factors
    loaded = PeaPODForConditionalGeneration.from_pretrained(tmp_path / "without")
    assert not loaded.has_item_factors and "item_factors" not in loaded.state_dict()
    with pytest.raises(PeaPODInputError, match="keeps no CF item factors"):
        loaded.fold_in_users([[1, 2]])


def test_checkpoint_that_lost_its_item_factors_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    fold_in_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["item_factors"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PeaPODInputError, match="has no item_factors buffer .*set_item_factors"):
        PeaPODForConditionalGeneration.from_pretrained(tmp_path)


def test_build_model_keeps_the_prepared_pmf_item_factors(synthetic_prepared):
    from datasets_scripts.prepared import load_prepared
    from training.arguments import ModelArguments
    from training.factory import build_model

    prepared = load_prepared(synthetic_prepared, load_dataset=False)
    model = build_model(ModelArguments(base_model="random:tiny"), prepared)
    assert torch.equal(model.item_factors, prepared.item_embeddings)
    assert model.config.fold_in_regularization == prepared.config["pmf"]["lambda_reg"] == 1e-3
    assert model.config.fold_in_negatives_per_positive == 1
    vectors, neighbors = model.fold_in_users([prepared.histories[1][:-2]])
    assert vectors.shape == (1, 8) and neighbors.shape == (1, 3)


def test_build_model_keeps_no_item_factors_from_a_table_pmf_did_not_make(synthetic_prepared):
    """Fold-in solves PMF's objective: item factors of a BPR-made table (or one of unknown origin) are not kept."""
    from datasets_scripts.prepared import load_prepared
    from training.arguments import ModelArguments
    from training.factory import build_model

    prepared = load_prepared(synthetic_prepared, load_dataset=False)
    assert prepared.item_embeddings is not None
    prepared.config["neighbor_diagnostic"]["chosen"] = "bpr"
    model = build_model(ModelArguments(base_model="random:tiny"), prepared)
    assert not model.has_item_factors and model.config.fold_in_regularization is None
    with pytest.raises(PeaPODInputError, match="no CF item factors"):
        model.fold_in_users([prepared.histories[1][:-2]])


def _python_without_the_package() -> tuple[list[str], dict]:
    """A Python command and environment in which this package cannot be imported but its dependencies can.

    `-S` skips .pth files (the editable install of this package is one; so is a venv that borrows another's
    site-packages), so every directory on this interpreter's path except the repository goes on PYTHONPATH
    explicitly: a worktree venv whose dependencies come through a .pth file keeps them.
    """
    # transformers puts its remote-code modules cache on sys.path once some code was loaded from a folder: a fresh
    # process must not import another test's `transformers_modules` from it.
    excluded = {REPO_ROOT, Path(HF_MODULES_CACHE).resolve()}
    paths = [path for path in [*site.getsitepackages(), *sys.path] if path and os.path.isdir(path)
             and Path(path).resolve() not in excluded and not Path(path).name.startswith("__editable__")]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return [sys.executable, "-S"], env


def test_remote_code_folds_in_without_the_package(tmp_path, inputs):
    model = fold_in_model()
    folder = tmp_path / "hub_repo"
    model.save_pretrained(folder)
    vectors, neighbors = model.fold_in_users([[1, 2, 3], [7, 8]])
    torch.save({"inputs": inputs, "vectors": vectors, "neighbors": neighbors,
                "logits": model(**inputs, user_embeddings=vectors, user_neighbors=neighbors).logits},
               tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import importlib.util, torch
        assert importlib.util.find_spec("modeling_peapod") is None, "the package must not be importable here"
        from transformers import AutoModelForSeq2SeqLM
        model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        vectors, neighbors = model.fold_in_users([[1, 2, 3], [7, 8]])
        assert torch.equal(vectors, expected["vectors"]) and torch.equal(neighbors, expected["neighbors"])
        logits = model(**expected["inputs"], user_embeddings=vectors, user_neighbors=neighbors).logits
        assert torch.equal(logits, expected["logits"])
        try:
            model.fold_in_users([[]])
        except ValueError as error:
            assert type(error).__name__ == "PeaPODInputError", type(error)
        else:
            raise AssertionError("an empty history was accepted")
        print("REMOTE-FOLD-IN-OK", type(model).__module__)
    """)
    command, env = _python_without_the_package()
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    isolated = tmp_path / "cwd"
    isolated.mkdir()
    result = subprocess.run([*command, "-c", script], cwd=isolated, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    if "the package must not be importable here" in result.stderr:
        pytest.skip("peapod-rec is installed (not editable) into site-packages: this isolation check needs a source "
                    "checkout or an editable install")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-FOLD-IN-OK transformers_modules" in result.stdout


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("histories", "message"),
    [
        ([], "histories is empty"),
        ([[1, 2], []], r"histories\[1\] is empty"),
        ([[0, 3]], r"contains item ids \[0\]; expected catalogue ids 1..num_items=30"),
        ([[3, 31, 99]], r"contains item ids \[31, 99\]"),
        ([[3, -1]], r"contains item ids \[-1\]"),
        ([[1.5]], r"contains 1.5 \(float\); expected integer item ids"),
        ([["3"]], "contains '3'"),
        ([[True]], r"contains True \(bool\)"),
        ([list(range(1, 31)) + [1]], "has 31 items but the catalogue has only num_items=30"),
        ([1, 2, 3], r"histories\[0\] is a int"),
        ("1 2 3", "histories must be a list"),
        (torch.tensor([[1, 2]]), "histories must be a list"),
    ],
)
def test_bad_histories_are_refused(histories, message):
    with pytest.raises(PeaPODInputError, match=message):
        fold_in_model().fold_in_users(histories)


def test_numpy_and_tensor_ids_are_accepted():
    model = fold_in_model()
    expected = model.fold_in_users([[2, 4]])
    torch.testing.assert_close(model.fold_in_users([np.array([2, 4])]), expected)
    torch.testing.assert_close(model.fold_in_users([torch.tensor([2, 4])]), expected)
    torch.testing.assert_close(model.fold_in_users([[np.int64(2), 4]]), expected)


def test_models_without_item_factors_refuse_to_fold_in():
    with pytest.raises(PeaPODInputError, match="POD.* has no user table"):
        fold_in_model("none").fold_in_users([[1]])
    model = fold_in_model()
    with pytest.raises(PeaPODInputError, match="negatives='few'"):
        model.fold_in_users([[1]], negatives="few")
    with pytest.raises(PeaPODInputError, match=r"item_factors has shape \(30, 6\)"):
        model.set_item_factors(torch.randn(NUM_ITEMS, D_USER))
    with pytest.raises(PeaPODInputError, match="NaN"):
        model.set_item_factors(torch.full((NUM_ITEMS + 1, D_USER), float("nan")))


def test_bad_explicit_user_inputs_are_refused(inputs):
    model = fold_in_model()
    vectors, neighbors = model.fold_in_users([[1, 2], [3]])
    cases = [
        ({"user_ids": torch.tensor([1, 2]), "user_embeddings": vectors, "user_neighbors": neighbors}, "not both"),
        ({"user_embeddings": vectors}, "user_neighbors is required"),
        ({"user_neighbors": neighbors}, "without user_embeddings"),
        ({"user_embeddings": vectors[:1], "user_neighbors": neighbors[:1]}, r"shape \(2, 6\)"),
        ({"user_embeddings": vectors[:, :5], "user_neighbors": neighbors}, r"shape \(2, 6\)"),
        ({"user_embeddings": vectors.long(), "user_neighbors": neighbors}, "must be a float tensor"),
        ({"user_embeddings": vectors * float("inf"), "user_neighbors": neighbors}, "NaN or infinite"),
        ({"user_embeddings": vectors, "user_neighbors": neighbors[:, :3]}, r"shape \(2, 4\)"),
        ({"user_embeddings": vectors, "user_neighbors": neighbors.float()}, "must be an integer tensor"),
        ({"user_embeddings": vectors, "user_neighbors": neighbors + 100}, "user ids 0..num_users"),
        ({}, "user_ids is required"),
    ]
    for extra, message in cases:
        with pytest.raises(PeaPODInputError, match=message):
            model(**inputs, **extra)
    with pytest.raises(PeaPODInputError, match="POD"):
        fold_in_model("none")(**inputs, user_embeddings=vectors, user_neighbors=neighbors)


# -- held-out users (peapod-prepare --held_out_users) --------------------------------------------------------------


def test_held_out_users_are_absent_from_everything_the_models_learn(tmp_path, monkeypatch):
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"the T5 tokenizer is not at {TOKENIZER_DIR}")
    from datasets_scripts import user_embeddings
    from datasets_scripts.prepared import load_prepared, prepare
    from datasets_scripts.splits import take_first_users
    from datasets_scripts.synthetic import synthetic_data

    seen_by_pmf = {}
    train_pmf = user_embeddings.train_pmf

    def recording_train_pmf(histories, *args, **kwargs):
        seen_by_pmf.update(histories)
        return train_pmf(histories, *args, **kwargs)

    monkeypatch.setattr(user_embeddings, "train_pmf", recording_train_pmf)
    prepare(tmp_path / "prepared", synthetic=True, tokenizer=str(TOKENIZER_DIR), max_users=40, embedding_dim=8,
            num_neighbors=3, pmf_max_iter=3, held_out_users=0.2)
    prepared = load_prepared(tmp_path / "prepared")
    full = take_first_users(synthetic_data("default", seed=0), 40)  # what --max_users 40 keeps (ids compacted)
    by_name = {full.id2user[user]: full.histories[user] for user in full.histories}
    held_out = prepared.held_out_users
    names = {record["user"] for record in held_out}
    assert len(held_out) == 8 and prepared.num_users == 32
    assert names.isdisjoint(prepared.id2user.values())
    assert prepared.user_embeddings.shape[0] == 33
    # CF training saw exactly the kept users' training parts (renumbered 1..32), nothing of the held-out users.
    assert seen_by_pmf == {user: history[:-2] for user, history in prepared.histories.items()}
    assert sorted(prepared.histories.values()) == sorted(by_name[name] for name in by_name if name not in names)
    for split in prepared.dataset.values():
        assert set(split["user_id"]) <= set(range(1, 33))
    for record in held_out:
        history = by_name[record["user"]]
        assert record["train"] == history[:-2] and [record["validation"], record["test"]] == history[-2:]
        for name in ("negatives_validation", "negatives_test"):
            assert len(set(record[name])) == 99 and set(record[name]).isdisjoint(history)
    config = json.loads((tmp_path / "prepared" / "prepare_config.json").read_text())
    assert config["statistics"]["num_held_out_users"] == 8
    # Seeded: the same users again.
    prepare(tmp_path / "again", synthetic=True, tokenizer=str(TOKENIZER_DIR), max_users=40, embedding_dim=8,
            num_neighbors=3, pmf_max_iter=3, held_out_users=0.2)
    assert load_prepared(tmp_path / "again", load_dataset=False).held_out_users == held_out


def test_prepare_refuses_a_bad_held_out_fraction(tmp_path):
    done = subprocess.run(
        [console_script("peapod-prepare"), "--synthetic", "--output_dir", str(tmp_path / "out"),
         "--held_out_users", "1.5"], capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--held_out_users must be a fraction in [0, 1)" in done.stderr
    assert not (tmp_path / "out").exists()
