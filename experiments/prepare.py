"""Prepare (and cache under prepared/) the data folders that experiment configs name, without training.

    python experiments/prepare.py experiments/configs/*.yaml

Run it on the CPU machine before a GPU session: the GPU machine then only trains and evaluates (it has no
cornac for the PMF user table, and device time is scarce).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from run import ROOT, load_config, prepared_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--shared_dir", default=str(ROOT.parent / "shared"))
    args = parser.parse_args(argv)
    shared = Path(args.shared_dir)
    done: set[Path] = set()
    for path in args.configs:
        started = time.perf_counter()
        folder = prepared_folder(load_config(path), shared, str(shared / "tokenizers" / "t5"))
        if folder not in done:
            done.add(folder)
            print(f"{folder.relative_to(ROOT)} ready ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
