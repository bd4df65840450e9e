"""A minimal bundle straight from a SentenceTransformer folder: fused fp32 + dynamic int8.

The pipeline's quantize/export stages build the full bundle (candidates, gates,
fallback, Triton, TensorRT). This is the short path for tools that need the same
layout for an arbitrary model (``embopt bench-runtime``) and for the tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from embopt.export.onnx import export_onnx, optimize_onnx
from embopt.export.quantize import quantize_dynamic_int8
from embopt.serving.bundle import copy_tokenizer, write_manifest
from embopt.training.modeling import pooling_mode


def build_simple_bundle(st_model, st_dir: Path, bundle: Path, max_seq_length: int) -> Path:
    """Export ``st_model`` (saved at ``st_dir``) to ``bundle``; written to a temp folder, then renamed."""
    tmp = bundle.with_name(bundle.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "onnx").mkdir(parents=True)
    copy_tokenizer(st_dir, tmp)
    raw = export_onnx(st_model, tmp / "onnx" / "model_raw.onnx")
    optimize_onnx(raw, tmp / "onnx" / "model.onnx")
    raw.unlink()
    quantize_dynamic_int8(tmp / "onnx" / "model.onnx", tmp / "onnx" / "model_qint8.onnx")
    get_dim = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    variants = {"onnx_fp32": {"file": "onnx/model.onnx", "precision": "fp32", "graph": "fused"},
                "onnx_int8": {"file": "onnx/model_qint8.onnx", "precision": "int8-dynamic",
                              "parent": "fused"}}
    write_manifest(tmp, variants, "onnx_int8", dim=int(get_dim()), max_seq_length=max_seq_length,
                   pooling=pooling_mode(st_model), normalize=True, source_model=str(st_dir))
    tmp.rename(bundle)
    return bundle
