"""Encoding the corpus with the teacher: sentence-transformers (torch) or fp32 ONNX through embopt's runtime.

The ONNX path exports the teacher with pooling and L2 normalisation inside the graph
(:func:`embopt.export.onnx.export_onnx`), applies ORT's fp32 fusions, and runs it with
:class:`embopt.serving.runtime.Embedder`: the Rust tokenizer, length-sorted batches that pad only to their
own longest sentence, one session call per batch. The embeddings are the torch teacher's up to float
rounding (cosine >= 0.9999, tested); the ONNX files live in a temporary folder and are not a stage output.

:func:`encode_in_chunks` makes the stage resumable (fixed chunks, each saved as it finishes);
:func:`spark_teacher_encoder` runs the same ONNX teacher as Spark jobs, one per chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from embopt.errors import EmboptError
from embopt.pipeline.files import atomic_file

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
Encoder = Callable[[Sequence[str]], np.ndarray]


def torch_encoder(st_model, batch_size: int, show_progress: bool = False) -> Encoder:
    """L2-normalised float32 embeddings from the SentenceTransformer itself."""
    return lambda sentences: st_model.encode(list(sentences), batch_size=batch_size, convert_to_numpy=True,
                                             normalize_embeddings=True,
                                             show_progress_bar=show_progress).astype(np.float32)


def build_teacher_bundle(st_model, bundle: Path, max_seq_length: int) -> Path:
    """The teacher as an fp32 bundle at ``bundle`` (tokenizer, ORT-fused ``onnx/model.onnx``, manifest)."""
    from embopt.export.onnx import export_onnx, optimize_onnx
    from embopt.serving.bundle import write_manifest
    from embopt.training.modeling import pooling_mode

    bundle = Path(bundle)
    (bundle / "onnx").mkdir(parents=True, exist_ok=True)
    tok = st_model.tokenizer
    if not getattr(tok, "is_fast", False):
        raise EmboptError("teacher_embed.backend onnx: the teacher has no fast tokenizer; "
                          "use teacher_embed.backend: torch")
    tok.save_pretrained(str(bundle))  # tokenizer.json: what the runtime's Rust tokenizer reads
    raw = export_onnx(st_model, bundle / "onnx" / "model_raw.onnx")
    optimize_onnx(raw, bundle / "onnx" / "model.onnx")
    raw.unlink()
    get_dim = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    write_manifest(bundle, {"onnx_fp32": {"file": "onnx/model.onnx", "precision": "fp32"}}, "onnx_fp32",
                   dim=int(get_dim()), max_seq_length=int(max_seq_length), pooling=pooling_mode(st_model),
                   normalize=True, pad_token=tok.pad_token or "[PAD]", source_model="teacher")
    return bundle


def resolve_backend(backend: str, device: str) -> str:
    """``auto``: ONNX on CPU (faster there, see the README), torch where the teacher sits on a GPU."""
    if backend not in BACKENDS:
        raise EmboptError(f"teacher_embed.backend: '{backend}' is not one of {', '.join(BACKENDS)}")
    return ("torch" if device.startswith("cuda") else "onnx") if backend == "auto" else backend


def teacher_encoder(st_model, backend: str, batch_size: int, max_seq_length: int, threads: int | None = None,
                    show_progress: bool = False) -> Encoder:
    """An encoder for ``backend``: a function from sentences to L2-normalised float32 rows.

    ``backend``: ``auto`` (see :func:`resolve_backend`), ``onnx`` (fp32 graph through
    :class:`~embopt.serving.runtime.Embedder`) or ``torch`` (``st_model``'s ``max_seq_length`` already
    set by the caller). ``max_seq_length``: the ONNX tokenizer's truncation; ``threads``: ORT intra-op
    threads (torch threads are pinned by the caller); ``show_progress``: a progress bar over sentences.
    """
    backend = resolve_backend(backend, str(st_model.device))
    if backend == "torch":
        return torch_encoder(st_model, batch_size, show_progress)
    from embopt.serving.runtime import Embedder

    # The session holds the graph in memory once created: the exported files are not kept.
    with tempfile.TemporaryDirectory(prefix="embopt_teacher_onnx_") as tmp:
        bundle = build_teacher_bundle(st_model.to("cpu"), Path(tmp) / "bundle", max_seq_length)
        embedder = Embedder(bundle, variant="onnx_fp32", threads=threads, batch_size=batch_size)
    log.info("teacher as fp32 ONNX (%s), %s threads, batch %d", embedder.providers[0], threads, batch_size)
    return lambda sentences: embedder.embed(list(sentences), show_progress=show_progress)


@contextlib.contextmanager
def spark_teacher_encoder(st_model, spark, batch_size: int, max_seq_length: int) -> Iterator[Encoder]:
    """The fp32 ONNX teacher run as Spark jobs (``teacher_embed.engine: spark``); one job per call.

    The teacher is exported as for the ``onnx`` backend, into a folder that lives while the encoder is
    open (the executors load it by path: on a cluster it must be on a file system they share); each call
    is one :func:`embopt.serving.spark_embed.embed_texts` job, its rows in input order and equal to the
    local ``onnx`` backend's up to float rounding. ``batch_size``: sentences per ONNX Runtime call.
    """
    from embopt.serving.spark_embed import embed_texts

    with tempfile.TemporaryDirectory(prefix="embopt_teacher_spark_") as tmp:
        bundle = build_teacher_bundle(st_model.to("cpu"), Path(tmp) / "bundle", max_seq_length)
        log.info("teacher as fp32 ONNX on Spark (%s), batch %d", spark.sparkContext.master, batch_size)
        yield lambda sentences: embed_texts(spark, list(sentences), bundle, Path(tmp), variant="onnx_fp32",
                                            batch_size=batch_size)


def chunk_job_id(**settings) -> str:
    """Identify an encoding job (corpus hash, teacher, backend, ...): another job's chunks are dropped."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def clear_chunks(ckpt_dir: Path) -> None:
    """Drop the chunks and the job file once the stage wrote its output."""
    for f in ckpt_dir.glob("chunk_*.npy"):
        f.unlink()
    (ckpt_dir / "job.json").unlink(missing_ok=True)


def logged_encoder(encode: Encoder, what: str, every: int) -> Encoder:
    """``encode`` in slices of ``every`` sentences, logging sentences done and the rate after each.

    For steps that encode a few thousand sentences at once (the teacher's STS validation),
    which with a big teacher on CPU run for minutes.
    """

    def run(sentences: Sequence[str]) -> np.ndarray:
        n, parts, t0 = len(sentences), [], time.perf_counter()
        for start in range(0, n, every):
            parts.append(np.asarray(encode(sentences[start:start + every]), dtype=np.float32))
            done = min(start + every, n)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            log.info("%s: %d of %d sentences (%.0f sentences/s)", what, done, n, rate)
        return np.concatenate(parts) if parts else np.asarray(encode(sentences), dtype=np.float32)

    return run


def encode_in_chunks(encode: Encoder, sentences: Sequence[str], chunk_sentences: int, ckpt_dir: Path,
                     job_id: str) -> tuple[np.ndarray, int]:
    """Encode ``sentences`` (in output row order) chunk by chunk, saving each finished one under ``ckpt_dir``.

    ``encode`` maps sentences to float32 rows (length-sorted batches form within a chunk). The chunk
    boundaries (``chunk_sentences`` each) are fixed, so a resumed run encodes exactly the batches an
    uninterrupted one would. Chunks in ``ckpt_dir`` of the same ``job_id`` (:func:`chunk_job_id` of the
    settings) are reused, another one discards them.
    Returns (embeddings, number of sentences taken from saved chunks).
    """
    if chunk_sentences < 1:
        raise ValueError(f"chunk_sentences must be >= 1, got {chunk_sentences}")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    job_file = ckpt_dir / "job.json"
    old = json.loads(job_file.read_text()).get("job_id") if job_file.exists() else None
    if old != job_id:
        if old is not None:
            log.info("teacher chunks in %s are from other settings; starting over", ckpt_dir)
        clear_chunks(ckpt_dir)
        job_file.write_text(json.dumps({"job_id": job_id}) + "\n")
    n, parts, resumed, done_new, t0 = len(sentences), [], 0, 0, time.perf_counter()
    for i, start in enumerate(range(0, n, chunk_sentences)):
        rows = min(chunk_sentences, n - start)
        path = ckpt_dir / f"chunk_{i:05d}.npy"
        if path.exists() and (emb := np.load(path)).shape[0] == rows:
            parts.append(emb)
            resumed += rows
            continue
        emb = np.ascontiguousarray(encode(sentences[start:start + rows]), dtype=np.float32)
        with atomic_file(path, "wb") as fh:  # a kill mid-save leaves no half chunk to resume from
            np.save(fh, emb)
        parts.append(emb)
        done_new += rows
        rate = done_new / max(time.perf_counter() - t0, 1e-9)
        log.info("teacher chunk %d: rows %d-%d of %d (%.0f sentences/s)", i, start, start + rows, n, rate)
    if resumed:
        log.info("resumed: %d of %d sentences from saved chunks in %s", resumed, n, ckpt_dir)
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32), resumed
