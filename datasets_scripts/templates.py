"""Prompt templates of the tasks (SPEC §2): our own wording.

Several templates per task for training (one is drawn at random, seeded, per sample), keyed by the task registry
(`configuration_peapod.TASK_REGISTRY`), and one plain template per task for validation and test, which is the
registry's `eval_template` (it lives in the remote-code config so a model on the Hub can write its own prompts). IDs are written `user_{id}` / `item_{id}`; lists of items (a sequential history
of up to 20 most recent items, or the 100 top-n candidates) are written `item_a, item_b, ...`. Targets are the
bare item id (recommendation) or the explanation sentence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from configuration_peapod import DEFAULT_TASKS, TASK_REGISTRY

TASKS = DEFAULT_TASKS  # the registry's order: task_id = index
MAX_HISTORY = 20  # SPEC §2: the 20 most recent items

# Placeholders: {user} user id, {history} / {candidates} formatted item lists, {item} the explained item.
TRAIN_TEMPLATES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "sequential": (
        "user_{user} has purchased {history} in this order. Which item will the user buy next?",
        "Here is the purchase history of user_{user}: {history}. Predict the next item.",
        "After buying {history}, what does user_{user} purchase next?",
        "user_{user} interacted with {history}. Recommend the item that comes next.",
        "Given the items {history} bought by user_{user}, guess the following purchase.",
    ),
    "topn": (
        "Which of these items should be recommended to user_{user}? Candidates: {candidates}",
        "Pick the item that user_{user} is most likely to buy from {candidates}.",
        "user_{user} is shopping. Choose the best item among {candidates}.",
        "From the candidate list {candidates}, select one item for user_{user}.",
        "Recommend one item to user_{user}; the options are {candidates}.",
    ),
    "explanation": (
        "Explain why user_{user} would like item_{item}.",
        "Write a sentence user_{user} might say about item_{item}.",
        "What would user_{user} point out about item_{item}?",
        "Give the reason behind user_{user}'s opinion of item_{item}.",
        "Describe item_{item} from the point of view of user_{user}.",
    ),
})

EVAL_TEMPLATES: Mapping[str, str] = MappingProxyType({name: spec.eval_template for name, spec in TASK_REGISTRY.items()})


def format_items(items: Sequence[int]) -> str:
    """`item_a, item_b, ...`."""
    return ", ".join(f"item_{item}" for item in items)


def render(
    template: str,
    user: int,
    history: Sequence[int] | None = None,
    candidates: Sequence[int] | None = None,
    item: int | None = None,
) -> str:
    """Fill a template. `history` is truncated to its `MAX_HISTORY` most recent items."""
    return template.format(
        user=user,
        history=format_items(list(history)[-MAX_HISTORY:]) if history is not None else "",
        candidates=format_items(candidates) if candidates is not None else "",
        item=item if item is not None else "",
    )
