"""Run many experiment rows x seeds (experiments/run.py) in parallel worker processes, with a deadline.

    python experiments/grid.py experiments/configs/*-p5-*.yaml --jobs 2
    python experiments/grid.py experiments/configs/*.yaml --jobs 14 --deadline_s 420 --baselines   # a lent GPU

Jobs are ordered seed-major (every row's seed 0, then every row's seed 1, ...) and, within a seed, in the order
the configs are given, so a run cut short by its deadline still holds whole seeds of the first rows. A job runs
a seed only if its config lists it (`seeds`). No job starts after `--deadline_s`; one already running finishes,
unless it is still running at `--hard_deadline_s` (then it is killed and leaves no result). Each data
configuration is prepared once, before any job starts.
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
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from run import ROOT, load_config, prepared_folder


def job_list(configs: list[str], seeds: list[int] | None) -> list[tuple[str, int]]:
    """(config path, seed) pairs, seed-major; a config contributes only the seeds it lists.

    A config given twice counts once; two configs with the same file name are refused, because a row's name
    (the file stem) names its checkpoint folder and result file, which parallel jobs would then share.
    """
    unique: dict[Path, str] = {}
    for path in configs:
        unique.setdefault(Path(path).resolve(), path)
    configs = list(unique.values())
    stems: dict[str, str] = {}
    for path in configs:
        if Path(path).stem in stems:
            raise ValueError(f"{path} and {stems[Path(path).stem]} have the same row name {Path(path).stem!r}: "
                             "their runs would write the same folders")
        stems[Path(path).stem] = path
    own = {path: load_config(path)["seeds"] for path in configs}
    every_seed = seeds if seeds is not None else sorted({seed for listed in own.values() for seed in listed})
    return [(path, seed) for seed in every_seed for path in configs if seed in own[path]]


def run_job(path: str, seed: int, extra: list[str], deadline: float, hard_deadline: float, threads: int,
            log_dir: Path) -> tuple[str, float]:
    name = f"{Path(path).stem}-seed{seed}"
    if time.monotonic() > deadline:
        return "not started (deadline)", 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"peapod-{name}-") as home, open(log_dir / f"{name}.log", "w") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_MODULES_CACHE": str(Path(home) / "modules"),
               "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, str(ROOT / "experiments" / "run.py"), path, "--seeds", str(seed), *extra]
        try:
            code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False,
                                  timeout=max(hard_deadline - time.monotonic(), 1.0)).returncode
        except subprocess.TimeoutExpired:  # the child is killed; its result file, written last, is absent
            return "killed (hard deadline)", time.monotonic() - started
    return ("ok" if code == 0 else f"failed (exit {code}, see {log_dir.name}/{name}.log)"), time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="*", help="Default: every seed the configs list.")
    parser.add_argument("--jobs", type=int, default=1, help="Worker processes at once.")
    parser.add_argument("--threads", type=int, default=1, help="Torch CPU threads per worker.")
    parser.add_argument("--deadline_s", type=float, default=float("inf"), help="Start no job after this many s.")
    parser.add_argument("--hard_deadline_s", type=float, default=float("inf"),
                        help="Kill jobs still running after this many s (a lent machine's command limit).")
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
    # Prepare each data configuration once, here: parallel jobs preparing the same folder would replace it under
    # the jobs already reading it.
    shared = Path(args.shared_dir) if args.shared_dir else ROOT.parent / "shared"
    for path in dict.fromkeys(path for path, _ in jobs):
        prepared_folder(load_config(path), shared, str(shared / "tokenizers" / "t5"))
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    now = time.monotonic()
    deadline, hard_deadline = now + args.deadline_s, now + args.hard_deadline_s
    print(f"{len(jobs)} jobs, {args.jobs} at a time", flush=True)
    outcomes = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_job, path, seed, extra, deadline, hard_deadline, args.threads, log_dir): (path, seed)
                   for path, seed in jobs}
        for future in as_completed(futures):  # report each job as it ends
            (path, seed), (status, seconds) = futures[future], future.result()
            outcomes.append(status)
            print(f"{Path(path).stem} seed {seed}: {status} ({seconds:.0f} s)", flush=True)
    counts = {kind: sum(status.startswith(kind) for status in outcomes) for kind in ("ok", "failed", "killed", "not")}
    print(f"done: {counts['ok']} ok, {counts['failed']} failed, {counts['killed']} killed at the hard deadline, "
          f"{counts['not']} not started", flush=True)
    return 1 if counts["failed"] or counts["killed"] else 0


if __name__ == "__main__":
    sys.exit(main())
