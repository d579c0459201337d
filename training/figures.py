"""Figures: the paper's Figure 5 (a metric against the number of heads, MLP as 0) and a user's attention heatmap.

    peapod-explain-user --checkpoint runs/demo/model --user_id 1 --output attention_user1.png
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, pstdev

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt
import torch

from configuration_peapod import PeaPODInputError
from datasets_scripts.console import parse_dataclasses, run_console_script
from datasets_scripts.files import atomic_path
from modeling_peapod import PeaPODForConditionalGeneration


def _save_figure(figure, output: str | os.PathLike) -> Path:
    """Save atomically (a temporary file in the same folder, renamed), with default permissions."""
    output = Path(output)
    try:
        with atomic_path(output) as temporary:
            figure.savefig(temporary, dpi=150, bbox_inches="tight", format=output.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(figure)
    return output


def user_attention(model, user_id: int) -> tuple[torch.Tensor, list[int]]:
    """The prompt encoder's attention of `user_id` over its neighbours: ([H, n] weights, neighbour ids)."""
    if getattr(model.config, "prompt_encoder", None) != "mha":
        raise ValueError(f"attention exists only for prompt_encoder='mha', this model has {model.config.prompt_encoder!r}")
    if not 1 <= user_id <= model.config.num_users:
        raise ValueError(f"user_id={user_id} is not in the model's user table (1..{model.config.num_users})")
    with torch.no_grad():
        _, attention = model.collaborative_prompt(torch.tensor([user_id]), output_attentions=True)
    return attention[0].cpu(), model.user_neighbors[user_id].tolist()


def plot_user_attention(model, user_id: int, output: str | os.PathLike) -> Path:
    """A heatmap of one user's attention over its n most similar users, one row per head."""
    weights, neighbors = user_attention(model, user_id)
    figure, axis = plt.subplots(figsize=(max(4, 0.45 * len(neighbors)), 0.6 * weights.shape[0] + 1.2))
    image = axis.imshow(weights.numpy(), aspect="auto", cmap="viridis", vmin=0)
    axis.set_xticks(range(len(neighbors)), [str(n) for n in neighbors], rotation=90, fontsize=7)
    axis.set_yticks(range(weights.shape[0]), [f"head {h + 1}" for h in range(weights.shape[0])])
    axis.set_xlabel("neighbour user id (most similar first)")
    axis.set_title(f"user {user_id}: attention over neighbours (eq. 7)")
    figure.colorbar(image, ax=axis, fraction=0.03)
    return _save_figure(figure, output)


def heads_figure(results: list[dict], metric: str, output: str | os.PathLike) -> Path:
    """Figure 5 of the paper: `metric` (mean ± std over seeds) against the number of heads, with MLP as 0 heads.

    `results` are experiment records with keys "heads" (0 for mlp), "task" → metrics, as written by
    experiments/run.py: {"heads": H, "results": {task_name: {metric: value}}}.
    """
    by_task: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in results:
        for task, metrics in record["results"].items():
            if metric in metrics:
                by_task[task][int(record["heads"])].append(float(metrics[metric]))
    if not by_task:
        raise ValueError(f"no result has the metric {metric!r}")
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for task, values in sorted(by_task.items()):
        heads = sorted(values)
        axis.errorbar(heads, [mean(values[h]) for h in heads], yerr=[pstdev(values[h]) for h in heads],
                      marker="o", capsize=3, label=task)
    axis.set_xlabel("attention heads H (0 = MLP)")
    axis.set_ylabel(metric)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _save_figure(figure, output)


@dataclass
class ExplainUserArguments:
    checkpoint: str = field(metadata={"help": "A PeaPOD checkpoint folder (or Hub id)."})
    user_id: int = field(metadata={"help": "The user whose attention is shown."})
    output: str = field(default="attention.png", metadata={"help": "The PNG to write."})


def explain_user(argv: list[str] | None = None) -> Path:
    """`peapod-explain-user` as a Python function: the heatmap PNG's path (raises on a user's mistake).

    The checkpoint is loaded with the installed `PeaPODForConditionalGeneration`, never with the folder's code."""
    (args,) = parse_dataclasses(ExplainUserArguments, argv, "peapod-explain-user")
    if not (Path(args.checkpoint) / "config.json").is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no config.json there (a folder saved by peapod-train)")
    output = Path(args.output)
    if output.is_dir() or any(parent.exists() and not parent.is_dir() for parent in output.parents):
        raise PeaPODInputError(f"--output {args.output}: cannot write a file there")
    model = PeaPODForConditionalGeneration.from_pretrained(args.checkpoint).eval()
    try:
        weights, neighbors = user_attention(model, args.user_id)
    except ValueError as error:  # a user id outside the table, a model without attention: the user's choice
        raise PeaPODInputError(f"--user_id {args.user_id}: {error}") from None
    path = plot_user_attention(model, args.user_id, output)
    print(json.dumps({"user_id": args.user_id, "neighbors": neighbors, "attention": weights.tolist(),
                      "png": str(path)}, indent=1))
    return path


def explain_user_main(argv: list[str] | None = None) -> int:
    """The `peapod-explain-user` console script: 0 on success, 2 with one line on a user's mistake."""
    return run_console_script("peapod-explain-user", explain_user, argv)
