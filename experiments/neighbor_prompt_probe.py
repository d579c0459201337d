"""What a collaborative prompt can carry under each attention pattern, read by PMF's own item factors.

    python experiments/neighbor_prompt_probe.py                       # planted `neighbors` data (prepared by run.py)
    python experiments/neighbor_prompt_probe.py --checkpoints runs/curves/curves-synthetic-neighbors-qk-900/peapod-mha

The mha prompt encoder's output is a mix of the neighbours' rows only (eqs. (3), (5), (8): the values are the
neighbours'; the user's own row u only chooses the weights), and the MLP encoder reads u alone. So what the prompt
can tell the model about a user is bounded by what these mixes tell. This script measures it without training:
for each attention pattern it builds one vector per user — u itself, or the attention-weighted mean of the
neighbours' table rows — and ranks the top-n test candidates by that vector's dot product with the PMF item factors
(the `pmf` baseline's own reader, `training.evaluation.PMFBaseline`, same users, same candidates). Patterns: the own
row (the `pmf` baseline), uniform attention over the n neighbours, one random neighbour per user (a collapsed head),
one listed neighbour outside the clique, the most similar neighbour, the first clique_size - 1 neighbours, and on
planted `neighbors` data the clique-mates among the listed neighbours (the ideal attention). With `--checkpoints`, the
patterns a trained model's heads actually produce (each head's attention-weighted mean, averaged over the heads).
Every test user, 95% bootstrap intervals over users. Seconds on a CPU. Results -> `<output>.json` and `.md`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datasets_scripts import load_prepared
from datasets_scripts.files import atomic_write_json, atomic_write_text
from datasets_scripts.synthetic import planted_clique_mates
from training.evaluation.baselines import PMFBaseline
from training.evaluation.runner import evaluate_baseline

ROOT = Path(__file__).resolve().parents[1]


def mixed_rows(embeddings: torch.Tensor, neighbors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[U + 1, d]: row u = sum_j weights[u, j] * embeddings[neighbors[u, j]] (row 0, the unknown user, stays 0)."""
    mixed = torch.einsum("un,und->ud", weights.to(embeddings.dtype), embeddings[neighbors])
    mixed[0] = 0.0
    return mixed


def pattern_weights(neighbors: torch.Tensor, pattern: str, true_neighbors: dict[int, set[int]] | None = None,
                    clique_size: int = 5, seed: int = 0) -> torch.Tensor:
    """[U + 1, n] attention weights (rows sum to 1) of a named pattern over each user's listed neighbours."""
    rows, n = neighbors.shape
    weights = torch.zeros(rows, n, dtype=torch.float64)
    generator = np.random.default_rng(seed)
    for user in range(1, rows):
        listed = neighbors[user].tolist()
        truth = (true_neighbors or {}).get(user, set())
        if pattern == "uniform":
            chosen = list(range(n))
        elif pattern == "random_one":
            chosen = [int(generator.integers(n))]
        elif pattern == "random_non_mate":
            outside = [j for j, other in enumerate(listed) if other not in truth]
            chosen = [int(generator.choice(outside))] if outside else list(range(n))
        elif pattern == "most_similar":
            chosen = [0]
        elif pattern == "top_clique_size":
            chosen = list(range(min(clique_size - 1, n)))
        elif pattern == "clique_mates":
            chosen = [j for j, other in enumerate(listed) if other in truth] or list(range(n))
        else:
            raise ValueError(f"unknown pattern {pattern!r}")
        weights[user, chosen] = 1.0 / len(chosen)
    return weights


@torch.no_grad()
def trained_attention(checkpoint: str | Path, true_neighbors: dict[int, set[int]] | None) -> tuple[torch.Tensor, dict]:
    """A trained mha model's attention [U + 1, n], averaged over its heads, and what `attention_health` says of it
    (with the mean learned rank bias per rank, for a model trained with `neighbor_rank_bias`)."""
    from modeling_peapod import PeaPODForConditionalGeneration
    from training.diagnostics import attention_health

    model = PeaPODForConditionalGeneration.from_pretrained(checkpoint).eval()
    if model.config.prompt_encoder != "mha":
        raise ValueError(f"{checkpoint}: prompt_encoder={model.config.prompt_encoder!r} has no attention")
    users = torch.arange(1, model.config.num_users + 1)
    _, attention = model.collaborative_prompt(users, output_attentions=True)  # [U, H, n]
    weights = torch.zeros(model.config.num_users + 1, attention.shape[-1], dtype=torch.float64)
    weights[1:] = attention.double().mean(1)
    health = attention_health(model, true_neighbors=true_neighbors)
    health["neighbors"] = model.user_neighbors
    if model.config.neighbor_rank_bias:
        health["rank_bias_mean_over_heads"] = [round(v, 3) for v in model.prompt_encoder.rank_bias.mean(0).tolist()]
    return weights, health


def topn_hit_rate(prepared, user_vectors: torch.Tensor, item_factors: torch.Tensor, rows: list[int]) -> dict:
    result = evaluate_baseline(PMFBaseline(user_vectors, item_factors), prepared, "test", {"topn": rows})["topn"]
    return {"hr@10": result["hr@10"], "hr@10_ci": result["hr@10_ci"], "ndcg@10": result["ndcg@10"],
            "users": result["num_users"]}


def probe(prepared_dir: str | Path, checkpoints=(), seed: int = 0) -> dict:
    prepared = load_prepared(prepared_dir)
    if prepared.item_embeddings is None:
        raise ValueError(f"{prepared_dir}: no item factors (user_table.safetensors holds none): prepare it with PMF")
    embeddings = prepared.user_embeddings.double()
    items = prepared.item_embeddings.double()
    neighbors = prepared.user_neighbors
    truth = planted_clique_mates(prepared)
    rows = list(range(len(prepared.dataset["topn_test"])))
    clique_size = 1 + round(np.mean([len(m) for m in truth.values()])) if truth else 5
    results = {"own row u (the pmf baseline; the mlp encoder's input)": topn_hit_rate(prepared, embeddings, items,
                                                                                        rows)}
    names = {"uniform": "uniform over the n neighbours", "random_one": "one random neighbour (a collapsed head)",
             "random_non_mate": "one listed neighbour outside the clique", "most_similar": "the most similar neighbour",
             "top_clique_size": f"the {clique_size - 1} most similar neighbours", "clique_mates": "the clique-mates"}
    for pattern, label in names.items():
        if pattern in ("random_non_mate", "clique_mates") and truth is None:
            continue
        weights = pattern_weights(neighbors, pattern, truth, clique_size, seed)
        results[label] = topn_hit_rate(prepared, mixed_rows(embeddings, neighbors, weights), items, rows)
    for checkpoint in checkpoints:
        weights, health = trained_attention(checkpoint, truth)
        if not torch.equal(health.pop("neighbors"), neighbors):
            raise ValueError(f"{checkpoint}: its neighbour table is not {prepared_dir}'s")
        label = f"trained attention: {'/'.join(Path(checkpoint).parts[-2:])}"
        results[label] = topn_hit_rate(prepared, mixed_rows(embeddings, neighbors, weights), items, rows)
        results[label]["attention_on_clique_mates"] = health.get("attention_on_true_neighbors")
        results[label]["attention"] = health
    return {"prepared": Path(prepared_dir).name, "num_users": prepared.num_users, "num_neighbors": neighbors.shape[1],
            "seed": seed, "results": results}


def markdown(report: dict) -> str:
    heading = (f"Data: {report['prepared']} ({report['num_users']} users, n = {report['num_neighbors']}); top-n "
               "test candidates ranked by the PMF item factors' dot product with each vector; 95% bootstrap "
               "intervals over users.")
    lines = [heading, "", "| user vector | users | top-n HR@10 [95% CI] | NDCG@10 | attention on clique-mates |",
             "|---|---|---|---|---|"]
    for label, result in report["results"].items():
        low, high = result["hr@10_ci"]
        on_mates = result.get("attention_on_clique_mates")
        lines.append(f"| {label} | {result['users']} | {result['hr@10']:.3f} [{low:.3f}, {high:.3f}] | "
                     f"{result['ndcg@10']:.3f} | {'–' if on_mates is None else f'{on_mates:.3f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared_dir", default=str(ROOT / "prepared" / "synthetic-neighbors-pmf512-n20"))
    parser.add_argument("--checkpoints", nargs="*", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "experiments" / "results" / "neighbor-prompt-probe"))
    args = parser.parse_args(argv)
    if not Path(args.prepared_dir).is_dir():
        parser.error(f"--prepared_dir {args.prepared_dir}: no such folder (make it with experiments/planted_baselines.py)")
    report = probe(args.prepared_dir, args.checkpoints, args.seed)
    atomic_write_json(Path(args.output + ".json"), report)
    text = markdown(report)
    atomic_write_text(Path(args.output + ".md"), text)
    print(text)


if __name__ == "__main__":
    main()
