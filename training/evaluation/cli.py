"""`peapod-evaluate`: evaluate a checkpoint (and/or the baselines) on a prepared folder (training/evaluation/runner.py).

    peapod-evaluate --checkpoint runs/beauty-peapod --prepared_dir prepared/beauty --split test \
        --output_dir runs/beauty-peapod/eval-test --baselines popularity pmf

writes `results.json` (every number, the excluded users, timing and settings) and `results.md` (the tables), and
prints the tables. Without --checkpoint only the baselines run.

The checkpoint and its tokenizer are loaded with the installed classes (`PeaPODForConditionalGeneration`,
`datasets_scripts.tokenizer_loading.load_tokenizer`): code files or an `auto_map` inside a checkpoint folder are
never executed. Every argument is checked before anything is loaded, so a bad `--output_dir` is reported before an
evaluation that could not be saved. `main()` is the console script (exit status 0, or 2 with one line);
`evaluate(argv)` returns the report dict; `training.evaluation.api.evaluate(EvaluateArguments(...))` is the typed API.
"""

from __future__ import annotations

import json
import sys

from datasets_scripts.console import parse_dataclasses, run_console_script

from .api import EvaluateArguments, check_arguments, model_name, parse_shard  # noqa: F401 (the CLI's names)
from .api import evaluate as run_evaluation
from .report import markdown_table


def evaluate(argv: list[str] | None = None) -> dict:
    """`peapod-evaluate` as a Python function: parse `argv`, run `training.evaluation.api.evaluate`, print the tables;
    returns the report (raises on a user's mistake)."""
    (args,) = parse_dataclasses(EvaluateArguments, argv, "peapod-evaluate")
    result = run_evaluation(args)
    report = result.report
    if not result.complete:
        shard = parse_shard(args.shard)
        print(f"shard {shard[0]}/{shard[1]} done: its chunks are in {args.chunk_dir}; chunks of other shards are "
              f"missing for {', '.join(report['chunks']['incomplete_tasks'])}. When every shard has finished, the last "
              "one to finish (or a rerun without --shard, which loads every chunk) writes the results.")
        return report
    reports = [path for path in result.written if path.suffix in (".json", ".md") and path.name.startswith("results")]
    if reports:
        print(f"wrote {' and '.join(map(str, reports))}")
    else:
        print(json.dumps(report["results"], indent=2))
    print(markdown_table(report, model_name(args)))
    if args.update_model_card:
        print(f"updated {result.written[-1]}")
    return report


def main(argv: list[str] | None = None) -> int:
    """The `peapod-evaluate` console script: 0 on success, 2 with one line on a user's mistake."""
    return run_console_script("peapod-evaluate", evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
