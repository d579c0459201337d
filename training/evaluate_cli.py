"""Moved to `training.evaluation.cli`; this name stays so installs made before the move keep their console script."""
from training.evaluation.cli import EvaluateArguments, evaluate, main  # noqa: F401
