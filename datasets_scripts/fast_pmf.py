"""cornac's PMF training loop, compiled with numba and vectorised in float32: the same model ~10x faster.

Written by hand because no maintained library has it fast: cornac's `pmf_non_linear` (the paper's PMF, which
`user_embeddings.train_pmf` runs) is a Cython loop over the ratings in float64 whose inner loops over the k factors
are not vectorised, so the paper's 100 epochs at k = 512 take about 280 s of one core on Amazon Beauty (22,363
users, 307,552 training ratings with the sampled zeros), most of a full-size `peapod-prepare` (issue 11). This
module runs the identical algorithm from the identical start — cornac's training set (its user/item indices and
rating order), cornac's initial factors (normal, std 0.001, seeded by cornac's own generator), per-rating SGD with
RMSProp (gamma 0.9, eps 1e-8) on the squared error of sigmoid(u·v) clipped at |u·v| > 6, L2 weight `lambda_reg` —
but in float32 with the k-loops vectorised, and without cornac's n x k gradient buffers. The factors therefore
differ from cornac's by rounding, which RMSProp's near-sign-sized steps amplify; the rankings they give are of
equal quality (`benchmarks/pmf_throughput.py` measures both, tests/test_fast_pmf.py pins the agreement).
`train_pmf(..., implementation="cornac")` runs cornac's own loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from tqdm.auto import tqdm

PMF_GAMMA = 0.9  # RMSProp's decay in cornac's PMF (its `gamma` default)
PMF_INIT_STD = 0.001  # cornac's `_init_factors`


# error_model="numpy": numba's default ("python") checks every division for zero, a branch that stops LLVM from
# vectorising the k-loops (measured: 3.5x slower in float32). fastmath lets it reorder the dot-product sums.
@njit(cache=True, fastmath=True, error_model="numpy", boundscheck=False)
def pmf_epoch(user_index, item_index, ratings, user_factors, item_factors, user_cache, item_cache,
              lambda_reg, learning_rate, gamma):
    """One pass of cornac's `pmf_non_linear` over the ratings, updating the factors and RMSProp caches in place.

    Per rating r = (u, i, y): s = u·v; g = sigmoid(s) (0 or 1 beyond |s| > 6, as cornac's); the weighted error
    w = (y - g) g (1 - g); the user row steps first, then the item row with the updated user row (cornac's order).
    Returns the epoch's loss, sum of (y - g)^2 + lambda_reg (|u|^2 + |v|^2) after each update (cornac's report).
    """
    k = user_factors.shape[1]
    dtype = user_factors.dtype.type
    eps = dtype(1e-8)
    one_minus_gamma = dtype(1.0) - gamma
    user_gradient = np.empty(k, user_factors.dtype)
    item_gradient = np.empty(k, user_factors.dtype)
    loss = 0.0
    for r in range(ratings.shape[0]):
        user_row = user_factors[user_index[r]]
        item_row = item_factors[item_index[r]]
        user_row_cache = user_cache[user_index[r]]
        item_row_cache = item_cache[item_index[r]]
        score = dtype(0.0)
        for j in range(k):
            score += user_row[j] * item_row[j]
        if score > 6.0:
            prediction = 1.0
        elif score < -6.0:
            prediction = 0.0
        else:
            prediction = 1.0 / (1.0 + np.exp(-score))
        error = ratings[r] - prediction
        weighted_error = dtype(error * prediction * (1.0 - prediction))
        for j in range(k):
            user_gradient[j] = weighted_error * item_row[j] - lambda_reg * user_row[j]
        for j in range(k):
            user_row_cache[j] = gamma * user_row_cache[j] + one_minus_gamma * user_gradient[j] * user_gradient[j]
            user_row[j] += learning_rate * (user_gradient[j] / (np.sqrt(user_row_cache[j]) + eps))
        for j in range(k):
            item_gradient[j] = weighted_error * user_row[j] - lambda_reg * item_row[j]
        for j in range(k):
            item_row_cache[j] = gamma * item_row_cache[j] + one_minus_gamma * item_gradient[j] * item_gradient[j]
            item_row[j] += learning_rate * (item_gradient[j] / (np.sqrt(item_row_cache[j]) + eps))
        user_norm = dtype(0.0)
        item_norm = dtype(0.0)
        for j in range(k):
            user_norm += user_row[j] * user_row[j]
            item_norm += item_row[j] * item_row[j]
        loss += error * error + lambda_reg * (user_norm + item_norm)
    return loss


def initial_factors(num_users: int, num_items: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """cornac's PMF start, drawn exactly as its `_init_factors`: user then item factors, normal(0, 0.001)."""
    from cornac.utils import get_rng
    from cornac.utils.init_utils import normal

    rng = get_rng(seed)
    user_factors = normal((num_users, k), mean=0.0, std=PMF_INIT_STD, random_state=rng, dtype=np.double)
    item_factors = normal((num_items, k), mean=0.0, std=PMF_INIT_STD, random_state=rng, dtype=np.double)
    return user_factors, item_factors


def fit_pmf(
    train_set, k: int, max_iter: int, learning_rate: float, lambda_reg: float, seed: int, verbose: bool = False,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """PMF factors (U [train_set.num_users, k], V [train_set.num_items, k]) of a cornac `Dataset`, in cornac's order.

    What `cornac.models.PMF(k, max_iter, learning_rate, lambda_reg, seed=seed).fit(train_set)` computes (non-linear
    variant, ratings in [0, 1] as `cornac_train_set` makes them), with `pmf_epoch` as its loop. `verbose` shows a
    progress bar over the epochs with the loss.
    """
    from cornac.utils.common import scale

    user_index, item_index, ratings = train_set.uir_tuple
    user_index = np.ascontiguousarray(user_index, dtype=np.int64)
    item_index = np.ascontiguousarray(item_index, dtype=np.int64)
    if [train_set.min_rating, train_set.max_rating] != [0, 1]:  # cornac's PMF.fit maps the ratings to [0, 1]
        ratings = scale(np.asarray(ratings, dtype=np.float32), 0.0, 1.0, train_set.min_rating, train_set.max_rating)
    ratings = np.ascontiguousarray(ratings, dtype=dtype)
    user_factors, item_factors = (np.ascontiguousarray(f, dtype=dtype)
                                  for f in initial_factors(train_set.num_users, train_set.num_items, k, seed))
    user_cache = np.zeros_like(user_factors)
    item_cache = np.zeros_like(item_factors)
    scalars = dtype(lambda_reg), dtype(learning_rate), dtype(PMF_GAMMA)
    epochs = tqdm(range(max_iter), desc="PMF", unit="epoch", disable=not verbose)
    for _ in epochs:
        loss = pmf_epoch(user_index, item_index, ratings, user_factors, item_factors, user_cache, item_cache, *scalars)
        epochs.set_postfix(loss=f"{loss:.1f}", refresh=False)
    return user_factors, item_factors
