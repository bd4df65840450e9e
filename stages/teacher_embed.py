"""Stage teacher_embed: the teacher's embeddings of the corpus, computed once.

A DVC output of its own, so changing a student hyperparameter never re-encodes
the corpus. Also scores the teacher on STSb val: the reference for retention.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time

import numpy as np

from embopt.bench.timing import pin_threads
from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv
from embopt.eval.sts import sts_spearman
from embopt.pipeline import config
from embopt.pipeline.files import atomic_dir, write_json
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.serving.spark_embed import use_session
from embopt.training.modeling import load_sentence_model, pick_device
from embopt.training.teacher_encode import (
    chunk_job_id,
    clear_chunks,
    encode_in_chunks,
    logged_encoder,
    resolve_backend,
    spark_teacher_encoder,
    teacher_encoder,
)

log = logging.getLogger("stages.teacher_embed")


def main() -> None:
    params = load_params(sections=("base", "teacher_embed"))
    p = params.teacher_embed
    pin_threads(params.base.threads)
    with contextlib.ExitStack() as stack:
        # Spark before anything else: without pyspark or Java the stage stops here with one line,
        # before an MLflow run or any output exists.
        spark = stack.enter_context(use_session(p.spark_master)) if p.engine == "spark" else None
        run = stack.enter_context(stage_run("teacher_embed", params, ["teacher_embed"]))
        corpus_file = config.PREPARED_DIR / "corpus.txt"
        sentences = read_lines(corpus_file)
        device = pick_device()
        teacher = load_sentence_model(params.base.teacher, device=device, max_seq_length=p.max_seq_length)
        backend = "onnx" if spark else resolve_backend(p.backend, device)  # params refuse spark + torch
        log.info("encoding %d sentences with %s on %s (backend %s, engine %s)", len(sentences),
                 params.base.teacher, "spark " + p.spark_master if spark else device, backend, p.engine)
        if spark:
            encode = stack.enter_context(spark_teacher_encoder(teacher, spark, p.batch_size,
                                                               p.max_seq_length))
        else:
            encode = teacher_encoder(teacher, backend, p.batch_size, p.max_seq_length,
                                     threads=params.base.threads)
        digest = hashlib.sha256(corpus_file.read_bytes()).hexdigest()
        # Finished chunks survive a killed run (persist: true in dvc.yaml): `dvc repro` resumes there,
        # with either engine (one Spark job a chunk). The engine is not in the job id: both run the
        # same fp32 graph, so their chunks agree up to float rounding and may be mixed.
        job = chunk_job_id(corpus_sha256=digest, teacher=params.base.teacher, backend=backend,
                           batch_size=p.batch_size, max_seq_length=p.max_seq_length,
                           chunk_sentences=p.chunk_sentences)
        t0 = time.perf_counter()
        emb, resumed = encode_in_chunks(encode, sentences, p.chunk_sentences, config.TEACHER_EMBED_CKPT_DIR,
                                        job)
        seconds = time.perf_counter() - t0
        val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
        # A few thousand sentences in one call: minutes with a big teacher on CPU, so log progress.
        teacher_val = sts_spearman(logged_encoder(encode, "teacher val STS", 8 * p.batch_size), val)
        with atomic_dir(config.TEACHER_EMBED_DIR) as tmp:
            np.save(tmp / "embeddings.npy", emb)
            # Row i of embeddings.npy is line i of corpus.txt; the hash pins that file.
            write_json(
                tmp / "index.json",
                {
                    "corpus_file": "data/prepared/corpus.txt",
                    "corpus_sha256": digest,
                    "rows": len(sentences),
                    "dim": int(emb.shape[1]),
                    "teacher": params.base.teacher,
                    "max_seq_length": p.max_seq_length,
                    "normalized": True,
                    "backend": backend,
                },
            )
        clear_chunks(config.TEACHER_EMBED_CKPT_DIR)
        log.info("wrote %s (%s)", config.TEACHER_EMBED_DIR, emb.shape)
        report(
            run,
            "teacher_embed",
            {
                "sentences": len(sentences),
                "dim": int(emb.shape[1]),
                "encode_seconds": round(seconds, 2),
                # Over the sentences this run encoded (resumed chunks were only read back).
                "sentences_per_second": round((len(sentences) - resumed) / seconds, 1),
                "resumed_sentences": resumed,
                "backend": backend,
                "teacher_val_spearman": round(teacher_val, 4),
            },
        )


if __name__ == "__main__":
    run_stage("teacher_embed", main)
