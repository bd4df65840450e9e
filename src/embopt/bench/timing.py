"""The one timing harness: evaluate, the quantize candidates, ``embopt bench`` and ``embopt bench-runtime``.

Rules: pin the threads, warm up first, time with ``perf_counter``, interleave the contenders (each
repeat runs every contender on every part, the order rotated from one part to the next, so a change
of load on a shared machine hits them all alike) and report medians.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

K = TypeVar("K")
P = TypeVar("P")


def pin_threads(n: int, exclusive: bool = False) -> None:
    """One thread count for every backend: OpenMP/MKL env, torch (ORT takes it per session).

    ``exclusive`` (the benchmarks) also pins the tokenizers' Rayon pool, turns tokenizer parallelism
    off (it would compete with the model's threads inside one timed call) and keeps one torch
    inter-op thread.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        if exclusive or var != "RAYON_NUM_THREADS":
            os.environ[var] = str(n)
    if exclusive:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        import torch
    except ImportError:  # pragma: no cover - runtime-only installs have no torch
        return
    torch.set_num_threads(n)
    if exclusive:
        with contextlib.suppress(RuntimeError):  # settable only before torch's first parallel work
            torch.set_num_interop_threads(1)


def interleaved(contenders: Mapping[K, Callable[[P], Any]], parts: Sequence[P], repeats: int,
                progress: Callable[[], Any] | None = None) -> dict[K, np.ndarray]:
    """Wall seconds of ``contenders[name](part)``: ``{name: array[repeat, part]}``.

    Each repeat runs every contender on every part in turn; the contenders' order rotates from one
    part to the next. Warm-up is the caller's (it knows what a representative call is).
    """
    names = list(contenders)
    out = {n: np.zeros((repeats, len(parts))) for n in names}
    turn = 0
    for r in range(repeats):
        for i, part in enumerate(parts):
            k = turn % max(len(names), 1)
            for n in [*names[k:], *names[:k]]:
                t0 = time.perf_counter()
                contenders[n](part)
                out[n][r, i] = time.perf_counter() - t0
                if progress is not None:
                    progress()
            turn += 1
    return out


def accumulating(fn: Callable[..., Any], acc: dict[str, float], key: str) -> Callable[..., Any]:
    """``fn``, adding the wall seconds of each of its calls to ``acc[key]`` (timing inside a library)."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0

    return timed


def per_call_ms(encode: Callable[[Sequence[str]], object], texts: Sequence[str]) -> list[float]:
    """Milliseconds of ``encode([text])`` for every text (batch 1)."""
    times = []
    for text in texts:
        t0 = time.perf_counter()
        encode([text])
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def percentiles(ms: Sequence[float], suffix: str = "") -> dict[str, float]:
    """p50, p95 and p99 of ``ms``, keyed ``p50{suffix}``..."""
    return {f"p{q}{suffix}": float(np.percentile(np.asarray(ms), q)) for q in (50, 95, 99)}


def throughput(encode: Callable[[Sequence[str]], object], sentences: Sequence[str], repeats: int = 3
               ) -> tuple[float, float]:
    """Median sentences per second of ``encode(sentences)`` over ``repeats`` runs, after a warm-up.

    Also their spread, (fastest - slowest) / median: the noise a choice between two speeds allows for.
    """
    encode(list(sentences[: min(64, len(sentences))]))
    runs = np.ravel(interleaved({"encode": encode}, [list(sentences)], repeats)["encode"])
    sps = len(sentences) / float(np.median(runs))
    return sps, len(sentences) * (1 / runs.min() - 1 / runs.max()) / sps


def latency_ms(encode: Callable[[Sequence[str]], object], sentences: Sequence[str]) -> dict[str, float]:
    """Per-call latency at batch size 1, in milliseconds: p50, p95, p99."""
    for s in sentences[:10]:
        encode([s])
    return percentiles(per_call_ms(encode, sentences))
