"""Throughput and latency measurement shared by evaluate and the benchmark.

Rules: warm up first, time with ``perf_counter``, repeat and report the median,
and run every variant with the same sentences and thread count.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np


def pin_threads(n: int) -> None:
    """One thread count for every backend: OpenMP/MKL env, torch, (ORT takes it per session)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - runtime-only installs have no torch
        pass


def throughput(
    encode: Callable[[Sequence[str]], object], sentences: Sequence[str], repeats: int = 3
) -> float:
    """Median sentences per second of ``encode(sentences)`` over ``repeats`` runs, after a warm-up."""
    encode(list(sentences[: min(64, len(sentences))]))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode(list(sentences))
        runs.append(time.perf_counter() - t0)
    return len(sentences) / statistics.median(runs)


def latency_ms(encode: Callable[[Sequence[str]], object], sentences: Sequence[str]) -> dict[str, float]:
    """Per-call latency at batch size 1, in milliseconds: p50, p95, p99."""
    for s in sentences[:10]:
        encode([s])
    times = []
    for s in sentences:
        t0 = time.perf_counter()
        encode([s])
        times.append((time.perf_counter() - t0) * 1000.0)
    arr = np.asarray(times)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
    }
