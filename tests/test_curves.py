"""experiments/curves.py: the bootstrap intervals beside its hit rates (the shuffle drop's paired over users) and
the figure's panels (one per metric some row measured)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import curves


def test_intervals_are_added_and_the_shuffle_drop_is_paired_over_users():
    as_is = [1, 0] * 50  # HR 0.5
    point = {"topn_hr@10": 0.5, "topn_hits": as_is, "sequential_hits": [0] * 100,
             "permuted": {"topn_hits": list(as_is)}, "topn_shuffle_drop": 0.0}
    curves.add_intervals(point)
    low, high = point["topn_hr@10_ci"]
    assert low < 0.5 < high and high - low > 0.1  # 100 users: about +-0.1
    assert point["permuted"]["topn_hr@10_ci"] == point["topn_hr@10_ci"]  # the same resamples
    # Same hits per user as is and permuted: the paired drop is exactly 0, although both intervals are wide.
    assert point["topn_shuffle_drop_ci"] == [0.0, 0.0]
    assert point["sequential_hr@10_ci"] == [0.0, 0.0]
    point = {"topn_hits": [1] * 30 + [0] * 70, "permuted": {"topn_hits": [0] * 100}}
    curves.add_intervals(point)
    assert 0.2 < point["topn_shuffle_drop_ci"][0] < 0.3 < point["topn_shuffle_drop_ci"][1] < 0.4


def test_plot_draws_a_panel_per_measured_metric(tmp_path):
    pytest.importorskip("matplotlib")
    row = {"label": "PeaPOD", "points": [{"step": 100, "topn_hr@10": 0.1, "topn_ndcg@10": 0.05},
                                         {"step": 200, "topn_hr@10": 0.2, "topn_ndcg@10": 0.1,
                                          "explanation_item_feature_share": 0.4}]}
    (tmp_path / "peapod.json").write_text(json.dumps(row))
    (tmp_path / "baselines.json").write_text(json.dumps({"popularity": {"topn": {"hr@10": 0.08}}}))
    figure = curves.plot(tmp_path)
    assert figure == tmp_path / "curves.png" and figure.stat().st_size > 0
    import matplotlib.image

    height, width = matplotlib.image.imread(figure).shape[:2]
    assert width / height == pytest.approx(3 * 5 / 4, rel=0.05)  # 3 panels: HR, NDCG, feature share


def test_table_lists_each_row_and_step_with_intervals_then_the_baselines(tmp_path):
    point = {"step": 900, "topn_hr@10": 0.25, "topn_hr@10_ci": [0.2, 0.3], "topn_ndcg@10": 0.12,
             "topn_hits": [1, 0, 0, 0], "permuted": {"topn_hr@10": 0.1, "topn_hr@10_ci": [0.05, 0.15]},
             "topn_shuffle_drop": 0.15, "topn_shuffle_drop_ci": [0.1, 0.2]}
    (tmp_path / "peapod-mha.json").write_text(json.dumps({"label": "PeaPOD (mha) [mha+x=1]", "points": [point]}))
    (tmp_path / "pod.json").write_text(json.dumps({"label": "POD", "points": [
        {"step": 900, "topn_hr@10": 0.1, "topn_hits": [0, 1, 0, 0]}]}))
    (tmp_path / "baselines.json").write_text(json.dumps({"pmf": {"topn": {"hr@10": 0.76, "num_users": 4}}}))
    lines = curves.markdown_table(tmp_path).splitlines()
    assert len(lines) == 2 + 2 + 1
    # PeaPOD hits user 1, POD user 2: the paired difference is 0 on average, its interval spans both signs.
    assert lines[2].startswith("| PeaPOD (mha) (`peapod-mha`) | 900 | 4 | 0.250 [0.200, 0.300] | 0.100 [0.050, 0.150] "
                               "| 0.150 [0.100, 0.200] | 0.000 [-0.")
    assert lines[2].endswith("| 0.120 | – |")
    assert lines[3].startswith("| POD (`pod`) | 900 | 4 | 0.100 | – | – | – |")
    assert lines[4].startswith("| pmf | – | 4 | 0.760 |")


def test_join_makes_one_curve_of_a_run_and_its_continuation(tmp_path):
    pytest.importorskip("matplotlib")
    first = {"label": "PeaPOD", "prepared": "syn", "points": [{"step": 300, "topn_hr@10": 0.1},
                                                              {"step": 600, "topn_hr@10": 0.2}]}
    continued = {"label": "continued", "points": [{"step": 300, "topn_hr@10": 0.3}]}
    (tmp_path / "first.json").write_text(json.dumps(first))
    (tmp_path / "continued.json").write_text(json.dumps(continued))
    output = tmp_path / "joined"
    curves.join_rows([str(tmp_path / "first.json"), f"{tmp_path / 'continued.json'}:600"], output, "whole")
    joined = json.loads((output / "whole.json").read_text())
    assert [(p["step"], p["topn_hr@10"]) for p in joined["points"]] == [(300, 0.1), (600, 0.2), (900, 0.3)]
    assert joined["label"] == "PeaPOD" and joined["max_steps"] == 900 and (output / "curves.png").exists()
    with pytest.raises(SystemExit, match="share steps"):  # a forgotten offset
        curves.join_rows([str(tmp_path / "first.json"), str(tmp_path / "first.json")], output, "whole")


def test_sequential_likelihood_ranks_the_whole_catalogue_by_exact_log_likelihood(synthetic_prepared, tokenizer):
    """`_loss_and_topn(..., sequential_likelihood=True)` (curves.py --sequential_likelihood): a user's hit is whether
    the test item is among the 10 catalogue items of highest log p(id + EOS | prompt), computed here one forward
    pass per item with labels, as a user of transformers would."""
    import torch

    from datasets_scripts import load_prepared
    from modeling_peapod import PeaPODForConditionalGeneration
    from training.diagnostics import _loss_and_topn

    prepared = load_prepared(synthetic_prepared)
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=prepared.num_users, num_items=prepared.num_items,
        user_embedding_dim=prepared.user_embeddings.shape[1], num_neighbors=prepared.user_neighbors.shape[1])
    model.set_user_table(prepared.user_embeddings, prepared.user_neighbors)
    model.eval()
    result = _loss_and_topn(model, tokenizer, prepared, "test", 4, 2, sequential_likelihood=True)
    rows = prepared.dataset["sequential_test"].select(range(len(result["sequential_hits"])))
    items = list(range(1, prepared.num_items + 1))
    labels = tokenizer([str(item) for item in items], padding=True, return_tensors="pt").input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    expected = []
    for index, row in enumerate(rows):
        repeat = len(items)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row["input_ids"]] * repeat),
                           whole_word_ids=torch.tensor([row["whole_word_ids"]] * repeat),
                           user_ids=torch.tensor([row["user_id"]] * repeat),
                           task_ids=torch.tensor([row["task_id"]] * repeat), labels=labels).logits
        token_logp = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                                         reduction="none")
        torch.testing.assert_close(result["_sequential_scores"][index], token_logp.sum(1), atol=1e-4, rtol=1e-4)
        top10 = [items[i] for i in token_logp.sum(1).topk(10).indices]
        expected.append(int(row["item_id"] in top10))
    assert result["sequential_hits"] == expected
    assert result["sequential_hr@10"] == sum(expected) / len(expected)
    assert result["_sequential_scores"].shape == (len(expected), prepared.num_items) and len(expected) == 4
