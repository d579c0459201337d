"""Same seed, same numbers across a refactoring: a tiny prepare -> train -> evaluate run through the entry points
that exist before and after the restructuring of issue 12 (`datasets_scripts.prepare`, `training.cli.train(argv)`,
`training.evaluate_cli.evaluate(argv)`), writing its losses and metrics as JSON. Run it once on each tree, by hand:

    git archive 39f6c01 | (mkdir -p /tmp/before && tar -x -C /tmp/before)
    PYTHONPATH=/tmp/before python benchmarks/same_numbers.py /tmp/sn-before before.json
    python benchmarks/same_numbers.py /tmp/sn-after after.json
    cmp before.json after.json && echo same numbers

(PYTHONPATH puts the old tree's packages ahead of the installed ones; the script says which tree it ran.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets_scripts
import training.cli
import training.evaluate_cli
from datasets_scripts.files import atomic_write_text

TOKENIZER = str(Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "t5")


def main(work: Path, output: Path) -> None:
    print("code from", Path(training.cli.__file__).resolve().parents[1], file=sys.stderr)
    datasets_scripts.prepare(work / "prepared", synthetic=True, tokenizer=TOKENIZER, max_users=30, embedding_dim=8,
                             num_neighbors=3, pmf_max_iter=5, seed=0)
    metrics = training.cli.train([
        "--prepared_dir", str(work / "prepared"), "--output_dir", str(work / "model"), "--base_model", "random:tiny",
        "--tokenizer", TOKENIZER, "--max_steps", "12", "--per_device_train_batch_size", "8", "--logging_steps", "3",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
        "--disable_tqdm", "True", "--max_eval_samples_per_task", "16", "--dataloader_num_workers", "0",
    ])
    report = training.evaluate_cli.evaluate([
        "--checkpoint", str(work / "model"), "--prepared_dir", str(work / "prepared"), "--max_users", "8",
        "--num_beams", "10", "--top_k", "5", "--max_explanation_tokens", "8", "--baselines", "popularity", "pmf",
    ])
    record = {"train": {key: value for key, value in metrics.items() if "runtime" not in key and "per_second" not in key},
              "results": report["results"], "baselines": report["baselines"]}
    atomic_write_text(output, json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
