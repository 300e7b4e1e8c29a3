"""What factoring a layer Hessian on one BLAS thread costs: scipy's dpotrf, threaded and serial, side by side.

scipy's OpenBLAS (0.3.30) killed the process in its threaded dpotrf from about 16,000 columns on two threads, so
graph/numerics/cholesky_inverse.py factors on one thread (threadpoolctl). This times both on the same random
symmetric positive definite matrices (what a layer Hessian X^T X is), alternately, round by round, at sizes the
threaded one survives; and symmetric_inverse_ (the serial factor, then the threaded inverse) at an FCN-ResNet50
head's 18,432 columns, which the threaded factor did not survive, with its residual.

    .venv/bin/python benchmarks/hessian_factorisation.py [--sizes 4096 8192] [--rounds 3] [--head 18432]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import command_line, machine_info, machine_summary, markdown_table, write_results
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from prunefx.graph.numerics.cholesky_inverse import symmetric_inverse_


def spd(size: int) -> torch.Tensor:
    """X^T X + I for X of 64 more rows than columns (float64), as a well-gathered layer Hessian."""
    rows = torch.randn(size + 64, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
    square = rows.t() @ rows
    square.diagonal().add_(1.0)
    return square


def factor_seconds(square: torch.Tensor, threads: int) -> float:
    work = square.clone()
    with threadpool_limits(limits=threads, user_api="blas"):
        start = time.perf_counter()
        _, info = lapack.dpotrf(work.numpy().T, lower=1, clean=0, overwrite_a=1)
        seconds = time.perf_counter() - start
    assert info == 0
    return seconds


def compare(size: int, rounds: int) -> dict:
    square = spd(size)
    times: dict[int, list[float]] = {2: [], 1: []}
    for round_index in range(rounds):  # alternately, the order turned each round
        for threads in ((2, 1) if round_index % 2 == 0 else (1, 2)):
            times[threads].append(factor_seconds(square, threads))
    threaded, serial = statistics.median(times[2]), statistics.median(times[1])
    return {"columns": size, "threaded_s": threaded, "serial_s": serial, "serial_over_threaded": serial / threaded,
            "rounds": rounds}


def head(size: int) -> dict:
    square = spd(size)
    probe = torch.randn(size, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    product = square @ probe
    with threadpool_limits(limits=2, user_api="blas"):
        start = time.perf_counter()
        assert symmetric_inverse_(square)
        seconds = time.perf_counter() - start
    return {"columns": size, "seconds": seconds, "residual": float((square @ product - probe).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--head", type=int, default=18432, help="columns of the whole inverse timed (0: none)")
    args = parser.parse_args()
    info = machine_info(rounds=args.rounds, blas_threads=2)
    rows = [compare(size, args.rounds) for size in args.sizes]
    inverse = head(args.head) if args.head else None
    table = markdown_table(["columns", "dpotrf on 2 threads, s", "dpotrf on 1 thread, s", "1 thread / 2 threads"],
                           [[r["columns"], f"{r['threaded_s']:.2f}", f"{r['serial_s']:.2f}",
                             f"{r['serial_over_threaded']:.2f}"] for r in rows])
    whole = ("" if inverse is None else
             f"\nsymmetric_inverse_ at {inverse['columns']} columns (serial dpotrf, then dpotri on 2 threads): "
             f"{inverse['seconds']:.1f} s, max |A^-1 (A p) - p| = {inverse['residual']:.1e}.\n")
    markdown = (f"# Factoring a layer Hessian on one BLAS thread\n\nProduced by `{command_line()}` on "
                f"{info['date_utc']} UTC.\n\n- Machine: {machine_summary(info)}.\n- scipy's LAPACK dpotrf on random "
                f"X^T X + I (float64), threaded (2) and serial alternately, median of {args.rounds} rounds.\n\n"
                f"{table}\n{whole}")
    write_results("hessian_factorisation", {"machine": info, "command": command_line(), "results": rows,
                                            "head": inverse}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
