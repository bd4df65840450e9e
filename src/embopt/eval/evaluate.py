"""Evaluate every variant on the same sentences with the same threads.

One row per variant: STS dev Spearman, retention vs the teacher, throughput at a
fixed batch size, latency percentiles at batch 1, size on disk and output dim.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embopt.bench.timing import latency_ms, throughput
from embopt.data.sts import StsPair, unique_sentences
from embopt.eval.sts import retention, sts_spearman
from embopt.pipeline.files import dir_size_mb

log = logging.getLogger(__name__)


@dataclass
class Variant:
    name: str
    encode: Callable[[Sequence[str]], np.ndarray]  # batched encode at the evaluation batch size
    encode_one: Callable[[Sequence[str]], np.ndarray]  # batch-1 encode for latency
    size_path: Path
    size_patterns: tuple[str, ...]


def torch_variant(name: str, model, batch_size: int, size_path: Path) -> Variant:
    import torch

    def enc(texts, bs=batch_size):
        with torch.inference_mode():
            return model.encode(list(texts), batch_size=bs, convert_to_numpy=True, show_progress_bar=False)

    return Variant(name, enc, lambda t: enc(t, 1), size_path, ("*.safetensors", "*.bin"))


def onnx_variant(name: str, embedder, size_path: Path) -> Variant:
    return Variant(name, embedder.embed, embedder.embed, size_path, ("*.onnx",))


def measure(
    v: Variant,
    dev: Sequence[StsPair],
    speed_sentences: Sequence[str],
    latency_sentences: Sequence[str],
    repeats: int,
) -> dict:
    score = sts_spearman(v.encode, dev)
    dim = int(np.asarray(v.encode(speed_sentences[:2])).shape[1])
    sps = throughput(v.encode, speed_sentences, repeats=repeats)
    lat = latency_ms(v.encode_one, latency_sentences)
    row = {
        "sts_spearman": round(score, 4),
        "throughput_sps": round(sps, 1),
        "latency_ms_p50_bs1": round(lat["p50"], 3),
        "latency_ms_p95_bs1": round(lat["p95"], 3),
        "size_mb": round(dir_size_mb(v.size_path, v.size_patterns), 3),
        "dim": dim,
    }
    log.info(
        "%-20s spearman %.2f  %8.1f sent/s  p50 %.2f ms  %.1f MB  dim %d",
        v.name,
        score,
        sps,
        lat["p50"],
        row["size_mb"],
        dim,
    )
    return row


def evaluate_all(
    variants: list[Variant],
    dev: Sequence[StsPair],
    throughput_n: int,
    latency_n: int,
    repeats: int,
    final: str,
) -> dict:
    """Measure every variant; the first one is the teacher (the reference)."""
    from tqdm.auto import tqdm

    sentences = unique_sentences(dev)
    speed = sentences[:throughput_n]
    lat = sentences[:latency_n]
    rows = {}
    for v in tqdm(variants, desc="evaluate", unit="variant"):
        rows[v.name] = measure(v, dev, speed, lat, repeats)
    teacher_name = variants[0].name
    t = rows[teacher_name]
    for row in rows.values():
        row["retention"] = round(retention(row["sts_spearman"], t["sts_spearman"]), 5)
        row["speedup_vs_teacher"] = round(row["throughput_sps"] / t["throughput_sps"], 3)
    order = [
        "sts_spearman",
        "retention",
        "throughput_sps",
        "speedup_vs_teacher",
        "latency_ms_p50_bs1",
        "latency_ms_p95_bs1",
        "size_mb",
        "dim",
    ]
    rows = {k: {key: r[key] for key in order} for k, r in rows.items()}
    return {
        "teacher": {"name": teacher_name, **rows[teacher_name]},
        "variants": rows,
        "final": final,
        "final_retention": rows[final]["retention"],
        "final_speedup": rows[final]["speedup_vs_teacher"],
        "setup": {
            "sentences_sts": len(sentences),
            "throughput_sentences": len(speed),
            "latency_sentences": len(lat),
            "repeats": repeats,
            "machine": platform.machine(),
            "processor": platform.processor() or "",
            "python": platform.python_version(),
        },
    }


def markdown_table(result: dict) -> str:
    head = "| variant | Spearman | retention | sent/s | speedup | p50 ms | p95 ms | MB | dim |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {name} | {r['sts_spearman']:.2f} | {100 * r['retention']:.1f}% | {r['throughput_sps']:.0f} | "
        f"{r['speedup_vs_teacher']:.2f}x | {r['latency_ms_p50_bs1']:.2f} | {r['latency_ms_p95_bs1']:.2f} | "
        f"{r['size_mb']:.1f} | {r['dim']} |"
        for name, r in result["variants"].items()
    ]
    return head + "\n".join(lines) + "\n"
