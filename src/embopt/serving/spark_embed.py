"""Bulk embedding on Spark: the same :class:`Embedder` in every executor's Python workers.

Python API: :func:`embed_files` (a file to a Parquet folder, ``embopt embed --engine spark``);
:func:`embed_dataframe` inside a Spark job (adds ``embedding``, array<float>, to a DataFrame with a
string column ``text``); :func:`embed_texts` for texts held by the driver (teacher_embed's engine
spark), vectors back in order.

How it runs: ``mapInPandas`` hands each task an iterator of Arrow batches; the task's Embedder
comes from a per-process cache (:func:`_worker_embedder`), so with Spark's default worker reuse the
ONNX session is built once per Python worker. Only the bundle's *path* travels in the task closure:
every executor must see it (a local folder in local mode; a shared filesystem or the same install
on a cluster). A registered model (``models:/embopt-encoder@champion``) is downloaded on the driver.

Output: a Parquet folder, replaced only once complete (part files in input order), with ``row``
(0-based input position: row i of ``embopt embed``'s output for the same file), the input's ``id``
column when it has one, ``text`` and ``embedding``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from embopt.errors import DataError, EmboptError

log = logging.getLogger("embopt.embed")


def spark_session(master: str = "local[*]", app_name: str = "embopt-embed"):
    """A SparkSession for embedding: UI off, few shuffle partitions, workers on this Python.

    Raises:
        EmboptError: pyspark or Java missing (one line saying what to install).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EmboptError("the spark engine needs pyspark: pip install pyspark (see requirements/lock.txt)") \
            from None
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise EmboptError("the spark engine needs Java 17+: apt-get install openjdk-17-jre-headless, "
                          "or set JAVA_HOME")
    # Python workers are started by the JVM with its environment: make them run this interpreter
    # (PySpark reads PYSPARK_PYTHON, not spark.pyspark.python, outside spark-submit) and import this embopt.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    src = str(Path(__file__).resolve().parents[2])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if src not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([src, *filter(None, paths)])
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4"))
    if master.startswith("local"):  # loopback only: nothing listens on the network interfaces
        builder = (builder.config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.driver.host", "127.0.0.1"))
    logging.getLogger("py4j").setLevel(logging.WARNING)  # it logs every gateway connection at INFO
    try:
        return builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: Py4J raises a bare Exception/RuntimeError
        raise EmboptError(f"cannot start Spark ({master}): {str(exc).splitlines()[0]}") from None


@functools.cache
def _worker_embedder(spec: tuple):
    """One Embedder per Python worker process, kept across tasks (spark.python.worker.reuse is on)."""
    from embopt.serving.runtime import Embedder

    return Embedder(*spec)  # (bundle, variant, threads, batch_size, max_seq_length)


def _embed_partition(spec: tuple, text_col: str, batches: Iterator) -> Iterator:
    """mapInPandas body (module level: pickled by reference, so the Embedder cache is the worker's own)."""
    embedder = _worker_embedder(spec)
    for frame in batches:
        try:
            vectors = embedder.embed(frame[text_col].tolist())
        except EmboptError as exc:  # name the input row, not the row within this Arrow batch
            msg = str(exc)
            if "row" in frame.columns and msg.startswith("row "):
                local, rest = msg[4:].split(":", 1)
                msg = f"row {int(frame['row'].iloc[int(local)])}:{rest}"
            raise EmboptError(msg) from None
        yield frame.assign(embedding=list(vectors))


def embed_dataframe(df, bundle: str | Path, text_col: str = "text", variant: str | None = None,
                    threads: int | None = 1, batch_size: int = 32, max_seq_length: int | None = None):
    """``df`` with a float32 ``embedding`` column (``array<float>``), rows and partitions unchanged.

    ``df`` has a string column ``text_col``. ``bundle``: a folder every executor sees, or a model URI;
    ``threads``: ORT intra-op threads per task (1: Spark runs one task per core); the rest as for
    :class:`Embedder`.
    """
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

    if text_col not in df.columns:
        raise DataError(f"no column '{text_col}' (have: {', '.join(df.columns) or 'none'})")
    if ":/" in str(bundle):  # a model URI (``models:/name@alias``, ``runs:/...``): downloaded here
        from embopt.pipeline.registry import model_bundle

        bundle = model_bundle(str(bundle))
    else:
        bundle = Path(bundle).resolve()
    spec = (str(bundle), variant, threads, batch_size, max_seq_length)
    _worker_embedder(spec)  # fail here, on the driver, for a bad bundle or variant: one clear line
    schema = StructType([*df.schema.fields, StructField("embedding", ArrayType(FloatType(), False), False)])
    return df.mapInPandas(functools.partial(_embed_partition, spec, text_col), schema)


def read_input(spark, path: Path, column: str = "text"):
    """INPUT as (DataFrame ``row`` (0-based position), [``id``], ``text`` sorted by ``row``, row count).

    ``.txt``: one text a line, blank lines skipped; ``.csv``/``.tsv``: header, RFC 4180 quoting
    (quoted line breaks kept); ``.jsonl``/``.ndjson``: one object a line; ``.parquet``: a file or a
    folder of files. Input order: files in name order, rows in file order.
    """
    from pyspark.sql import functions as F

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix, read = path.suffix.lower(), spark.read
    if suffix == ".parquet":
        df = read.parquet(str(path))
    elif suffix in (".csv", ".tsv"):
        df = read.options(header=True, multiLine=True, escape='"', mode="FAILFAST",
                          sep="\t" if suffix == ".tsv" else ",").csv(str(path))
    elif suffix in (".jsonl", ".ndjson"):
        df = read.options(mode="FAILFAST").json(str(path))
    else:  # blank lines skipped
        df = read.text(str(path)).withColumnRenamed("value", column).filter(F.col(column).rlike(r"\S"))
    if column not in df.columns:
        raise DataError(f"{path}: no column '{column}' (have: {', '.join(df.columns) or 'none'})")
    keep = ["id"] if "id" in df.columns and column != "id" else []
    # Where each row comes from (file, split), taken at the scan: Spark packs files into partitions
    # by size, not by name, so partition order is not input order.
    df = df.select(*keep, F.col(column).alias("text"), F.col("_metadata.file_path").alias("_file"),
                   F.col("_metadata.file_block_start").alias("_block"))
    return _with_row_number(df)


def _with_row_number(df):
    """Add ``row``, the consecutive 0-based input position, and sort by it (a shuffle of the texts only).

    Each file split is read by one task in order, so ``monotonically_increasing_id`` minus its smallest value
    in the split is the row's place there; one small aggregate per split gives its first row.
    """
    from pyspark.sql import functions as F

    df = df.withColumn("_mid", F.monotonically_increasing_id())
    splits = (df.groupBy("_file", "_block").agg(F.count("*").alias("n"), F.min("_mid").alias("_first"))
              .collect())
    start, rows = 0, []
    for s in sorted(splits, key=lambda r: (r["_file"], r["_block"])):
        rows.append((s["_file"], s["_block"], start - s["_first"]))
        start += s["n"]
    offsets = df.sparkSession.createDataFrame(rows, "_file string, _block long, _shift long")
    cols = [c for c in df.columns if c not in ("_file", "_block", "_mid")]
    numbered = (df.join(F.broadcast(offsets), ["_file", "_block"])
                .select((F.col("_mid") + F.col("_shift")).alias("row"), *cols))
    # At least one partition per core: one small file is one split, whose texts one task would embed
    # alone (local[2] measured 1.02x local[1] on a 20k-line file before this).
    parts = max(1, df.rdd.getNumPartitions(), df.sparkSession.sparkContext.defaultParallelism)
    return numbered.repartitionByRange(parts, "row").sortWithinPartitions("row"), start


def embed_files(input: Path, output: Path, bundle: str | Path, master: str = "local[*]",
                variant: str | None = None, column: str = "text", batch_size: int = 32,
                threads: int | None = 1, max_seq_length: int | None = None, spark=None) -> tuple[int, int]:
    """Embed INPUT into the Parquet folder OUTPUT with Spark. Returns (rows, dim).

    ``spark``, the active session or a new one on ``master``, stopped at the end (see :func:`use_session`).
    """
    from embopt.pipeline.files import atomic_dir

    output = Path(output)
    if output.suffix.lower() != ".parquet":
        raise DataError(f"{output}: the spark engine writes a Parquet folder; name it *.parquet")
    if output.exists() and not output.is_dir():
        raise DataError(f"{output}: is a file; the spark engine writes a folder")
    with use_session(master, spark) as spark:
        from pyspark.errors import PySparkException

        try:
            df, n = read_input(spark, Path(input), column)
            if n == 0:
                raise DataError(f"{input}: no texts found (empty input)")
            out = embed_dataframe(df, bundle, "text", variant, threads, batch_size, max_seq_length)
            with atomic_dir(output) as tmp:
                out.write.mode("overwrite").parquet(str(tmp))
        except PySparkException as exc:
            raise DataError(f"{input}: {_spark_error(exc)}") from None
        dim = len(spark.read.parquet(str(output)).select("embedding").first()[0])
        return n, dim


@contextlib.contextmanager
def use_session(master: str = "local[*]", spark=None) -> Iterator:
    """``spark``, else the active session (a notebook, a test: left running), else a new one on ``master``
    that is stopped on exit. Raises :class:`EmboptError` (one line) where pyspark or Java is missing."""
    if spark is None:
        with contextlib.suppress(ImportError):
            from pyspark.sql import SparkSession

            spark = SparkSession.getActiveSession()
    own = spark is None
    spark = spark or spark_session(master)
    try:
        yield spark
    finally:
        if own:
            spark.stop()


def embed_texts(spark, texts: list[str], bundle: str | Path, workdir: Path, variant: str | None = None,
                batch_size: int = 32, threads: int | None = 1):
    """``texts`` (on the driver) embedded on Spark: a float32 (rows, dim) array in their order.

    The vectors come back through a Parquet folder under ``workdir`` read with pyarrow, so the driver JVM
    never holds them (executors write there: on a cluster, a file system they share).
    """
    import numpy as np
    import pandas as pd
    from pyspark.errors import PySparkException

    df = spark.createDataFrame(pd.DataFrame({"row": np.arange(len(texts)), "text": list(texts)}))
    out = Path(workdir) / "embeddings.parquet"
    try:
        vectors = embed_dataframe(df, bundle, "text", variant, threads, batch_size)
        vectors.write.mode("overwrite").parquet(str(out))
    except PySparkException as exc:
        raise EmboptError(_spark_error(exc)) from None
    return read_embeddings(out)


def read_embeddings(output: Path):
    """The ``embedding`` column of a Parquet folder as one float32 (rows, dim) array, checked in row order."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["row", "embedding"])  # part files in name order: input order
    rows = table.column("row").to_numpy()
    if not np.array_equal(rows, np.arange(len(rows))):
        raise EmboptError(f"{output}: rows are not in input order")
    flat = table.column("embedding").combine_chunks().flatten().to_numpy()
    return flat.astype(np.float32, copy=False).reshape(len(rows), -1)


def _spark_error(exc: Exception) -> str:
    """The one line of a Spark failure that says what went wrong (a worker's EmboptError, or Spark's)."""
    lines = str(exc).splitlines()
    ours = [line.split("EmboptError: ", 1)[1] for line in lines if "EmboptError: " in line]
    theirs = [line.strip() for line in lines if "Exception:" in line or "Error:" in line]
    return (ours + theirs + lines + [type(exc).__name__])[0]
