"""The model factory: `ModelArguments` + a prepared folder -> a `PeaPODForConditionalGeneration` sized for the data,
its frozen user table installed (a new model) or checked (a PeaPOD checkpoint continued)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import AutoConfig

from configuration_peapod import PeaPODConfig, PeaPODInputError
from datasets_scripts.user_embeddings import (
    PMF_LAMBDA_REG,
    PMF_NEGATIVES_PER_POSITIVE,
    build_neighbor_table,
)
from modeling_peapod import PeaPODForConditionalGeneration
from training.arguments import ModelArguments, resolve_base_model

logger = logging.getLogger("peapod.train")


def is_peapod_checkpoint(path: str) -> bool:
    config_file = Path(path, "config.json")
    return config_file.exists() and json.loads(config_file.read_text()).get("model_type") == "peapod"


def build_model(model_args: ModelArguments, prepared) -> PeaPODForConditionalGeneration:
    """A model sized for the prepared data, its user table installed (or checked, for a PeaPOD checkpoint)."""
    embeddings, neighbors = prepared.user_embeddings, prepared.user_neighbors
    num_neighbors = model_args.num_neighbors or neighbors.shape[1]
    if num_neighbors != neighbors.shape[1]:
        neighbors = build_neighbor_table(embeddings, num_neighbors)
    peapod_fields = model_args.config_fields() | {
        "num_users": prepared.num_users, "num_items": prepared.num_items, "user_embedding_dim": embeddings.shape[1],
        "num_neighbors": num_neighbors,
    }
    base, random_shape = resolve_base_model(model_args)
    if random_shape is not None:
        model = PeaPODForConditionalGeneration.from_shape(random_shape, **peapod_fields)
    elif is_peapod_checkpoint(base):
        model = PeaPODForConditionalGeneration.from_pretrained(base)
        logger.warning("Continuing from the PeaPOD checkpoint %s: its own config fixes the model (prompt encoder, "
                       "sizes, dropout); the model flags of this command are not applied, but for the training-only "
                       "--user_prompt_dropout when given", base)
        if model_args.user_prompt_dropout is not None:  # e.g. the explanations-first recipe's second stage
            model.config.user_prompt_dropout = model_args.user_prompt_dropout
        if model.has_collaborative_prompt and model.config.num_users != prepared.num_users:
            raise PeaPODInputError(
                f"{base} has a user table of {model.config.num_users} users but the prepared data has "
                f"{prepared.num_users}: a PeaPOD checkpoint can only continue on the data of its user table"
            )
        return model
    elif model_args.random_init:
        model = PeaPODForConditionalGeneration(PeaPODConfig.from_t5(AutoConfig.from_pretrained(base), **peapod_fields))
    else:
        model = PeaPODForConditionalGeneration.from_t5_pretrained(base, **peapod_fields)
    if model.has_collaborative_prompt:
        model.set_user_table(embeddings, neighbors)
        install_item_factors(model, prepared)
    return model


def install_item_factors(model: PeaPODForConditionalGeneration, prepared) -> None:
    """Keep a PMF table's item factors in the model (saved in model.safetensors), so the checkpoint can fold in
    users outside its table (`fold_in_users`, docs/fold-in.md). The fold-in solves PMF's objective, so only a table
    made by PMF qualifies: BPR's item factors (a ranking loss, item biases not kept), BiVAE's and user-supplied
    tables get none."""
    if prepared.item_embeddings is None or not model.has_collaborative_prompt:
        return
    config = prepared.config
    source = (config.get("neighbor_diagnostic") or {}).get("chosen") or config.get("arguments", {}).get("embedding")
    if source != "pmf":
        return
    pmf = config.get("pmf") or {}  # folders prepared before it was recorded used train_pmf's defaults
    model.set_item_factors(
        prepared.item_embeddings, regularization=pmf.get("lambda_reg", PMF_LAMBDA_REG),
        negatives_per_positive=pmf.get("negatives_per_positive", PMF_NEGATIVES_PER_POSITIVE),
    )
