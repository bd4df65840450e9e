"""``embopt embed INPUT OUTPUT``: embed a file of texts with an exported bundle."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import typer

from embopt.errors import EmboptError
from embopt.pipeline import config

log = logging.getLogger("embopt.embed")

CHUNK = 4096  # texts per Embedder call: bounded memory for token ids, a smooth progress bar


def embed(
    input: Path = typer.Argument(..., help="Texts: .txt (one a line, blank lines skipped), .jsonl/.ndjson "
                                 "(objects with --column, or JSON strings) or .csv/.tsv (column --column)."),
    output: Path = typer.Argument(..., help="Embeddings: .npy (float32, one row per text) or .parquet "
                                  "(text, embedding); with --engine spark a Parquet folder (row, [id], "
                                  "text, embedding)."),
    bundle: Path = typer.Option(config.EXPORT_DIR, "--bundle", "-b",
                                help="Exported bundle folder (manifest.json, tokenizer, onnx/)."),
    variant: str = typer.Option(None, "--variant", help="Manifest variant (default: the bundle's default)."),
    column: str = typer.Option("text", "--column", "-c", help="CSV column or JSONL field holding the text."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Sentences per ONNX Runtime call."),
    threads: int = typer.Option(None, "--threads", min=1, help="Threads in all (default: one per CPU)."),
    mode: str = typer.Option("bulk", "--mode", help="bulk: one 1-thread ONNX Runtime session per thread, "
                             "batches in parallel (fastest for files); latency: one session on all threads."),
    max_seq_length: int = typer.Option(None, "--max-seq-length", min=2,
                                       help="Truncation in tokens (default: the bundle's)."),
    pca: Path = typer.Option(None, "--pca", help="PCA .npz (mean, components) to project the embeddings."),
    cache: Path = typer.Option(None, "--cache", help="SQLite embedding cache shared across runs (optional)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    engine: str = typer.Option("local", "--engine", help="local: this process; spark: a PySpark job "
                               "(INPUT may also be Parquet; --bundle may be a model URI such as "
                               "models:/embopt-encoder@champion; --pca and --cache are local only)."),
    master: str = typer.Option("local[*]", "--master", help="Spark master URL (--engine spark)."),
) -> None:
    """Embed every text of INPUT and write the float32 embeddings to OUTPUT, in input order."""
    from embopt.pipeline.files import exit_on_sigterm
    from embopt.pipeline.stage import setup_logging

    setup_logging()
    previous = exit_on_sigterm()  # a SIGTERM unwinds like Ctrl-C: the temporary output file is removed
    try:
        if engine == "spark":
            from embopt.serving.spark_embed import embed_files

            if pca is not None or cache is not None:
                raise EmboptError("--pca and --cache work with --engine local only")
            t0 = time.perf_counter()
            # One ORT thread per task by default: Spark already runs one task per core.
            n, dim = embed_files(input, output, bundle, master, variant, column, batch_size, threads or 1,
                                 max_seq_length)
            seconds = time.perf_counter() - t0
        elif engine == "local":
            n, dim, seconds = run_embed(input, output, bundle, variant, column, batch_size, threads,
                                        max_seq_length, pca, cache, progress, mode)
        else:
            raise EmboptError(f"--engine '{engine}' is not one of local, spark")
    except EmboptError as exc:
        print(f"embopt embed: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("wrote %d x %d float32 embeddings to %s (%.1f s, %.0f texts/s)", n, dim, output, seconds,
             n / seconds if seconds else 0.0)


def run_embed(input: Path, output: Path, bundle: Path, variant: str | None, column: str, batch_size: int,
              threads: int | None, max_seq_length: int | None, pca: Path | None, cache: Path | None,
              progress: bool, mode: str) -> tuple[int, int, float]:
    """Read, embed, write. Returns (texts, dim, seconds)."""
    import numpy as np
    from tqdm.auto import tqdm

    from embopt.cli import embed_io as io
    from embopt.serving.cache import EmbeddingCache
    from embopt.serving.runtime import Embedder

    io.check_output(output)  # a folder in the way, an unwritable place: before reading or embedding anything
    texts = io.read_texts(input, column)
    log.info("%d texts from %s (%s)", len(texts), input, io.input_format(input))
    embedder = Embedder(bundle, variant=variant, threads=threads, batch_size=batch_size,
                        max_seq_length=max_seq_length, pca=pca, mode=mode,
                        cache=EmbeddingCache(max_entries=0, path=cache) if cache is not None else None)
    log.info("model %s (%s), dim %d, max_seq_length %d, batch %d, %s mode on %d session(s)",
             embedder.onnx_path, embedder.variant, embedder.dim, embedder.max_seq_length, batch_size, mode,
             len(embedder.sessions))
    io.check_space(output, embedder.dim, texts)
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    t0 = time.perf_counter()
    with tqdm(total=len(texts), desc="embed", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start: start + CHUNK]
            out[start: start + len(chunk)] = embedder.embed(chunk)
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0
    if embedder.cache is not None:
        log.info("cache %s: %s", cache, embedder.cache.stats())
    io.write_embeddings(output, out, texts)
    return len(texts), embedder.dim, seconds
