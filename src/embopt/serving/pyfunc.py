"""The MLflow pyfunc model registered by promote: the bundle behind :class:`Embedder`.

At load time it needs only this package (shipped with the model via ``code_paths``),
onnxruntime, tokenizers, numpy and pandas: nothing from the repository. Runtime
settings travel as the model's ``model_config`` (written by promote from the
``runtime`` section of params.yaml) and can be overridden at load time::

    mlflow.pyfunc.load_model("models:/embopt-encoder@champion",
                             model_config={"threads": 4, "cache_path": "/var/cache/embopt.sqlite"})
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np

# model_config keys the model understands, with their defaults.
DEFAULT_CONFIG: dict[str, Any] = {
    "threads": None,  # ORT intra-op threads; None: ORT's default (one per physical core)
    "batch_size": 32,
    "graph_optimization": "all",
    "providers": ["CPUExecutionProvider"],
    "cache": True,  # in-memory LRU for repeated texts
    "cache_max_entries": 100_000,
    "cache_path": None,  # SQLite file shared by processes; None: memory only
    "cache_max_rows": None,
}


def to_texts(model_input: Any) -> list[str]:
    """Texts from a DataFrame with a ``text`` column (or one column), a Series, a list or an array."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            col = model_input["text"]
        elif model_input.shape[1] == 1:
            col = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a 'text' column, got columns {list(model_input.columns)}")
        return [str(x) for x in col.tolist()]
    if isinstance(model_input, pd.Series):
        return [str(x) for x in model_input.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, np.ndarray):
        return [str(x) for x in model_input.reshape(-1).tolist()]
    if isinstance(model_input, (list, tuple)):
        return [x if isinstance(x, str) else str(x) for x in model_input]
    raise TypeError(f"unsupported input type {type(model_input).__name__}; "
                    "pass a DataFrame with a 'text' column")


def runtime_config(model_config: dict[str, Any] | None) -> dict[str, Any]:
    """``DEFAULT_CONFIG`` updated with ``model_config``; unknown keys are refused by name."""
    cfg = dict(DEFAULT_CONFIG)
    unknown = set(model_config or {}) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown model_config key(s): {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(DEFAULT_CONFIG)})")
    cfg.update(model_config or {})
    return cfg


class EmbedderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: strings in, float32 (n, dim) unit vectors out."""

    def load_context(self, context) -> None:
        from embopt.serving.cache import EmbeddingCache
        from embopt.serving.runtime import Embedder

        cfg = runtime_config(getattr(context, "model_config", None))
        cache = None
        if cfg["cache"]:
            cache = EmbeddingCache(max_entries=int(cfg["cache_max_entries"]), path=cfg["cache_path"],
                                   max_rows=cfg["cache_max_rows"])
        self.embedder = Embedder(
            context.artifacts["bundle"], threads=cfg["threads"], batch_size=int(cfg["batch_size"]),
            graph_optimization=cfg["graph_optimization"], providers=cfg["providers"], cache=cache,
        )

    def predict(self, context, model_input, params=None) -> np.ndarray:
        return self.embedder.embed(to_texts(model_input))
