"""Rows/s of `embopt embed --engine spark` on local[1] and local[2] against the single-process runtime.

Same sentences (the first N lines of data/prepared/corpus.txt), same bundle variant, one run each,
after a warm-up that starts the JVM and the Python workers (their start is not bulk throughput).
Prints a markdown table; the ratios are what to compare (the absolute rows/s depend on the CPU).

    PYTHONPATH=src python scripts/spark_bench.py --sentences 20000 --variant onnx_int8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("models/export"))
    ap.add_argument("--variant", default="onnx_int8")
    ap.add_argument("--corpus", type=Path, default=Path("data/prepared/corpus.txt"))
    ap.add_argument("--sentences", type=int, default=20_000)
    args = ap.parse_args()

    from embopt.eval.evaluate import cpu_name
    from embopt.serving.runtime import Embedder
    from embopt.serving.spark_embed import embed_files, spark_session

    texts = args.corpus.read_text(encoding="utf-8").splitlines()[: args.sentences]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src, warm = Path(tmp) / "in.txt", Path(tmp) / "warm.txt"
        src.write_text("\n".join(texts) + "\n", encoding="utf-8")
        warm.write_text("\n".join(texts[:200]) + "\n", encoding="utf-8")
        for threads in (1, 2):
            emb = Embedder(args.bundle, variant=args.variant, threads=threads, mode="bulk")
            emb.embed(texts[:200])
            t0 = time.perf_counter()
            emb.embed(texts)
            rows.append((f"embopt embed (one process, {threads} thread{'s' * (threads > 1)})",
                         time.perf_counter() - t0))
        for master in ("local[1]", "local[2]"):
            spark = spark_session(master)
            try:
                embed_files(warm, Path(tmp) / "warm.parquet", args.bundle, variant=args.variant, spark=spark)
                t0 = time.perf_counter()
                embed_files(src, Path(tmp) / f"out-{master[6]}.parquet", args.bundle, variant=args.variant,
                            spark=spark)
                rows.append((f"spark {master}", time.perf_counter() - t0))
            finally:
                spark.stop()
    base = dict(rows)["spark local[1]"]
    print(f"{len(texts)} sentences, `{args.variant}`, {cpu_name()}\n")
    print("| engine | seconds | rows/s | vs spark local[1] |\n|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {len(texts) / seconds:.0f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
