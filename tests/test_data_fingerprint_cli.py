"""peapod-train records the data fingerprint; continuing or evaluating on other data with the same user count is
refused (issue 9, item 5) unless --allow_other_data."""

import json

import pytest
from conftest import TOKENIZER_DIR

from configuration_peapod import PeaPODInputError
from datasets_scripts import load_prepared, prepare
from training import cli
from training.evaluation import cli as evaluate_cli

# The Python entry points, which raise on a user's mistake (the console scripts' `main` maps it to exit status 2).
run_train = cli.train
run_evaluate = evaluate_cli.evaluate


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, tokenizer):
    folders = []
    for seed in (0, 1):  # the synthetic data of two seeds: same user count, other interactions
        folder = tmp_path_factory.mktemp("data") / f"synthetic-seed{seed}"
        prepare(folder, synthetic=True, seed=seed, tokenizer=str(TOKENIZER_DIR), max_users=20, embedding_dim=8,
                num_neighbors=3, pmf_max_iter=3)
        folders.append(folder)
    return folders


def train(prepared, output, *extra):
    return run_train(["--prepared_dir", str(prepared), "--output_dir", str(output), "--tokenizer", str(TOKENIZER_DIR),
                     "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_train_samples_per_task", "4",
                     "--max_eval_samples_per_task", "2", "--eval_strategy", "no", "--save_strategy", "no",
                     "--report_to", "none", "--disable_tqdm", "True", *extra])


def test_train_records_and_checks_the_data_fingerprint(two_seeds, tmp_path):
    seed0, seed1 = two_seeds
    fingerprints = [load_prepared(folder, load_dataset=False).fingerprint for folder in (seed0, seed1)]
    assert fingerprints[0]["num_users"] == fingerprints[1]["num_users"]
    assert fingerprints[0]["sha256"] != fingerprints[1]["sha256"]

    train(seed0, tmp_path / "run", "--base_model", "random:tiny")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_fingerprint"] == fingerprints[0]

    with pytest.raises(PeaPODInputError, match=rf"trained on other data than {seed1}.*--allow_other_data"):
        train(seed1, tmp_path / "continued", "--base_model", str(tmp_path / "run"))
    with pytest.raises(PeaPODInputError, match=rf"trained on other data than {seed1}"):
        run_evaluate(["--checkpoint", str(tmp_path / "run"), "--prepared_dir", str(seed1),
                           "--tokenizer", str(TOKENIZER_DIR), "--tasks", "sequential", "--max_users", "1",
                           "--num_beams", "2", "--top_k", "1"])
    # Deliberately continuing on the other data records it as the model's data from then on.
    train(seed1, tmp_path / "continued", "--base_model", str(tmp_path / "run"), "--allow_other_data", "True")
    assert json.loads((tmp_path / "continued" / "config.json").read_text())["data_fingerprint"] == fingerprints[1]
