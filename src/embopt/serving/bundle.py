"""The deployable bundle: ONNX variants, tokenizer files and a manifest.

Layout (Optimum-like)::

    manifest.json            dims, max_seq_length, pooling, source, hashes, variants
    tokenizer.json ...       Hugging Face fast-tokenizer files
    onnx/model.onnx          fp32, fused
    onnx/model_qint8.onnx    dynamic int8

Only the standard library here: the registered MLflow model loads this module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from embopt.errors import EmboptError

MANIFEST = "manifest.json"
FORMAT = "embopt-bundle/1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST
    if not path.exists():
        raise EmboptError(f"{path}: bundle manifest not found")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EmboptError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    for key in ("format", "variants", "default_variant", "max_seq_length"):
        if key not in manifest:
            raise EmboptError(f"{path}: missing key '{key}'")
    if manifest["format"] != FORMAT:
        raise EmboptError(f"{path}: format '{manifest['format']}' is not {FORMAT}")
    return manifest


def member_path(bundle: Path, rel: Any, what: str = "file") -> Path:
    """``bundle / rel`` for a path named in the manifest, refused unless it stays inside the bundle.

    A manifest is data: an absolute path or a ``..`` step would make a served model read (and
    hash, and serve) any file on the machine. Symlinks inside the bundle are followed: DVC's
    ``symlink`` cache type links every output file into ``.dvc/cache``.
    """
    bundle = Path(bundle)
    where = bundle / MANIFEST
    if not isinstance(rel, str) or not rel.strip():
        raise EmboptError(f"{where}: {what} entry {rel!r} is not a relative path")
    if Path(rel).is_absolute() or "\\" in rel or ".." in Path(rel).parts:
        raise EmboptError(f"{where}: {what} entry '{rel}' leaves the bundle folder "
                          "(absolute paths and '..' are refused)")
    return bundle / rel


def variant_file(bundle: Path, manifest: dict[str, Any], variant: str | None) -> tuple[str, Path]:
    name, where = variant or manifest["default_variant"], Path(bundle) / MANIFEST
    if name not in manifest["variants"]:
        raise EmboptError(f"{where}: no variant '{name}' (have: {', '.join(manifest['variants'])})")
    entry = manifest["variants"][name]
    if not isinstance(entry, dict) or "file" not in entry:
        raise EmboptError(f"{where}: variant '{name}' has no 'file'")
    return name, member_path(bundle, entry["file"], f"variant '{name}' file")


def write_manifest(bundle: Path, variants: dict[str, dict[str, Any]], default_variant: str,
                   **fields: Any) -> Path:
    """Write ``manifest.json``; each variant's sha256 is computed from its file."""
    bundle = Path(bundle)
    for name, v in variants.items():
        v["sha256"] = sha256(member_path(bundle, v["file"], f"variant '{name}' file"))
    tok = bundle / "tokenizer.json"
    manifest = {"format": FORMAT, **fields, "tokenizer_sha256": sha256(tok) if tok.exists() else "",
                "default_variant": default_variant, "variants": variants}
    path = bundle / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def copy_tokenizer(model_dir: Path, bundle: Path) -> list[str]:
    """Copy the fast-tokenizer files of a SentenceTransformer folder into the bundle."""
    copied = [name for name in TOKENIZER_FILES if (Path(model_dir) / name).exists()]
    for name in copied:
        shutil.copy2(Path(model_dir) / name, Path(bundle) / name)
    if "tokenizer.json" not in copied:
        raise EmboptError(f"{model_dir}: no tokenizer.json (a fast tokenizer is required)")
    return copied
