"""What every `peapod-*` console script shares: exit statuses and one-line errors.

`run_console_script(prog, function, argv)` calls `function(argv)` and returns the process exit status: 0 on
success; 2 with a single line `<prog>: error: <message>` on stderr for a user's mistake (argparse's own convention,
which `HfArgumentParser` already follows for unknown flags and bad values); anything else is a bug of ours and
keeps its traceback. A user's mistake is a `PeaPODInputError` (raised with a message naming the file, line, flag or
value) or one of the file-system errors a user causes by naming a missing, existing or unreadable path.

The console scripts' `main()` functions return this status (setuptools passes it to `sys.exit`); the Python API
functions beside them (`training.cli.train`, `training.evaluation.cli.evaluate`, `training.demo.run_demo`, ...)
return their results and raise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from configuration_peapod import PeaPODInputError

USER_ERRORS: tuple[type[BaseException], ...] = (
    PeaPODInputError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined; an OSError without text gets its path)."""
    text = str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(error).__name__


def _raise_input_error(message: str):
    raise PeaPODInputError(message)


def argument_parser(classes, prog: str):
    """An `HfArgumentParser` whose errors are one-line PeaPODInputErrors, not argparse's usage dump and exit: with
    `Seq2SeqTrainingArguments` the usage alone is a hundred lines, burying the one that matters."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(classes, prog=prog)
    parser.error = _raise_input_error
    return parser


def parse_dataclasses(classes, argv: Sequence[str] | None, prog: str, **kwargs):
    """`argument_parser(classes, prog).parse_args_into_dataclasses(args=argv, **kwargs)`; a ValueError raised while
    parsing (unused arguments, a dataclass's `__post_init__` check) is the user's: a PeaPODInputError."""
    try:
        return argument_parser(classes, prog).parse_args_into_dataclasses(args=argv, **kwargs)
    except PeaPODInputError:
        raise
    except ValueError as error:
        raise PeaPODInputError(f"{one_line(error)} (see {prog} --help)") from None


def run_console_script(
    prog: str, function: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None,
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> int:
    """Run `function(argv)`; 0 on success, 2 and `<prog>: error: ...` on a user's mistake (see the module docstring)."""
    try:
        function(argv)
    except user_errors as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
