"""The models the benchmark compares, behind one interface.

- :class:`STVariant`: a sentence-transformers model, in torch (``backend="torch"``)
  or on its ONNX backend (``backend="st-onnx"``, what a user gets from
  ``SentenceTransformer(path, backend="onnx")`` and ``export_dynamic_quantized_onnx_model``);
- :class:`OrtVariant`: an ONNX file of the pipeline run through embopt's runtime.

Every variant encodes at a given batch size and thread count; ONNX Runtime fixes
its thread count per session, so ORT-based variants keep one session per thread
count (created on first use) while torch switches ``torch.set_num_threads``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embopt.bench.profiling import (
    embedder_phases,
    ort_profile,
    ort_profile_summary,
    pooling_nodes,
    st_phases,
    torch_trace,
)
from embopt.bench.roofline import EncoderShape, read_model_config, shape_from_config
from embopt.errors import EmboptError
from embopt.pipeline import config
from embopt.pipeline.files import dir_size_mb, quiet_root_logger

log = logging.getLogger(__name__)

QUANT_OPS = (
    "MatMulInteger",
    "QAttention",
    "DynamicQuantizeLinear",
    "QLinearMatMul",
    "QEmbedLayerNormalization",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QuantizeLinear",
    "QGemm",
)


def onnx_precision(path: Path) -> str:
    """``int8`` when the graph runs quantized ops, ``fp16`` for half-precision weights, else ``fp32``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if ops & set(QUANT_OPS):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


@dataclass
class BenchVariant:
    """Common fields; subclasses implement encoding, truncation and profiling."""

    name: str
    group: str  # "anchor" (what a user would pick instead) or "ours"
    backend: str  # "torch", "st-onnx" or "embopt-ort"
    precision: str
    size_mb: float
    shape: EncoderShape | None
    max_positions: int | None
    threads: int
    max_seq_length: int
    rss_spec: dict[str, Any] = field(default_factory=dict)

    def encode(self, texts: Sequence[str], batch_size: int, threads: int) -> np.ndarray:
        raise NotImplementedError

    def set_max_seq_length(self, length: int) -> None:
        raise NotImplementedError

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        raise NotImplementedError

    def phases(self, texts: Sequence[str], batch_size: int, pooling_share: float = 0.0) -> dict[str, float]:
        raise NotImplementedError

    def profile(self, texts: Sequence[str], batch_size: int, out_dir: Path) -> dict[str, Any]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "backend": self.backend,
            "precision": self.precision,
            "size_mb": round(self.size_mb, 3),
            "max_positions": self.max_positions,
        }


class STVariant(BenchVariant):
    """A sentence-transformers model (torch or its ONNX backend)."""

    def __init__(
        self,
        name: str,
        group: str,
        path: Path | str,
        threads: int,
        max_seq_length: int,
        onnx_file: str | None = None,
        size_path: Path | None = None,
    ):
        self.path = str(path)
        self.onnx_file = onnx_file
        self._models: dict[int, Any] = {}
        model = self._model(threads, max_seq_length)
        cfg = model[0].auto_model.config
        backend = "st-onnx" if onnx_file else "torch"
        if onnx_file:
            precision = onnx_precision(Path(self.path) / onnx_file)
            size = dir_size_mb(Path(self.path) / onnx_file)
        else:
            precision = "fp32"
            size = dir_size_mb(size_path or Path(self.path), ("*.safetensors", "*.bin"))
        super().__init__(
            name,
            group,
            backend,
            precision,
            size,
            shape_from_config(cfg.to_dict()),
            getattr(cfg, "max_position_embeddings", None),
            threads,
            max_seq_length,
        )
        self.rss_spec = {"backend": backend, "path": self.path, "file_name": onnx_file}

    def _model(self, threads: int, max_seq_length: int | None = None):
        """The loaded model for ``threads`` (ORT sessions fix their thread count at load)."""
        from sentence_transformers import SentenceTransformer

        key = threads if self.onnx_file else 0
        if key not in self._models:
            kwargs: dict[str, Any] = {"device": "cpu"}
            if self.onnx_file:
                kwargs.update(backend="onnx", model_kwargs=self._onnx_kwargs(threads))
            model = SentenceTransformer(self.path, **kwargs)
            model.eval()
            model.max_seq_length = max_seq_length or self.max_seq_length
            self._models[key] = model
        return self._models[key]

    def _onnx_kwargs(self, threads: int, modify=None) -> dict[str, Any]:
        from embopt.serving.runtime import session_options

        opts = session_options(threads)
        if modify is not None:
            opts = modify(opts)
        return {"file_name": self.onnx_file, "provider": "CPUExecutionProvider", "session_options": opts}

    def encode(self, texts: Sequence[str], batch_size: int, threads: int) -> np.ndarray:
        import torch

        model = self._model(threads)
        old = torch.get_num_threads()
        if old != threads:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return model.encode(
                    list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
                )
        finally:
            if old != threads:
                torch.set_num_threads(old)

    def set_max_seq_length(self, length: int) -> None:
        self.max_seq_length = length
        for m in self._models.values():
            m.max_seq_length = length

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        tok = self._model(self.threads).tokenizer
        enc = tok(list(texts), truncation=True, max_length=self.max_seq_length)
        return [len(x) for x in enc["input_ids"]]

    def phases(self, texts: Sequence[str], batch_size: int, pooling_share: float = 0.0) -> dict[str, float]:
        return st_phases(self._model(self.threads), texts, batch_size)

    def profile(self, texts: Sequence[str], batch_size: int, out_dir: Path) -> dict[str, Any]:
        if self.onnx_file is None:
            return {
                "kind": "torch.profiler",
                **torch_trace(
                    lambda: self.encode(texts, batch_size, self.threads),
                    out_dir / f"{self.name}.torch_trace.json",
                    out_dir / f"{self.name}.torch_ops.txt",
                ),
            }
        from sentence_transformers import SentenceTransformer

        def make(modify):
            model = SentenceTransformer(
                self.path, device="cpu", backend="onnx", model_kwargs=self._onnx_kwargs(self.threads, modify)
            )
            model.max_seq_length = self.max_seq_length
            self._profiled = model
            return model[0].auto_model.session

        def run(_session):
            import torch

            with torch.inference_mode():
                self._profiled.encode(list(texts), batch_size=batch_size, show_progress_bar=False)

        path = ort_profile(make, run, out_dir / f"{self.name}.ort_profile")
        del self._profiled
        return {"kind": "onnxruntime", "trace": path.name, **ort_profile_summary(path)}


class OrtVariant(BenchVariant):
    """An ONNX file of the pipeline, run through :class:`embopt.serving.runtime.Embedder`."""

    def __init__(
        self, name: str, bundle: Path, onnx_path: Path, threads: int, max_seq_length: int, projection: int = 0
    ):
        self.bundle = Path(bundle)
        self.onnx_path = Path(onnx_path)
        self.name, self.max_seq_length = name, max_seq_length  # the embedder needs them before __init__ below
        self._embedders: dict[int, Any] = {}
        emb = self._embedder(threads)
        shape, positions = _bundle_shape(emb.manifest, projection)
        super().__init__(
            name,
            "ours",
            "embopt-ort",
            onnx_precision(self.onnx_path),
            dir_size_mb(self.onnx_path),
            shape,
            positions,
            threads,
            max_seq_length,
        )
        self.rss_spec = {
            "backend": "embopt-ort",
            "bundle": str(self.bundle),
            "onnx_path": str(self.onnx_path),
        }
        self._pooling = pooling_nodes(self.onnx_path)

    def _embedder(self, threads: int):
        from embopt.serving.runtime import Embedder

        if threads not in self._embedders:
            self._embedders[threads] = Embedder(
                self.bundle,
                variant=self.name,
                onnx_path=self.onnx_path,
                threads=threads,
                max_seq_length=self.max_seq_length,
            )
        return self._embedders[threads]

    def encode(self, texts: Sequence[str], batch_size: int, threads: int) -> np.ndarray:
        emb = self._embedder(threads)
        emb.batch_size = batch_size
        return emb.embed(list(texts))

    def set_max_seq_length(self, length: int) -> None:
        self.max_seq_length = length
        for emb in self._embedders.values():
            emb.max_seq_length = length
            emb.tokenizer.enable_truncation(max_length=length)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self._embedder(self.threads).tokenize(list(texts))]

    def phases(self, texts: Sequence[str], batch_size: int, pooling_share: float = 0.0) -> dict[str, float]:
        emb = self._embedder(self.threads)
        emb.batch_size = batch_size
        return embedder_phases(emb, texts, pooling_share)

    def profile(self, texts: Sequence[str], batch_size: int, out_dir: Path) -> dict[str, Any]:
        import onnxruntime as ort

        from embopt.serving.runtime import session_options

        emb = self._embedder(self.threads)
        original = emb.session

        def make(modify):
            return ort.InferenceSession(
                str(self.onnx_path),
                sess_options=modify(session_options(self.threads)),
                providers=["CPUExecutionProvider"],
            )

        def run(session):
            emb.session = session  # the real embed path, with a profiling session swapped in
            emb.batch_size = batch_size
            try:
                emb.embed(list(texts))
            finally:
                emb.session = original

        path = ort_profile(make, run, out_dir / f"{self.name}.ort_profile")
        return {"kind": "onnxruntime", "trace": path.name, **ort_profile_summary(path, self._pooling)}


def _bundle_shape(manifest: dict[str, Any], projection: int) -> tuple[EncoderShape | None, int | None]:
    """Encoder shape of a bundle: the source model's config.json, else the manifest's fields."""
    src = manifest.get("source_model")
    cfg = read_model_config(config.resolve(src)) if isinstance(src, str) and src else None
    if cfg is not None:
        try:
            return shape_from_config(cfg, projection), cfg.get("max_position_embeddings")
        except KeyError:
            pass
    keys = ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    if all(k in manifest for k in keys):
        pruned = {int(k): len(v) for k, v in (manifest.get("pruned_heads") or {}).items()}
        return EncoderShape(
            int(manifest["num_layers"]),
            int(manifest["hidden_size"]),
            int(manifest["intermediate_size"]),
            int(manifest["num_attention_heads"]),
            pruned,
            projection,
        ), manifest.get("max_position_embeddings")
    return None, None


# -------------------------------------------------------------------------- anchors


def quantization_config_for_cpu() -> str:
    """The ``export_dynamic_quantized_onnx_model`` preset matching this CPU (what its docs advise)."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def build_st_anchors(
    teacher_dir: Path, threads: int, max_seq_length: int, workdir: Path
) -> tuple[list[STVariant], str | None]:
    """sentence-transformers' ONNX backend (fp32) and its dynamic int8 export of the teacher.

    ST writes the exported files into the model folder, so the teacher is copied
    to ``workdir`` first (site-packages stays untouched). Returns the variants and,
    when they cannot be built (``optimum`` missing, export failure), the reason.
    """
    try:
        import optimum.onnxruntime  # noqa: F401
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
    except ImportError as exc:
        return [], (
            f"sentence-transformers ONNX anchors skipped: {exc} "
            "(pip install optimum==2.1.0 optimum-onnx==0.1.0)"
        )
    folder = workdir / "st_teacher"
    shutil.copytree(teacher_dir, folder, dirs_exist_ok=True)
    qconfig = quantization_config_for_cpu()
    try:
        with quiet_root_logger():  # ORT's quantizer logs one INFO line per tensor on the root logger
            exported = SentenceTransformer(
                str(folder), device="cpu", backend="onnx", model_kwargs={"provider": "CPUExecutionProvider"}
            )
            exported.save_pretrained(str(folder))  # writes onnx/model.onnx next to the torch weights
            export_dynamic_quantized_onnx_model(
                exported, qconfig, str(folder), push_to_hub=False, create_pr=False
            )
        del exported
        int8_file = f"onnx/model_qint8_{qconfig}.onnx"
        if not (folder / int8_file).exists():
            raise EmboptError(f"{folder / int8_file}: the int8 export did not write this file")
        anchors = [
            STVariant("st_onnx_fp32", "anchor", folder, threads, max_seq_length, onnx_file="onnx/model.onnx"),
            STVariant(
                f"st_onnx_int8_{qconfig}", "anchor", folder, threads, max_seq_length, onnx_file=int8_file
            ),
        ]
    except Exception as exc:  # optimum/ORT raise many types; the benchmark goes on without these anchors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [], f"sentence-transformers ONNX anchors skipped: {type(exc).__name__}: {first}"
    return anchors, None


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="embopt-bench-"))
