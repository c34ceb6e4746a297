"""Memory bandwidth, measured, for the roofline (decode tok/s <= bandwidth / bytes read per token).

Method (STREAM's "copy" kernel, counted the STREAM way): copy a buffer far larger than the caches
into another, count the bytes read plus the bytes written, and report the median and the best of
`repeats` copies after one warm-up. On the CPU the copy is numpy's (memcpy-like, one thread and all
threads via chunks in a thread pool); on an NVIDIA GPU it is a device-to-device copy through
PyTorch when PyTorch with CUDA is installed.

    python -m haqa.benchmarks.bandwidth [--gib 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor


def _summary(per_copy_s: list[float], nbytes: int, method: str, **extra) -> dict:
    rates = [2 * nbytes / s / 1e9 for s in per_copy_s]
    return {"method": method, "bytes_per_copy": nbytes, "repeats": len(rates),
            "median_gbs": round(statistics.median(rates), 1), "best_gbs": round(max(rates), 1),
            "min_gbs": round(min(rates), 1), "counted": "bytes read + bytes written (STREAM copy)", **extra}


def cpu_copy(gib: float = 1.0, repeats: int = 10, threads: int | None = None) -> dict:
    import numpy as np

    threads = threads or os.cpu_count() or 1
    n = int(gib * 2**30) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

    def part(b):
        np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]])

    times = []
    with ThreadPoolExecutor(threads) as pool:
        for i in range(repeats + 1):
            t = time.perf_counter()
            list(pool.map(part, bounds))
            if i:  # the first copy faults the pages in
                times.append(time.perf_counter() - t)
    return _summary(times, src.nbytes, f"numpy copy in {threads} thread(s)", device="cpu", threads=threads)


def cuda_copy(gib: float = 2.0, repeats: int = 20) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return _summary(times, n, "torch device-to-device copy, CUDA events", device=torch.cuda.get_device_name(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="buffer size in GiB (CPU; the GPU uses 2x)")
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    out = {"cpu": cpu_copy(a.gib, a.repeats)}
    gpu = cuda_copy(2 * a.gib, 2 * a.repeats)
    if gpu:
        out["gpu"] = gpu
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
