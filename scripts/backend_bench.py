"""Backends on this CPU: OpenVINO fp32/int8 and the static model against ONNX Runtime fp32/int8 (issue 12).

Builds ``openvino_fp32`` and ``openvino_int8`` from the export bundle's unfused graph exactly as
``quantize.openvino`` does (into a temporary copy of the bundle), then measures the teacher (torch
fp32), ``onnx_fp32``, ``onnx_int8``, both OpenVINO variants and the static model (models/static)
with the evaluate stage's own code: the same validation sentences, interleaved rounds,
``base.threads`` threads, batch ``evaluate.batch_size``; retention on the validation split (what
selection reads) and STSb dev (reported). Run from a project root after ``dvc repro static export``::

    PYTHONPATH=src python scripts/backend_bench.py --out reports/bench/backends
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from embopt.bench.run import int8_isa
from embopt.bench.timing import pin_threads
from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv
from embopt.eval.evaluate import evaluate_all, markdown_table, onnx_variant, torch_variant
from embopt.export.openvino import convert_ir, quantize_ir
from embopt.export.variants import static_variants
from embopt.pipeline import config
from embopt.pipeline.params import load_params
from embopt.serving.bundle import read_manifest, write_manifest
from embopt.serving.runtime import Embedder, load_tokenizer
from embopt.training.modeling import load_sentence_model, resolve_model_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.json")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved rounds (default: evaluate.repeats)")
    args = ap.parse_args()
    params = load_params()
    p, threads = params.evaluate, params.base.threads
    pin_threads(threads)
    val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
    dev = read_sts_tsv(config.PREPARED_DIR / "sts_dev.tsv")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        shutil.copytree(config.EXPORT_DIR, bundle, ignore=shutil.ignore_patterns("triton"))
        manifest = read_manifest(bundle)
        (bundle / "openvino").mkdir()
        ov_fp32 = convert_ir(bundle / manifest["variants"]["onnx_fp32_unfused"]["file"],
                             bundle / "openvino" / "model.xml")
        n_cal = params.quantize.openvino.calibration_sentences
        calibration = read_lines(config.PREPARED_DIR / "corpus.txt")[:n_cal]
        ov_int8 = quantize_ir(ov_fp32, bundle / "openvino" / "model_int8.xml", calibration,
                              load_tokenizer(bundle, params.base.max_seq_length))
        variants = dict(manifest["variants"])
        for name, path in (("openvino_fp32", ov_fp32), ("openvino_int8", ov_int8)):
            variants[name] = {"file": f"openvino/{path.name}", "backend": "openvino"}
        fields = {k: v for k, v in manifest.items() if k not in ("format", "variants", "default_variant",
                                                                  "tokenizer_sha256")}
        write_manifest(bundle, variants, manifest["default_variant"], **fields)

        def runtime(b: Path, name: str) -> Embedder:
            return Embedder(b, variant=name, threads=threads, batch_size=p.batch_size,
                            max_seq_length=params.base.max_seq_length)

        teacher = load_sentence_model(params.base.teacher, max_seq_length=params.base.max_seq_length)
        rows = [torch_variant("teacher_torch", teacher, p.batch_size,
                              config.resolve(resolve_model_source(params.base.teacher)))]
        for name in ("onnx_fp32", "onnx_fp32_unfused", "onnx_int8", "openvino_fp32", "openvino_int8"):
            emb = runtime(bundle, name)
            rows.append(onnx_variant(name, emb, emb.onnx_path))
        for name, (b, path) in static_variants().items():
            rows.append(onnx_variant(name, runtime(b, name), path))
        result = evaluate_all(rows, val, dev, p.throughput_sentences, p.latency_sentences,
                              args.repeats or p.repeats, p.bootstrap_resamples, params.base.seed)
    flags = " ".join(f for f, has in int8_isa().items() if has) or "-"
    result["setup"].update({"threads": threads, "batch_size": p.batch_size, "cpu_flags": flags,
                            "max_seq_length": params.base.max_seq_length})
    s = result["setup"]
    text = (f"{s['processor']} ({s['machine']}; {s['cpu_flags']}), {threads} threads, batch {p.batch_size}, "
            f"{s['throughput_sentences']} val sentences x {s['repeats']} interleaved rounds\n\n"
            + markdown_table(result))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
