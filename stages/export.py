"""Stage export: the deployable bundle, a Triton model repository, and TensorRT engines where possible.

TensorRT needs an NVIDIA GPU and the ``tensorrt`` package; without them the
manifest records ``"status": "skipped"`` with the reason and the stage succeeds.
Variants that need CUDA (fp16) are shipped but listed as not evaluated here.
"""

from __future__ import annotations

import json
import logging
import shutil

from embopt.errors import EmboptError
from embopt.export.onnx import check_onnx
from embopt.export.tensorrt import availability, build_engine, engine_specs
from embopt.export.triton import add_model
from embopt.export.variants import unavailable_variants
from embopt.pipeline import config
from embopt.pipeline.files import atomic_dir, dir_size_mb
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.serving.bundle import MANIFEST, member_path, read_manifest

log = logging.getLogger("stages.export")


def main() -> None:
    params = load_params(sections=("base", "export"))
    p = params.export
    with stage_run("export", params, ["export"]) as run:
        src = config.QUANTIZE_DIR
        manifest = read_manifest(src)
        for v in manifest["variants"].values():
            if v.get("backend", "onnxruntime") == "onnxruntime":  # OpenVINO IR is checked when it loads
                check_onnx(member_path(src, v["file"]))  # corrupt/truncated/outside the bundle: fails here
        t = p.triton
        served = list(manifest["variants"]) if t.variants is None else t.variants
        missing = [v for v in served if v not in manifest["variants"]]
        optional = {"onnx_fp16", "onnx_fp32_unfused"}  # absent when switched off in quantize
        if [v for v in missing if v not in optional]:
            raise EmboptError(f"export.triton.variants: no variant(s) {', '.join(missing)} in "
                              f"{src / MANIFEST} (have: {', '.join(manifest['variants'])})")
        served = [v for v in served if v in manifest["variants"]]
        cache = config.resolve(p.tensorrt.timing_cache) if p.tensorrt.timing_cache else None
        # Validates the profile on every machine, GPU or not.
        specs, skipped = engine_specs(p.tensorrt, src, manifest, cache)
        with atomic_dir(config.EXPORT_DIR) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            repo = tmp / "triton"
            for name in served:
                v = manifest["variants"][name]
                kind = "KIND_GPU" if v.get("requires") == "cuda" else "KIND_CPU"
                add_model(repo, f"embopt_{name}", tmp / v["file"], "onnxruntime_onnx", manifest["dim"], t,
                          kind)
            ok, reason = (availability() if p.tensorrt.enabled
                          else (False, "disabled by export.tensorrt.enabled"))
            # What would be built here from what, and what could not be even with a GPU.
            planned = {s.name: {"status": "skipped", "source": s.onnx.name, "flags": list(s.flags)}
                       for s in specs}
            trt = {"status": "skipped", "reason": reason,
                   "engines": {**planned, **{n: {"status": f"skipped: {why}"} for n, why in skipped.items()}}}
            if ok:  # pragma: no cover - needs an NVIDIA GPU with TensorRT
                trt = build_engines(specs, skipped, tmp, repo, manifest["dim"], t)
            else:
                log.warning("TensorRT skipped: %s", reason)
            trt["profile"] = specs[0].profile.as_dict() if specs else None
            manifest["tensorrt"] = trt
            manifest["triton"] = {"repository": "triton", "models": sorted(d.name for d in repo.iterdir())}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        sizes = {name: round(dir_size_mb(config.EXPORT_DIR / v["file"]), 3)
                 for name, v in manifest["variants"].items()}
        not_here = unavailable_variants(config.EXPORT_DIR)
        for name, why in not_here.items():
            log.warning("%s is built but not evaluated here: %s", name, why)
        run.set_tags({"tensorrt": trt["status"] if trt["status"] == "built" else f"skipped: {trt['reason']}"})
        run.log_artifact(config.EXPORT_DIR / MANIFEST)
        report(run, "export", {
            "variants": len(sizes), "tensorrt_built": int(trt["status"] == "built"),
            "triton_models": len(manifest["triton"]["models"]),
        }, details={
            "size_mb": sizes, "tensorrt": trt, "triton_models": manifest["triton"]["models"],
            "not_evaluated_here": not_here,
        })


def build_engines(specs, skipped, bundle, repo, dim, t) -> dict:  # pragma: no cover - needs an NVIDIA GPU
    """Build every engine; one that fails is recorded as skipped with its error, the others still ship."""
    engines = {}
    for spec in specs:
        try:
            path = build_engine(spec, bundle / spec.engine_file)
        except EmboptError as exc:
            log.warning("TensorRT %s engine failed: %s", spec.name, exc)
            engines[spec.name] = {"status": f"skipped: {exc}"}
            continue
        mbs = min(t.max_batch_size, spec.profile.max[0])  # Triton may not batch past the profile
        add_model(repo, f"embopt_tensorrt_{spec.name}", path, "tensorrt_plan", dim,
                  t.model_copy(update={"max_batch_size": mbs}))
        engines[spec.name] = {"status": "built", "engine": path.name, "source": spec.onnx.name,
                              "flags": list(spec.flags), "max_batch_size": mbs}
    for name, why in skipped.items():
        engines[name] = {"status": f"skipped: {why}"}
    built = any(e["status"] == "built" for e in engines.values())
    return {"status": "built" if built else "skipped",
            "reason": "" if built else "; ".join(f"{k}: {v['status']}" for k, v in engines.items()),
            "engines": engines}


if __name__ == "__main__":
    run_stage("export", main)
