"""Stage export: the deployable bundle, a Triton model repository, and a TensorRT engine where possible."""

from __future__ import annotations

import json
import logging
import shutil

from embopt import config
from embopt.bundle import MANIFEST, read_manifest
from embopt.files import atomic_dir, dir_size_mb
from embopt.onnx_export import check_onnx
from embopt.params import load_params
from embopt.stage import report, run_stage
from embopt.tensorrt_build import Profile, availability, build_engine
from embopt.tracking import stage_run
from embopt.triton import add_model

log = logging.getLogger("stages.export")


def main() -> None:
    params = load_params()
    p = params.export
    with stage_run("export", params, ["export"]) as run:
        src = config.QUANTIZE_DIR
        manifest = read_manifest(src)
        profile = Profile.from_params(p.tensorrt.min_shape, p.tensorrt.opt_shape, p.tensorrt.max_shape)
        with atomic_dir(config.EXPORT_DIR) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            for v in manifest["variants"].values():
                check_onnx(tmp / v["file"])
            t = p.triton
            repo = tmp / "triton"
            for name, v in manifest["variants"].items():
                add_model(repo, f"embopt_{name}", tmp / v["file"], "onnxruntime_onnx", manifest["dim"],
                          t.max_batch_size, t.preferred_batch_sizes, t.max_queue_delay_us, t.instances)
            ok, reason = availability() if p.tensorrt.enabled else (False, "disabled by export.tensorrt.enabled")
            if ok:  # pragma: no cover - needs an NVIDIA GPU with TensorRT
                engine = build_engine(tmp / manifest["variants"]["onnx_fp32"]["file"], tmp / "model_fp16.plan",
                                      profile, fp16=p.tensorrt.fp16, workspace_mb=p.tensorrt.workspace_mb,
                                      timing_cache=tmp / "trt_timing.cache")
                add_model(repo, "embopt_tensorrt_fp16", engine, "tensorrt_plan", manifest["dim"], t.max_batch_size,
                          t.preferred_batch_sizes, t.max_queue_delay_us, t.instances)
                trt = {"status": "built", "engine": engine.name, "fp16": p.tensorrt.fp16,
                       "profile": {"min": profile.min, "opt": profile.opt, "max": profile.max}}
            else:
                log.warning("TensorRT skipped: %s", reason)
                trt = {"status": "skipped", "reason": reason}
            manifest["tensorrt"] = trt
            manifest["triton"] = {"repository": "triton", "models": sorted(d.name for d in repo.iterdir())}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        sizes = {name: round(dir_size_mb(config.EXPORT_DIR / v["file"]), 3) for name, v in manifest["variants"].items()}
        log.info("bundle -> %s (TensorRT: %s)", config.EXPORT_DIR, trt["status"])
        run.set_tags({"tensorrt": trt["status"] if ok else f"skipped: {reason}"})
        run.log_artifact(config.EXPORT_DIR / MANIFEST)
        report(run, "export", {"size_mb": sizes, "tensorrt": trt, "triton_models": manifest["triton"]["models"]})


if __name__ == "__main__":
    run_stage("export", main)
