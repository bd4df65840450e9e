"""Where each ONNX variant the pipeline produced lives, and how to package one for serving."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from embopt.errors import EmboptError
from embopt.pipeline import config
from embopt.serving.bundle import FORMAT, MANIFEST, member_path, read_manifest, sha256

log = logging.getLogger(__name__)

PCA_INFO = "pca.json"


def unavailable_variants(export_dir: Path = config.EXPORT_DIR) -> dict[str, str]:
    """Variant name -> why it cannot run here, for variants whose manifest entry ``requires`` a device.

    fp16 variants carry ``"requires": "cuda"``: ONNX Runtime's CPU provider would run
    them through casts, slowly and unrepresentatively, so they are evaluated only where
    a CUDA provider exists.
    """
    import onnxruntime as ort

    have = ort.get_available_providers()
    out = {}
    for name, v in read_manifest(export_dir)["variants"].items():
        if v.get("requires") == "cuda" and "CUDAExecutionProvider" not in have:
            out[name] = (
                f"requires CUDA; this onnxruntime has no CUDAExecutionProvider (have: {', '.join(have)})"
            )
    return out


def onnx_variants(export_dir: Path = config.EXPORT_DIR, pca_dir: Path = config.PCA_DIR) -> dict[str, Path]:
    """Variant name -> ONNX file, for the export bundle's variants and the PCA-folded one.

    Variants that cannot run on this machine (see :func:`unavailable_variants`) are left out.
    """
    manifest = read_manifest(export_dir)
    skip = unavailable_variants(export_dir)
    for name, why in skip.items():
        log.info("skipping variant %s: %s", name, why)
    variants = manifest["variants"].items()
    out = {name: member_path(export_dir, v["file"]) for name, v in variants if name not in skip}
    info_path = pca_dir / PCA_INFO
    if info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        out[info["variant"]] = pca_dir / info["file"]
    return out


def package_variant(export_dir: Path, variant: str, onnx_file: Path, dst: Path) -> Path:
    """A self-contained bundle at ``dst`` holding one variant (the served one) and the tokenizer."""
    import onnxruntime as ort

    manifest = read_manifest(export_dir)
    if not onnx_file.exists():
        raise EmboptError(f"{onnx_file}: ONNX file for variant '{variant}' not found")
    dst.mkdir(parents=True, exist_ok=True)
    for f in export_dir.iterdir():
        if f.is_file() and f.name != MANIFEST:
            shutil.copy2(f, dst / f.name)
    (dst / "onnx").mkdir(exist_ok=True)
    target = dst / "onnx" / onnx_file.name
    shutil.copy2(onnx_file, target)
    dim = int(
        ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).get_outputs()[0].shape[-1]
    )
    packaged = {
        k: v for k, v in manifest.items() if k not in ("variants", "default_variant", "tensorrt", "triton")
    }
    packaged.update(
        {
            "format": FORMAT,
            "default_variant": variant,
            "dim": dim,
            "variants": {variant: {"file": f"onnx/{onnx_file.name}", "dim": dim, "sha256": sha256(target)}},
        }
    )
    (dst / MANIFEST).write_text(json.dumps(packaged, indent=2) + "\n", encoding="utf-8")
    return dst
