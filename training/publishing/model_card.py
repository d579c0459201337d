"""Model cards for saved PeaPOD checkpoints, filled with `huggingface_hub.ModelCard` / `ModelCardData`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from datasets_scripts.files import atomic_write_text
from datasets_scripts.templates import EVAL_TEMPLATES, render

TEMPLATE = "peapod_model_card.md"

BASE_LIMITATIONS = [
    (
        "Item and user ids are those of the training data: the model cannot recommend items it never saw. A new user "
        "gets a collaborative prompt only by fold-in from their items (`fold_in_users`, for a checkpoint that keeps "
        "PMF item factors); otherwise the unknown-user row (id 0), i.e. no personalisation."
    ),
    (
        "Top-n evaluation uses 99 negatives per user regenerated with a fixed seed (the P5 negative files are not "
        "public), so top-n figures are comparable across our runs, not digit for digit with the paper."
    ),
]
OFFLINE_LIMITATION = (
    "No pretrained T5 weights were available when this model was trained: it started from a random initialisation "
    "of the named shape, so its absolute quality is far below the paper's t5-small runs."
)


@dataclass
class TrainingSummary:
    """What the card says about how a checkpoint was made (all plain values, so it is easy to fill and test)."""

    dataset_name: str = "synthetic"
    dataset_description: str = "synthetic demo data"
    id_space: str = "P5/POD integer ids"
    base_model: str | None = None  # a Hub id when the T5 weights were kept; None for a random initialisation
    base_shape: str | None = None
    user_embedding_source: str = "cornac PMF on the training interactions"
    optimisation: str = ""
    seed: int = 0
    hardware: str = "CPU"
    train_time: str = "unknown"
    eval_split: str = "test"
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value
    repo_id: str = "path/to/this-folder"
    example_user: int = 1
    example_history: list[int] = field(default_factory=lambda: [1, 2, 3])
    extra_limitations: list[str] = field(default_factory=list)


def _metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The scores of a task's results, without its bookkeeping entries (num_users, num_samples) and intervals."""
    return {
        name: value for name, value in metrics.items() if not name.startswith("num_") and isinstance(value, int | float)
    }


def _results_table(results: dict[str, dict[str, float]]) -> str:
    rows = ["| task | metric | value |", "| --- | --- | --- |"]
    for task, metrics in results.items():
        rows += [f"| {task} | {metric} | {value:.4f} |" for metric, value in _metrics(metrics).items()]
    return "\n".join(rows) if results else ""


# One model-index result per task and per top-n ranking method. The Hub (huggingface_hub's
# `eval_results_to_model_index`) groups metrics into results by task type, dataset and split, so each entry needs a
# task type of its own; otherwise every task's metrics land in one result under the first task's name.
RESULT_TASKS: dict[str, tuple[str, str]] = {
    "sequential": ("sequential-recommendation", "Sequential recommendation (constrained beam search, whole catalogue)"),
    "topn": ("top-n-recommendation", "Top-n recommendation over 100 candidates"),
    "topn_beam": ("top-n-recommendation-beam-search", "Top-n recommendation over 100 candidates (constrained beam search)"),
    "topn_likelihood": (
        "top-n-recommendation-likelihood", "Top-n recommendation over 100 candidates (exact likelihood ranking)"
    ),
    "explanation": ("text2text-generation", "Explanation generation"),
}
METRIC_NAMES = {
    "hr@1": "HR@1", "hr@5": "HR@5", "hr@10": "HR@10", "ndcg@5": "NDCG@5", "ndcg@10": "NDCG@10",
    "bleu4": "BLEU-4 (tensorflow/nmt)", "rouge1": "ROUGE-1 F1", "rouge2": "ROUGE-2 F1", "rougeL": "ROUGE-L F1",
    "rouge1_nmt": "ROUGE-1 F1 (tensorflow/nmt variant)", "rouge2_nmt": "ROUGE-2 F1 (tensorflow/nmt variant)",
    "rougeL_nmt": "ROUGE-L F1 (tensorflow/nmt variant)",
}


def _eval_results(results: dict[str, dict[str, float]], dataset_name: str, split: str) -> list[EvalResult]:
    """One model-index result per entry of `results` (a task, or a top-n ranking method), metrics by readable name."""
    entries = []
    for task, metrics in results.items():
        task_type, task_name = RESULT_TASKS.get(task, (task.replace("_", "-"), task.replace("_", " ")))
        entries += [
            EvalResult(
                task_type=task_type, task_name=task_name, dataset_type=dataset_name, dataset_name=dataset_name,
                dataset_split=split, metric_type=metric, metric_name=METRIC_NAMES.get(metric, metric),
                metric_value=float(value),
            )
            for metric, value in _metrics(metrics).items()
        ]
    return entries


def build_model_card(config, summary: TrainingSummary) -> ModelCard:
    """Render the card of a model with this `PeaPODConfig` from the template in `model_cards/`."""
    variant = config.prompt_encoder
    prompt_description = {
        "mha": f"{config.prompt_encoder_heads}-head attention from the user's embedding over its "
               f"{config.num_neighbors} most similar users",
        "mlp": "a linear map of the user's embedding (the paper's 0-head ablation)",
        "none": "switched off here (this is POD)",
    }[variant]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text2text-generation",
        license="apache-2.0",
        tags=["peapod", "recommendation", "generative-recommendation", "t5", "custom_code"],
        datasets=[summary.dataset_name],
        base_model=summary.base_model,
        model_name=f"PeaPOD ({variant}) on {summary.dataset_name}",
        eval_results=_eval_results(summary.results, summary.dataset_name, summary.eval_split) or None,
    )
    limitations = list(BASE_LIMITATIONS) + summary.extra_limitations
    if summary.base_model is None:
        limitations.insert(0, OFFLINE_LIMITATION)
    template = resources.files("model_cards").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=card_data.model_name,
        prompt_description=prompt_description,
        tasks=list(config.tasks),
        dataset_description=summary.dataset_description,
        id_space=summary.id_space,
        num_users=config.num_users,
        num_items=config.num_items,
        base_model_description=summary.base_model or f"random initialisation of the {summary.base_shape} shape",
        d_model=config.d_model,
        num_layers=config.num_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        prompt_encoder=variant,
        prompt_encoder_heads=config.prompt_encoder_heads,
        num_neighbors=config.num_neighbors,
        collaborative_prompt_length=config.collaborative_prompt_length,
        user_embedding_dim=config.user_embedding_dim,
        task_prompt_description=(f"L_t = {config.task_prompt_length} per task" if config.use_task_prompts else "off"),
        user_embedding_source=summary.user_embedding_source,
        optimisation=summary.optimisation,
        seed=summary.seed,
        hardware=summary.hardware,
        train_time=summary.train_time,
        eval_split=summary.eval_split,
        results_table=_results_table(summary.results),
        repo_id=summary.repo_id,
        example_user=summary.example_user,
        example_history=list(summary.example_history),
        can_fold_in=getattr(config, "fold_in_regularization", None) is not None,
        example_source=render(EVAL_TEMPLATES["sequential"], summary.example_user, history=summary.example_history),
        example_explanation_source=render(
            EVAL_TEMPLATES["explanation"], summary.example_user, item=summary.example_history[-1]
        ),
        limitations=limitations,
    )


def _write_card(output_dir: Path, card: ModelCard) -> Path:
    """Write `README.md` atomically: a temporary file renamed into place."""
    return atomic_write_text(output_dir / "README.md", str(card))


def write_model_card(output_dir: str | os.PathLike, config, summary: TrainingSummary) -> Path:
    """Write `README.md` into a checkpoint folder (atomically: a temporary file renamed into place)."""
    return _write_card(Path(output_dir), build_model_card(config, summary))


def add_evaluation_to_card(
    checkpoint: str | os.PathLike, report: dict, description: str, dataset_name: str | None = None
) -> Path:
    """Put an evaluation report (`evaluate_checkpoint`'s) into a checkpoint's model card.

    The card's `model-index` gets the report's metrics for its split and `dataset_name` (default: the card's
    training dataset), replacing earlier ones of that split and dataset, and the Markdown gets an "Evaluation"
    section with the table and `description` (how the numbers were made), replacing an earlier section of the
    same split. Baselines stay out of the model-index: they are not this model's results. Written atomically.
    """
    folder = Path(checkpoint)
    path = folder / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train with peapod-train (it writes the card) first")
    card = ModelCard.load(path)
    split = report["split"]
    dataset = dataset_name or (card.data.datasets or ["unknown"])[0]
    kept = [r for r in (card.data.eval_results or []) if (r.dataset_split, r.dataset_name) != (split, dataset)]
    card.data.eval_results = kept + _eval_results(report["results"], dataset, split) or None
    if card.data.eval_results and not card.data.model_name:
        card.data.model_name = folder.name  # the Hub requires a model name beside a model-index
    heading = f"## Evaluation ({split} split)"
    section = f"{heading}\n\n{description}\n\n{_results_table(report['results'])}\n"
    text = card.text
    earlier = re.search(rf"^{re.escape(heading)}$", text, flags=re.MULTILINE)
    if earlier:  # replace the earlier section, up to the next second-level heading
        following = re.search(r"^## ", text[earlier.end():], flags=re.MULTILINE)
        text = text[:earlier.start()] + section + ("\n" + text[earlier.end() + following.start():] if following else "")
    else:
        marker = "\n## Use\n"
        text = text.replace(marker, f"\n{section}{marker}", 1) if marker in text else f"{text}\n{section}"
    card.text = text
    return _write_card(folder, card)
