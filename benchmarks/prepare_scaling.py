"""Whole `peapod-prepare` runs on a P5 folder and on copies of it with every user repeated (by hand; not a test).

    python benchmarks/prepare_scaling.py --data ../shared/data/amazon/beauty --scales 1 2

For each scale s it writes a P5 folder (sequential.txt, datamaps.json) holding every user of `--data` s times, the
copies under new user ids with the same items (so s times the users and interactions, the same catalogue), runs
`peapod-prepare` on it as a user would (a subprocess, defaults but `--tokenizer`), and prints the wall time, the
child's peak memory (ru_maxrss) and its stage times; then each scale's ratios to the first. Issue 11's target:
twice the interactions in at most 2.2 times the time and memory.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

from datasets_scripts.p5_format import read_p5_dir, write_p5_dir


def scaled_copy(data, scale: int, folder: Path) -> None:
    """`data` with every user repeated `scale` times (copy c of user u is user u + c * num_users), as a P5 folder."""
    num_users = data.num_users
    data.histories = {user + copy * num_users: items for copy in range(scale) for user, items in data.histories.items()}
    data.id2user = {user + copy * num_users: f"{name}#{copy}" if copy else name
                    for copy in range(scale) for user, name in data.id2user.items()}
    write_p5_dir(folder, data)


def stage_seconds(log: str) -> dict[str, float]:
    """Seconds per stage from the `prepare` progress bar's lines ("k/6 [mm:ss<..., stage name]")."""
    reached = {}
    for count, minutes, seconds, stage in re.findall(r"(\d)/6 \[(\d+):(\d+)<[^,\]]*, [^,\]]*, ([^\]]+)\]", log):
        reached.setdefault(stage.strip(), (int(count), 60 * int(minutes) + int(seconds)))
    order = sorted(reached.items(), key=lambda item: item[1][0])
    return {stage: end - start for (stage, (_, start)), (_, (_, end)) in pairwise(order)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/amazon/beauty")
    parser.add_argument("--tokenizer", default="../shared/tokenizers/t5")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    prepare = Path(sys.executable).with_name("peapod-prepare")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for scale in args.scales:
            source, output = Path(scratch) / f"p5-x{scale}", Path(scratch) / f"prepared-x{scale}"
            scaled_copy(read_p5_dir(args.data), scale, source)
            started = time.perf_counter()
            done = subprocess.run([str(prepare), "--p5_dir", str(source), "--output_dir", str(output), "--tokenizer",
                                   args.tokenizer], capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - started
            if done.returncode:
                raise SystemExit(f"peapod-prepare failed at scale {scale}: {done.stderr[-2000:]}")
            # ru_maxrss of the children is the largest child so far; scales run in increasing order.
            peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
            statistics = json.loads((output / "prepare_config.json").read_text())["statistics"]
            results.append({"scale": scale, "users": statistics["num_users"],
                            "interactions": statistics["num_interactions"], "seconds": round(seconds, 1),
                            "peak_memory_gib": round(peak_gib, 2),
                            "stage_seconds": stage_seconds(done.stderr.replace("\r", "\n"))})
            print(json.dumps(results[-1]), flush=True)
            shutil.rmtree(output)
    for result in results[1:]:
        base = results[0]
        print(f"x{result['scale']} / x{base['scale']}: interactions {result['interactions'] / base['interactions']:.2f}x, "
              f"time {result['seconds'] / base['seconds']:.2f}x, peak memory "
              f"{result['peak_memory_gib'] / base['peak_memory_gib']:.2f}x")


if __name__ == "__main__":
    main()
