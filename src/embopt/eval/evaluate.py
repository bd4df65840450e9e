"""Evaluate every variant on the same sentences with the same threads.

Accuracy on two splits: the validation split (carved from STSb train), on which promote *chooses*, and
STSb dev, which is only *reported*, with a bootstrap 95% interval. Speed is timed on validation sentences,
interleaved across variants (each round runs every variant once, in a rotated order), so a load change on
the machine hits all of them alike; the spread over rounds is the noise promote uses.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embopt.bench.timing import interleaved, latency_ms
from embopt.data.sts import StsPair, unique_sentences
from embopt.eval.sts import bootstrap_spearman, cosine_rows, pair_cosines, spearman
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


def onnx_variant(name: str, embedder, size_path: Path, latency_embedder=None) -> Variant:
    """Batched encode through ``embedder`` (any backend); batch-1 latency through ``latency_embedder``
    if given. An OpenVINO IR's size is its weights file."""
    size_path = size_path.with_suffix(".bin") if size_path.suffix == ".xml" else size_path
    return Variant(name, embedder.embed, (latency_embedder or embedder).embed, size_path, ("*.onnx",))


def interleaved_throughput(variants: Sequence[Variant], sentences: Sequence[str], repeats: int) -> dict:
    """Sentences/s of each variant in each of ``repeats`` rounds (after one warm-up each)."""
    for v in variants:
        v.encode(list(sentences[:64]))
    seconds = interleaved({v.name: v.encode for v in variants}, [list(sentences)], repeats)
    return {name: [float(len(sentences) / s) for s in secs[:, 0]] for name, secs in seconds.items()}


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean cosine between two models' vectors of the same sentences; None when the widths differ."""
    return round(float(cosine_rows(a, b).mean()), 5) if a.shape == b.shape else None


def evaluate_all(variants: list[Variant], val: Sequence[StsPair], dev: Sequence[StsPair], throughput_n: int,
                 latency_n: int, repeats: int, n_boot: int, seed: int, incumbent: str | None = None) -> dict:
    """Measure every variant; the first one is the teacher (the reference for retention).

    ``incumbent`` names the variant that is the registry's current champion (measured in
    the same run); every row then carries the mean cosine of its dev vectors to it.
    """
    from tqdm.auto import tqdm

    val_s, dev_s = unique_sentences(val), unique_sentences(dev)
    gold_val, gold_dev = np.array([p.score for p in val]), np.array([p.score for p in dev])
    rows, dev_cos, dev_emb = {}, {}, {}
    for v in tqdm(variants, desc="accuracy", unit="variant"):
        val_emb = np.asarray(v.encode(val_s), dtype=np.float32)
        dev_emb[v.name] = np.asarray(v.encode(dev_s), dtype=np.float32)
        dev_cos[v.name] = pair_cosines(dev_emb[v.name], dev_s, dev)
        rows[v.name] = {"val_spearman": 100.0 * spearman(pair_cosines(val_emb, val_s, val), gold_val),
                        "size_mb": round(dir_size_mb(v.size_path, v.size_patterns), 3),
                        "dim": int(val_emb.shape[1])}
    ref = variants[0].name
    for v in variants:
        row = rows[v.name]
        b = bootstrap_spearman(dev_cos[v.name], gold_dev, dev_cos[ref], n_boot, seed)
        row.update({f"dev_{k}": round(b[k], 4) for k in ("spearman", "spearman_lo", "spearman_hi")})
        row.update({k: round(b[k], 5) for k in ("retention", "retention_lo", "retention_hi")})
        row.update(val_spearman=round(row["val_spearman"], 4),
                   val_retention=round(row["val_spearman"] / rows[ref]["val_spearman"], 5),
                   cos_to_teacher=mean_cosine(dev_emb[v.name], dev_emb[ref]))
        if incumbent is not None:
            row["cos_to_incumbent"] = mean_cosine(dev_emb[v.name], dev_emb[incumbent])
    speed_s = val_s[:throughput_n]
    runs = interleaved_throughput(variants, speed_s, repeats)
    for v in tqdm(variants, desc="latency", unit="variant"):
        lat = latency_ms(v.encode_one, val_s[:latency_n])
        sps = statistics.median(runs[v.name])
        rows[v.name].update(throughput_sps=round(sps, 1),
                            throughput_spread=round((max(runs[v.name]) - min(runs[v.name])) / sps, 4),
                            latency_ms_p50_bs1=round(lat["p50"], 3), latency_ms_p95_bs1=round(lat["p95"], 3))
    for name, row in rows.items():
        row["speedup_vs_teacher"] = round(row["throughput_sps"] / rows[ref]["throughput_sps"], 3)
        log.info("%-22s dev %.2f [%.2f, %.2f]  val retention %.4f  %8.1f sent/s (spread %.1f%%)  %.1f MB",
                 name, row["dev_spearman"], row["dev_spearman_lo"], row["dev_spearman_hi"],
                 row["val_retention"], row["throughput_sps"], 100 * row["throughput_spread"], row["size_mb"])
    setup = {"val_pairs": len(val), "dev_pairs": len(dev), "bootstrap_resamples": n_boot,
             "throughput_sentences": len(speed_s), "throughput_split": "val",
             "latency_sentences": min(latency_n, len(val_s)), "repeats": repeats,
             "machine": platform.machine(), "processor": cpu_name(), "python": platform.python_version()}
    return {"reference": ref, "variants": rows, "setup": setup}


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or ""


def headline(result: dict) -> dict:
    """What ``metrics/evaluate.json`` holds: per variant the numbers a reader compares."""
    keep = ("retention", "retention_lo", "retention_hi", "val_retention", "speedup_vs_teacher")
    ref = result["variants"][result["reference"]]
    return {"teacher_dev_spearman": ref["dev_spearman"], "teacher_val_spearman": ref["val_spearman"],
            "variants": {n: {k: r[k] for k in keep} for n, r in result["variants"].items()}}


def markdown_table(result: dict) -> str:
    head = ("| variant | dev Spearman [95% CI] | retention (dev) [95% CI] | retention (val) "
            "| sent/s (spread) | speedup | p50 ms | p95 ms | MB | dim |\n" + "|---" * 10 + "|\n")
    lines = [
        f"| {name} | {r['dev_spearman']:.2f} [{r['dev_spearman_lo']:.2f}, {r['dev_spearman_hi']:.2f}] | "
        f"{100 * r['retention']:.1f}% [{100 * r['retention_lo']:.1f}, {100 * r['retention_hi']:.1f}] | "
        f"{100 * r['val_retention']:.1f}% | "
        f"{r['throughput_sps']:.0f} (±{50 * r['throughput_spread']:.1f}%) | "
        f"{r['speedup_vs_teacher']:.2f}x | {r['latency_ms_p50_bs1']:.2f} | {r['latency_ms_p95_bs1']:.2f} | "
        f"{r['size_mb']:.1f} | {r['dim']} |"
        for name, r in result["variants"].items()
    ]
    return head + "\n".join(lines) + "\n"
