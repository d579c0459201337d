"""Model cards and the Hub upload path (intercepted: no network)."""

import pytest
import torch
from huggingface_hub import ModelCard

from modeling_peapod import PeaPODForConditionalGeneration
from training.publishing.hub import check_hub_folder, push_folder_to_hub
from training.publishing.model_card import (
    TrainingSummary,
    add_evaluation_to_card,
    write_model_card,
)


@pytest.fixture
def checkpoint(tmp_path):
    model = PeaPODForConditionalGeneration.from_shape("tiny", num_users=6, num_items=9, user_embedding_dim=4,
                                                      num_neighbors=2)
    model.set_user_table(torch.randn(7, 4))
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_card_metadata_and_body(checkpoint):
    model, folder = checkpoint
    summary = TrainingSummary(dataset_name="beauty", dataset_description="Amazon Beauty (P5 ids)", seed=7,
                              base_shape="tiny", results={"sequential": {"hr@10": 0.25, "ndcg@10": 0.125}},
                              repo_id="someone/peapod-beauty", example_user=3, example_history=[4, 5])
    write_model_card(folder, model.config, summary)
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
    assert "custom_code" in data["tags"] and data["datasets"] == ["beauty"]
    results = data["model-index"][0]["results"]
    values = {metric["type"]: metric["value"] for result in results for metric in result["metrics"]}
    assert values == {"hr@10": 0.25, "ndcg@10": 0.125}
    body = card.text
    assert 'from_pretrained("someone/peapod-beauty", trust_remote_code=True)' in body
    assert "| sequential | hr@10 | 0.2500 |" in body and "| seed | 7 |" in body
    assert "random initialisation of the tiny shape" in body and "No pretrained T5 weights" in body
    assert "user_3" in body and "item_5" in body
    assert not list(folder.glob(".README.*"))  # the temporary file was renamed away


def test_card_without_results_has_no_model_index(checkpoint):
    model, folder = checkpoint
    write_model_card(folder, model.config, TrainingSummary(base_model="t5-small"))
    card = ModelCard.load(folder / "README.md")
    assert "model-index" not in card.data.to_dict() and card.data.base_model == "t5-small"
    assert "No pretrained T5 weights" not in card.text


def test_evaluation_goes_into_the_card_once_per_split(checkpoint, tmp_path):
    model, folder = checkpoint
    summary = TrainingSummary(dataset_name="beauty", results={"sequential": {"hr@10": 0.25}}, eval_split="validation")
    write_model_card(folder, model.config, summary)
    report = {"split": "test", "results": {"topn_beam": {"hr@10": 0.5, "num_users": 4}}}
    add_evaluation_to_card(folder, report, "first run")
    report["results"]["topn_beam"]["hr@10"] = 0.75
    add_evaluation_to_card(folder, report, "second run")
    card = ModelCard.load(folder / "README.md")
    splits = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert splits == {("validation", "hr@10"): 0.25, ("test", "hr@10"): 0.75}  # the test split's entry replaced
    text = card.text
    assert text.count("## Evaluation (test split)") == 1 and "second run" in text and "first run" not in text
    assert "| topn_beam | hr@10 | 0.7500 |" in text and "num_users" not in text.split("## Evaluation (test")[1]
    assert text.index("## Evaluation (test split)") < text.index("## Use")  # before the usage section
    assert "## Evaluation (validation split)" in text  # the training-time section stays
    with pytest.raises(FileNotFoundError, match="README.md does not exist: train with peapod-train"):
        add_evaluation_to_card(tmp_path, report, "x")


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return "https://huggingface.co/someone/peapod/commit/abc"


def test_push_uploads_the_complete_folder(checkpoint):
    model, folder = checkpoint
    with pytest.raises(ValueError, match=r"missing \['README.md'\]"):
        check_hub_folder(folder)
    write_model_card(folder, model.config, TrainingSummary())
    (folder / "optimizer.pt").write_bytes(b"state")
    files = check_hub_folder(folder)
    assert {"config.json", "modeling_peapod.py", "configuration_peapod.py", "model.safetensors",
            "README.md"} <= set(files)
    assert "optimizer.pt" not in files
    api = RecordingApi()
    url = push_folder_to_hub(folder, "someone/peapod", private=True, api=api)
    assert url.endswith("/commit/abc")
    (name, create), (name2, upload) = api.calls
    assert name == "create_repo" and create["repo_id"] == "someone/peapod" and create["private"] is True
    assert name2 == "upload_folder" and upload["folder_path"] == str(folder) and "optimizer.pt" in upload[
        "ignore_patterns"]


def test_model_index_has_one_result_per_task_and_round_trips_through_the_hub_parser(checkpoint):
    from huggingface_hub.repocard_data import model_index_to_eval_results

    model, folder = checkpoint
    ranking = {"hr@1": 0.1, "hr@5": 0.2, "ndcg@5": 0.15, "hr@10": 0.3, "ndcg@10": 0.2, "num_users": 9}
    results = {
        "sequential": {**ranking, "hr@10": 0.31},
        "topn_beam": {**ranking, "hr@10": 0.52},
        "topn_likelihood": {**ranking, "hr@10": 0.73},
        "explanation": {"bleu4": 1.5, "rouge1": 20.0, "rouge2": 3.0, "rougeL": 15.0, "rouge1_nmt": 21.0,
                        "rouge2_nmt": 3.5, "rougeL_nmt": 16.0, "num_samples": 9},
    }
    write_model_card(folder, model.config, TrainingSummary(dataset_name="beauty", results=results))
    model_index = ModelCard.load(folder / "README.md").data.to_dict()["model-index"]
    entries = model_index[0]["results"]
    by_task = {entry["task"]["type"]: entry for entry in entries}
    assert len(entries) == len(by_task) == 4  # one result per task and per top-n ranking method
    for entry in entries:
        names = [metric["name"] for metric in entry["metrics"]]
        assert len(names) == len(set(names)), names  # no metric name twice within a result
    assert "HR@10" in [m["name"] for m in by_task["top-n-recommendation-likelihood"]["metrics"]]
    assert "ROUGE-1 F1 (tensorflow/nmt variant)" in [m["name"] for m in by_task["text2text-generation"]["metrics"]]
    # huggingface_hub's own parser puts every value back under the task it belongs to.
    name, parsed = model_index_to_eval_results(model_index)
    assert name == "PeaPOD (mha) on beauty"
    values = {(result.task_type, result.metric_type): result.metric_value for result in parsed}
    assert values[("sequential-recommendation", "hr@10")] == 0.31
    assert values[("top-n-recommendation-beam-search", "hr@10")] == 0.52
    assert values[("top-n-recommendation-likelihood", "hr@10")] == 0.73
    assert values[("text2text-generation", "rouge1")] == 20.0 and values[("text2text-generation", "rouge1_nmt")] == 21.0
    assert len(values) == len(parsed) == 3 * 5 + 7  # nothing merged away or duplicated
    assert not any(metric.startswith("num_") for _, metric in values)
