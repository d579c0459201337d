"""Evaluation throughput: old and new decoding paths side by side, in one run (by hand; not a test).

    python benchmarks/eval_throughput.py --shape tiny --data ../shared/data/amazon/beauty --users 64 --rounds 3

On real test prompts (the evaluation templates; sequential: the user's history, top-n: 99 unseen items + the
target), batch 16, a randomly initialised PeaPOD of the named shape with a random user table of the data's size:

* sequential: 20-beam search unconstrained vs constrained by the tensor trie (`constraint="tensor"`) vs the
  per-beam Python callback (`"prefix_fn"`, the old path); same width, same `max_new_tokens`, same flags;
  and the tensor trie returning ids only (`ids_only`: `recommend(return_scores=False)`, what evaluation runs: no
  per-step copy of the scores, `output_scores`);
* top-n beam: the same four, restricted to each user's 100 candidates;
* top-n likelihood: `score_candidates` (one decoder position and one vocabulary log-softmax per unique
  (sample, item-id trie node)) vs the same with the vocabulary projection in one chunk (`trie_one_chunk`) vs the
  previous implementation (one packed decoder block per candidate, copied below as `packed_blocks`) vs the
  oldest per-pair loop (copied below, `per_pair`), both with transformers' own encoder stack (`stock_encode`, as
  before `encode` shared the masked position bias between layers); `max_abs_difference` says how far their
  scores are apart;

and prints users/s for each (and candidates/s for the likelihood), the ratios, and the projected time of all test
users of the data (the full evaluator's sequential + top-n, both rankings; and the likelihood alone, per path).
`--tasks encode_topn` times the encoder alone on the top-n prompts, `encode` vs transformers' stack.
Per batch the paths run back to back, `--rounds` times, and each batch counts with its best time per path:
background load on a shared machine only ever slows a run down. `--tasks topn_likelihood` times that task only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from configuration_peapod import NAMED_SHAPES
from datasets_scripts.templates import EVAL_TEMPLATES, render
from modeling_peapod import PeaPODForConditionalGeneration, compute_whole_word_ids


def read_histories(path: Path) -> dict[int, list[int]]:
    histories = {}
    for line in (path / "sequential.txt").read_text().splitlines():
        user, *items = map(int, line.split())
        histories[user] = items
    return histories


def make_batches(histories, num_items, tokenizer, users, batch_size, seed):
    """Per task, [(model inputs, candidates)] of the users' test prompts."""
    rng = random.Random(seed)
    batches = {"sequential": [], "topn": []}
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        candidates = []
        for user in chunk:
            seen = set(histories[user])
            negatives = rng.sample([item for item in range(1, num_items + 1) if item not in seen], 99)
            candidates.append(negatives + [histories[user][-1]])
        for task, sources in (
            ("sequential", [render(EVAL_TEMPLATES["sequential"], u, history=histories[u][:-1]) for u in chunk]),
            ("topn", [render(EVAL_TEMPLATES["topn"], u, candidates=c) for u, c in zip(chunk, candidates)]),
        ):
            encoded = tokenizer(sources, return_tensors="pt", padding=True)
            inputs = {
                "input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask,
                "user_ids": torch.tensor(chunk), "task_ids": torch.full((len(chunk),), 0 if task == "sequential" else 1),
                "whole_word_ids": compute_whole_word_ids(encoded.input_ids, tokenizer),
            }
            batches[task].append((inputs, torch.tensor(candidates)))
    return batches


def stock_encode(model, inputs):
    """The encoder as before `encode` folded the mask into the position bias: transformers' T5Stack."""
    inputs_embeds, attention_mask = model.build_encoder_inputs(**inputs)
    return model.get_encoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask), attention_mask


@torch.no_grad()
def score_candidates_per_pair(model, inputs, candidates, item_trie, candidate_batch_size=256):
    """The old `score_candidates` (before the batched one), kept here as the benchmark's baseline."""
    batch = inputs["input_ids"].shape[0]
    encoder_outputs, attention_mask = stock_encode(model, inputs)
    hidden = encoder_outputs.last_hidden_state
    pairs = [(row, col) for row in range(batch) for col in range(candidates.shape[1])]
    scores = torch.empty(candidates.shape)
    for start in range(0, len(pairs), candidate_batch_size):
        chunk = pairs[start : start + candidate_batch_size]
        rows = torch.tensor([row for row, _ in chunk])
        token_lists = [item_trie.item_token_ids[int(candidates[row, col])] for row, col in chunk]
        labels = torch.full((len(chunk), max(map(len, token_lists))), -100, dtype=torch.long)
        for index, tokens in enumerate(token_lists):
            labels[index, : len(tokens)] = torch.tensor(tokens)
        logits = T5ForConditionalGeneration.forward(
            model, encoder_outputs=BaseModelOutput(last_hidden_state=hidden[rows]),
            attention_mask=attention_mask[rows], decoder_input_ids=model._shift_right(labels), use_cache=False,
        ).logits.float()
        token_log_probs = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        for (row, col), value in zip(chunk, (token_log_probs * (labels != -100)).sum(dim=1)):
            scores[row, col] = value
    return scores


@torch.no_grad()
def score_candidates_packed_blocks(model, inputs, candidates, item_trie, candidate_batch_size=512):
    """`score_candidates` before the trie-shaped decoding (kept as the benchmark's baseline): a sample's C
    candidates packed into one decoder sequence of C blocks [start, id tokens...] with a block-diagonal causal
    mask, the vocabulary log-softmax at every target token of every candidate (and once for the start)."""
    batch = inputs["input_ids"].shape[0]
    encoder_outputs, attention_mask = stock_encode(model, inputs)
    hidden = encoder_outputs.last_hidden_state
    device = hidden.device
    labels = item_trie.tensors(device)["item_labels"][item_trie.item_rows(candidates.to(device))]  # [B, C, L]
    num_candidates, length = labels.shape[1], labels.shape[2]
    decoder_inputs = torch.cat(
        [torch.full_like(labels[..., :1], model.config.decoder_start_token_id), labels[..., :-1].clamp(min=0)], -1
    ).flatten(1)
    block = torch.arange(num_candidates * length, device=device) // length
    position = torch.arange(num_candidates * length, device=device)
    packed_mask = ((block[:, None] == block[None, :]) & (position[None, :] <= position[:, None]))[None, None]
    scores = torch.empty(batch, num_candidates, device=device)
    samples_per_call = max(1, candidate_batch_size // max(num_candidates, 1))
    for first in range(0, batch, samples_per_call):
        samples = slice(first, first + samples_per_call)
        decoded = model.decoder(
            input_ids=decoder_inputs[samples], attention_mask=packed_mask.expand(decoder_inputs[samples].shape[0],
                                                                                 -1, -1, -1),
            encoder_hidden_states=hidden[samples], encoder_attention_mask=attention_mask[samples], use_cache=False,
        ).last_hidden_state.unflatten(1, (num_candidates, length))
        if model.config.scale_decoder_outputs:
            decoded = decoded * (model.model_dim**-0.5)
        targets = labels[samples]
        start_log_probs = model.lm_head(decoded[:, 0, 0]).float().log_softmax(-1).gather(1, targets[:, :, 0])
        rest = targets[:, :, 1:]
        valid = rest != -100
        logits = model.lm_head(decoded[:, :, 1:][valid]).float()
        token_log_probs = logits.log_softmax(-1).gather(1, rest[valid].unsqueeze(1)).squeeze(1)
        log_likelihood = start_log_probs.flatten().index_add(0, valid.flatten(0, 1).nonzero()[:, 0], token_log_probs)
        scores[samples] = log_likelihood.view(-1, num_candidates)
    return scores


def score_candidates_one_chunk(model, inputs, candidates, item_trie):
    """`score_candidates` with the vocabulary projection of all positions of a decoder call in one chunk."""
    model.SCORING_ROWS_PER_CHUNK = 1 << 30  # an instance attribute shadows the class default
    try:
        return model.score_candidates(**inputs, candidates=candidates, item_trie=item_trie)
    finally:
        del model.SCORING_ROWS_PER_CHUNK


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny", choices=sorted(NAMED_SHAPES))
    parser.add_argument("--data", default="../shared/data/amazon/beauty")
    parser.add_argument("--tokenizer", default="../shared/tokenizers/t5")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_beams", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_old", action="store_true",
                        help="time only the new paths and the previous likelihood (`packed_blocks`)")
    parser.add_argument("--tasks", nargs="+", default=["sequential", "topn_beam", "topn_likelihood"],
                        choices=["sequential", "topn_beam", "topn_likelihood", "encode_topn"])
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_grad_enabled(False)  # inference only (`encode` alone would otherwise record a graph)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    histories = read_histories(Path(args.data))
    num_users, num_items = max(histories), max(max(items) for items in histories.values())
    model = PeaPODForConditionalGeneration.from_shape(args.shape, num_users=num_users, num_items=num_items,
                                                      user_embedding_dim=64, num_neighbors=20).eval()
    model.set_user_table(torch.randn(num_users + 1, 64), torch.randint(1, num_users + 1, (num_users + 1, 20)))
    trie = model.item_trie(tokenizer)
    users = sorted(random.Random(args.seed).sample(sorted(histories), args.users))
    batches = make_batches(histories, num_items, tokenizer, users, args.batch_size, args.seed)
    beams = args.num_beams

    def beam_search(constraint, restricted, return_scores=True):
        def run(inputs, candidates):
            if constraint is None:  # the same beam search, unconstrained
                return model.generate(
                    **inputs, num_beams=beams, num_return_sequences=beams, max_new_tokens=trie.max_length,
                    length_penalty=0.0, early_stopping=True, do_sample=False, output_scores=True,
                    return_dict_in_generate=True,
                )
            return model.recommend(**inputs, item_trie=trie, candidates=candidates if restricted else None,
                                   num_beams=beams, constraint=constraint, return_scores=return_scores)
        return run

    paths = {
        "sequential": {"unconstrained": beam_search(None, False), "tensor_trie": beam_search("tensor", False),
                       "ids_only": beam_search("tensor", False, return_scores=False),
                       "python_trie": beam_search("prefix_fn", False)},
        "topn_beam": {"unconstrained": beam_search(None, True), "tensor_trie": beam_search("tensor", True),
                      "ids_only": beam_search("tensor", True, return_scores=False),
                      "python_trie": beam_search("prefix_fn", True)},
        "topn_likelihood": {
            "trie": lambda inputs, candidates: model.score_candidates(**inputs, candidates=candidates, item_trie=trie),
            "trie_one_chunk": lambda inputs, candidates: score_candidates_one_chunk(model, inputs, candidates, trie),
            "packed_blocks": lambda inputs, candidates: score_candidates_packed_blocks(model, inputs, candidates,
                                                                                       trie),
            "per_pair": lambda inputs, candidates: score_candidates_per_pair(model, inputs, candidates, trie),
        },
    }
    paths["encode_topn"] = {  # the encoder alone on the top-n prompts: the mask folded into the bias once or per layer
        "folded_bias": lambda inputs, candidates: model.encode(**inputs),
        "stock_t5_stack": lambda inputs, candidates: stock_encode(model, inputs),
    }
    paths = {task: functions for task, functions in paths.items() if task in args.tasks}
    if args.skip_old:
        paths = {task: {k: v for k, v in p.items() if k not in ("python_trie", "per_pair")} for task, p in paths.items()}
    results = {"shape": args.shape, "users": args.users, "batch_size": args.batch_size, "num_beams": beams,
               "rounds": args.rounds, "threads": torch.get_num_threads(), "seed": args.seed}
    if "topn_likelihood" in paths:  # the likelihood paths must agree: the largest score difference on one batch
        scores = {name: function(*batches["topn"][0]) for name, function in paths["topn_likelihood"].items()}
        results["max_abs_difference"] = {name: float((value - scores["trie"]).abs().max())
                                         for name, value in scores.items() if name != "trie"}
    # Per batch, the paths run back to back (so background load hits them alike); each batch's time is its best
    # over the rounds (load only ever slows a run down); users/s = users / the sum of those best times.
    best = {}
    for task, functions in paths.items():
        task_batches = batches["sequential" if task == "sequential" else "topn"]
        for function in functions.values():
            function(*task_batches[0])  # warm-up (allocator, trie tensors)
        seconds = {name: [math.inf] * len(task_batches) for name in functions}
        for _ in range(args.rounds):
            for index, batch in enumerate(task_batches):
                for name, function in functions.items():
                    started = time.perf_counter()
                    function(*batch)
                    seconds[name][index] = min(seconds[name][index], time.perf_counter() - started)
        best[task] = {name: len(users) / sum(times) for name, times in seconds.items()}
    results["users_per_s"] = {task: {k: round(v, 2) for k, v in rates.items()} for task, rates in best.items()}
    ratios, projected = {}, {"test_users": len(histories)}
    for task in ("sequential", "topn_beam"):
        if task not in best:
            continue
        rates = best[task]
        ratios[f"{task}_constrained_over_unconstrained_time"] = round(rates["unconstrained"] / rates["tensor_trie"], 3)
        ratios[f"{task}_tensor_trie_over_ids_only_time"] = round(rates["ids_only"] / rates["tensor_trie"], 3)
        if "python_trie" in rates:
            ratios[f"{task}_python_trie_over_tensor_trie_time"] = round(rates["tensor_trie"] / rates["python_trie"], 3)
    if "topn_likelihood" in best:
        rates = best["topn_likelihood"]
        num_candidates = batches["topn"][0][1].shape[1]
        results["candidates_per_s"] = {name: round(rate * num_candidates) for name, rate in rates.items()}
        for name in rates:
            if name != "trie":
                ratios[f"topn_likelihood_{name}_over_trie_time"] = round(rates["trie"] / rates[name], 3)
        projected["topn_likelihood_minutes"] = {name: round(len(histories) / rate / 60, 1)
                                                for name, rate in rates.items()}
    results["time_ratios"] = ratios
    if "encode_topn" in best:
        ratios["encode_topn_stock_over_folded_time"] = round(best["encode_topn"]["folded_bias"]
                                                             / best["encode_topn"]["stock_t5_stack"], 3)
    if {"sequential", "topn_beam", "topn_likelihood"} <= best.keys():  # the evaluator runs sequential, then top-n (beam search and likelihood on the same batch)
        seconds_per_user = 1 / best["sequential"]["ids_only"] + 1 / best["topn_beam"]["ids_only"] \
            + 1 / best["topn_likelihood"]["trie"]
        projected["minutes"] = round(len(histories) * seconds_per_user / 60, 1)
    results["projected_all_users"] = projected
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
