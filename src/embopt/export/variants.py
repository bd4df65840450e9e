"""Where each variant the pipeline produced lives, and how to package one for serving."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from embopt.errors import EmboptError
from embopt.pipeline import config
from embopt.serving.backends import backend_of, open_session
from embopt.serving.bundle import FORMAT, MANIFEST, member_path, read_manifest, sha256

log = logging.getLogger(__name__)

PCA_INFO = "pca.json"


def unavailable_variants(export_dir: Path = config.EXPORT_DIR) -> dict[str, str]:
    """Variant name -> why it cannot run here, for variants whose manifest entry ``requires`` CUDA (fp16)."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    why = f"requires CUDA; this onnxruntime has no CUDAExecutionProvider (have: {', '.join(have)})"
    return {name: why for name, v in read_manifest(export_dir)["variants"].items()
            if v.get("requires") == "cuda" and "CUDAExecutionProvider" not in have}


def onnx_variants(export_dir: Path = config.EXPORT_DIR, pca_dir: Path = config.PCA_DIR) -> dict[str, Path]:
    """Variant name -> ONNX file, for the export bundle's variants that run here and the PCA-folded one."""
    variants = read_manifest(export_dir)["variants"].items()
    skip = unavailable_variants(export_dir)
    for name, why in skip.items():
        log.info("skipping variant %s: %s", name, why)
    out = {name: member_path(export_dir, v["file"]) for name, v in variants if name not in skip}
    info_path = pca_dir / PCA_INFO
    if info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        out[info["variant"]] = pca_dir / info["file"]
    return out


def static_variants(static_dir: Path = config.STATIC_DIR) -> dict[str, tuple[Path, Path]]:
    """Variant name -> (its bundle, its file) for the static stage's bundle, if it was built."""
    if not (static_dir / MANIFEST).exists():
        return {}
    manifest = read_manifest(static_dir)
    return {n: (static_dir, member_path(static_dir, v["file"])) for n, v in manifest["variants"].items()}


def _output_dim(backend: str, path: Path) -> int:
    if backend != "onnxruntime":
        return int(open_session(backend, path).dim)
    import onnxruntime as ort

    return int(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()[0].shape[-1])


def package_variant(export_dir: Path, variant: str, onnx_file: Path, dst: Path) -> Path:
    """A self-contained bundle at ``dst`` holding one variant (the served one) and the tokenizer.

    ``export_dir`` is the bundle the variant comes from; ``onnx_file`` its model file (ONNX, or
    the OpenVINO IR / static table its manifest entry's ``backend`` names).
    """
    manifest = read_manifest(export_dir)
    if not onnx_file.exists():
        raise EmboptError(f"{onnx_file}: model file for variant '{variant}' not found")
    backend = backend_of(manifest["variants"].get(variant), onnx_file)
    dst.mkdir(parents=True, exist_ok=True)
    for f in export_dir.iterdir():
        if f.is_file() and f.name != MANIFEST:
            shutil.copy2(f, dst / f.name)
    folder = "onnx" if backend == "onnxruntime" else onnx_file.parent.name
    (dst / folder).mkdir(exist_ok=True)
    target = dst / folder / onnx_file.name
    shutil.copy2(onnx_file, target)
    if backend == "openvino":  # the IR's weights
        shutil.copy2(onnx_file.with_suffix(".bin"), target.with_suffix(".bin"))
    dim = _output_dim(backend, target)
    entry = {"file": f"{folder}/{onnx_file.name}", "dim": dim, "sha256": sha256(target),
             **({"backend": backend} if backend != "onnxruntime" else {})}
    dropped = ("variants", "default_variant", "tensorrt", "triton")
    packaged = {k: v for k, v in manifest.items() if k not in dropped}
    packaged.update({"format": FORMAT, "default_variant": variant, "dim": dim, "variants": {variant: entry}})
    (dst / MANIFEST).write_text(json.dumps(packaged, indent=2) + "\n", encoding="utf-8")
    return dst
