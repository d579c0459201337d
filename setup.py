"""Installable distribution `peapod-rec` (the PyPI name `peapod` belongs to an unrelated project)."""

from pathlib import Path

from setuptools import setup

setup(
    name="peapod-rec",
    version="0.1.0",
    description="PeaPOD: Personalized Prompt Distillation for Generative Recommendation, Hugging Face native",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The two modules that travel to a Hub repo as remote code are top-level modules on purpose.
    py_modules=["configuration_peapod", "modeling_peapod"],
    # Each shipped `evaluate` metric is a folder holding one script (loaded by path, no __init__.py): declared as a
    # package so setuptools installs it without its "absent from the packages configuration" warning.
    packages=["training", "training.evaluation", "training.evaluation.metrics", "training.evaluation.metrics.bleu_nmt",
              "training.evaluation.metrics.ranking", "training.evaluation.metrics.rouge_f1", "training.publishing",
              "datasets_scripts", "model_cards"],
    package_data={"model_cards": ["*.md"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "transformers>=5.0,<6",
        "accelerate>=1.0",
        "datasets>=3.0",
        "peft>=0.13",
        "safetensors>=0.4",
        "evaluate>=0.4",
        "huggingface-hub>=1.0",
        "cornac>=2.0",
        "numba>=0.59",  # the PMF training loop (datasets_scripts/fast_pmf.py)
        "numpy",
        "scipy",
        "tqdm",
        "pyyaml",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=8", "sacrebleu>=2.0", "rouge-score>=0.1.2", "faiss-cpu"],
        "dev": ["pytest>=8", "sacrebleu>=2.0", "rouge-score>=0.1.2", "faiss-cpu", "ruff"],
        "faiss": ["faiss-cpu"],
    },
    entry_points={
        "console_scripts": [
            "peapod-prepare=datasets_scripts.cli:main",
            "peapod-train=training.cli:main",
            "peapod-evaluate=training.evaluation.cli:main",
            "peapod-explain-user=training.figures:explain_user_main",
            "peapod-demo=training.demo:main",
        ]
    },
)
