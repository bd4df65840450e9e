"""Rows/s of `embopt embed --engine spark` on local[1] and local[2] against the single-process runtime.

Same sentences (the first N lines of data/prepared/corpus.txt), same bundle variant, one run each,
after a warm-up that starts the JVM and the Python workers (their start is not bulk throughput).
On local[2] also `mlflow.pyfunc.spark_udf` (env_manager="local") of the project's pyfunc with the
same variant, logged to a temporary tracking store (the registered champion may be another
variant), in place of `mapInPandas`: same input, row numbering and Parquet output, same runtime
settings (one ORT thread per task, bulk mode, batch 32, no cache).
Prints a markdown table; the ratios are what to compare (the absolute rows/s depend on the CPU).

    PYTHONPATH=src python scripts/spark_bench.py --sentences 20000 --variant onnx_int8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

UDF_CONFIG = {"threads": 1, "mode": "bulk", "batch_size": 32, "cache": False}  # as embed_dataframe's Embedder


def log_variant(bundle: Path, variant: str, tmp: Path) -> str:
    """Log ``variant`` of ``bundle`` as promote does (one-variant bundle, project pyfunc) under tmp."""
    import mlflow

    from embopt.export.variants import package_variant
    from embopt.pipeline.registry import log_and_register_embedder
    from embopt.pipeline.tracking import StageRun
    from embopt.serving.bundle import read_manifest

    manifest = read_manifest(bundle)
    model_file = bundle / manifest["variants"][variant]["file"]
    packaged = package_variant(bundle, variant, model_file, tmp / "bundle")
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = mlflow.create_experiment("spark-bench", artifact_location=(tmp / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        reg = log_and_register_embedder(StageRun("bench", run.info.run_id), packaged, "embopt-bench",
                                        "champion", dim=int(manifest["dim"]), tags={"variant": variant},
                                        example=["A man is playing a guitar."])
    return f"models:/{reg['model_name']}@champion"


def spark_udf_seconds(spark, model_uri: str, src: Path, warm: Path, tmp: Path) -> float:
    """`embed_files` with `mlflow.pyfunc.spark_udf` in place of `mapInPandas` (after a warm-up run)."""
    import mlflow.pyfunc

    from embopt.serving.spark_embed import read_input

    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="array<float>", env_manager="local",
                                  model_config=UDF_CONFIG)

    def run(path: Path, out: Path) -> None:
        df, _ = read_input(spark, path)
        df.withColumn("embedding", udf("text")).write.mode("overwrite").parquet(str(out))

    run(warm, tmp / "udf-warm.parquet")
    t0 = time.perf_counter()
    run(src, tmp / "out-udf.parquet")
    return time.perf_counter() - t0


def min_cosine(a: Path, b: Path) -> float:
    from embopt.serving.spark_embed import read_embeddings

    x, y = read_embeddings(a), read_embeddings(b)
    return float(((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))).min())


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
        model_uri = log_variant(args.bundle, args.variant, Path(tmp))
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
                rows.append((f"spark {master} (mapInPandas)", time.perf_counter() - t0))
                if master == "local[2]":
                    rows.append((f"spark {master} (mlflow.pyfunc.spark_udf)",
                                 spark_udf_seconds(spark, model_uri, src, warm, Path(tmp))))
                    cos = min_cosine(Path(tmp) / "out-2.parquet", Path(tmp) / "out-udf.parquet")
            finally:
                spark.stop()
    base = dict(rows)["spark local[1] (mapInPandas)"]
    print(f"{len(texts)} sentences, `{args.variant}`, {cpu_name()}\n")
    print("| engine | seconds | rows/s | vs spark local[1] |\n|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {len(texts) / seconds:.0f} | {base / seconds:.2f}x |")
    print(f"\nspark_udf vs mapInPandas vectors: min cosine {cos:.6f}")


if __name__ == "__main__":
    main()
