"""Build `.device/` (git-ignored) for experiments/gpu/run.sh: what a lent GPU machine needs and lacks.

    python experiments/gpu/pack.py experiments/configs/*.yaml

A lent machine is bare, offline, and takes at most 64 MiB of working tree, so this packs, on the CPU machine:
* each config's prepared folder without `dataset/` (rebuilt there by `rebuild_dataset`, identical by
  construction) and without the PMF item factors (the GPU run skips the baselines; `run.py --baselines_only`
  computes them here);
* the T5 tokenizer, as `.device/shared/tokenizers/t5` (run.py's `--shared_dir .device/shared`);
* wheels for Python 3.12 of what the machine's image lacks (datasets, evaluate and their pure-Python needs,
  rouge-score, and transformers of the version this repository is tested with).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import ROOT, load_config, prepared_folder

from datasets_scripts.files import temporary_sibling_folder
from datasets_scripts.user_embeddings import load_user_table, save_user_table

# Versions this repository's tests ran with; the image holds torch, accelerate, huggingface_hub, tokenizers,
# safetensors, pyarrow, pandas, xxhash, sacrebleu, absl-py (device/KINDS.md).
WHEELS = ("transformers==5.24.0", "datasets==5.2.0", "evaluate==0.4.6", "dill==0.4.1", "multiprocess==0.70.19",
          "nltk==3.10.4", "defusedxml==0.7.1")
SOURCE_ONLY = ("rouge-score==0.1.2",)  # published as an sdist only: built into a wheel here
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 60


def built_in_place(target: Path, build) -> None:
    """Run `build(folder)` on a temporary sibling and rename it to `target`: an interrupted pack leaves nothing
    that a later run would take for finished."""
    with temporary_sibling_folder(target) as temporary:  # also removes what a killed earlier pack left
        build(temporary)
        os.replace(temporary, target)


def light_copy(folder: Path, target: Path) -> None:
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("dataset", "user_table.safetensors"),
                    dirs_exist_ok=True)
    table = load_user_table(folder / "user_table.safetensors")
    save_user_table(target / "user_table.safetensors", table["user_embeddings"], table["user_neighbors"])


def download_wheels(target: Path) -> None:
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(target), *WHEELS],
                   check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(target), *SOURCE_ONLY],
                   check=True)


def size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--shared_dir", default=str(ROOT.parent / "shared"))
    parser.add_argument("--output", default=str(ROOT / ".device"))
    args = parser.parse_args(argv)
    shared, output = Path(args.shared_dir), Path(args.output)
    tokenizer = shared / "tokenizers" / "t5"
    for path in args.configs:
        folder = prepared_folder(load_config(path), shared, str(tokenizer))
        if not (output / "prepared" / folder.name).exists():
            built_in_place(output / "prepared" / folder.name, lambda target, folder=folder: light_copy(folder, target))
    if not (output / "shared" / "tokenizers" / "t5").exists():
        built_in_place(output / "shared" / "tokenizers" / "t5",
                       lambda target: shutil.copytree(tokenizer, target, dirs_exist_ok=True))
    if not (output / "wheels").exists():
        built_in_place(output / "wheels", download_wheels)
    total = size_mib(output) + size_mib(ROOT / "experiments") + 2  # + the tracked sources, roughly
    for part in sorted(output.iterdir()):
        print(f"{part}: {size_mib(part):.1f} MiB")
    if total > LIMIT_MIB:
        raise SystemExit(f"{output} and the repository come to about {total:.0f} MiB: over the {LIMIT_MIB} MiB a "
                         "device call carries; pack fewer configs")


if __name__ == "__main__":
    main()
