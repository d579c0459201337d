"""Run many experiment rows x seeds (experiments/run.py) in parallel worker processes, with a deadline.

    python experiments/grid.py experiments/configs/*-p5-*.yaml --jobs 2
    python experiments/grid.py experiments/configs/*.yaml --jobs 14 --deadline_s 420 --baselines   # a lent GPU

Jobs are ordered seed-major (every row's seed 0, then every row's seed 1, ...) and, within a seed, in the order
the configs are given, so a run cut short by its deadline still holds whole seeds of the first rows. A job runs
a seed only if its config lists it (`seeds`). No job starts after `--deadline_s`; one already running finishes.
Each job is its own process (`run.py CONFIG --seeds K`) with its own log under `runs/logs/` and its own Hugging
Face module cache: parallel `trust_remote_code` loads of folders with the same name would otherwise write the
same cached module files at once. On one GPU the jobs share it; small shapes leave it mostly idle, so many
workers fit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from run import ROOT, load_config


def job_list(configs: list[str], seeds: list[int] | None) -> list[tuple[str, int]]:
    """(config path, seed) pairs, seed-major; a config contributes only the seeds it lists."""
    own = {path: load_config(path)["seeds"] for path in configs}
    every_seed = seeds if seeds is not None else sorted({seed for listed in own.values() for seed in listed})
    return [(path, seed) for seed in every_seed for path in configs if seed in own[path]]


def run_job(path: str, seed: int, extra: list[str], deadline: float, threads: int, log_dir: Path) -> tuple[str, float]:
    name = f"{Path(path).stem}-seed{seed}"
    if time.monotonic() > deadline:
        return "not started (deadline)", 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"peapod-{name}-") as home, open(log_dir / f"{name}.log", "w") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_MODULES_CACHE": str(Path(home) / "modules"),
               "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, str(ROOT / "experiments" / "run.py"), path, "--seeds", str(seed), *extra]
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False).returncode
    return ("ok" if code == 0 else f"failed (exit {code}, see {log_dir.name}/{name}.log)"), time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="*", help="Default: every seed the configs list.")
    parser.add_argument("--jobs", type=int, default=1, help="Worker processes at once.")
    parser.add_argument("--threads", type=int, default=1, help="Torch CPU threads per worker.")
    parser.add_argument("--deadline_s", type=float, default=float("inf"), help="Start no job after this many s.")
    parser.add_argument("--skip_existing", action="store_true", help="Skip jobs whose result JSON exists.")
    parser.add_argument("--shared_dir", help="Passed to run.py.")
    parser.add_argument("--baselines", nargs="*", help="Passed to run.py (no names: no baselines).")
    parser.add_argument("--log_dir", default=str(ROOT / "runs" / "logs"))
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be at least 1, got {args.jobs} and {args.threads}")
    jobs = job_list(args.configs, args.seeds)
    if args.skip_existing:
        results = ROOT / "experiments" / "results"
        jobs = [(path, seed) for path, seed in jobs if not (results / f"{Path(path).stem}-seed{seed}.json").exists()]
    extra = (["--shared_dir", args.shared_dir] if args.shared_dir else []) + (
        ["--baselines", *args.baselines] if args.baselines is not None else [])
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.deadline_s
    print(f"{len(jobs)} jobs, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_job, path, seed, extra, deadline, args.threads, log_dir) for path, seed in jobs]
        outcomes = []
        for (path, seed), future in zip(jobs, futures):
            status, seconds = future.result()
            outcomes.append(status)
            print(f"{Path(path).stem} seed {seed}: {status} ({seconds:.0f} s)", flush=True)
    failed = sum(status.startswith("failed") for status in outcomes)
    skipped = sum(status.startswith("not started") for status in outcomes)
    print(f"done: {len(jobs) - failed - skipped} ok, {failed} failed, {skipped} not started", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
