"""Does a trained checkpoint use its collaborative prompt? Norms, the user-table shuffle test, attention health.

    python experiments/diagnose.py runs/demo/model runs/demo/prepared-synthetic
    python experiments/diagnose.py CHECKPOINT PREPARED --max_users 100 --sequential --output diagnosis.json

Prints (and writes as JSON with `--output`): (a) the mean L2 norms of the task-prompt and collaborative-prompt
vectors against the token embeddings, (b) the test loss and top-n HR@10/NDCG@10 (exact candidate likelihood, all
test users unless `--max_users`) with the user table as is and permuted across users (embeddings and neighbour
lists moved together), the drop, and how far candidate log-likelihoods move, (c) attention health of the mha
prompt encoder, (d) the share of the decoder's cross-attention that lands on the prompt positions. See
`training/diagnostics.py` for the definitions; `prompt_diagnostics.json` in a checkpoint
trained with `--prompt_diagnostics_every K` holds the gradient and prompt norms over training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasets_scripts import load_prepared
from datasets_scripts.tokenizer_loading import load_tokenizer
from modeling_peapod import PeaPODForConditionalGeneration
from training.diagnostics import (
    attention_health,
    cross_attention_on_prompt,
    prompt_norms,
    shuffle_test,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diagnose.py", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("prepared_dir")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--max_users", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the permutation.")
    parser.add_argument("--sequential", action="store_true", help="Also sequential HR@10 by beam search (slower).")
    parser.add_argument("--output", help="Write the diagnosis as JSON here.")
    args = parser.parse_args(argv)
    for path in (args.checkpoint, args.prepared_dir):
        if not Path(path).is_dir():
            parser.error(f"{path} is not a folder")

    # The installed classes, never the checkpoint folder's code (README, "What happens on bad input").
    model = PeaPODForConditionalGeneration.from_pretrained(args.checkpoint).eval()
    tokenizer = load_tokenizer(args.checkpoint, flag="checkpoint (its tokenizer)")
    prepared = load_prepared(args.prepared_dir)
    if not getattr(model, "has_collaborative_prompt", False):
        parser.error(f"{args.checkpoint} has no collaborative prompt (POD): nothing to diagnose")
    diagnosis = {
        "checkpoint": args.checkpoint, "prepared": args.prepared_dir, "norms": prompt_norms(model),
        "shuffle": shuffle_test(model, tokenizer, prepared, split=args.split, max_users=args.max_users,
                                seed=args.seed, sequential=args.sequential),
        "attention": attention_health(model),
        "cross_attention_on_prompt": {
            task: cross_attention_on_prompt(model, tokenizer, prepared.dataset[f"{task}_{args.split}"], range(64))
            for task in ("sequential", "topn") if f"{task}_{args.split}" in prepared.dataset
        },
    }
    diagnosis["shuffle"]["as_is"].pop("topn_hits", None)
    diagnosis["shuffle"]["permuted"].pop("topn_hits", None)
    norms, shuffle, attention = diagnosis["norms"], diagnosis["shuffle"], diagnosis["attention"]
    print("(a) mean L2 norms: " + ", ".join(f"{key} {value:.3f}" for key, value in norms.items()))
    print(f"(b) user table permuted across users ({shuffle['users']} {args.split} users):")
    for key, drop in shuffle["drop"].items():
        print(f"    {key:<22} as is {shuffle['as_is'][key]:.4f}  permuted {shuffle['permuted'][key]:.4f}  "
              f"{'increase' if key.endswith('loss') else 'drop'} {drop:+.4f}")
    change = shuffle.get("loglik_change")
    if change:
        print(f"    candidate log-likelihoods move by {change['mean_abs']:.3f} nats on average (max "
              f"{change['max_abs']:.3f}) against a {change['mean_spread_within_user']:.3f}-nat spread within a user")
    if "entropy_mean" in attention:
        print(f"(c) attention over {attention['num_neighbors']} neighbours: entropy {attention['entropy_mean']:.3f} "
              f"nats (uniform {attention['entropy_uniform']:.3f}), top weight {attention['max_weight_mean']:.3f}, "
              f"most-attended = largest-norm neighbour {attention['argmax_is_largest_norm']:.3f} "
              f"(chance {attention['chance']:.3f}), all heads agree {attention['heads_agree']:.3f}")
    else:
        print(f"(c) {attention['note']}")
    for task, shares in diagnosis["cross_attention_on_prompt"].items():
        print(f"(d) {task}: decoder cross-attention on the prompt positions (first 64 users, first target token): "
              + ", ".join(f"{name} {value['attention']:.4f} (uniform share {value['uniform']:.4f})"
                          for name, value in shares.items()))
    if args.output:
        Path(args.output).write_text(json.dumps(diagnosis, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
