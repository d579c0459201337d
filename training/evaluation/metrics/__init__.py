"""PeaPOD's evaluation metrics as `evaluate` modules shipped inside the package (SPEC §3).

Each metric is a directory `training/evaluation/metrics/<name>/<name>.py` that `evaluate.load` accepts as a local path, so
nothing is fetched from the Hub:

* `ranking`  — HR@k and NDCG@k over ranked item lists with one relevant item per user.
* `bleu_nmt` — corpus BLEU-4 as tensorflow/nmt's `compute_bleu` (no smoothing), x100.
* `rouge_f1` — ROUGE-1/2/L F1 (sentence level, averaged over the corpus), x100.

`load_metric("ranking")` is `evaluate.load(<path of the shipped module>)`.
"""

from __future__ import annotations

from pathlib import Path

METRIC_NAMES = ("ranking", "bleu_nmt", "rouge_f1")


def metric_path(name: str) -> str:
    """Absolute path of the shipped metric directory `name` (one of `METRIC_NAMES`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; the package ships {', '.join(METRIC_NAMES)}")
    path = Path(__file__).resolve().parent / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"metric script {path / (name + '.py')} is missing from the installed package")
    return str(path)


def load_metric(name: str, **load_kwargs):
    """`evaluate.load` of a shipped metric by name, offline (a local path never touches the Hub)."""
    import evaluate  # imported lazily: `evaluate` pulls in `datasets`, which is slow to import

    return evaluate.load(metric_path(name), **load_kwargs)
