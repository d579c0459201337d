"""`peapod-prepare`: a P5 folder, raw Amazon reviews or the synthetic demo data -> a prepared folder.

    peapod-prepare --synthetic --output_dir prepared/synthetic --tokenizer path/to/t5 --embedding_dim 64
    peapod-prepare --p5_dir data/amazon/beauty --output_dir prepared/beauty --reindex_items
    peapod-prepare --reviews reviews_Musical_Instruments_5.json.gz --output_dir prepared/instruments
    peapod-prepare --p5_dir data/amazon/toys --output_dir prepared/toys --embedding best --compare_neighbor_sources pmf bpr

See docs/data.md for the formats and the prepared-folder layout.
"""

from __future__ import annotations

import sys

from .console import USER_ERRORS, parse_dataclasses, run_console_script
from .prepared import PrepareArguments, describe_neighbor_diagnostic, prepare


def format_summary(config: dict) -> str:
    """The table printed at the end of a run."""
    statistics = config["statistics"]
    rows = [
        ("users", statistics["num_users"]),
        ("items", statistics["num_items"]),
        ("interactions", statistics["num_interactions"]),
        *statistics["split_sizes"].items(),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':<{width}}  {'count':>10}", "-" * (width + 12)]
    lines += [f"{name:<{width}}  {value:>10,}" for name, value in rows]
    lines.append(f"user table {statistics['user_embedding_shape']}, neighbours {statistics['user_neighbors_shape']}")
    if "neighbor_diagnostic" in config:  # folders prepared before the diagnostic existed have none
        lines.append(describe_neighbor_diagnostic(config["neighbor_diagnostic"]))
    lines.append(f"prepared in {config['seconds']} s -> {config['arguments']['output_dir']}")
    return "\n".join(lines)


def prepare_from_arguments(argv: list[str] | None = None) -> dict:
    """`peapod-prepare` as a function: parse `argv`, build the folder, print the summary; returns prepare_config."""
    (args,) = parse_dataclasses(PrepareArguments, argv, "peapod-prepare")
    fields = vars(args).copy()
    output_dir = fields.pop("output_dir")
    config = prepare(output_dir, **fields)
    print(format_summary(config))
    return config


def main(argv: list[str] | None = None) -> int:
    """The console script: exit status 0, or 2 with one line on a user's mistake (datasets_scripts.console).

    Every reader of this package reports bad input data as a ValueError naming the file and line (p5_format's
    contract), so here a ValueError is a user's mistake too.
    """
    return run_console_script("peapod-prepare", prepare_from_arguments, argv, user_errors=(*USER_ERRORS, ValueError))


if __name__ == "__main__":
    sys.exit(main())
