"""The transformers pipeline of modeling_peapod.py (section 5): saved into the checkpoint, loaded from it with
`pipeline(model=folder, trust_remote_code=True)`, ranking exactly as the evaluation ranks, and refusing bad input."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from configuration_peapod import PeaPODInputError
from modeling_peapod import (
    PIPELINE_TASK,
    UNKNOWN_USER_TEXT,
    PeaPODForConditionalGeneration,
    PeaPODRecommendationPipeline,
    custom_pipelines_entry,
    evaluation_prompt,
)

NUM_USERS, NUM_ITEMS, D_USER = 12, 40, 8


def tiny_model(item_factors: bool = True, **fields) -> PeaPODForConditionalGeneration:
    """A tiny model with a random user table and (for fold-in) random CF item factors."""
    torch.manual_seed(0)
    fields = {"num_users": NUM_USERS, "num_items": NUM_ITEMS, "user_embedding_dim": D_USER, "num_neighbors": 4,
              "dropout_rate": 0.0, **fields}
    model = PeaPODForConditionalGeneration.from_shape("tiny", **fields)
    if model.has_collaborative_prompt:
        model.set_user_table(torch.randn(NUM_USERS + 1, D_USER))
        if item_factors:
            model.set_item_factors(torch.randn(NUM_ITEMS + 1, D_USER))
    return model.eval()


MODEL_INPUTS = ("input_ids", "attention_mask", "user_ids", "task_ids", "whole_word_ids")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def recommender(model, tokenizer):
    return PeaPODRecommendationPipeline(model=model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def checkpoint(model, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "checkpoint"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# -- the prompt is the evaluation's ---------------------------------------------------------------------------


def test_evaluation_prompt_is_the_prepared_datas_template():
    from datasets_scripts.templates import EVAL_TEMPLATES, render

    history = list(range(1, 31))  # longer than the 20 items a prompt lists
    for task in EVAL_TEMPLATES:
        kwargs = {"sequential": {"history": history}, "topn": {"candidates": [9, 3, 27]},
                  "explanation": {"item": 5}}[task]
        ours = {"item_id" if key == "item" else key: value for key, value in kwargs.items()}
        assert evaluation_prompt(task, 7, **ours) == render(EVAL_TEMPLATES[task], 7, **kwargs)
    assert "item_10," not in evaluation_prompt("sequential", 7, history=history)  # only the 20 most recent


def test_pipeline_reproduces_the_evaluation_rows_and_rankings(synthetic_prepared, tokenizer):
    """On a prepared folder: the pipeline's token ids are the dataset's rows, and its rankings are those of
    `evaluate_checkpoint` (recommend for sequential and top-n beam, score_candidates for top-n likelihood)."""
    from datasets_scripts import load_prepared
    from training.evaluation import evaluate_checkpoint

    prepared = load_prepared(synthetic_prepared)
    torch.manual_seed(0)
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=prepared.num_users, num_items=prepared.num_items, user_embedding_dim=8, num_neighbors=3,
        dropout_rate=0.0,
    ).eval()
    model.set_user_table(prepared.user_embeddings, prepared.user_neighbors)
    report = evaluate_checkpoint(model, tokenizer, prepared, tasks=("sequential", "topn"), max_users=3,
                                 num_beams=10, top_k=5, return_rankings=True, show_progress=False)
    recommender = PeaPODRecommendationPipeline(model=model, tokenizer=tokenizer, device="cpu", num_beams=10, top_k=5)
    for name, task in (("sequential", "sequential"), ("topn_beam", "topn"), ("topn_likelihood", "topn")):
        rankings = report["rankings"][name]
        assert len(rankings["user_ids"]) == 3
        rows = prepared.dataset[f"{task}_test"]
        for user, ranked in zip(rankings["user_ids"], rankings["ranked"]):
            row = rows[rows["user_id"].index(user)]
            request = {"user_id": user, "task": task}
            if task == "sequential":
                request["history"] = prepared.histories[user][:-1]  # the test prompt's history (SPEC §2)
            else:
                request["candidates"] = row["candidates"]
            inputs = recommender.preprocess(request)
            assert inputs["input_ids"][0].tolist() == row["input_ids"]
            assert inputs["whole_word_ids"][0].tolist() == row["whole_word_ids"]
            ranking = recommender(request, topn_ranking="beam" if name == "topn_beam" else "likelihood")
            assert [entry["item_id"] for entry in ranking] == ranked, (name, user)
            scores = [entry["score"] for entry in ranking]
            assert scores == sorted(scores, reverse=True) and all(score < 0 for score in scores)


def test_topn_scores_are_the_exact_candidate_log_likelihoods(recommender, model, tokenizer):
    candidates = [5, 33, 17, 1, 40]
    ranking = recommender({"user_id": 3, "task": "topn", "candidates": candidates}, top_k=3)
    inputs = recommender.preprocess({"user_id": 3, "task": "topn", "candidates": candidates})
    scores = model.score_candidates(
        **{name: inputs[name] for name in MODEL_INPUTS}, candidates=torch.tensor([candidates]), tokenizer=tokenizer,
    )[0]
    order = sorted(range(len(candidates)), key=lambda j: (-scores[j].item(), candidates[j]))[:3]
    assert ranking == [{"item_id": candidates[j], "score": pytest.approx(scores[j].item())} for j in order]
    assert len(recommender({"user_id": 3, "task": "topn", "candidates": candidates})) == 5  # top_k 10 > 5 candidates


def test_explanation_is_the_generated_text(recommender, model, tokenizer):
    request = {"user_id": 2, "task": "explanation", "item_id": 9}
    result = recommender(request, num_beams=3, max_new_tokens=6)
    inputs = recommender.preprocess(request)
    generated = model.generate(
        **{name: inputs[name] for name in MODEL_INPUTS}, num_beams=3, max_new_tokens=6, do_sample=False,
    )
    assert set(result) == {"explanation"} and result["explanation"]
    assert result["explanation"] == tokenizer.decode(generated[0], skip_special_tokens=True)


def test_a_list_of_requests_gives_a_list_of_results(recommender):
    requests = [{"user_id": 1, "task": "topn", "candidates": [4, 8]},
                {"user_id": 2, "task": "sequential", "history": [4, 8, 15]}]
    results = recommender(requests, top_k=2, num_beams=4)
    assert results == [recommender(request, top_k=2, num_beams=4) for request in requests]
    assert {entry["item_id"] for entry in results[0]} == {4, 8}
    assert all(1 <= entry["item_id"] <= NUM_ITEMS for entry in results[1]) and len(results[1]) == 2


# -- a new user: folded in from their history -----------------------------------------------------------------


def test_new_user_is_folded_in_from_the_history(recommender, model, tokenizer):
    history, candidates = [4, 8, 15, 16], [5, 33, 17, 1, 40]
    request = {"history": history, "task": "topn", "candidates": candidates}
    inputs = recommender.preprocess(request)
    text = tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert text == f"Recommend one item to {UNKNOWN_USER_TEXT} from the candidates: " + ", ".join(
        f"item_{item}" for item in candidates)  # the text claims no user the model has seen
    user_embeddings, user_neighbors = model.fold_in_users([history])
    model_inputs = {name: inputs[name] for name in MODEL_INPUTS if name != "user_ids"}
    scores = model.score_candidates(**model_inputs, candidates=torch.tensor([candidates]), tokenizer=tokenizer,
                                    user_embeddings=user_embeddings, user_neighbors=user_neighbors)[0]
    ranking = recommender(request)
    order = sorted(range(len(candidates)), key=lambda j: (-scores[j].item(), candidates[j]))
    assert ranking == [{"item_id": candidates[j], "score": pytest.approx(scores[j].item())} for j in order]
    unknown_row = recommender({"user_id": 0, "task": "topn", "candidates": candidates})  # same text, row 0
    assert [entry["score"] for entry in unknown_row] != [entry["score"] for entry in ranking]
    # The sequential prompt of a new user holds the history; explanations work the same way.
    items, _ = model.recommend(**{name: value for name, value in recommender.preprocess(
        {"history": history, "task": "sequential"}).items() if name in model_inputs}, tokenizer=tokenizer, top_k=3,
        num_beams=4, user_embeddings=user_embeddings, user_neighbors=user_neighbors)
    sequential = recommender({"history": history, "task": "sequential"}, top_k=3, num_beams=4)
    assert [entry["item_id"] for entry in sequential] == items[0].tolist()
    assert recommender({"history": history, "task": "explanation", "item_id": 5}, num_beams=2, max_new_tokens=4)


def test_new_user_needs_a_checkpoint_that_can_fold_in(tokenizer):
    without = PeaPODRecommendationPipeline(model=tiny_model(item_factors=False), tokenizer=tokenizer, device="cpu")
    with pytest.raises(PeaPODInputError, match="keeps no CF item factors"):
        without({"history": [4, 8], "task": "topn", "candidates": [1, 2]})
    assert without({"user_id": 3, "task": "topn", "candidates": [1, 2]})  # users of the table still work


def test_pod_serves_a_new_user_from_the_text_alone(tokenizer):
    pod = PeaPODRecommendationPipeline(model=tiny_model(prompt_encoder="none"), tokenizer=tokenizer, device="cpu")
    inputs = pod.preprocess({"task": "sequential", "history": [4, 8]})
    assert tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True).startswith(
        f"Given the purchase history of {UNKNOWN_USER_TEXT}:")
    assert len(pod({"task": "sequential", "history": [4, 8]}, top_k=3, num_beams=3)) == 3


# -- registration and saving ----------------------------------------------------------------------------------


def test_saved_config_registers_the_pipeline(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["custom_pipelines"] == custom_pipelines_entry() == {
        PIPELINE_TASK: {"impl": "modeling_peapod.PeaPODRecommendationPipeline", "pt": ["AutoModelForSeq2SeqLM"],
                        "type": "text"}}
    # What transformers' `Pipeline.save_pretrained` derives from the registration (pipelines/base.py).
    registered = PeaPODRecommendationPipeline._registered_impl[PIPELINE_TASK]
    assert custom_pipelines_entry()[PIPELINE_TASK] == {
        "impl": f"{registered['impl'].__module__.split('.')[-1]}.{registered['impl'].__name__}",
        "pt": [model_class.__name__ for model_class in registered["pt"]], "type": registered["type"]}
    assert (checkpoint / "modeling_peapod.py").is_file() and (checkpoint / "tokenizer.json").is_file()


def test_pipeline_loads_from_the_folder_and_by_task_name(checkpoint, model, tokenizer, recommender, tmp_path):
    from transformers import pipeline

    request = {"user_id": 3, "task": "topn", "candidates": [5, 33, 17]}
    expected = recommender(request)
    loaded = pipeline(model=str(checkpoint), trust_remote_code=True, device="cpu")
    assert type(loaded).__name__ == "PeaPODRecommendationPipeline" and loaded.task == PIPELINE_TASK
    assert type(loaded).__module__.startswith("transformers_modules")  # the folder's code, not this package
    assert loaded(request) == expected
    by_name = pipeline(PIPELINE_TASK, model=model, tokenizer=tokenizer, device="cpu")  # installed: registered
    assert type(by_name) is PeaPODRecommendationPipeline and by_name(request) == expected
    by_name.save_pretrained(tmp_path / "from-pipeline")  # transformers' own way of saving a custom pipeline
    saved = json.loads((tmp_path / "from-pipeline" / "config.json").read_text())
    assert saved["custom_pipelines"] == custom_pipelines_entry()
    assert pipeline(model=str(tmp_path / "from-pipeline"), trust_remote_code=True, device="cpu")(request) == expected


# -- bad input ------------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("recommend me something", "a PeaPOD pipeline input is a dict"),
    ({"user_id": 3, "task": "topn", "candidates": [1], "k": 3}, r"unknown input key\(s\) \['k'\]"),
    ({"user_id": 3, "candidates": [1]}, "task=None: expected one of"),
    ({"user_id": 3, "task": "rating", "candidates": [1]}, "task='rating': expected one of"),
    ({"user_id": NUM_USERS + 1, "task": "topn", "candidates": [1]}, "user_id=13 is not in the model's user table"),
    ({"user_id": -1, "task": "topn", "candidates": [1]}, "user_id=-1 is not in"),
    ({"user_id": 2.0, "task": "topn", "candidates": [1]}, "user_id must be an integer id, got 2.0"),
    ({"user_id": True, "task": "topn", "candidates": [1]}, "user_id must be an integer id"),
    ({"user_id": 3, "task": "topn"}, "task 'topn' needs 'candidates'"),
    ({"user_id": 3, "task": "topn", "candidates": []}, "candidates is empty"),
    ({"user_id": 3, "task": "topn", "candidates": [4, 4, 5]}, r"candidates repeats item id\(s\) \[4\]"),
    ({"user_id": 3, "task": "topn", "candidates": [4, NUM_ITEMS + 1]},
     r"candidates contains \[41\]; expected the catalogue's ids 1..40"),
    ({"user_id": 3, "task": "topn", "candidates": "item_4"}, "candidates must be a list of item ids, got str"),
    ({"user_id": 3, "task": "topn", "candidates": [4, "5"]}, r"candidates\[1\] must be an integer id"),
    ({"user_id": 3, "task": "sequential"}, "task 'sequential' needs 'history': the sequential prompt holds it"),
    ({"user_id": 3, "task": "sequential", "history": [0, 2]}, r"history contains \[0\]"),
    ({"user_id": 3, "task": "sequential", "history": [2], "candidates": [3]}, "unexpected 'candidates'"),
    ({"user_id": 3, "task": "topn", "candidates": [3], "history": [2]}, "unexpected 'history' for task 'topn'"),
    ({"user_id": 3, "task": "explanation"}, "task 'explanation' needs 'item_id'"),
    ({"user_id": 3, "task": "explanation", "item_id": 0}, r"item_id contains \[0\]"),
    ({"task": "topn", "candidates": [3]}, "task 'topn' needs 'history': a new user .* is folded in from it"),
    ({"task": "topn", "candidates": [3], "history": []}, "history is empty"),
    ({"task": "topn", "candidates": [3], "history": [2, NUM_ITEMS + 5]}, r"history contains \[45\]"),
    ({"task": "sequential", "history": list(range(1, NUM_ITEMS + 1)) * 2}, "has 80 items but the catalogue has only"),
]


@pytest.mark.parametrize(("request_", "message"), BAD_REQUESTS)
def test_bad_requests_are_refused_with_the_reason(recommender, request_, message):
    with pytest.raises(PeaPODInputError, match=message):
        recommender(request_)


@pytest.mark.parametrize(("parameters", "message"), [
    ({"top_k": 0}, "top_k=0 must be an integer >= 1"),
    ({"num_beams": 2.5}, "num_beams=2.5 must be an integer >= 1"),
    ({"topn_ranking": "random"}, "topn_ranking='random' must be one of"),
    ({"temperature": 0.5}, r"unknown pipeline parameter\(s\) \['temperature'\]"),
    ({"batch_size": 2}, "batch_size must be 1"),
    ({"top_k": 5, "num_beams": 3}, "top_k=5 needs at least as many beams, got num_beams=3"),
])
def test_bad_parameters_are_refused(recommender, parameters, message):
    with pytest.raises(PeaPODInputError, match=message):
        recommender({"user_id": 3, "task": "sequential", "history": [2, 3]}, **parameters)


# -- the bare environment: only torch and transformers --------------------------------------------------------

# Prepended to a script run in a fresh interpreter: forget this repository (its folder on sys.path and the import
# hooks of an editable install) so that only the checkpoint folder's own copy of the code can be used. `python -S`
# would do it too, but it also skips the .pth files through which some virtual environments find their packages.
FORGET_THE_PACKAGE = """
import importlib, importlib.util, sys
from pathlib import Path
sys.path[:] = [p for p in sys.path if not (Path(p or ".").resolve() / "modeling_peapod.py").exists()]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
importlib.invalidate_caches()
if importlib.util.find_spec("modeling_peapod") is not None:
    sys.exit("SKIP: the package is installed (not editable) into site-packages")
"""


def run_without_the_package(script: str, tmp_path) -> subprocess.CompletedProcess:
    isolated = tmp_path / "cwd"
    isolated.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-c", FORGET_THE_PACKAGE + textwrap.dedent(script)], cwd=isolated,
                            check=False, env=env, capture_output=True, text=True, timeout=300)
    if "SKIP: the package is installed" in result.stderr:
        pytest.skip("peapod-rec is installed (not editable) into site-packages; this isolation check needs a source "
                    "checkout or an editable install")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_pipeline_in_a_process_without_the_package(checkpoint, recommender, tmp_path):
    requests = [{"user_id": 3, "task": "topn", "candidates": [5, 33, 17, 1]},
                {"user_id": 3, "task": "sequential", "history": [5, 33]},
                {"history": [5, 33, 2], "task": "topn", "candidates": [5, 33, 17, 1]},  # a new user, folded in
                {"user_id": 4, "task": "explanation", "item_id": 17}]
    parameters = {"top_k": 3, "num_beams": 4, "max_new_tokens": 5}
    (tmp_path / "expected.json").write_text(json.dumps([recommender(request, **parameters) for request in requests]))
    result = run_without_the_package(f"""
        import json
        from transformers import pipeline
        recommender = pipeline(model={str(checkpoint)!r}, trust_remote_code=True, device="cpu")
        results = [recommender(request, **{parameters!r}) for request in {requests!r}]
        expected = json.load(open({str(tmp_path / 'expected.json')!r}))
        for got, want in zip(results[:3], expected[:3]):
            assert [e["item_id"] for e in got] == [e["item_id"] for e in want], (got, want)
            assert all(abs(g["score"] - w["score"]) < 1e-4 for g, w in zip(got, want)), (got, want)
        assert results[3] == expected[3], (results[3], expected[3])
        try:
            recommender({{"user_id": 3, "task": "topn", "candidates": [5, 5]}})
        except ValueError as error:
            assert type(error).__name__ == "PeaPODInputError" and "repeats" in str(error), error
        else:
            raise AssertionError("a repeated candidate was accepted")
        print("PIPELINE-OK", type(recommender).__module__)
    """, tmp_path)
    assert "PIPELINE-OK transformers_modules" in result.stdout


def test_hub_upload_refuses_a_folder_without_the_pipeline(checkpoint, model, tmp_path):
    import shutil

    from training.publishing.hub import check_hub_folder
    from training.publishing.model_card import TrainingSummary, write_model_card

    folder = tmp_path / "upload"
    shutil.copytree(checkpoint, folder)
    write_model_card(folder, model.config, TrainingSummary())
    assert {"config.json", "modeling_peapod.py", "tokenizer.json"} <= set(check_hub_folder(folder))
    config = json.loads((folder / "config.json").read_text())
    del config["custom_pipelines"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PeaPODInputError, match="registers no 'peapod-recommendation' pipeline"):
        check_hub_folder(folder)


def test_model_card_pipeline_example_runs(checkpoint, model, tmp_path):
    import re
    import shutil

    from training.publishing.model_card import TrainingSummary, write_model_card

    folder = tmp_path / "card"
    shutil.copytree(checkpoint, folder)
    write_model_card(folder, model.config, TrainingSummary(repo_id=str(folder), example_user=3,
                                                           example_history=[4, 5]))
    first_block = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), flags=re.DOTALL)[1]
    assert "pipeline(" in first_block and '"history": [4, 5]' in first_block and '"item_id": 5}' in first_block
    assert '{"history": [4, 5], "task": "topn"' in first_block  # the checkpoint can fold in new users
    namespace: dict = {}
    exec(compile(first_block, "model card", "exec"), namespace)  # noqa: S102 (running the documented example)
    assert type(namespace["recommender"]).__name__ == "PeaPODRecommendationPipeline"
