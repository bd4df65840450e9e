"""The MLflow pyfunc model registered by promote: the bundle behind :class:`Embedder`.

It needs only this package (shipped via ``code_paths``), onnxruntime, tokenizers, numpy and pandas.
Settings travel as ``model_config`` (promote writes params.yaml's ``runtime``), overridable::

    mlflow.pyfunc.load_model("models:/embopt-encoder@champion",
                             model_config={"threads": 4, "cache_path": "/var/cache/embopt.sqlite"})

Input rule (:func:`to_texts`): strings only. A list, Series or 1-D array of strings; a DataFrame
with a column named ``text`` (other columns ignored) or exactly one column; a dict ``{"text": [...]}``.
Anything else, and any non-string value, is refused with the row named: ``MlflowException(
INVALID_PARAMETER_VALUE)``, HTTP 400 from ``mlflow models serve``. A request's texts are bounded by
``max_request_bytes`` of UTF-8 once parsed (the server has no body-size limit: put one in a proxy).

The input schema is left open (``model_signature``): MLflow's enforcement of a string column
converts every value with ``str(x)`` (null arrives as ``"None"``) and keeps only a DataFrame's first
column, so it cannot refuse bad input. One limit remains in MLflow's JSON parser: a number mixed
into strings sent as ``{"inputs": [...]}`` becomes a string there (numpy's array conversion);
``dataframe_split``/``dataframe_records`` keep every value's JSON type.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow.pyfunc
import numpy as np

from embopt.errors import EmboptError

log = logging.getLogger(__name__)

DEFAULT_CONFIG: dict[str, Any] = {  # model_config keys the model understands, with their defaults
    "threads": None,  # ORT intra-op threads; None: ORT's default (one per physical core)
    "mode": "latency",  # a request at a time on all threads (Embedder's "bulk": batch scoring, spark_udf)
    "batch_size": 32,
    "graph_optimization": "all",
    "providers": ["CPUExecutionProvider"],
    "max_request_bytes": 8 * 1024 * 1024,  # UTF-8 bytes of text per request; None: no bound
    "cache": True,  # in-memory LRU for repeated texts
    "cache_max_entries": 100_000,
    "cache_max_bytes": 256 * 1024 * 1024,  # memory bound of the LRU (vectors and texts)
    "cache_path": None,  # SQLite file shared by processes; None: memory only
    "cache_max_rows": None,
}


def model_signature(dim: int):
    """The registered model's signature: float32 (n, dim) out, the input left open (module docstring)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]))


def to_texts(model_input: Any, max_bytes: int | None = None) -> list[str]:
    """Texts from the accepted input shapes (module docstring).

    Raises :class:`EmboptError` for a shape or value that is not text (naming the row), or more than
    ``max_bytes`` of text.
    """
    import pandas as pd

    from embopt.serving.runtime import check_texts

    if isinstance(model_input, dict):
        if "text" not in model_input and len(model_input) != 1:
            raise EmboptError(f"expected one input or an input named 'text', got "
                              f"{[str(k) for k in model_input]}")
        model_input = model_input.get("text", next(iter(model_input.values())))
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns and model_input.shape[1] != 1:
            raise EmboptError(f"expected one column of strings or a column named 'text', got columns "
                              f"{[str(c) for c in model_input.columns]}")
        values = (model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]).tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, np.ndarray):
        if model_input.ndim == 0 or model_input.shape[1:] == (1,):  # {"inputs": "one text"}, a column
            model_input = model_input.reshape(-1)
        if model_input.ndim != 1:
            raise EmboptError(f"expected a flat list of strings, got an array of shape {model_input.shape} "
                              "(nested lists?)")
        values = model_input.tolist()
    elif isinstance(model_input, (list, tuple)):
        values = list(model_input)
    else:
        raise EmboptError(f"unsupported input type {type(model_input).__name__}; "
                          "pass a list of strings or a DataFrame with a 'text' column")
    return check_texts(values, max_bytes=max_bytes)


def runtime_config(model_config: dict[str, Any] | None) -> dict[str, Any]:
    """``DEFAULT_CONFIG`` updated with ``model_config``; unknown keys are refused by name."""
    unknown = set(model_config or {}) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown model_config key(s): {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(DEFAULT_CONFIG)})")
    cfg = {**DEFAULT_CONFIG, **(model_config or {})}
    for key, low in (("max_request_bytes", 1), ("cache_max_bytes", 0)):
        value = cfg[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"model_config '{key}' must be an integer >= {low} or null, got {value!r}")
    return cfg


def _open_cache(cfg: dict[str, Any]):
    """The configured cache; a store that cannot be opened is bypassed (memory only) with a warning."""
    from embopt.serving.cache import EmbeddingCache

    kwargs = {"max_entries": int(cfg["cache_max_entries"]), "max_rows": cfg["cache_max_rows"],
              "max_bytes": cfg["cache_max_bytes"]}
    try:
        return EmbeddingCache(path=cfg["cache_path"], **kwargs)
    except EmboptError as exc:
        if cfg["cache_path"] is None:
            raise
        log.warning("%s; serving with the in-memory cache only", exc)
        return EmbeddingCache(path=None, **kwargs)


class EmbedderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: strings in, float32 (n, dim) unit vectors out."""

    def load_context(self, context) -> None:
        from embopt.serving.runtime import Embedder

        cfg = runtime_config(getattr(context, "model_config", None))
        self.max_request_bytes = cfg["max_request_bytes"]
        cache = _open_cache(cfg) if cfg["cache"] else None
        self.embedder = Embedder(context.artifacts["bundle"], threads=cfg["threads"], mode=cfg["mode"],
                                 batch_size=int(cfg["batch_size"]), providers=cfg["providers"],
                                 graph_optimization=cfg["graph_optimization"], cache=cache)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            return self.embedder.embed(to_texts(model_input, getattr(self, "max_request_bytes", None)))
        except EmboptError as exc:  # bad input: HTTP 400 with this message, not a 500 or a vector of str(x)
            raise MlflowException(f"embopt: {exc}", error_code=INVALID_PARAMETER_VALUE) from None
