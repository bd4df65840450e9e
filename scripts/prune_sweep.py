"""Where pruning breaks: FFN neurons and attention heads removed from the distilled student.

Each point starts from the distill stage's student (``models/distill``), prunes it as the prune
stage does (importance from corpus activations, matrices sliced) and runs the stage's recovery
distillation with ``params.yaml``'s prune settings; only ``ffn_keep_ratio`` and ``heads_to_prune``
change. Quality is read on the validation split (retention of the teacher's val Spearman), as every
choice in the pipeline is; speed is the dynamic int8 ONNX graph of each point through embopt's
runtime, all points timed in one interleaved run on the same validation sentences and threads,
as a ratio to the unpruned student's int8 graph. The pipeline's own pruned model (``models/prune``)
is one more point, taken as it is.

Usage (from the repository root, after ``make repro``)::

    PYTHONPATH=src .venv/bin/python scripts/prune_sweep.py --points 0.5:0 0.25:0 0.75:6 0.75:12

Prints a markdown table and writes it, with the raw numbers, to ``reports/bench/prune_sweep.{md,json}``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from embopt.bench.simple_bundle import build_simple_bundle
from embopt.bench.timing import interleaved, pin_threads
from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv, unique_sentences
from embopt.eval.evaluate import cpu_name
from embopt.eval.sts import retention, sts_spearman
from embopt.pipeline import config
from embopt.pipeline.files import read_json, write_json
from embopt.pipeline.params import load_params
from embopt.serving.runtime import Embedder
from embopt.training.distill import train_student
from embopt.training.modeling import hf_model, load_sentence_model
from embopt.training.prune import count_params, prune_model, recovery_config


def point(text: str) -> tuple[float, int]:
    keep, _, heads = text.partition(":")
    return float(keep), int(heads or 0)


def pruned_student(params, keep: float, heads: int, corpus: list[str], targets: np.ndarray, val,
                   recovery_sentences: int | None):
    """The distilled student pruned to (``keep``, ``heads``) and recovered as the prune stage does."""
    p = params.prune
    model = load_sentence_model(config.DISTILL_DIR)
    prune_model(model, corpus[: p.importance_sentences], keep, heads)
    n = min(len(corpus), recovery_sentences or p.recovery_max_sentences)
    cfg = recovery_config(p, params.base.seed)
    train_student(model, corpus[:n], targets[:n], cfg, val[:200])
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", nargs="+", default=["0.5:0", "0.25:0", "0.75:6", "0.75:12"],
                    help="FFN_KEEP_RATIO:HEADS_TO_PRUNE pairs")
    ap.add_argument("--recovery-sentences", type=int, default=None,
                    help="recovery distillation sentences (default: prune.recovery_max_sentences)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--out", type=Path, default=config.REPORTS_DIR / "bench" / "prune_sweep")
    args = ap.parse_args()
    params = load_params(sections=("base", "prune"))
    threads = params.base.threads
    pin_threads(threads)
    corpus = read_lines(config.PREPARED_DIR / "corpus.txt")
    targets = np.load(config.TEACHER_EMBED_DIR / "embeddings.npy")
    val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
    teacher_val = read_json(config.METRICS_DIR / "teacher_embed.json")["teacher_val_spearman"]

    models = {"unpruned (distill)": load_sentence_model(config.DISTILL_DIR),
              "pipeline prune (models/prune)": load_sentence_model(config.PRUNE_DIR)}
    for text in args.points:
        keep, heads = point(text)
        print(f"pruning: ffn_keep_ratio {keep}, heads_to_prune {heads}", flush=True)
        models[f"ffn {keep}, -{heads} heads"] = pruned_student(params, keep, heads, corpus, targets, val,
                                                                       args.recovery_sentences)

    rows, embedders = {}, {}
    with tempfile.TemporaryDirectory(prefix="prune_sweep_") as tmp:
        for i, (name, model) in enumerate(models.items()):
            st_dir = Path(tmp) / f"m{i}"
            model.save(str(st_dir))
            bundle = build_simple_bundle(model, st_dir, Path(tmp) / f"b{i}", params.base.max_seq_length)
            emb = Embedder(bundle, variant="onnx_int8", threads=threads, batch_size=32,
                           max_seq_length=params.base.max_seq_length)
            embedders[name] = emb
            torch_val = sts_spearman(lambda s, m=model: m.encode(list(s), batch_size=64), val)
            int8_val = sts_spearman(lambda s, e=emb: e.embed(list(s)), val)
            cfg = hf_model(model).config
            rows[name] = {"ffn": cfg.intermediate_size,
                          "heads": cfg.num_hidden_layers * cfg.num_attention_heads
                          - sum(len(v) for v in (cfg.pruned_heads or {}).values()),
                          "params": count_params(model), "val_spearman": round(torch_val, 4),
                          "val_retention": round(retention(torch_val, teacher_val), 5),
                          "int8_val_retention": round(retention(int8_val, teacher_val), 5)}
        sentences = unique_sentences(val)
        parts = [sentences[i:i + 500] for i in range(0, len(sentences), 500)]
        for emb in embedders.values():
            emb.embed(parts[0][:64])  # warm-up
        seconds = interleaved({n: e.embed for n, e in embedders.items()}, parts, args.repeats)
    for name, s in seconds.items():
        rounds = s.sum(axis=1)  # seconds of each round over every part
        rows[name]["int8_sps"] = round(len(sentences) / float(np.median(rounds)), 1)
        # (slowest - fastest) / median round: the measured noise of this run
        rows[name]["int8_spread"] = round(float(np.ptp(rounds) / np.median(rounds)), 3)
    ref = rows["unpruned (distill)"]["int8_sps"]
    for r in rows.values():
        r["speedup_vs_unpruned"] = round(r["int8_sps"] / ref, 3)

    head = (f"Prune sweep: {cpu_name()}, {threads} threads, {len(sentences)} val sentences, "
            f"{args.repeats} interleaved rounds (int8 ONNX, embopt runtime, batch 32)\n\n"
            "| model | FFN/layer | heads | params | val retention (torch) | val retention (int8) "
            "| int8 sent/s (spread of rounds) | × unpruned |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
    table = head + "".join(
        f"| {n} | {r['ffn']} | {r['heads']} | {r['params'] / 1e6:.2f}M | {100 * r['val_retention']:.1f}% "
        f"| {100 * r['int8_val_retention']:.1f}% | {r['int8_sps']:.0f} ({100 * r['int8_spread']:.0f}%) "
        f"| {r['speedup_vs_unpruned']:.2f}x |\n" for n, r in rows.items())
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), {"cpu": cpu_name(), "threads": threads, "rows": rows,
                                               "repeats": args.repeats, "sentences": len(sentences)})
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
