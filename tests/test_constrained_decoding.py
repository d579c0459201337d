"""The tensor trie (`ItemIdConstraintLogitsProcessor`) against the per-beam Python callback it replaces.

Both constrain the same beam search; the rankings and scores must be identical, on synthetic catalogues and on a
real Amazon catalogue (skipped without ../shared), for the whole catalogue and restricted to top-n candidates.
"""

import random

import pytest
import torch
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from datasets_scripts.templates import EVAL_TEMPLATES, render
from modeling_peapod import (
    ItemIdConstraintLogitsProcessor,
    ItemIdTrie,
    PeaPODForConditionalGeneration,
    compute_whole_word_ids,
    prefix_allowed_tokens_fn,
)


def _model(num_users: int, num_items: int) -> PeaPODForConditionalGeneration:
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=num_users, num_items=num_items, user_embedding_dim=8, num_neighbors=4, dropout_rate=0.0
    )
    model.set_user_table(torch.randn(num_users + 1, 8))
    return model.eval()


def _inputs(tokenizer, sources, users, task_id):
    encoded = tokenizer(sources, return_tensors="pt", padding=True)
    return {
        "input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask,
        "whole_word_ids": compute_whole_word_ids(encoded.input_ids, tokenizer),
        "user_ids": torch.tensor(users), "task_ids": torch.full((len(sources),), task_id),
    }


def _assert_same_rankings(model, inputs, trie, **kwargs):
    tensor_ids, tensor_scores = model.recommend(**inputs, item_trie=trie, constraint="tensor", **kwargs)
    reference_ids, reference_scores = model.recommend(**inputs, item_trie=trie, constraint="prefix_fn", **kwargs)
    assert torch.equal(tensor_ids, reference_ids)
    torch.testing.assert_close(tensor_scores, reference_scores, rtol=0, atol=0)
    for row in tensor_ids.tolist():  # distinct ids, no padding when the beams suffice
        assert len(set(row)) == len(row) and min(row) >= 1
    # Without scores (generate keeps no per-step score copies): the same ids, taken in the beams' returned order.
    ids_only, no_scores = model.recommend(**inputs, item_trie=trie, constraint="tensor", return_scores=False, **kwargs)
    assert torch.equal(ids_only, tensor_ids) and no_scores is None
    return tensor_ids


def _random_prefixes(trie: ItemIdTrie, count: int, rng: random.Random) -> list[list[int]]:
    """Prefixes on the trie (every depth, finished ids included), off it, and past a finished id's EOS."""
    token_lists = list(trie.item_token_ids.values())
    prefixes = []
    for _ in range(count):
        tokens = rng.choice(token_lists)
        kind = rng.random()
        if kind < 0.6:
            prefixes.append(tokens[: rng.randint(0, len(tokens))])
        elif kind < 0.8:
            prefixes.append(tokens[: rng.randint(0, len(tokens) - 1)] + [rng.randint(3, 32000)])  # off the trie
        else:
            prefixes.append(tokens + [0] * rng.randint(1, 2))  # a finished id, padded
    return prefixes


def _pad(prefixes: list[list[int]]) -> torch.LongTensor:
    width = max(map(len, prefixes)) + 1
    return torch.tensor([[0, *prefix] + [0] * (width - 1 - len(prefix)) for prefix in prefixes])


@pytest.mark.parametrize("restricted", [False, True])
def test_processor_equals_prefix_constrained_processor(tokenizer, restricted):
    """Same output tensor as transformers' PrefixConstrainedLogitsProcessor with the dict trie, -inf cases too."""
    rng = random.Random(0)
    trie = ItemIdTrie.from_tokenizer(tokenizer, [*range(1, 400), 1234, 12101, 99999])
    num_beams, batch = 4, 6
    candidates = torch.tensor([rng.sample(sorted(trie.item_token_ids), 30) for _ in range(batch)])
    tries = [trie.restricted_to(row) for row in candidates.tolist()] if restricted else trie
    for _ in range(5):
        rows = []
        for sample in range(batch):  # prefixes valid for the sample's (restricted) trie, plus off-trie ones
            sample_trie = tries[sample] if restricted else trie
            rows += _random_prefixes(sample_trie, num_beams, rng)
        input_ids = _pad(rows)
        scores = torch.randn(batch * num_beams, 32128).log_softmax(-1)
        scores[: num_beams, :] = -float("inf")  # sample 0 unsatisfiable: its allowed tokens are forced to 0
        scores[num_beams + 1, 1] = -float("inf")
        reference = PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn(tries), num_beams)(input_ids, scores)
        processor = ItemIdConstraintLogitsProcessor(
            trie, num_beams, trie.candidate_nodes(candidates) if restricted else None
        )
        assert torch.equal(processor(input_ids, scores.clone()), reference)


def test_walk_and_items_of_match_the_dict_trie(tokenizer):
    rng = random.Random(1)
    trie = ItemIdTrie.from_tokenizer(tokenizer, range(1, 3000))
    prefixes = _random_prefixes(trie, 300, rng)
    items = trie.items_of(_pad(prefixes)[:, 1:])
    assert items.tolist() == [trie.item_of(prefix) or 0 for prefix in prefixes]
    assert any(items.tolist()) and not all(items.tolist())
    # candidate_nodes marks exactly the nodes on the candidates' paths: their count is the sub-trie's size.
    candidates = torch.tensor([[5, 17, 1234, 2999], [1, 2, 3, 4]])
    sizes = trie.candidate_nodes(candidates).sum(dim=1).tolist()
    assert sizes == [trie.restricted_to(row).num_nodes for row in candidates.tolist()]


def test_recommend_identical_rankings_synthetic(tokenizer):
    rng = random.Random(2)
    num_users, num_items = 30, 2500
    model = _model(num_users, num_items)
    trie = model.item_trie(tokenizer)
    users = list(range(1, 9))
    sources = [render(EVAL_TEMPLATES["sequential"], u, history=rng.sample(range(1, num_items), 6)) for u in users]
    _assert_same_rankings(model, _inputs(tokenizer, sources, users, 0), trie, top_k=10, num_beams=20)
    candidates = [rng.sample(range(1, num_items + 1), 100) for _ in users]
    sources = [render(EVAL_TEMPLATES["topn"], u, candidates=c) for u, c in zip(users, candidates)]
    ranked = _assert_same_rankings(
        model, _inputs(tokenizer, sources, users, 1), trie, candidates=torch.tensor(candidates), top_k=10, num_beams=20
    )
    for row, allowed in zip(ranked.tolist(), candidates):
        assert set(row) <= set(allowed)
    # Fewer candidates than beams: every candidate is reachable and ranked exactly once.
    few = torch.tensor([rng.sample(range(1, num_items + 1), 5) for _ in users])
    ranked = _assert_same_rankings(model, _inputs(tokenizer, sources, users, 1), trie, candidates=few, top_k=5,
                                   num_beams=8)
    assert [sorted(row) for row in ranked.tolist()] == [sorted(row) for row in few.tolist()]


@pytest.mark.parametrize("name", ["toys", "beauty"])
def test_recommend_identical_rankings_real_catalogue(tokenizer, shared_data_dir, name):
    """The whole real catalogue (~12k ids) and real histories; top-n with 99 unseen items + the target."""
    path = shared_data_dir / "amazon" / name / "sequential.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    histories = {}
    for line in path.read_text().splitlines():
        user, *items = map(int, line.split())
        histories[user] = items
    num_users, num_items = max(histories), max(max(items) for items in histories.values())
    rng = random.Random(3)
    users = sorted(rng.sample(sorted(histories), 6))
    model = _model(num_users, num_items)
    trie = model.item_trie(tokenizer)
    sources = [render(EVAL_TEMPLATES["sequential"], u, history=histories[u][:-1]) for u in users]
    _assert_same_rankings(model, _inputs(tokenizer, sources, users, 0), trie, top_k=10, num_beams=20)
    candidates = []
    for user in users:
        seen = set(histories[user])
        negatives = rng.sample([item for item in range(1, num_items + 1) if item not in seen], 99)
        candidates.append(negatives + [histories[user][-1]])
    sources = [render(EVAL_TEMPLATES["topn"], u, candidates=c) for u, c in zip(users, candidates)]
    _assert_same_rankings(model, _inputs(tokenizer, sources, users, 1), trie, candidates=torch.tensor(candidates),
                          top_k=10, num_beams=20)


def test_recommend_rejects_an_unknown_constraint(tokenizer):
    model = _model(8, 50)
    inputs = _inputs(tokenizer, ["user_1 bought item_3"], [1], 0)
    with pytest.raises(ValueError, match="constraint"):
        model.recommend(**inputs, tokenizer=tokenizer, constraint="python")


def _reference_scores(model, inputs, candidates, trie):
    """log p(candidate | input) by plain teacher forcing of each sample with all of its candidates (the old path)."""
    scores = torch.empty(candidates.shape, dtype=torch.float)
    for row in range(candidates.shape[0]):
        tokens = [trie.item_token_ids[int(item)] for item in candidates[row]]
        labels = torch.full((len(tokens), max(map(len, tokens))), -100)
        for index, ids in enumerate(tokens):
            labels[index, : len(ids)] = torch.tensor(ids)
        repeated = {name: value[row : row + 1].repeat_interleave(len(tokens), 0) for name, value in inputs.items()}
        logits = model(**repeated, labels=labels).logits.float()
        token_log_probs = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores[row] = (token_log_probs * (labels != -100)).sum(dim=1)
    return scores


@pytest.mark.parametrize("candidate_batch_size", [1, 60, 100_000])
def test_batched_candidate_scores_equal_teacher_forcing(tokenizer, candidate_batch_size):
    """Many samples per decoder call, the first step shared by a sample's candidates: the same log-likelihoods."""
    rng = random.Random(4)
    num_items = 13_000  # ids of 1 to 5 digits: labels of 2 to 4 tokens, padded within a call
    model = _model(10, num_items)
    trie = model.item_trie(tokenizer)
    users = [1, 4, 7]
    candidates = torch.tensor([rng.sample(range(1, num_items + 1), 24) + [rng.randint(1, 9)] for _ in users])
    sources = [render(EVAL_TEMPLATES["topn"], u, candidates=c) for u, c in zip(users, candidates.tolist())]
    inputs = _inputs(tokenizer, sources, users, 1)
    scores = model.score_candidates(**inputs, candidates=candidates, item_trie=trie,
                                    candidate_batch_size=candidate_batch_size)
    torch.testing.assert_close(scores, _reference_scores(model, inputs, candidates, trie), rtol=0, atol=1e-5)


def test_one_encoder_pass_serves_both_top_n_rankings(tokenizer):
    """`encode`'s outputs and extended mask passed to `recommend` and `score_candidates` (as evaluation does) give
    exactly what each method computes from the prompt inputs itself."""
    rng = random.Random(5)
    model = _model(10, 500)
    trie = model.item_trie(tokenizer)
    users = [2, 9]
    candidates = torch.tensor([rng.sample(range(1, 501), 12) for _ in users])
    sources = [render(EVAL_TEMPLATES["topn"], u, candidates=c) for u, c in zip(users, candidates.tolist())]
    inputs = _inputs(tokenizer, sources, users, 1)
    with torch.no_grad():
        encoded, extended_mask = model.encode(**inputs)
    shared = {"encoder_outputs": encoded, "item_trie": trie, "candidates": candidates}
    # recommend first: beam search must leave the shared encoder outputs as they were (transformers expands them)
    ranked, scores = model.recommend(inputs["input_ids"], extended_mask, top_k=5, num_beams=6, **shared)
    expected_ranked, expected_scores = model.recommend(**inputs, candidates=candidates, item_trie=trie, top_k=5,
                                                       num_beams=6)
    assert torch.equal(ranked, expected_ranked) and torch.equal(scores, expected_scores)
    assert encoded.last_hidden_state.shape[0] == len(users)
    assert torch.equal(model.score_candidates(inputs["input_ids"], extended_mask, **shared),
                       model.score_candidates(**inputs, candidates=candidates, item_trie=trie))


@pytest.mark.parametrize("variant", ["default", "eager", "v1.1-like"])
@pytest.mark.parametrize("candidate_batch_size", [1, 7, 100_000])
def test_trie_scores_equal_teacher_forcing_edge_cases(tokenizer, variant, candidate_batch_size):
    """One decoder position per unique (sample, trie node): duplicates, a candidate that is a prefix sibling of
    another ("1", "12", "123", "1234"), ids of 2 to 4 tokens, unequal unique-node counts per sample (padded), calls
    that split the batch unevenly; eager attention; and few relative-position buckets, so depth distances 2 and 3
    fall into T5's logarithmic buckets, with an unscaled output layer (T5 v1.1's `tie_word_embeddings=False`, which
    transformers 5.x reads as "do not scale": it ties the output layer to the embeddings always)."""
    rng = random.Random(6)
    fields = {"eager": {}, "default": {}, "v1.1-like": {"relative_attention_num_buckets": 4,
                                                        "relative_attention_max_distance": 4,
                                                        "tie_word_embeddings": False}}[variant]
    model = PeaPODForConditionalGeneration.from_shape(
        "tiny", num_users=10, num_items=13_000, user_embedding_dim=8, num_neighbors=4, dropout_rate=0.0, **fields
    )
    model.set_user_table(torch.randn(11, 8))
    model.eval()
    if variant == "eager":
        model.set_attn_implementation("eager")
    if candidate_batch_size == 100_000:
        model.SCORING_ROWS_PER_CHUNK = 5  # all samples in one call: its positions in several vocabulary chunks
    trie = model.item_trie(tokenizer)
    candidates = torch.tensor([
        [1, 12, 123, 1234, 12345, 1, 12, 1234, 9, 5000],  # nested prefixes and duplicates: few unique nodes
        rng.sample(range(1, 13_001), 10),  # mostly disjoint paths: many unique nodes
        [7, 7, 7, 7, 7, 7, 7, 7, 7, 7],  # one candidate ten times: a single path
    ])
    users = [1, 4, 7]
    sources = [render(EVAL_TEMPLATES["topn"], u, candidates=c) for u, c in zip(users, candidates.tolist())]
    inputs = _inputs(tokenizer, sources, users, 1)
    scores = model.score_candidates(**inputs, candidates=candidates, item_trie=trie,
                                    candidate_batch_size=candidate_batch_size)
    reference = _reference_scores(model, inputs, candidates, trie)
    # float32 rounding: the unscaled output layer's scores are near -100, hence a relative tolerance as well
    torch.testing.assert_close(scores, reference, rtol=1e-6, atol=1e-5)
    assert torch.equal(scores[2], scores[2, :1].expand(10)) and scores[0, 0] == scores[0, 5]  # duplicates agree


def test_encode_equals_the_t5_encoder_stack(tokenizer):
    """`encode` folds the padding mask into the position bias once for all layers: the same states as T5Stack."""
    model = _model(10, 100)
    inputs = _inputs(tokenizer, ["user_1 bought item_3", "user_2 bought item_4 , item_5 and item_77 too"], [1, 2], 0)
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        states, mask = model.encode(**inputs)
        embeds, reference_mask = model.build_encoder_inputs(**inputs)
        reference = model.get_encoder()(inputs_embeds=embeds, attention_mask=reference_mask).last_hidden_state
        assert torch.equal(mask, reference_mask) and mask[0].sum() < mask[1].sum()  # padding in sample 0
        torch.testing.assert_close(states.last_hidden_state, reference, rtol=0, atol=1e-6)


def test_trie_over_a_non_contiguous_catalogue(tokenizer):
    """Item ids 3, 17, 1000 and 10**12: the per-item tables have four rows (not 10**12 + 1), and scoring, the
    candidate sub-trie and constrained beam search work on them."""
    catalogue = [1000, 3, 10**12, 17]
    trie = ItemIdTrie.from_tokenizer(tokenizer, catalogue)
    tables = trie.tensors("cpu")
    assert tables["item_ids"].tolist() == sorted(catalogue) and tables["item_paths"].shape[0] == 4
    candidates = torch.tensor([[17, 10**12, 3], [1000, 3, 3]])
    rows = trie.item_rows(candidates)
    assert tables["item_ids"][rows].tolist() == candidates.tolist()
    for row, items in enumerate(candidates.tolist()):  # each item's label row spells that item's tokens
        for column, item in enumerate(items):
            labels = tables["item_labels"][rows[row, column]]
            assert labels[labels != -100].tolist() == trie.item_token_ids[item]
    sizes = trie.candidate_nodes(candidates).sum(dim=1).tolist()
    assert sizes == [trie.restricted_to(row).num_nodes for row in candidates.tolist()]
    model = _model(6, 0)
    inputs = _inputs(tokenizer, ["user_1 : pick one of item_17 , item_3", "user_2 : pick one of item_1000"], [1, 2], 1)
    scores = model.score_candidates(**inputs, candidates=candidates, item_trie=trie)
    torch.testing.assert_close(scores, _reference_scores(model, inputs, candidates, trie), rtol=0, atol=1e-5)
    ids, _ = model.recommend(**inputs, item_trie=trie, candidates=candidates, top_k=2, num_beams=3)
    for row, allowed in zip(ids.tolist(), candidates.tolist()):
        assert set(row) <= set(allowed) and len(set(row)) == 2
    ids, _ = model.recommend(**inputs, item_trie=trie, top_k=4, num_beams=8)
    assert sorted(ids[0].tolist()) == sorted(catalogue)
    with pytest.raises(ValueError, match="not in the catalogue"):
        model.score_candidates(**inputs, candidates=torch.tensor([[17, 4], [3, 3]]), item_trie=trie)


def test_beam_search_shortcuts_match_plain_transformers_beam_search(tokenizer, monkeypatch):
    """`generate` projects the cross-attention keys/values once per sample (`_beam_cache`) and `_reorder_cache`
    leaves them in place: the same beams as transformers' own beam search without either shortcut."""
    from transformers import T5ForConditionalGeneration

    rng = random.Random(5)
    model = _model(10, 3000)
    trie = model.item_trie(tokenizer)
    users = [2, 3, 5]
    sources = [render(EVAL_TEMPLATES["sequential"], u, history=rng.sample(range(1, 3000), 8)) for u in users]
    inputs = _inputs(tokenizer, sources, users, 0)
    settings = {"num_beams": 6, "num_return_sequences": 6, "max_new_tokens": 5, "output_scores": True,
                "return_dict_in_generate": True}
    fast = model.generate(**inputs, **settings)
    fast_ranking = model.recommend(**inputs, item_trie=trie, top_k=10, num_beams=20)
    monkeypatch.delattr(PeaPODForConditionalGeneration, "_reorder_cache")
    encoder_outputs, attention_mask = model.encode(**inputs)
    plain = T5ForConditionalGeneration.generate(model, encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                                                **settings)
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(fast.sequences_scores, plain.sequences_scores, rtol=0, atol=1e-5)
    monkeypatch.setattr(PeaPODForConditionalGeneration, "_beam_cache", lambda self, states, repeats: None)
    slow_ranking = model.recommend(**inputs, item_trie=trie, top_k=10, num_beams=20)
    assert torch.equal(fast_ranking[0], slow_ranking[0])
    torch.testing.assert_close(fast_ranking[1], slow_ranking[1], rtol=0, atol=1e-5)
