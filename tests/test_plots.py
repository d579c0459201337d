"""Figures: a user's attention heatmap and the heads figure (paper's Figure 5), checked by what they draw."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_peapod import PeaPODForConditionalGeneration
from training import figures as plots
from training.figures import (
    explain_user,
    heads_figure,
    plot_user_attention,
    user_attention,
)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the module saves, captured (still saved) so a test can read what was drawn."""
    figures = []
    save = plots._save_figure

    def capture(figure, output):
        figures.append(figure)
        return save(figure, output)

    monkeypatch.setattr(plots, "_save_figure", capture)
    return figures


def test_attention_heatmap_draws_the_users_attention_weights(tmp_path, drawn, capsys):
    model = PeaPODForConditionalGeneration.from_shape("tiny", num_users=9, user_embedding_dim=4, num_neighbors=5)
    model.set_user_table(torch.randn(10, 4))
    for parameter in model.prompt_encoder.parameters():  # attention far from uniform, so users differ visibly
        torch.nn.init.normal_(parameter, std=1.0)
    weights, neighbors = user_attention(model.eval(), 3)
    assert weights.shape == (4, 5) and neighbors == model.user_neighbors[3].tolist()
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    _, expected = model.collaborative_prompt(torch.tensor([3]), output_attentions=True)
    torch.testing.assert_close(weights, expected[0])

    path = plot_user_attention(model, 3, tmp_path / "user3.png")
    axis = drawn[-1].axes[0]
    np.testing.assert_array_equal(axis.images[0].get_array(), weights.numpy())  # the heatmap's data
    assert [label.get_text() for label in axis.get_xticklabels()] == [str(n) for n in neighbors]
    assert [label.get_text() for label in axis.get_yticklabels()] == [f"head {h}" for h in range(1, 5)]
    assert axis.get_title().startswith("user 3:")
    other = plot_user_attention(model, 7, tmp_path / "user7.png")
    pixels = [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (path, other)]
    assert pixels[0].shape == pixels[1].shape and np.abs(pixels[0] - pixels[1]).sum() > 0  # other weights, other image

    model.save_pretrained(tmp_path / "ckpt")
    capsys.readouterr()
    written = explain_user(["--checkpoint", str(tmp_path / "ckpt"), "--user_id", "3", "--output",
                                 str(tmp_path / "cli.png")])
    printed = json.loads(capsys.readouterr().out)
    assert printed["neighbors"] == neighbors and printed["png"] == str(written)
    # The reloaded weights are bitwise equal but lie at other memory alignments (safetensors' buffer), so float32
    # products may differ in the last bits.
    np.testing.assert_allclose(printed["attention"], weights.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(Image.open(written)), np.asarray(Image.open(path)))  # same figure
    with pytest.raises(ValueError, match=r"user_id=10 is not in the model's user table \(1..9\)"):
        user_attention(model, 10)


def test_heads_figure_plots_the_mean_and_spread_over_seeds(tmp_path, drawn):
    records = [{"heads": h, "results": {"sequential": {"ndcg@10": 0.1 * h + s / 100}, "topn": {"hr@10": 0.5}}}
               for h in (0, 1, 2, 4) for s in range(3)]
    assert heads_figure(records, "ndcg@10", tmp_path / "fig5.png").exists()
    axis = drawn[-1].axes[0]
    (line,) = axis.get_lines()[:1]  # one task has the metric: one errorbar series
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["sequential"]
    np.testing.assert_array_equal(np.asarray(line.get_xdata(), dtype=float), [0, 1, 2, 4])
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [0.1 * h + 0.01 for h in (0, 1, 2, 4)])  # mean of s/100, s=0..2
    assert axis.get_xlabel() == "attention heads H (0 = MLP)" and axis.get_ylabel() == "ndcg@10"
    with pytest.raises(ValueError, match="no result has the metric 'bleu4'"):
        heads_figure(records, "bleu4", tmp_path / "none.png")
