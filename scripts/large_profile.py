"""The large profile, run once on a lent GPU box that has torch but not the project's environment.

The box has no DVC, MLflow or pydantic, so this drives the same library code the stages use
(``data.sts``/``data.corpus`` as prepare, ``teacher_encode.torch_encoder`` as teacher_embed,
``student.make_student`` + ``distill.train_student`` as distill, ``eval.sts`` as evaluate) with
the stages' defaults, and writes one JSON of results. Two experiments:

* **fixed budget**: the default profile's number of optimizer steps (100k sentences, one epoch,
  batch 64), spent on corpora of different sizes: does quality come from more distinct sentences
  or from more passes over the same ones, at the same (CPU-)time?
* **large**: every sentence of the corpus, several epochs, 1-, 2- and 3-layer students.

Choices (best step) use the validation split carved from STSb train, as in the pipeline; STSb dev
is reported only. On a machine with the environment, the pipeline itself runs the large profile
(README, "Large profile"); this script exists because the lent GPU box cannot install it.

    python scripts/large_profile.py --teacher DIR --sts-dir DIR --corpus DIR --out results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path

log = logging.getLogger("large_profile")

DEFAULT_STEPS = math.ceil(100_000 / 64)  # the default profile: 100k sentences, 1 epoch, batch 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--sts-dir", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 1, 3])
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--budget-sizes", type=int, nargs="*", default=[25_000, 50_000, 100_000, 0],
                    help="corpus sizes for the fixed-budget runs (0: all)")
    ap.add_argument("--budget-steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--max-sentences", type=int, default=10_000_000)
    ap.add_argument("--deadline-s", type=float, default=480, help="skip runs that would start after this")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from embopt.data.corpus import build_corpus
    from embopt.data.sts import load_sts_local, split_validation, unique_sentences
    from embopt.eval.sts import retention, sts_spearman
    from embopt.training.distill import TrainConfig, train_student
    from embopt.training.modeling import load_sentence_model, pick_device
    from embopt.training.modeling import num_layers as num_layers_of
    from embopt.training.student import choose_layers, make_student
    from embopt.training.teacher_encode import torch_encoder

    t_start = time.perf_counter()
    device = pick_device()
    sts = load_sts_local(args.sts_dir)
    sts["train"], sts["val"] = split_validation(sts["train"], 1500, args.seed)
    held_out = {s for split in ("val", "dev", "test") for s in unique_sentences(sts.get(split, []))}
    corpus, stats = build_corpus([args.corpus], held_out, unique_sentences(sts["train"]), args.max_sentences,
                                 5, 60, args.seed)
    # The carried teacher may be stored in fp16 (size limit of the transfer): train and encode in fp32.
    teacher = load_sentence_model(args.teacher, device=device, max_seq_length=128).float()
    encode = torch_encoder(teacher, batch_size=512)
    t0 = time.perf_counter()
    targets = encode(corpus)
    embed_s = time.perf_counter() - t0
    teacher_val, teacher_dev = sts_spearman(encode, sts["val"]), sts_spearman(encode, sts["dev"])
    results = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
        "torch": torch.__version__, "corpus": stats, "corpus_sentences": len(corpus),
        "teacher_embed_seconds": round(embed_s, 1), "teacher_val_spearman": round(teacher_val, 4),
        "teacher_dev_spearman": round(teacher_dev, 4), "runs": [],
    }
    log.info("teacher: %d sentences in %.0f s; val %.4f dev %.4f", len(corpus), embed_s,
             teacher_val, teacher_dev)

    def run(kind: str, num_layers: int, n: int, epochs: float) -> None:
        if time.perf_counter() - t_start > args.deadline_s:
            log.info("deadline reached: skipping %s %d layers", kind, num_layers)
            return
        keep = choose_layers(num_layers_of(teacher), None, num_layers)
        student = make_student(teacher, keep)
        cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-4, warmup_ratio=0.1, weight_decay=0.01,
                          max_grad_norm=1.0, max_seq_length=64, loss="mse", eval_every=400,
                          checkpoint_every=10**9, early_stopping_patience=0, seed=args.seed,
                          group_by_length=True)
        res = train_student(student, corpus[:n], targets[:n], cfg, sts["val"], device=device)
        enc = torch_encoder(student, batch_size=512)
        val, dev = sts_spearman(enc, sts["val"]), sts_spearman(enc, sts["dev"])
        row = {"kind": kind, "layers": keep, "sentences": n, "epochs": round(epochs, 3), "steps": res.steps,
               "best_step": res.best_step, "train_seconds": round(res.train_seconds, 1),
               "val_retention": round(retention(val, teacher_val), 4),
               "dev_retention": round(retention(dev, teacher_dev), 4)}
        results["runs"].append(row)
        log.info("%s", row)
        args.out.write_text(json.dumps(results, indent=1))
        del student

    for size in args.budget_sizes:
        n = len(corpus) if size == 0 else min(size, len(corpus))
        run("fixed_budget", 2, n, args.budget_steps * 64 / n)
    for layers in args.layers:
        run("large", layers, len(corpus), args.epochs)
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
