"""Inference backends other than ONNX Runtime, behind one call: ``run(input_ids, attention_mask)``.

A manifest variant's ``backend``: ``onnxruntime`` (the default, run by :class:`Embedder` itself),
``openvino`` (an OpenVINO IR ``.xml`` with its ``.bin``) or ``static`` (a token-embedding table
``.npy``: the sentence vector is the L2-normalised mean of its tokens' rows). Each session returns
pooled, L2-normalised float32 rows, as the ONNX graphs do. Only numpy is needed here (``openvino``
is imported when an OpenVINO variant is opened).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embopt.errors import EmboptError

BACKENDS = ("onnxruntime", "openvino", "static")
_BY_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".npy": "static"}


def backend_of(entry: dict | None, path: Path) -> str:
    """The manifest entry's ``backend``; for a file outside the manifest, the one its suffix implies."""
    name = (entry or {}).get("backend") or _BY_SUFFIX.get(Path(path).suffix, "onnxruntime")
    if name not in BACKENDS:
        raise EmboptError(f"{path}: unknown backend '{name}' (one of {', '.join(BACKENDS)})")
    return name


class StaticSession:
    """A static embedding model: one vector per token id, mean-pooled over the attention mask."""

    def __init__(self, path: Path):
        try:
            self.table = np.load(path, allow_pickle=False).astype(np.float32, copy=False)
        except (ValueError, OSError) as exc:
            raise EmboptError(f"{path}: not a token-embedding table .npy ({exc})") from None
        if self.table.ndim != 2:
            raise EmboptError(f"{path}: expected a (vocab, dim) table, got shape {self.table.shape}")
        self.dim = int(self.table.shape[1])
        # Padding looks up an appended zero row: a plain sum, no multiplying by the mask.
        self.zero = self.table.shape[0]
        self.table = np.vstack([self.table, np.zeros((1, self.dim), dtype=np.float32)])

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        # The sum, not the mean: the 1/n cancels in the normalisation.
        out = self.table[np.where(attention_mask.astype(bool), input_ids, self.zero)].sum(axis=1)
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out


class OpenVinoSession:
    """An OpenVINO IR compiled for the CPU with ``threads`` inference threads."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise EmboptError(f"{path}: an OpenVINO variant needs `pip install openvino`") from None
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}  # fp32 stays fp32
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable IR
            raise EmboptError(f"{path}: cannot load OpenVINO model ({str(exc).splitlines()[0]})") from None
        self.request = compiled.create_infer_request()
        self.output = compiled.output(0)
        self.inputs = [i.get_any_name() for i in compiled.inputs]
        missing = {"input_ids", "attention_mask"} - set(self.inputs)
        if missing:
            raise EmboptError(f"{path}: model lacks input(s) {', '.join(sorted(missing))}")
        shape = self.output.get_partial_shape()
        self.dim = int(shape[shape.rank.get_length() - 1].get_length())

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {n: np.zeros_like(input_ids) for n in self.inputs}  # token_type_ids: all zeros
        feeds.update(input_ids=input_ids, attention_mask=attention_mask)
        return self.request.infer(feeds)[self.output]


def open_session(backend: str, path: Path, threads: int | None = None):
    """A session with ``run(input_ids, attention_mask) -> embeddings`` and ``dim``, for a non-ORT backend."""
    return OpenVinoSession(path, threads) if backend == "openvino" else StaticSession(path)
