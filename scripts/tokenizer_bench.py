"""The chunk cache against the Rust tokenizer alone, inside embopt's runtime (issue 12: tokenization).

For each bundle variant, two Embedders that differ only in the tokenizer path (the chunk cache of
``embopt.serving.wordpiece``, or ``tokenizers`` directly) embed the same validation sentences in
interleaved rounds (``embopt.bench.timing``), ``base.threads`` threads, batch ``evaluate.batch_size``;
then batch-1 latency on 1 thread. Prints a markdown table (``--out``: also writes it)::

    PYTHONPATH=src python scripts/tokenizer_bench.py --out reports/bench/tokenizer.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from embopt.bench.timing import interleaved, per_call_ms, pin_threads
from embopt.data.sts import read_sts_tsv, unique_sentences
from embopt.eval.evaluate import cpu_name
from embopt.pipeline import config
from embopt.pipeline.params import load_params
from embopt.serving.runtime import Embedder

VARIANTS = [("static", config.STATIC_DIR, "static"),
            ("onnx_fp32_unfused", config.EXPORT_DIR, "onnx_fp32_unfused"),
            ("onnx_int8", config.EXPORT_DIR, "onnx_int8")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    params = load_params(sections=("base", "evaluate"))
    threads, batch = params.base.threads, params.evaluate.batch_size
    pin_threads(threads, exclusive=True)
    sentences = unique_sentences(read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv"))[: args.sentences]
    embedders = {}
    for name, bundle, variant in VARIANTS:
        for path in ("chunk cache", "tokenizers"):
            e = Embedder(bundle, variant=variant, threads=threads, batch_size=batch)
            if path == "tokenizers":
                e._wordpiece = None
            embedders[(name, path)] = e
    assert all(e._wordpiece is not None for (_, p), e in embedders.items() if p == "chunk cache")
    # Batch-1 queries of exactly 16 tokens (special tokens included), as issue 12's latency target.
    ids = embedders[(VARIANTS[1][0], "tokenizers")].tokenize(sentences)
    queries = [s for s, i in zip(sentences, ids, strict=True) if len(i) == 16][:200]
    for e in embedders.values():
        e.embed(sentences)  # warm-up (and the cache's out-of-vocabulary words)
    tokenize_s = dict.fromkeys(embedders, 0.0)

    def timed(key):
        def run(texts):
            e = embedders[key]
            e.timings.tokenize_s = 0.0
            e.embed(texts)
            tokenize_s[key] += e.timings.tokenize_s
        return run

    t0 = time.perf_counter()
    secs = interleaved({k: timed(k) for k in embedders}, [sentences], args.repeats)
    rows = []
    for name, bundle, variant in VARIANTS:
        single = Embedder(bundle, variant=variant, threads=1, mode="latency")
        lat = {}
        for path in ("chunk cache", "tokenizers"):
            single._wordpiece = embedders[(name, "chunk cache")]._wordpiece if path == "chunk cache" else None
            per_call_ms(single.embed, queries[:20])
            lat[path] = float(np.median(per_call_ms(single.embed, queries)))
        base = len(sentences) / np.median(secs[(name, "tokenizers")])
        for path in ("tokenizers", "chunk cache"):
            runs = secs[(name, path)][:, 0]
            rate = len(sentences) / np.median(runs)
            spread = (runs.max() - runs.min()) / np.median(runs) / 2 * 100
            tok_us = tokenize_s[(name, path)] / args.repeats / len(sentences) * 1e6
            rows.append(f"| {name} | {path} | {rate:,.0f} (±{spread:.0f}%) | {rate / base:.2f}x | "
                        f"{tok_us:.1f} | {lat[path]:.3f} |")
    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
            f"{threads} threads, batch {batch}, {len(sentences)} val sentences x {args.repeats} "
            f"interleaved rounds ({time.perf_counter() - t0:.0f} s); batch-1 p50 on 1 thread over "
            f"{len(queries)} 16-token queries.\n\n"
            "| variant | tokenizer path | sent/s (spread) | x tokenizers | tokenize us/sentence "
            "| batch-1 p50 ms |\n"
            "|---|---|---:|---:|---:|---:|\n")
    text = head + "\n".join(rows) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
