"""The numba PMF loop (datasets_scripts/fast_pmf.py) against cornac's own: same start, same fit, up to rounding."""

import json

import numpy as np
import pytest
import torch

from datasets_scripts import splits
from datasets_scripts.fast_pmf import fit_pmf, initial_factors
from datasets_scripts.synthetic import synthetic_data
from datasets_scripts.user_embeddings import (
    PMF_NEGATIVES_PER_POSITIVE,
    cornac_train_set,
    train_pmf,
)


@pytest.fixture(scope="module")
def planted_user_train_set():
    """cornac's training set of the planted `user` variant's training items (720 users, one sampled zero each)."""
    data = synthetic_data("user", seed=0)
    loo = splits.leave_one_out(data.histories)
    return cornac_train_set(loo.train, data.num_users, data.num_items, 0, PMF_NEGATIVES_PER_POSITIVE)


def test_starts_from_cornacs_initial_factors():
    from cornac.models.pmf import pmf

    cornac_users, cornac_items = pmf._init_factors(7, 9, 5, {}, 3)
    users, items = initial_factors(7, 9, 5, 3)
    assert np.array_equal(users, cornac_users) and np.array_equal(items, cornac_items)
    assert not np.array_equal(initial_factors(7, 9, 5, 4)[0], users)


@pytest.mark.parametrize("negatives_per_positive", [PMF_NEGATIVES_PER_POSITIVE, 0])
def test_fits_what_cornac_fits(planted_user_train_set, negatives_per_positive):
    """100 epochs at k 64: the float32 loop ends within 1e-3 (relative) of cornac's float64 factors, and in float64
    within 1e-4; with positives only (every rating 1, which cornac's rating scaling leaves at 1) as well."""
    import cornac

    train_set = planted_user_train_set
    if negatives_per_positive == 0:
        data = synthetic_data("user", seed=0)
        train_set = cornac_train_set(splits.leave_one_out(data.histories).train, data.num_users, data.num_items, 0, 0)
        assert train_set.min_rating == train_set.max_rating == 1
    settings = {"k": 64, "max_iter": 100, "learning_rate": 1e-3, "lambda_reg": 1e-3, "seed": 0}
    reference = cornac.models.PMF(**settings).fit(train_set)
    scale = np.abs(reference.U).max()
    for dtype, tolerance in ((np.float32, 1e-3), (np.float64, 1e-4)):
        users, items = fit_pmf(train_set, **settings, dtype=dtype)
        assert users.dtype == dtype and users.shape == reference.U.shape and items.shape == reference.V.shape
        assert np.abs(users - reference.U).max() < tolerance * scale, dtype
        assert np.abs(items - reference.V).max() < tolerance * np.abs(reference.V).max(), dtype
    # The factors moved far from their start: the comparison above is of trained factors, not of two starts.
    assert scale > 100 * np.abs(initial_factors(train_set.num_users, train_set.num_items, 64, 0)[0]).max()


def test_train_pmf_implementations_rank_alike():
    """Through `train_pmf`: the two loops give the same nearest neighbours and the same top items."""
    data = synthetic_data("user", seed=0)
    train = splits.leave_one_out(data.histories).train
    tables = {name: train_pmf(train, data.num_users, data.num_items, k=32, seed=0, max_iter=60, implementation=name)
              for name in ("numba", "cornac")}
    numba_users, numba_items = tables["numba"]
    assert numba_users.dtype == torch.float32 and numba_users.shape == (data.num_users + 1, 32)
    assert numba_users[0].abs().sum() == 0 and numba_items[0].abs().sum() == 0
    top = {name: torch.topk(users[1:] @ items[1:].T, 10).indices for name, (users, items) in tables.items()}
    assert (top["numba"] == top["cornac"]).float().mean() > 0.98
    with pytest.raises(ValueError, match="'fortran'.*numba, cornac"):
        train_pmf(train, data.num_users, data.num_items, k=4, max_iter=1, implementation="fortran")


def test_prepare_records_the_implementation(synthetic_prepared):
    config = json.loads((synthetic_prepared / "prepare_config.json").read_text())
    assert config["pmf"]["implementation"] == config["arguments"]["pmf_implementation"] == "numba"
    assert "pmf (numba training loop)" in (synthetic_prepared / "README.md").read_text()
