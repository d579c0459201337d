"""Dropout and learning-rate schedule, separately, on the constructed user-signal task of tests/test_learning.py.

    python experiments/recipe_probe.py

A tiny PeaPOD is trained (seeded, CPU, seconds) on a task only the user table can answer (two user groups, a long
candidate list as input); printed per recipe: group accuracy with the table as is and permuted, and how far the
permutation moves the candidate scores as a share of their spread within a user (`_shuffle_effect`).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RECIPES = {
    "dropout 0, constant lr (demo)": {},
    "dropout 0.1, linear decay (paper)": {"dropout_rate": 0.1, "linear_decay": True},
    "dropout 0.1, constant lr": {"dropout_rate": 0.1},
    "dropout 0, linear decay": {"linear_decay": True},
}


def main() -> None:
    from test_learning import _shuffle_effect, _train_on_user_signal
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ROOT.parent / "shared" / "tokenizers" / "t5"))
    for steps in (30, 60):
        for name, recipe in RECIPES.items():
            model, inputs, candidates, accuracy = _train_on_user_signal(tokenizer, steps=steps, **recipe)
            scores, shuffled, _, effect = _shuffle_effect(model, inputs, candidates, tokenizer)
            print(f"{steps} steps, {name}: accuracy {accuracy(scores):.2f} (table permuted {accuracy(shuffled):.2f}), "
                  f"scores move by {effect:.4f} of their spread", flush=True)


if __name__ == "__main__":
    main()
