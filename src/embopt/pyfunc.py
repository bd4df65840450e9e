"""The MLflow pyfunc model registered by promote: the bundle behind :class:`Embedder`.

At load time it needs only this package (shipped with the model via ``code_paths``),
onnxruntime, tokenizers, numpy and pandas: nothing from the repository.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np


def to_texts(model_input: Any) -> list[str]:
    """Accept a DataFrame with a ``text`` column (or a single column), a Series, a list or an array of strings."""
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
    raise TypeError(f"unsupported input type {type(model_input).__name__}; pass a DataFrame with a 'text' column")


class EmbedderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: strings in, float32 (n, dim) unit vectors out."""

    def load_context(self, context) -> None:
        from embopt.runtime import Embedder

        self.embedder = Embedder(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        return self.embedder.embed(to_texts(model_input))
