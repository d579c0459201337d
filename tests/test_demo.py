"""The README demo runs end to end (shortened: a few steps, a few users)."""

import json

from conftest import SHARED


def test_demo_end_to_end(tmp_path, tokenizer, capsys):
    from training.demo import main

    result = main(["--output_dir", str(tmp_path / "demo"), "--shared_dir", str(SHARED), "--max_steps", "2",
                   "--batch_size", "4", "--eval_users", "3", "--num_beams", "10", "--embedding_dim", "8"])
    printed = capsys.readouterr().out
    assert "[5/5]" in printed and "| PeaPOD (mha, tiny) | sequential (beam) |" in printed
    assert "Summary: top-n HR@10" in printed and "vs popularity" in printed
    assert len(result["example"]["top10"]) == 10 and len(set(result["example"]["top10"])) == 10
    assert isinstance(result["example"]["explanation"], str)
    model_dir = tmp_path / "demo" / "model"
    assert (model_dir / "README.md").read_text().count("| sequential | hr@10 |") == 1
    saved = json.loads((tmp_path / "demo" / "demo_result.json").read_text())
    assert saved["report"]["users"]["evaluated_per_task"]["sequential"] == 3
