"""Stage quantize: ONNX export (pooling + normalisation in the graph), ORT fusion, dynamic int8.

Writes a bundle (tokenizer, manifest, onnx/) to models/quantize and gates the int8
model on its Spearman relative to its own fp32 parent.
"""

from __future__ import annotations

import logging

from embopt import config
from embopt.bundle import copy_tokenizer, write_manifest
from embopt.data import read_sts_tsv
from embopt.files import atomic_dir
from embopt.modeling import has_normalize, hf_model, load_sentence_model, pooling_mode
from embopt.onnx_export import export_onnx, optimize_onnx
from embopt.params import load_params
from embopt.quantize import quantize_dynamic_int8
from embopt.runtime import Embedder
from embopt.stage import report, run_stage
from embopt.sts import retention, sts_spearman
from embopt.tracking import stage_run

log = logging.getLogger("stages.quantize")


def main() -> None:
    params = load_params()
    p = params.quantize
    with stage_run("quantize", params, ["quantize"]) as run:
        model = load_sentence_model(config.PRUNE_DIR)
        dev = read_sts_tsv(config.PREPARED_DIR / "sts_dev.tsv")[: p.eval_pairs]
        with atomic_dir(config.QUANTIZE_DIR) as tmp:
            (tmp / "onnx").mkdir()
            copy_tokenizer(config.PRUNE_DIR, tmp)
            raw = export_onnx(model, tmp / "onnx" / "model_raw.onnx", opset=p.opset)
            fp32 = tmp / "onnx" / "model.onnx"
            fusion = {}
            if p.optimize:
                fusion = optimize_onnx(raw, fp32)
                raw.unlink()
            else:
                raw.rename(fp32)
            int8 = quantize_dynamic_int8(fp32, tmp / "onnx" / "model_qint8.onnx", per_channel=p.per_channel,
                                         reduce_range=p.reduce_range, op_types=p.op_types)
            cfg = hf_model(model).config
            write_manifest(
                tmp,
                {"onnx_fp32": {"file": "onnx/model.onnx", "precision": "fp32"},
                 "onnx_int8": {"file": f"onnx/{int8.name}", "precision": "int8-dynamic",
                               "per_channel": p.per_channel, "reduce_range": p.reduce_range}},
                "onnx_int8",
                dim=model.get_sentence_embedding_dimension(), max_seq_length=params.base.max_seq_length,
                pooling=pooling_mode(model), normalize=True, source_model=str(config.PRUNE_DIR.relative_to(
                    config.PROJ_ROOT)), teacher=params.base.teacher, num_layers=cfg.num_hidden_layers,
                hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                pruned_heads={str(k): sorted(v) for k, v in (cfg.pruned_heads or {}).items()},
                had_normalize_module=has_normalize(model),
            )
            scores = {}
            for name in ("onnx_fp32", "onnx_int8"):
                emb = Embedder(tmp, variant=name, threads=params.base.threads)
                scores[name] = sts_spearman(emb.embed, dev)
        metrics = {
            "fp32_dev_spearman": round(scores["onnx_fp32"], 4), "int8_dev_spearman": round(scores["onnx_int8"], 4),
            "retention_vs_fp32": round(retention(scores["onnx_int8"], scores["onnx_fp32"]), 5),
            "fused_ops": fusion, "eval_pairs": len(dev),
        }
        log.info("bundle -> %s: fp32 %.2f, int8 %.2f", config.QUANTIZE_DIR, scores["onnx_fp32"], scores["onnx_int8"])
        report(run, "quantize", metrics, gate=p.gate)


if __name__ == "__main__":
    run_stage("quantize", main)
