"""Every console script's --help prints its usage and exits 0 (argparse %-formats help strings: a bare "%" in a
help text made `peapod-evaluate --help` fail)."""

import subprocess

import pytest
from conftest import console_script


@pytest.mark.parametrize("name", ["peapod-prepare", "peapod-train", "peapod-evaluate", "peapod-explain-user",
                                  "peapod-demo"])
def test_help_exits_zero(name):
    done = subprocess.run([console_script(name), "--help"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and "--" in done.stdout
