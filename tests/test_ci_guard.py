"""The CI guard: without ../shared, `.ci/run` and PEAPOD_REQUIRE_SHARED=1 fail loudly instead of skipping."""

import os
import shutil
import subprocess
import sys

from conftest import REPO_ROOT


def test_ci_run_fails_before_installing_anything_when_shared_is_missing(tmp_path):
    repository = tmp_path / "repo"  # a clone with no ../shared beside it
    (repository / ".ci").mkdir(parents=True)
    shutil.copy(REPO_ROOT / ".ci" / "run", repository / ".ci" / "run")
    done = subprocess.run(["bash", str(repository / ".ci" / "run")], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(".ci/run: error: the tests need ../shared beside the repository; missing: ")
    assert str(tmp_path / "shared" / "tokenizers" / "t5" / "tokenizer.json") in done.stderr
    assert not (repository / ".ci-venv").exists()  # stopped before creating the environment


def test_required_shared_turns_skips_into_a_session_error(tmp_path):
    tests = tmp_path / "repo" / "tests"  # this conftest, in a clone with no ../shared beside it
    tests.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_needs_tokenizer.py").write_text("def test_it(tokenizer):\n    pass\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)]
    environment = {key: value for key, value in os.environ.items() if key != "PEAPOD_REQUIRE_SHARED"}
    developer = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, cwd=tests,
                               env=environment)
    assert developer.returncode == 0 and "1 skipped" in developer.stdout  # a developer without ../shared: a skip
    ci = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, cwd=tests,
                        env={**environment, "PEAPOD_REQUIRE_SHARED": "1"})
    assert ci.returncode == 4, ci.stdout[-2000:]
    assert "PEAPOD_REQUIRE_SHARED=1 but ../shared is incomplete; missing:" in ci.stdout + ci.stderr
    assert "1 skipped" not in ci.stdout
