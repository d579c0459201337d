"""A randomly initialised PeaPOD checkpoint of a named shape carrying a prepared folder's user table (by hand).

    python benchmarks/random_checkpoint.py --prepared_dir prepared/beauty --shape tiny --output_dir runs/random-tiny
    peapod-evaluate --checkpoint runs/random-tiny --prepared_dir prepared/beauty --tasks sequential topn ...

For timing `peapod-evaluate` on real data without training first (its numbers are those of an untrained model).
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer

from configuration_peapod import NAMED_SHAPES
from datasets_scripts.prepared import load_prepared
from modeling_peapod import PeaPODForConditionalGeneration


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--shape", default="tiny", choices=sorted(NAMED_SHAPES))
    parser.add_argument("--tokenizer", default="../shared/tokenizers/t5")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    prepared = load_prepared(args.prepared_dir)
    model = PeaPODForConditionalGeneration.from_shape(
        args.shape, num_users=prepared.num_users, num_items=prepared.num_items,
        user_embedding_dim=prepared.user_embeddings.shape[1], num_neighbors=prepared.user_neighbors.shape[1],
    )
    model.set_user_table(prepared.user_embeddings, prepared.user_neighbors)
    model.save_pretrained(args.output_dir)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(args.output_dir)
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main()
