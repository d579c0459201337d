"""The task registry (configuration_peapod.TASK_REGISTRY) is the one list of tasks: templates, data task ids,
the collator's truncation rule and evaluation read it, and a model whose task order differs from the data's is
refused instead of silently feeding one task's prompt to another."""

import pytest
from test_evaluation import FAST, prepared, tiny_model, tokenizer  # noqa: F401 (fixtures)

from configuration_peapod import (
    DEFAULT_TASKS,
    TASK_REGISTRY,
    PeaPODInputError,
    check_task_order,
    task_spec,
)
from datasets_scripts.prepared import check_task_order_matches, data_task_ids
from datasets_scripts.templates import EVAL_TEMPLATES, TRAIN_TEMPLATES
from training.collator import HISTORY_TASK_IDS
from training.evaluation import evaluate_checkpoint
from training.evaluation.runner import TASKS


def test_every_registered_task_has_training_templates_and_its_eval_template():
    assert set(TRAIN_TEMPLATES) == set(TASK_REGISTRY)
    assert dict(EVAL_TEMPLATES) == {name: spec.eval_template for name, spec in TASK_REGISTRY.items()}
    assert TASKS == DEFAULT_TASKS == tuple(TASK_REGISTRY)
    assert {spec.target for spec in TASK_REGISTRY.values()} <= {"item", "text"}


def test_the_registry_says_which_prompts_may_be_cut_and_which_rank_candidates():
    assert HISTORY_TASK_IDS == (DEFAULT_TASKS.index("sequential"),)
    assert [name for name, spec in TASK_REGISTRY.items() if spec.ranks_candidates] == ["topn"]
    assert task_spec("explanation").metrics == ("bleu_nmt", "rouge_f1")
    with pytest.raises(PeaPODInputError, match="unknown task 'rating'"):
        task_spec("rating")


def test_prepared_data_numbers_its_tasks_in_registry_order(prepared):  # noqa: F811
    assert data_task_ids(prepared.dataset) == {name: DEFAULT_TASKS.index(name) for name in DEFAULT_TASKS}


def test_a_config_with_another_task_order_is_refused_naming_both_orders(prepared, tokenizer):  # noqa: F811
    swapped = ["topn", "sequential", "explanation"]
    model = tiny_model(prepared, tasks=swapped)
    with pytest.raises(PeaPODInputError) as error:
        check_task_order_matches(model.config, prepared)
    assert str(swapped) in str(error.value) and str(list(DEFAULT_TASKS)) in str(error.value)
    with pytest.raises(PeaPODInputError, match="task order mismatch"):
        evaluate_checkpoint(model, tokenizer, prepared, tasks=["sequential"], **FAST)
    check_task_order_matches(tiny_model(prepared).config, prepared)  # the registry's order passes


def test_check_task_order_accepts_a_subset_at_the_same_positions():
    check_task_order(["sequential", "topn", "explanation"], {"topn": 1}, "model", "data")
    with pytest.raises(PeaPODInputError, match="'topn' is id 1"):
        check_task_order(["sequential"], {"topn": 1}, "model", "data")
