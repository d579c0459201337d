"""The core model: prompt encoder against the paper's equations, gradients, neighbours, decoding, save/load."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from configuration_peapod import PeaPODConfig
from modeling_peapod import (
    CollaborativePromptEncoder,
    PeaPODForConditionalGeneration,
    build_user_neighbors,
    compute_whole_word_ids,
    whole_word_ids_from_tokens,
)

NUM_USERS, NUM_ITEMS, D_USER = 12, 40, 8


def tiny_model(**fields) -> PeaPODForConditionalGeneration:
    fields = {"num_users": NUM_USERS, "num_items": NUM_ITEMS, "user_embedding_dim": D_USER, "num_neighbors": 4,
              "dropout_rate": 0.0, **fields}
    model = PeaPODForConditionalGeneration.from_shape("tiny", **fields)
    if model.has_collaborative_prompt:
        model.set_user_table(torch.randn(NUM_USERS + 1, D_USER))
    return model


def make_batch(tokenizer, sources, targets, user_ids, task_id=0):
    encoded = tokenizer(sources, return_tensors="pt", padding=True)
    labels = tokenizer(targets, return_tensors="pt", padding=True).input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    return {
        "input_ids": encoded.input_ids,
        "attention_mask": encoded.attention_mask,
        "whole_word_ids": compute_whole_word_ids(encoded.input_ids, tokenizer),
        "user_ids": torch.tensor(user_ids),
        "task_ids": torch.full((len(sources),), task_id),
        "labels": labels,
    }


@pytest.fixture
def batch(tokenizer):
    return make_batch(
        tokenizer,
        ["user_3 bought item_4 , item_17 and item_9 . What next?", "Recommend to user_5 : item_12"],
        ["12", "7"],
        [3, 5],
    )


# -- whole-word ids ---------------------------------------------------------------------------------------


def test_whole_word_ids_number_id_spans_in_order(tokenizer):
    ids = tokenizer("user_123 bought item_45, (item_1234) and a book.").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    whole = whole_word_ids_from_tokens(tokens)
    spans = {}
    for token, index in zip(tokens, whole):
        spans.setdefault(index, []).append(token)
    assert sorted(spans) == [0, 1, 2, 3]
    assert "".join(spans[1]).replace("▁", "") == "user_123"
    assert "".join(spans[2]).replace("▁", "") == "item_45"
    # After "(" SentencePiece glues the closing parenthesis to the last digits ("4)"): a piece that overlaps an
    # ID's characters belongs to its span.
    assert "".join(spans[3]).replace("▁", "") == "item_1234)"
    assert whole[-1] == 0  # EOS
    padded = compute_whole_word_ids(tokenizer(["item_1", "no ids here at all"], padding=True, return_tensors="pt")
                                    .input_ids, tokenizer)
    assert padded[1].eq(0).all() and padded[0].max() == 1 and padded[0, -1] == 0


# -- the collaborative prompt encoder against eqs. (1)-(9) written out ----------------------------------------


def reference_prompt(encoder: CollaborativePromptEncoder, u: torch.Tensor, s: torch.Tensor):
    """The paper's equations with plain tensor ops, one user at a time, head by head."""
    d_m, H, L_p = encoder.d_model, encoder.num_heads, encoder.prompt_length
    d_k = d_m // H
    Q = encoder.query.weight @ u + encoder.query.bias  # eq. (1)
    K = s @ encoder.key.weight.T + encoder.key.bias  # eqs. (2), (4)
    V = s @ encoder.value.weight.T + encoder.value.bias  # eqs. (3), (4)
    heads, weights = [], []
    for h in range(H):
        rows = slice(h * d_k, (h + 1) * d_k)
        q_h = encoder.head_query.weight[rows] @ Q  # Q W_h^Q
        k_h = K @ encoder.head_key.weight[rows].T
        v_h = V @ encoder.head_value.weight[rows].T
        scores = torch.stack([q_h.dot(k_h[i]) for i in range(k_h.shape[0])]) / math.sqrt(d_k)
        a = torch.exp(scores - scores.max())
        a = a / a.sum()
        heads.append((a[:, None] * v_h).sum(0))  # eq. (7)
        weights.append(a)
    z = torch.cat(heads)  # eq. (8)
    p = encoder.to_prompt.weight @ z + encoder.to_prompt.bias  # eq. (9)
    return p.view(L_p, d_m), torch.stack(weights)


@pytest.mark.parametrize("heads", [1, 4])
def test_prompt_encoder_matches_the_equations(heads):
    config = PeaPODConfig.from_t5("tiny", num_users=NUM_USERS, user_embedding_dim=D_USER, num_neighbors=5,
                                  prompt_encoder_heads=heads, collaborative_prompt_length=3)
    encoder = CollaborativePromptEncoder(config)
    for parameter in encoder.parameters():  # non-trivial biases too
        torch.nn.init.normal_(parameter, std=0.3)
    u, s = torch.randn(3, D_USER), torch.randn(3, 5, D_USER)
    prompt, attention = encoder(u, s, output_attentions=True)
    assert prompt.shape == (3, 3, config.d_model) and attention.shape == (3, heads, 5)
    for b in range(3):
        expected_prompt, expected_attention = reference_prompt(encoder, u[b], s[b])
        torch.testing.assert_close(prompt[b], expected_prompt, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(attention[b], expected_attention, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, heads))


def test_fresh_prompt_encoder_is_fan_in_scaled_and_not_saturated():
    """A regression test: transformers' generic init gave the prompt encoder N(0, 1) weights, whose softmax was
    one-hot from the first step (each head attending to a single neighbour)."""
    model = PeaPODForConditionalGeneration.from_shape("tiny", num_users=30, user_embedding_dim=512, num_neighbors=5)
    for linear in (model.prompt_encoder.query, model.prompt_encoder.head_key, model.prompt_encoder.to_prompt):
        assert linear.weight.std().item() == pytest.approx(linear.in_features**-0.5, rel=0.15)
    model.set_user_table(torch.randn(31, 512) * 0.12)  # PMF-like scale: norms around 2.7
    _, attention = model.collaborative_prompt(torch.arange(1, 31), output_attentions=True)
    assert attention.max() < 0.5  # near uniform over 5 neighbours, not one-hot


def test_mlp_and_none_variants():
    mlp = CollaborativePromptEncoder(PeaPODConfig.from_t5("tiny", num_users=NUM_USERS, user_embedding_dim=D_USER,
                                                          num_neighbors=4, prompt_encoder="mlp"))
    for parameter in mlp.parameters():  # non-trivial biases too
        torch.nn.init.normal_(parameter, std=0.3)
    u = torch.randn(2, D_USER)
    prompt, attention = mlp(u, torch.randn(2, 4, D_USER), output_attentions=True)
    for b in range(2):  # p = W_I (W_Q u + b_Q) + b_I, from the raw weights, one user at a time
        hidden = mlp.query.weight @ u[b] + mlp.query.bias
        expected = (mlp.to_prompt.weight @ hidden + mlp.to_prompt.bias).view(3, mlp.d_model)
        torch.testing.assert_close(prompt[b], expected, rtol=1e-4, atol=1e-5)
    assert attention is None and not hasattr(mlp, "key")
    # Neighbours do not matter to the mlp prompt.
    torch.testing.assert_close(mlp(u, torch.randn(2, 4, D_USER))[0], prompt)

    pod = tiny_model(prompt_encoder="none")
    assert not hasattr(pod, "prompt_encoder") and not hasattr(pod, "user_embeddings")
    assert pod.config.num_prompt_vectors == 3


def test_prompt_placement_and_mask(batch):
    model = tiny_model()
    embeds, mask = model.build_encoder_inputs(batch["input_ids"], batch["attention_mask"], batch["user_ids"],
                                              batch["task_ids"], batch["whole_word_ids"])
    L_t, L_p, d = 3, 3, model.config.d_model
    assert embeds.shape == (2, L_t + L_p + batch["input_ids"].shape[1], d)
    assert mask[:, : L_t + L_p].eq(1).all() and torch.equal(mask[:, L_t + L_p:], batch["attention_mask"])
    torch.testing.assert_close(embeds[:, :L_t], model.task_prompts.weight[0].view(L_t, d).expand(2, -1, -1))
    torch.testing.assert_close(embeds[:, L_t:L_t + L_p], model.collaborative_prompt(batch["user_ids"])[0])
    tokens = model.shared(batch["input_ids"]) + model.whole_word_embeddings(batch["whole_word_ids"])
    torch.testing.assert_close(embeds[:, L_t + L_p:], tokens)
    # Non-ID tokens get no whole-word vector (index 0 is the zero vector).
    assert model.whole_word_embeddings.weight[0].eq(0).all()
    no_task = tiny_model(use_task_prompts=False)
    assert no_task.build_encoder_inputs(batch["input_ids"], None, batch["user_ids"])[0].shape[1] == L_p + \
        batch["input_ids"].shape[1]


# -- training signal --------------------------------------------------------------------------------------


def test_gradients_reach_trainables_but_never_the_user_table(batch):
    model = tiny_model()
    table_before = model.user_embeddings.clone()
    model(**batch).loss.backward()
    for name in ("prompt_encoder.query.weight", "prompt_encoder.key.weight", "prompt_encoder.to_prompt.weight",
                 "task_prompts.weight", "whole_word_embeddings.weight", "shared.weight",
                 "encoder.block.0.layer.0.SelfAttention.q.weight", "decoder.block.0.layer.1.EncDecAttention.k.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert not model.user_embeddings.requires_grad and not model.user_neighbors.is_floating_point()
    assert {"user_embeddings", "user_neighbors"} <= dict(model.named_buffers()).keys()
    assert "user_embeddings" not in dict(model.named_parameters())
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    assert torch.equal(model.user_embeddings, table_before)


def test_loss_is_eq10_and_ignores_padding(batch):
    model = tiny_model().eval()
    labels = batch["labels"].clone()
    labels[1, 1:] = -100  # targets of different lengths
    out = model(**{**batch, "labels": labels})
    nll = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    lengths = (labels != -100).sum(1)
    torch.testing.assert_close(out.loss, (nll.sum(1) / lengths).mean())
    token_model = tiny_model(loss_reduction="token")
    token_model.load_state_dict(model.state_dict())
    token_out = token_model.eval()(**{**batch, "labels": labels})
    torch.testing.assert_close(token_out.loss, nll.sum() / lengths.sum())


# -- neighbour table --------------------------------------------------------------------------------------


def brute_force_neighbors(embeddings: torch.Tensor, n: int) -> torch.Tensor:
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    similarity = unit @ unit.T
    table = torch.zeros(embeddings.shape[0], n, dtype=torch.long)
    for user in range(1, embeddings.shape[0]):
        others = [v for v in range(1, embeddings.shape[0]) if v != user]
        others.sort(key=lambda v: (-round(similarity[user, v].item() * 1e6), v))  # 1e-6 resolution
        table[user] = torch.tensor(others[:n])
    return table


@pytest.mark.parametrize("chunk_size,column_block", [(1, 1), (7, 5), (3, 13), (1000, 16384)])
def test_neighbor_table_equals_brute_force_with_ties(chunk_size, column_block):
    continuous = torch.randn(60, 6)
    tied = torch.randint(-1, 2, (60, 3)).float()  # few distinct directions: many exact ties
    for embeddings in (continuous, tied):
        embeddings[0] = 0
        assert torch.equal(build_user_neighbors(embeddings, 9, chunk_size, column_block),
                           brute_force_neighbors(embeddings, 9))
    table = build_user_neighbors(continuous, 9, chunk_size, column_block)
    assert table[0].eq(0).all()
    assert not (table[1:] == torch.arange(1, 60)[:, None]).any()  # never oneself
    assert not table[1:].eq(0).any()  # never the unknown user


def test_neighbor_table_rejects_too_many_neighbors():
    with pytest.raises(ValueError, match="num_neighbors=10 must be between 1 and num_users - 1 = 9"):
        build_user_neighbors(torch.randn(11, 4), 10)


# -- generation and recommendation ------------------------------------------------------------------------


@torch.no_grad()
def greedy_decode(model, inputs: dict, steps: int) -> torch.Tensor:
    """Greedy decoding written out: feed the tokens so far, append the argmax of the last position's logits; a row
    that has produced EOS gets padding from then on; stop when every row has."""
    config = model.config
    tokens = torch.full((inputs["input_ids"].shape[0], 1), config.decoder_start_token_id)
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool)
    for _ in range(steps):
        logits = model(**inputs, decoder_input_ids=tokens).logits[:, -1]
        next_token = torch.where(finished, torch.tensor(config.pad_token_id), logits.argmax(-1))
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        finished |= next_token == config.eos_token_id
        if finished.all():
            break
    return tokens


def test_generate_plain_and_constrained(tokenizer, batch):
    model = tiny_model().eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    plain = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=1)
    assert torch.equal(plain, greedy_decode(model, inputs, 4))
    trie = model.item_trie(tokenizer)
    valid = {str(item) for item in range(1, NUM_ITEMS + 1)}
    ids, scores = model.recommend(**inputs, item_trie=trie, top_k=10, num_beams=20)
    assert ids.shape == (2, 10)
    for row in range(2):
        assert len(set(ids[row].tolist())) == 10 and {str(i) for i in ids[row].tolist()} <= valid
        assert torch.all(scores[row][:-1] >= scores[row][1:])  # ranked
    candidates = torch.tensor([[3, 14, 15, 9, 26, 35, 8, 27, 31, 2, 18, 28], [1, 4, 21, 35, 6, 23, 7, 33, 11, 29, 30, 40]])
    ids, _ = model.recommend(**{**inputs, "task_ids": torch.tensor([1, 1])}, item_trie=trie, candidates=candidates,
                             top_k=10, num_beams=12)
    for row in range(2):
        assert set(ids[row].tolist()) <= set(candidates[row].tolist()) and len(set(ids[row].tolist())) == 10


def test_recommend_and_likelihood_scores_agree(tokenizer, batch):
    """With as many beams as candidates, beam search and exact scoring rank the same candidates first."""
    model = tiny_model().eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    candidates = torch.tensor([[3, 14, 15, 9, 26], [1, 4, 21, 35, 6]])
    scores = model.score_candidates(**inputs, candidates=candidates, tokenizer=tokenizer, candidate_batch_size=3)
    ids, beam_scores = model.recommend(**inputs, tokenizer=tokenizer, candidates=candidates, top_k=5, num_beams=5)
    for row in range(2):
        order = scores[row].argsort(descending=True)
        assert ids[row, 0] == candidates[row, order[0]]
        torch.testing.assert_close(beam_scores[row, 0], scores[row, order[0]], rtol=1e-4, atol=1e-4)


def test_candidate_scoring_ranks_a_trained_item_first(tokenizer):
    model = tiny_model()
    sample = make_batch(tokenizer, ["user_2 : recommend one of item_5 , item_17 , item_33"], ["17"], [2], task_id=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(12):
        optimizer.zero_grad()
        model(**sample).loss.backward()
        optimizer.step()
    model.eval()
    inputs = {k: v for k, v in sample.items() if k != "labels"}
    scores = model.score_candidates(**inputs, candidates=torch.tensor([[5, 33, 17, 1]]), tokenizer=tokenizer)
    assert scores[0].argmax() == 2
    ids, _ = model.recommend(**inputs, tokenizer=tokenizer, top_k=1, num_beams=5)
    assert ids[0, 0] == 17


# -- saving and loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["mha", "mlp", "none"])
def test_save_load_in_process_identical_logits(tmp_path, batch, variant):
    from transformers import AutoModelForSeq2SeqLM

    model = tiny_model(prompt_encoder=variant).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "peapod" and set(config["auto_map"]) == {"AutoConfig", "AutoModel",
                                                                             "AutoModelForSeq2SeqLM"}
    assert config["prompt_encoder"] == variant
    assert (tmp_path / "modeling_peapod.py").exists() and (tmp_path / "configuration_peapod.py").exists()
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        saved = set(weights.keys())
        if variant == "none":  # POD: no user table and no prompt encoder, by design
            assert not any(name.startswith(("user_", "prompt_encoder.")) for name in saved)
        else:
            assert torch.equal(weights.get_tensor("user_embeddings"), model.user_embeddings)
            assert torch.equal(weights.get_tensor("user_neighbors"), model.user_neighbors)
    for loaded in (PeaPODForConditionalGeneration.from_pretrained(tmp_path),
                   AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True)):
        loaded.eval()
        assert loaded.config.prompt_encoder == variant
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_remote_code_loads_in_a_fresh_process_without_the_package(tmp_path, batch):
    model = tiny_model().eval()
    folder = tmp_path / "hub_repo"
    model.save_pretrained(folder)
    torch.save({k: v for k, v in batch.items()}, tmp_path / "batch.pt")
    torch.save(model(**batch).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, importlib.util, torch
        assert importlib.util.find_spec("modeling_peapod") is None, "the package must not be importable here"
        from transformers import AutoModel, AutoModelForSeq2SeqLM
        model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        batch = torch.load({str(tmp_path / 'batch.pt')!r})
        assert torch.equal(model(**batch).logits, torch.load({str(tmp_path / 'expected.pt')!r}))
        assert type(AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)).__name__ == \\
            "PeaPODForConditionalGeneration"
        print("REMOTE-OK", type(model).__module__)
    """)
    # Run from an empty folder with only site-packages on the path: `-S` skips the .pth files (an editable install
    # of this package is one), so neither the repository nor an editable copy of it can be imported.
    import site

    isolated = tmp_path / "cwd"
    isolated.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=isolated, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    if "the package must not be importable here" in result.stderr:
        pytest.skip("peapod-rec is installed (not editable) into site-packages; this isolation check needs a source "
                    "checkout or an editable install")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK transformers_modules" in result.stdout


def test_checkpoint_with_missing_or_misshaped_user_table_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["user_neighbors"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="user_neighbors"):
        PeaPODForConditionalGeneration.from_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors") | {"user_neighbors": torch.zeros(5, 4, dtype=torch.long)}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"user_neighbors has shape \[5, 4\] in the checkpoint; expected \[13, 4\]"):
        PeaPODForConditionalGeneration.from_pretrained(tmp_path)


# -- LoRA ------------------------------------------------------------------------------------------------


def test_lora_adapter_trains_and_round_trips(tmp_path, batch):
    from peft import LoraConfig, PeftModel, get_peft_model

    model = tiny_model().eval()
    model.save_pretrained(tmp_path / "base")  # the frozen base, user table included
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        base_logits = model(**batch).logits
    base_generated = model.generate(**inputs, max_new_tokens=3, num_beams=1, do_sample=False)
    # task_type stays unset: peft's PeftModelForSeq2SeqLM swallows a `task_ids` argument (its own multi-task
    # prompt tuning), while the plain PeftModel passes every input through to PeaPOD.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"],
                      modules_to_save=["prompt_encoder", "task_prompts", "whole_word_embeddings"])
    peft_model = get_peft_model(model, lora)
    # LoRA's B starts at zero and the saved modules start as copies: before training it is the base model.
    with torch.no_grad():
        assert torch.equal(peft_model(**batch).logits, base_logits)
    assert torch.equal(peft_model.generate(**inputs, max_new_tokens=3, num_beams=1, do_sample=False), base_generated)
    peft_model.train()
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable)
    assert any("prompt_encoder" in name for name in trainable) and any("task_prompts" in name for name in trainable)
    assert not any("shared" in name or ".wi." in name for name in trainable)
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model(**batch).loss.backward()
    optimizer.step()
    changed = [name for name, p in peft_model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert any("lora_B" in name for name in changed) and any("prompt_encoder" in name for name in changed)
    peft_model.eval()
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    base = PeaPODForConditionalGeneration.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected)
    generated = reloaded.generate(**inputs, max_new_tokens=3, num_beams=1, do_sample=False)
    assert torch.equal(generated, greedy_decode(reloaded, inputs, 3))  # decoding goes through the adapted weights
    with torch.no_grad():
        assert not torch.allclose(reloaded(**batch).logits, base_logits)  # and the adapter changed them


# -- bad input -------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(tokenizer, batch):
    model = tiny_model()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    cases = [
        ({"user_ids": torch.tensor([3, 99])}, r"user_ids contains \[99\]; expected 0 \(unknown user\) .. num_users"),
        ({"user_ids": torch.tensor([-1, 2])}, r"user_ids contains \[-1\]"),
        ({"user_ids": None}, "user_ids is required"),
        ({"user_ids": torch.tensor([1])}, r"user_ids has shape \(1,\); expected \(2,\)"),
        ({"task_ids": torch.tensor([0, 3])}, r"task_ids contains \[3\]; expected indices into tasks"),
        ({"task_ids": None}, "task_ids is required"),
        ({"whole_word_ids": torch.full_like(batch["input_ids"], 600)}, "whole_word_ids contains"),
    ]
    for override, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**{**inputs, **override})
    with pytest.raises(ValueError, match=r"user_embeddings has 6 rows; the config has num_users=12"):
        model.set_user_table(torch.randn(6, D_USER))
    with pytest.raises(ValueError, match=r"expected \[num_users \+ 1, 8\]"):
        model.set_user_table(torch.randn(13, 5))
    with pytest.raises(ValueError, match=r"user_neighbors has shape \(13, 2\); expected \[13, 4\]"):
        model.set_user_table(torch.randn(13, D_USER), torch.zeros(13, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer user ids in \[0, 12\]"):
        model.set_user_table(torch.randn(13, D_USER), torch.full((13, 4), 13))
    with pytest.raises(ValueError, match=r"candidate item ids \[41, 77\] are not in the catalogue"):
        model.recommend(**inputs, tokenizer=tokenizer, candidates=torch.tensor([[1, 2, 41], [3, 4, 77]]),
                        top_k=2, num_beams=3)
    with pytest.raises(ValueError, match=r"candidate item ids \[0\]"):
        model.score_candidates(**inputs, tokenizer=tokenizer, candidates=torch.tensor([[1, 0], [3, 4]]))
    with pytest.raises(ValueError, match="no user table installed"):
        PeaPODForConditionalGeneration.from_shape("tiny", user_embedding_dim=D_USER)(**inputs)


def test_config_validation_and_defaults(tmp_path):
    config = PeaPODConfig()
    assert config.decoder_start_token_id == 0 and config.tasks == ["sequential", "topn", "explanation"]
    for fields, message in [({"prompt_encoder": "gru"}, "prompt_encoder='gru' is not one of"),
                            ({"prompt_encoder_heads": 3}, "d_model=64 is not divisible by prompt_encoder_heads=3"),
                            ({"num_users": -2}, "num_users=-2 must be an integer >= 0"),
                            ({"num_users": 5, "num_neighbors": 5}, "num_neighbors=5 exceeds num_users - 1 = 4"),
                            ({"collaborative_prompt_length": 0}, "collaborative_prompt_length=0 must be"),
                            ({"tasks": ["a", "a"]}, "distinct")]:
        with pytest.raises(ValueError, match=message):
            PeaPODConfig.from_t5("tiny", **fields)
    # A config from scratch (no checkpoint) trains and generates: decoder_start_token_id survives a round trip.
    PeaPODConfig.from_t5("tiny", num_users=3, num_neighbors=2).save_pretrained(tmp_path)
    assert PeaPODConfig.from_pretrained(tmp_path).decoder_start_token_id == 0


def test_from_t5_pretrained_keeps_the_t5_weights(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                             num_heads=4, decoder_start_token_id=0))
    t5.save_pretrained(tmp_path)
    model = PeaPODForConditionalGeneration.from_t5_pretrained(str(tmp_path), num_users=5, num_neighbors=2,
                                                              user_embedding_dim=4)
    assert model.config.d_model == 32 and model.config.model_type == "peapod"
    for name, weight in t5.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name
