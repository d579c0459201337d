"""`peapod-prepare`: a P5 folder, raw Amazon reviews or the synthetic demo data -> a prepared folder.

    peapod-prepare --synthetic --output_dir prepared/synthetic --tokenizer path/to/t5 --embedding_dim 64
    peapod-prepare --p5_dir data/amazon/beauty --output_dir prepared/beauty --reindex_items
    peapod-prepare --reviews reviews_Musical_Instruments_5.json.gz --output_dir prepared/instruments

See docs/data.md for the formats and the prepared-folder layout.
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from .prepared import PrepareArguments, prepare


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
    lines.append(f"prepared in {config['seconds']} s -> {config['arguments']['output_dir']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses(args=argv)
    fields = vars(args).copy()
    output_dir = fields.pop("output_dir")
    try:
        config = prepare(output_dir, **fields)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"peapod-prepare: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
