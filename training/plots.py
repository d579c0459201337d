"""Moved to `training.figures`; this name stays so installs made before the move keep their console script."""
from training.figures import (  # noqa: F401
    explain_user,
    explain_user_main,
    heads_figure,
    plot_user_attention,
)
