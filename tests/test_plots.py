"""Figures: a user's attention heatmap and the heads figure (paper's Figure 5)."""

import pytest
import torch
from PIL import Image

from modeling_peapod import PeaPODForConditionalGeneration
from training.plots import (
    explain_user,
    heads_figure,
    plot_user_attention,
    user_attention,
)


def test_attention_heatmap_and_cli(tmp_path):
    model = PeaPODForConditionalGeneration.from_shape("tiny", num_users=9, user_embedding_dim=4, num_neighbors=5)
    model.set_user_table(torch.randn(10, 4))
    weights, neighbors = user_attention(model.eval(), 3)
    assert weights.shape == (4, 5) and neighbors == model.user_neighbors[3].tolist()
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    path = plot_user_attention(model, 3, tmp_path / "user3.png")
    assert Image.open(path).size[0] > 100
    model.save_pretrained(tmp_path / "ckpt")
    assert explain_user(["--checkpoint", str(tmp_path / "ckpt"), "--user_id", "2", "--output",
                              str(tmp_path / "cli.png")]).exists()
    with pytest.raises(ValueError, match=r"user_id=10 is not in the model's user table \(1..9\)"):
        user_attention(model, 10)


def test_heads_figure(tmp_path):
    records = [{"heads": h, "results": {"sequential": {"ndcg@10": 0.1 * h + s / 100}}} for h in (0, 1, 2, 4)
               for s in range(3)]
    assert heads_figure(records, "ndcg@10", tmp_path / "fig5.png").exists()
    with pytest.raises(ValueError, match="no result has the metric 'bleu4'"):
        heads_figure(records, "bleu4", tmp_path / "none.png")
