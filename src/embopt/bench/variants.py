"""The models the benchmark compares, behind one interface, and the sentence-transformers anchors.

- :class:`STVariant`: a sentence-transformers model, in torch (``backend="torch"``) or on its ONNX
  backend (``backend="st-onnx"``, what ``SentenceTransformer(path, backend="onnx")`` and
  ``export_dynamic_quantized_onnx_model`` give a user);
- :class:`OrtVariant`: an ONNX file of the pipeline run through embopt's runtime;
- :func:`export_st_onnx`: the one builder of sentence-transformers' ONNX and int8 exports.

Every variant encodes at a given batch size and thread count; ONNX Runtime fixes its thread count
per session, so ORT-based variants keep one session per thread count (created on first use) while
torch switches ``torch.set_num_threads``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embopt.bench import profiling
from embopt.bench.roofline import EncoderShape, read_model_config, shape_from_config
from embopt.errors import EmboptError
from embopt.export.quantize import cpu_flags, detect_isa
from embopt.pipeline import config
from embopt.pipeline.files import dir_size_mb, quiet_root_logger
from embopt.serving.runtime import Embedder, session_options

QUANT_OPS = {"MatMulInteger", "QAttention", "DynamicQuantizeLinear", "QLinearMatMul", "QGemm",
             "QEmbedLayerNormalization", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QuantizeLinear"}


def onnx_precision(path: Path) -> str:
    """``int8`` when the graph runs quantized ops, ``fp16`` for half-precision weights, else ``fp32``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if {n.op_type for n in model.graph.node} & QUANT_OPS:
        return "int8"
    return "fp16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) else "fp32"


@dataclass
class BenchVariant:
    """Common fields; subclasses implement the methods listed below.

    ``encode(texts, batch_size, threads)``, ``set_max_seq_length``, ``token_counts``,
    ``phases(texts, batch_size, pooling_share)``, ``profile(texts, batch_size, dir)``.
    """

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

    def info(self) -> dict[str, Any]:
        return {"group": self.group, "backend": self.backend, "precision": self.precision,
                "size_mb": round(self.size_mb, 3), "max_positions": self.max_positions}


def st_model(path: Path | str, threads: int, max_seq_length: int, onnx_file: str | None = None,
             session_opts=None):
    """A SentenceTransformer on CPU: torch, or its ONNX backend on ``onnx_file`` with ``threads`` ORT threads.

    Or with ``session_opts`` instead of the ``threads`` options (profiling).
    """
    from sentence_transformers import SentenceTransformer

    kwargs: dict[str, Any] = {"device": "cpu"}
    if onnx_file:
        kwargs["backend"] = "onnx"
        kwargs["model_kwargs"] = {"file_name": onnx_file, "provider": "CPUExecutionProvider",
                                  "session_options": session_opts or session_options(threads)}
    model = SentenceTransformer(str(path), **kwargs)
    model.eval()
    model.max_seq_length = max_seq_length
    return model


class STVariant(BenchVariant):
    """A sentence-transformers model (torch or its ONNX backend)."""

    def __init__(self, name: str, group: str, path: Path | str, threads: int, max_seq_length: int,
                 onnx_file: str | None = None):
        self.path, self.onnx_file = str(path), onnx_file
        self._models: dict[int, Any] = {}
        self.max_seq_length = max_seq_length
        cfg = self._model(threads)[0].auto_model.config
        if onnx_file:
            precision, size = onnx_precision(Path(path) / onnx_file), dir_size_mb(Path(path) / onnx_file)
        else:
            precision, size = "fp32", dir_size_mb(Path(path), ("*.safetensors", "*.bin"))
        backend = "st-onnx" if onnx_file else "torch"
        super().__init__(name, group, backend, precision, size, shape_from_config(cfg.to_dict()),
                         getattr(cfg, "max_position_embeddings", None), threads, max_seq_length,
                         {"backend": backend, "path": self.path, "file_name": onnx_file})

    def _model(self, threads: int):
        """The loaded model for ``threads`` (ORT sessions fix their thread count at load)."""
        key = threads if self.onnx_file else 0
        if key not in self._models:
            self._models[key] = st_model(self.path, threads, self.max_seq_length, self.onnx_file)
        return self._models[key]

    def encode(self, texts: Sequence[str], batch_size: int, threads: int) -> np.ndarray:
        import torch

        model, old = self._model(threads), torch.get_num_threads()
        if old != threads:  # not on every call: it is inside the timed batch-1 calls
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                    show_progress_bar=False)
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
        return profiling.st_phases(self._model(self.threads), texts, batch_size)

    def profile(self, texts: Sequence[str], batch_size: int, out_dir: Path) -> dict[str, Any]:
        if self.onnx_file is None:
            encode = lambda: self.encode(texts, batch_size, self.threads)  # noqa: E731
            trace = profiling.torch_trace(encode, out_dir / f"{self.name}.torch_trace.json",
                                out_dir / f"{self.name}.torch_ops.txt")
            return {"kind": "torch.profiler", **trace}
        import torch

        opts = profiling.profiling_options(self.threads, out_dir / f"{self.name}.ort_profile")
        model = st_model(self.path, self.threads, self.max_seq_length, self.onnx_file, opts)
        with torch.inference_mode():
            model.encode(list(texts), batch_size=batch_size, show_progress_bar=False)
        return profiling.ort_profile_summary(Path(model[0].auto_model.session.end_profiling()))


class OrtVariant(BenchVariant):
    """An ONNX file of the pipeline, run through :class:`embopt.serving.runtime.Embedder`."""

    def __init__(self, name: str, bundle: Path, onnx_path: Path, threads: int, max_seq_length: int,
                 projection: int = 0):
        self.bundle, self.onnx_path = Path(bundle), Path(onnx_path)
        self.name, self.max_seq_length = name, max_seq_length  # the embedder needs them before __init__ below
        self._embedders: dict[int, Any] = {}
        shape, positions = _bundle_shape(self._embedder(threads).manifest, projection)
        spec = {"backend": "embopt-ort", "bundle": str(self.bundle), "onnx_path": str(self.onnx_path)}
        super().__init__(name, "ours", "embopt-ort", onnx_precision(self.onnx_path),
                         dir_size_mb(self.onnx_path), shape, positions, threads, max_seq_length, spec)
        self._pooling = profiling.pooling_nodes(self.onnx_path)

    def _embedder(self, threads: int):
        if threads not in self._embedders:
            self._embedders[threads] = Embedder(self.bundle, variant=self.name, onnx_path=self.onnx_path,
                                                threads=threads, max_seq_length=self.max_seq_length)
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
        """Seconds per phase of one real ``Embedder.embed(texts)``, from the runtime's ``timings``.

        Its session run holds the encoder and the in-graph pooling/normalisation, split by ``pooling_share``
        (from an ORT profile); neither tokenizing nor the session run is building the padded arrays plus
        Python bookkeeping.
        """
        emb = self._embedder(self.threads)
        emb.batch_size = batch_size
        emb.reset_timings()
        t0 = time.perf_counter()
        emb.embed(list(texts))
        total = time.perf_counter() - t0
        run, tok = float(emb.timings.run_s), float(emb.timings.tokenize_s)
        return profiling.finish_phases({"tokenize": tok, "build_tensors": max(total - run - tok, 0.0),
                                        "model_run": run * (1.0 - pooling_share),
                                        "pooling_normalize": run * pooling_share}, total)

    def profile(self, texts: Sequence[str], batch_size: int, out_dir: Path) -> dict[str, Any]:
        import onnxruntime as ort

        emb = self._embedder(self.threads)
        original = emb.session, emb.sessions
        opts = profiling.profiling_options(self.threads, out_dir / f"{self.name}.ort_profile")
        session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        # The real embed path on one profiling session.
        emb.session, emb.sessions, emb.batch_size = session, [session], batch_size
        try:
            emb.embed(list(texts))
        finally:
            emb.session, emb.sessions = original
        return profiling.ort_profile_summary(Path(session.end_profiling()), self._pooling)


def _bundle_shape(manifest: dict[str, Any], projection: int) -> tuple[EncoderShape | None, int | None]:
    """Encoder shape of a bundle: the source model's config.json, else the manifest's fields."""
    src = manifest.get("source_model")
    cfg = read_model_config(config.resolve(src)) if isinstance(src, str) and src else None
    if cfg is not None:
        with contextlib.suppress(KeyError):
            return shape_from_config(cfg, projection), cfg.get("max_position_embeddings")
    keys = ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    if all(k in manifest for k in keys):
        pruned = {int(k): len(v) for k, v in (manifest.get("pruned_heads") or {}).items()}
        dims = [int(manifest[k]) for k in keys]
        return EncoderShape(*dims, pruned, projection), manifest.get("max_position_embeddings")
    return None, None


def st_preset() -> str:
    """sentence-transformers' int8 preset for this CPU: :func:`detect_isa`'s, or ``avx512`` (no VNNI)."""
    isa = detect_isa()
    return "avx512" if isa == "avx2" and "avx512f" in cpu_flags() else isa


def export_st_onnx(st_dir: Path, preset: str | None = None) -> dict[str, Path]:
    """sentence-transformers' own ONNX export and its ``export_dynamic_quantized_onnx_model`` int8 of the
    SentenceTransformer folder ``st_dir``, written into it (reused when present): ``{"fp32":
    onnx/model.onnx, "int8": onnx/model_qint8_<preset>.onnx}`` (preset: :func:`st_preset`)."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    preset = preset or st_preset()
    files = {"fp32": st_dir / "onnx" / "model.onnx", "int8": st_dir / "onnx" / f"model_qint8_{preset}.onnx"}
    model = None
    # ORT's quantizer logs one INFO line per tensor on the root logger; its calibration prints progress.
    with quiet_root_logger(), contextlib.redirect_stdout(io.StringIO()):
        if not files["fp32"].exists():
            model = SentenceTransformer(str(st_dir), device="cpu", backend="onnx",
                                        model_kwargs={"provider": "CPUExecutionProvider"})
            model.save_pretrained(str(st_dir))  # writes onnx/model.onnx next to the torch weights
        if not files["int8"].exists():
            model = model or SentenceTransformer(str(st_dir), device="cpu", backend="onnx", model_kwargs={
                "provider": "CPUExecutionProvider", "file_name": "onnx/model.onnx"})
            export_dynamic_quantized_onnx_model(model, preset, str(st_dir), push_to_hub=False,
                                                create_pr=False)
    if not files["int8"].exists():
        raise EmboptError(f"{files['int8']}: the int8 export did not write this file")
    return files


def build_st_anchors(teacher_dir: Path, threads: int, max_seq_length: int, workdir: Path
                     ) -> tuple[list[STVariant], str | None]:
    """The teacher on sentence-transformers' ONNX backend (fp32) and as its dynamic int8 export.

    ST writes the exported files into the model folder, so the teacher is copied to ``workdir``
    first (site-packages stays untouched). Returns the variants and, when they cannot be built
    (``optimum`` missing, export failure), the reason.
    """
    try:
        import optimum.onnxruntime  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        why = f"{exc} (pip install optimum==2.1.0 optimum-onnx==0.1.0)"
        return [], f"sentence-transformers ONNX anchors skipped: {why}"
    folder = workdir / "st_teacher"
    shutil.copytree(teacher_dir, folder, dirs_exist_ok=True)
    preset = st_preset()
    try:
        export_st_onnx(folder, preset)
        return [STVariant("st_onnx_fp32", "anchor", folder, threads, max_seq_length, "onnx/model.onnx"),
                STVariant(f"st_onnx_int8_{preset}", "anchor", folder, threads, max_seq_length,
                          f"onnx/model_qint8_{preset}.onnx")], None
    except Exception as exc:  # optimum/ORT raise many types; the benchmark goes on without these anchors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [], f"sentence-transformers ONNX anchors skipped: {type(exc).__name__}: {first}"
