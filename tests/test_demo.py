"""The README demo runs end to end (shortened: a few steps, a few users), and what it shows comes from the model."""

import json

import torch
from conftest import SHARED


def test_demo_end_to_end(tmp_path, tokenizer, capsys):
    from transformers import AutoModelForSeq2SeqLM

    from datasets_scripts import load_prepared
    from datasets_scripts.templates import EVAL_TEMPLATES, render
    from modeling_peapod import compute_whole_word_ids
    from training.collator import PeaPODDataCollator
    from training.demo import run_demo

    result = run_demo(["--output_dir", str(tmp_path / "demo"), "--shared_dir", str(SHARED), "--max_steps", "2",
                   "--batch_size", "4", "--eval_users", "3", "--num_beams", "10", "--embedding_dim", "8"])
    printed = capsys.readouterr().out
    assert "[5/5]" in printed and "| PeaPOD (mha, tiny) | sequential (beam) |" in printed
    assert "Summary: top-n HR@10" in printed and "vs popularity" in printed
    model_dir = tmp_path / "demo" / "model"
    assert (model_dir / "README.md").read_text().count("| sequential | hr@10 |") == 1
    saved = json.loads((tmp_path / "demo" / "demo_result.json").read_text())
    assert saved["report"]["users"]["evaluated_per_task"]["sequential"] == 3
    assert saved["example"] == result["example"]

    # The example: user 1's held-out item, 10 distinct catalogue items, and what the saved model itself produces
    # for the demo's prompts (rebuilt here from the templates, the tokenizer and the collator).
    prepared = load_prepared(tmp_path / "demo" / "prepared-synthetic")
    example = result["example"]
    history, target = prepared.histories[1][:-1], prepared.histories[1][-1]
    assert example["target"] == target
    top10 = example["top10"]
    assert len(top10) == len(set(top10)) == 10 and all(1 <= item <= prepared.num_items for item in top10)
    assert example["prompt"] == render(EVAL_TEMPLATES["sequential"], 1, history=history)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=True).eval()

    def encode(source, task):
        ids = tokenizer(source).input_ids
        row = {"input_ids": ids, "whole_word_ids": compute_whole_word_ids([ids], tokenizer)[0], "user_id": 1,
               "task_id": model.config.tasks.index(task), "labels": [tokenizer.eos_token_id]}
        batch = PeaPODDataCollator(tokenizer)([row])
        batch.pop("labels")
        return batch

    with torch.no_grad():
        items, _ = model.recommend(**encode(example["prompt"], "sequential"), tokenizer=tokenizer, top_k=10,
                                   num_beams=20)
        assert items[0].tolist() == top10
        source = render(EVAL_TEMPLATES["explanation"], 1, item=target)
        generated = model.generate(**encode(source, "explanation"), num_beams=4, max_new_tokens=40)
    explanation = tokenizer.decode(generated[0], skip_special_tokens=True)
    assert example["explanation"] == explanation
    assert generated.shape[1] > 2 and explanation.strip()  # the model wrote something, not just EOS
    assert f"-> {explanation}" in printed and f"top-10: {top10}" in printed
