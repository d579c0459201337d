"""Benchmark: building the user-neighbour table (SPEC §1), run by hand, not a test.

For each data size and method, a fresh Python subprocess builds the data, then the table, and reports wall time
and peak resident memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss` of that child: torch allocates outside
Python's heap, so tracemalloc would not see it). "method MiB" is the peak minus the resident size just before
the method started (the interpreter, torch and the input matrix), i.e. the memory the method itself needed.

Methods:
  exact     `modeling_peapod.build_user_neighbors` (via `build_neighbor_table(backend="exact")`)
  faiss     `build_neighbor_table(backend="faiss")` (needs faiss-cpu)
  dense     the naive way: the whole N x N similarity matrix, then topk (only where it fits in memory)
  gemm      the machine's GEMM throughput on one chunk-shaped product, extrapolated to the 2·N²·d FLOPs of
            the similarity matrix: the floor any exact method pays

Usage (figures in docs/embeddings.md):
    python benchmarks/neighbors_benchmark.py --beauty_embeddings beauty_pmf.npy --output results.json
    python benchmarks/neighbors_benchmark.py --sizes 200000 --methods exact gemm --query_rows 4096
Without --beauty_embeddings the Beauty-sized run uses random normal embeddings of Beauty's shape (22,364 x 512).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
BEAUTY_ROWS = 22_364  # 22,363 users + the unknown row 0
METHODS = ("exact", "faiss", "dense", "gemm")


def exact_for_first_users(user_embeddings, num_neighbors, chunk_size, query_rows):
    """`build_user_neighbors`' own per-chunk step (`_chunk_neighbors`) for only the first `query_rows` users,
    for timing at 200k: every chunk costs the same, so the full time is that x num_users / query_rows."""
    from modeling_peapod import NEIGHBOR_COLUMN_BLOCK, _chunk_neighbors

    unit = F.normalize(user_embeddings.float(), dim=1)
    last = min(unit.shape[0], 1 + query_rows)
    return [_chunk_neighbors(unit, start, min(start + chunk_size, last), num_neighbors, NEIGHBOR_COLUMN_BLOCK)
            for start in range(1, last, chunk_size)]


def _data(rows: int, dim: int, embeddings: str | None) -> torch.Tensor:
    if embeddings:
        sys.path.insert(0, str(REPO_ROOT))
        from datasets_scripts.user_embeddings import load_user_matrix

        return load_user_matrix(embeddings, num_users=rows - 1)
    matrix = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
    matrix[0] = 0
    return matrix


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(args) -> dict:
    """Runs in the fresh subprocess: one method on one data size."""
    sys.path.insert(0, str(REPO_ROOT))
    import modeling_peapod  # noqa: F401  (imports transformers: seconds and MiB that are not the method's)
    from datasets_scripts.user_embeddings import build_neighbor_table

    if args.child == "faiss":
        import faiss  # noqa: F401
    matrix = _data(args.rows, args.dim, args.embeddings)
    before = _peak_mib()
    start = time.perf_counter()
    result = {}
    if args.child == "exact" and args.query_rows:
        exact_for_first_users(matrix, args.num_neighbors, args.chunk_size, args.query_rows)
        table = None
    elif args.child == "exact":
        table = build_neighbor_table(matrix, args.num_neighbors, backend="exact", chunk_size=args.chunk_size)
    elif args.child == "faiss":
        table = build_neighbor_table(matrix, args.num_neighbors, backend="faiss", chunk_size=args.chunk_size)
    elif args.child == "dense":
        unit = F.normalize(matrix, dim=1)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(-math.inf)
        similarity[:, 0] = -math.inf
        table = similarity.topk(args.num_neighbors, dim=1).indices
        table[0] = 0
    elif args.child == "gemm":
        # best of a few chunk-shaped products [chunk, d] x [d, cols], extrapolated to the full 2·N²·d FLOPs
        unit = F.normalize(matrix, dim=1)
        cols = min(args.rows, 32_768)
        out = torch.empty(args.chunk_size, cols)
        best = math.inf
        for _ in range(5):
            tic = time.perf_counter()
            torch.matmul(unit[: args.chunk_size], unit[:cols].T, out=out)
            best = min(best, time.perf_counter() - tic)
        gflops = 2 * args.chunk_size * cols * args.dim / best / 1e9
        result = {"gemm_gflops": gflops, "bare_gemm_s": 2 * args.rows**2 * args.dim / (gflops * 1e9)}
        table = None
    seconds = time.perf_counter() - start
    if args.query_rows and args.child == "exact":
        result = {"measured_s": seconds, "query_rows": args.query_rows}
        seconds *= (args.rows - 1) / args.query_rows  # extrapolated to every user
    if table is not None and args.save_table:
        torch.save(table, args.save_table)
    peak = _peak_mib()
    return {"seconds": seconds, "peak_rss_mib": peak, "method_mib": peak - before, **result}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[BEAUTY_ROWS, 200_001],
                        help="rows of the user table (num_users + 1)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--num_neighbors", type=int, default=20)
    parser.add_argument("--chunk_size", type=int, default=4096)
    parser.add_argument("--beauty_embeddings", help="real user matrix for the Beauty-sized run (.npy/.safetensors/.csv)")
    parser.add_argument("--dense_limit_gib", type=float, default=8.0, help="skip `dense` above this N x N size")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--check", action="store_true", help="check that every method's table equals `exact`'s")
    parser.add_argument("--query_rows", type=int, help="time exact on the first QUERY_ROWS users only, "
                        "against all N, and scale to N (for 200k on a small machine); a multiple of --chunk_size")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--embeddings", help=argparse.SUPPRESS)
    parser.add_argument("--save_table", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return

    results = []
    for rows in args.sizes:
        embeddings = args.beauty_embeddings if rows == BEAUTY_ROWS else None
        tables = {}
        for method in args.methods:
            if method == "dense" and rows**2 * 4 / 2**30 > args.dense_limit_gib:
                print(f"{rows:>8} {method:>9}  skipped: the N x N matrix needs {rows**2 * 4 / 2**30:.0f} GiB")
                continue
            command = [sys.executable, __file__, "--child", method, "--rows", str(rows), "--dim", str(args.dim),
                       "--num_neighbors", str(args.num_neighbors), "--chunk_size", str(args.chunk_size)]
            if embeddings:
                command += ["--embeddings", embeddings]
            if args.query_rows and method == "exact":
                command += ["--query_rows", str(args.query_rows)]
            if args.check and method != "gemm" and not args.query_rows:
                tables[method] = f"/tmp/neighbors_benchmark_{rows}_{method}.pt"
                command += ["--save_table", tables[method]]
            measured = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            measured.update(rows=rows, method=method, source=embeddings or "random normal, seed 0")
            results.append(measured)
            extra = f"  GEMM {measured['gemm_gflops']:.0f} GFLOP/s -> bare GEMM {measured['bare_gemm_s']:.1f} s" \
                if method == "gemm" else ""
            print(f"{rows:>8} {method:>9} {measured['seconds']:9.2f} s  peak RSS {measured['peak_rss_mib']:8.0f} MiB"
                  f"  method {measured['method_mib']:8.0f} MiB{extra}", flush=True)
        if args.check and "exact" in tables:
            # Scores within float32 rounding of each other may come out in either order (the GEMM's rounding
            # differs with blocking/threads), so compare the neighbours' float64 cosines, not only the ids.
            unit = F.normalize(_data(rows, args.dim, embeddings).double(), dim=1)
            reference = torch.load(tables["exact"])
            for method, path in tables.items():
                table = torch.load(path)
                rows_differ = int((table != reference).any(1).sum())
                gap = ((unit[:, None, :] * unit[table]).sum(-1) - (unit[:, None, :] * unit[reference]).sum(-1))
                print(f"{rows:>8} {method:>9} rows whose ids differ from exact: {rows_differ}; "
                      f"largest cosine gap at equal rank: {gap.abs().max().item():.1e}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
