"""Stage quantize: ONNX export, ORT graph fusion, int8 candidates gated against their fp32 parent, fp16.

Writes a bundle (tokenizer, manifest, onnx/, calibration/) to models/quantize:
``onnx_fp32`` (fused), ``onnx_fp32_unfused`` (when kept), ``onnx_int8`` (the fastest int8
candidate, up to timing noise (:func:`embopt.export.candidates.pick`), that keeps
``gate.min_retention_vs_fp32`` of its fp32 parent's val Spearman, after the accuracy fallback
where one missed), further candidates when
``keep_candidates`` is set, and ``onnx_fp16`` (requires CUDA to evaluate).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from tqdm.auto import tqdm

from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv, unique_sentences
from embopt.errors import EmboptError
from embopt.eval.sts import retention
from embopt.export.calibration import StaticRecipe, is_tensorrt_qdq
from embopt.export.candidates import Builder, Candidate, Scorer, pick, plan_candidates, run_fallback
from embopt.export.fp16 import convert_fp16
from embopt.export.onnx import export_onnx, optimize_onnx
from embopt.export.openvino import convert_ir, quantize_ir
from embopt.export.tensorrt import availability
from embopt.pipeline import config
from embopt.pipeline.files import atomic_dir, dir_size_mb
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.serving.bundle import copy_tokenizer, write_manifest
from embopt.serving.runtime import load_tokenizer
from embopt.training.modeling import has_normalize, hf_model, load_sentence_model, pooling_mode

log = logging.getLogger("stages.quantize")


def main() -> None:
    params = load_params(sections=("base", "quantize"))
    p = params.quantize
    with stage_run("quantize", params, ["quantize"]) as run:
        model = load_sentence_model(config.PRUNE_DIR)
        val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")[: p.eval_pairs]
        candidates = plan_candidates(p, has_unfused=p.optimize)
        trt_qdq = p.static.tensorrt_qdq if p.static.tensorrt_qdq is not None else availability()[0]
        calibration = _calibration_set(p) if p.static.methods or trt_qdq else []
        with atomic_dir(config.QUANTIZE_DIR) as tmp:
            onnx_dir = tmp / "onnx"
            onnx_dir.mkdir()
            copy_tokenizer(config.PRUNE_DIR, tmp)
            raw, fp32, parents, fusion = _export_parents(model, p, onnx_dir)
            fields = manifest_fields(model, params.base)
            # A first manifest so the runtime can load files of this bundle while it is built.
            write_manifest(tmp, {"onnx_fp32": {"file": "onnx/model.onnx"}}, "onnx_fp32", **fields)
            tokenizer = load_tokenizer(tmp, params.base.max_seq_length)
            pad = tokenizer.token_to_id("[PAD]")
            build = Builder(parents, calibration, tokenizer, tmp / "calibration", pad_id=int(pad or 0))
            scorer = Scorer(tmp, val, params.base.threads)
            ctx = _Scoring(p, build, scorer, parents, unique_sentences(val), tmp)
            for c in tqdm(candidates, desc="int8 candidates", unit="candidate"):
                c.row = ctx.evaluate(c, onnx_dir / c.file)
            chosen = pick(candidates, p.speed_noise_floor)
            for c in candidates:
                if c is not chosen and not p.keep_candidates:
                    (onnx_dir / c.file).unlink()
                    (tmp / "calibration" / f"{c.name}.ranges.json").unlink(missing_ok=True)

            variants = _onnx_variants(p, raw, fusion, chosen, candidates)
            openvino_rows = {}
            if p.openvino.enabled:
                ov_variants, openvino_rows = build_openvino(p, parents["unfused"], tmp, tokenizer, ctx)
                variants.update(ov_variants)
            if p.fp16:
                convert_fp16(fp32, onnx_dir / "model_fp16.onnx")
                variants["onnx_fp16"] = {"file": "onnx/model_fp16.onnx", "precision": "fp16",
                                         "keep_io_types": True, "requires": "cuda"}
            trt_sources = _tensorrt_sources(p, trt_qdq, build, onnx_dir, parents)
            if p.optimize and not p.keep_unfused and not trt_qdq:
                raw.unlink()
                del trt_sources["fp32"]
            write_manifest(tmp, variants, "onnx_int8", **fields, tensorrt_sources=trt_sources)
            sizes = {n: round(dir_size_mb(tmp / v["file"]), 3) for n, v in variants.items()}
        row = chosen.row
        metrics = {
            "fp32_val_spearman": ctx.parent_rows[chosen.parent]["spearman"],
            "int8_val_spearman": row["spearman"],
            "retention_vs_fp32": row["retention_vs_fp32"],
            "speedup_vs_fp32": row["speedup_vs_fp32"],
            "speedup_vs_onnx_fp32": row["speedup_vs_onnx_fp32"],
            "int8_recipe": chosen.name,
            "isa": chosen.recipe.isa if chosen.kind == "dynamic" else "static",
            "fallback_nodes_fp32": len((row.get("fallback") or {}).get("nodes_kept_fp32", [])),
            "int8_size_mb": sizes["onnx_int8"],
        }
        details = {"parents": ctx.parent_rows, "candidates": {c.name: c.row for c in candidates},
                   "openvino": openvino_rows, "variants": list(variants), "size_mb": sizes,
                   "fused_ops": fusion, "eval_pairs": len(val), "speed_sentences": len(ctx.speed_sents),
                   "threads": params.base.threads}
        log.info("bundle -> %s: onnx_int8 = %s (Spearman %.2f, %.4f of fp32, %.2fx fp32 speed)",
                 config.QUANTIZE_DIR, chosen.name, row["spearman"], row["retention_vs_fp32"],
                 row["speedup_vs_fp32"])
        run.log_artifact(config.QUANTIZE_DIR / "calibration", "calibration")
        report(run, "quantize", metrics, gate=p.gate, details=details)


def _calibration_set(p) -> list[str]:
    """Corpus sentences the static int8 recipes calibrate on."""
    corpus = config.PREPARED_DIR / "corpus.txt"
    calibration = read_lines(corpus)[: p.static.calibration_sentences]
    if not calibration:
        raise EmboptError(f"quantize.static.calibration_sentences: the calibration set is empty "
                          f"({corpus} has no sentences)")
    return calibration


def _export_parents(model, p, onnx_dir) -> tuple:
    """The unfused export and, with ``optimize``, ORT's fused graph: (raw, onnx_fp32 file, the fp32
    parents int8 candidates start from, fused op counts)."""
    raw = export_onnx(model, onnx_dir / "model_unfused.onnx", opset=p.opset)
    fp32 = onnx_dir / "model.onnx"
    if not p.optimize:
        raw.rename(fp32)
        return raw, fp32, {"unfused": fp32}, {}
    fusion = optimize_onnx(raw, fp32)
    return raw, fp32, {"fused": fp32, "unfused": raw}, fusion


def _onnx_variants(p, raw, fusion: dict, chosen: Candidate, candidates: list[Candidate]) -> dict:
    """The manifest entries of the fp32 graphs, onnx_int8 and (``keep_candidates``) the other candidates."""
    variants = {"onnx_fp32": {"file": "onnx/model.onnx", "precision": "fp32",
                              "graph": "fused" if p.optimize else "unfused", "fused_ops": fusion}}
    if p.optimize and p.keep_unfused:
        variants["onnx_fp32_unfused"] = {"file": f"onnx/{raw.name}", "precision": "fp32", "graph": "unfused"}
    variants["onnx_int8"] = chosen.manifest_entry()
    if p.keep_candidates:
        variants.update({c.name: c.manifest_entry() for c in candidates if c is not chosen})
    return variants


def _tensorrt_sources(p, trt_qdq: bool, build: Builder, onnx_dir, parents: dict) -> dict:
    """The files a TensorRT engine is built from; TensorRT parses standard ONNX ops only, so its
    sources are the unfused graphs."""
    sources: dict = {"fp32": {"file": f"onnx/{parents['unfused'].name}"}}
    if trt_qdq:
        sources.update(build_tensorrt_qdq(p, build, onnx_dir))
    else:
        sources["int8_qdq"] = None
        sources["reason"] = ("quantize.static.tensorrt_qdq is false" if p.static.tensorrt_qdq is False
                             else f"TensorRT cannot run here: {availability()[1]}")
    return sources


def manifest_fields(model, base) -> dict:
    """What the manifest records of the model besides its variants: width, truncation, architecture."""
    cfg = hf_model(model).config
    return dict(dim=model.get_sentence_embedding_dimension(), max_seq_length=base.max_seq_length,
                pooling=pooling_mode(model), normalize=True,
                source_model=str(config.PRUNE_DIR.relative_to(config.PROJ_ROOT)), teacher=base.teacher,
                num_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
                intermediate_size=cfg.intermediate_size,
                pruned_heads={str(k): sorted(v) for k, v in (cfg.pruned_heads or {}).items()},
                had_normalize_module=has_normalize(model))


class _Scoring:
    """Scores graphs against their fp32 parent on the validation split: Spearman, speed, the gate."""

    def __init__(self, p, build: Builder, scorer: Scorer, parents: dict, val_sentences: list[str], workdir):
        self.p, self.build, self.scorer, self.parents, self.workdir = p, build, scorer, parents, workdir
        self.val_sentences = val_sentences
        self.speed_sents = val_sentences[: p.speed_sentences]
        self.parent_rows = {name: {"spearman": round(scorer.spearman(path), 4),
                                   "throughput_sps": round(scorer.speed(path, self.speed_sents)[0], 1)}
                            for name, path in parents.items()}

    def evaluate(self, c: Candidate, path) -> dict:
        """Build ``c``, score it against its parent, run the fallback when it misses, time it: its row."""
        p, scorer, threshold = self.p, self.scorer, self.p.gate.min_retention_vs_fp32
        parent = self.parent_rows[c.parent]
        # vs the shipped onnx_fp32 (the fused graph), whichever parent the candidate came from
        shipped = self.parent_rows.get("fused", parent)["throughput_sps"]
        self.build(c, path)
        score = scorer.spearman(path)
        ret = retention(score, parent["spearman"])
        sps, spread = scorer.speed(path, self.speed_sents)
        row = {"parent": c.parent, **_scores(score, sps, parent), "throughput_spread": round(spread, 4),
               "speedup_vs_onnx_fp32": round(sps / shipped, 3),
               "size_mb": round(path.stat().st_size / 1e6, 3),
               "passed": threshold is None or ret >= threshold, "fallback": None}
        log.info("%s: Spearman %.2f (%.4f of fp32 %s), %.0f sent/s (%.2fx)", c.name, score, ret, c.parent,
                 sps, row["speedup_vs_fp32"])
        if row["passed"] or not p.fallback.enabled:
            return row
        result = run_fallback(c, path, self.build, scorer, self.parents[c.parent], parent["spearman"],
                              threshold, self.val_sentences[: p.fallback.sample_sentences],
                              p.fallback.max_nodes, self.workdir)
        after, spread = scorer.speed(path, self.speed_sents)
        score = scorer.spearman(path)
        fb = result.report()
        fb.update({"throughput_sps_before": row["throughput_sps"], "throughput_sps_after": round(after, 1),
                   "speed_cost": round(1 - after / sps, 4)})
        row.update({**_scores(score, after, parent), "throughput_spread": round(spread, 4),
                    "speedup_vs_onnx_fp32": round(after / shipped, 3),
                    "size_mb": round(path.stat().st_size / 1e6, 3), "passed": result.passed, "fallback": fb})
        log.info("%s after fallback (%d node(s) in fp32: %s): %.4f of fp32, %.0f sent/s (%.1f%% slower)",
                 c.name, len(result.excluded), ", ".join(result.excluded), row["retention_vs_fp32"], after,
                 100 * fb["speed_cost"])
        return row


def _scores(spearman: float, sps: float, parent: dict) -> dict:
    """Spearman and speed of a variant, and both relative to its fp32 parent's ``parent`` row."""
    return {"spearman": round(spearman, 4),
            "retention_vs_fp32": round(retention(spearman, parent["spearman"]), 5),
            "throughput_sps": round(sps, 1), "speedup_vs_fp32": round(sps / parent["throughput_sps"], 3)}


def build_openvino(p, source, bundle, tokenizer, ctx: _Scoring) -> tuple[dict, dict]:
    """openvino_fp32 (IR of the unfused graph) and openvino_int8 (NNCF), scored like the int8 candidates."""
    ov_dir = bundle / "openvino"
    ov_dir.mkdir()
    fp32 = convert_ir(source, ov_dir / "model.xml")
    calibration = read_lines(config.PREPARED_DIR / "corpus.txt")[: p.openvino.calibration_sentences]
    int8 = quantize_ir(fp32, ov_dir / "model_int8.xml", calibration, tokenizer)
    variants, rows = {}, {}
    for name, path, precision in (("openvino_fp32", fp32, "fp32"), ("openvino_int8", int8, "int8-nncf")):
        score, (sps, _) = ctx.scorer.spearman(path), ctx.scorer.speed(path, ctx.speed_sents)
        rows[name] = _scores(score, sps, ctx.parent_rows["unfused"])
        log.info("%s: Spearman %.2f (%.4f of ORT fp32 unfused), %.0f sent/s (%.2fx)", name, score,
                 rows[name]["retention_vs_fp32"], sps, rows[name]["speedup_vs_fp32"])
        variants[name] = {"file": f"openvino/{path.name}", "weights": f"openvino/{path.stem}.bin",
                          "backend": "openvino", "precision": precision, "parent": "unfused"}
    return variants, rows


def build_tensorrt_qdq(p, build: Builder, onnx_dir) -> dict:
    """Symmetric int8 QDQ of the unfused graph: standard ops only, zero points 0 (what TensorRT needs)."""
    method = p.static.methods[0] if p.static.methods else "minmax"
    recipe = StaticRecipe(method=method, per_channel=True, activation_type="qint8",
                          symmetric_activations=True, op_types=("MatMul",), percentile=p.static.percentile,
                          calibration_sentences=p.static.calibration_sentences)
    c = Candidate("tensorrt_int8_qdq", "static", "unfused", recipe, "model_qdq_tensorrt.onnx")
    path = build(c, onnx_dir / c.file)
    ok, why = is_tensorrt_qdq(path)
    if not ok:
        raise EmboptError(f"{path}: not usable by TensorRT: {why}")
    return {"int8_qdq": {"file": f"onnx/{c.file}", **asdict(recipe),
                         "calibration_ranges": f"calibration/{c.name}.ranges.json"}}


if __name__ == "__main__":
    run_stage("quantize", main)
