"""`peapod-train`: train a PeaPOD model on a prepared folder with `PeaPODTrainer`.

    peapod-train --prepared_dir prepared/beauty --output_dir runs/beauty --base_model t5-small ...
    peapod-train experiments/configs/paper.yaml --prepared_dir prepared/beauty     # a config file, then overrides

Arguments come from three dataclasses (training/arguments.py) parsed by `HfArgumentParser`: `ModelArguments` (base
T5, prompt variant and sizes; defaults from `PeaPODConfig`), `DataArguments` (prepared folder or the synthetic
default, sample limits) and `PeaPODTrainingArguments`, transformers' `Seq2SeqTrainingArguments` (optimiser, batch
size, schedule, saving, `--push_to_hub`). A JSON or YAML file given as
the first argument supplies defaults that later command-line flags override; unknown keys are an error.

`main()` is the console script (exit status 0, or 2 with one `peapod-train: error: ...` line on a user's mistake);
`train(argv)` is the same run as a Python function returning the metrics dict; it parses and calls the typed API,
`training.api.train(model_args, data_args, training_args)`. Every argument is checked (`check_arguments`) before
any data or model is loaded.
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from configuration_peapod import PeaPODInputError
from datasets_scripts.console import parse_dataclasses, run_console_script
from training import api
from training.arguments import ARGUMENT_CLASSES


def _known_keys() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}


def config_file_arguments(path: str) -> list[str]:
    """A JSON/YAML file of arguments as command-line flags (so later flags override it); unknown keys are errors.

    A missing file, a file that is not UTF-8 and a syntax error are PeaPODInputErrors naming the file and line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PeaPODInputError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise PeaPODInputError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PeaPODInputError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(values, dict):
        raise PeaPODInputError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}")
    known = _known_keys()
    unknown = [key for key in values if key not in known]
    if unknown:
        hints = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        details = ", ".join(f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for key, hint in hints.items())
        raise PeaPODInputError(f"{path}: unknown config keys {details}")
    argv: list[str] = []
    for key, value in values.items():
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def parse_arguments(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = config_file_arguments(argv[0]) + argv[1:]
    model_args, data_args, training_args, unknown = parse_dataclasses(
        ARGUMENT_CLASSES, argv, "peapod-train", return_remaining_strings=True
    )
    if unknown:
        raise PeaPODInputError(f"unknown arguments {unknown}; see peapod-train --help")
    return model_args, data_args, training_args


def train(argv: list[str] | None = None) -> dict:
    """`peapod-train` as a Python function: parse `argv`, then `training.api.train`; returns the metrics dict.

    Raises PeaPODInputError (or a FileNotFoundError/FileExistsError) on a user's mistake, before any heavy work.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return api.train(*parse_arguments(argv)).metrics


def main(argv: list[str] | None = None) -> int:
    """The `peapod-train` console script: 0 on success, 2 with one line on a user's mistake."""
    return run_console_script("peapod-train", train, argv)


if __name__ == "__main__":
    sys.exit(main())
