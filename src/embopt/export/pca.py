"""PCA to fewer output dimensions (cheaper storage and vector search), folded into the ONNX graph.

The projection is saved as ``.npz`` (mean, components; no pickle) and appended to the graph as
Sub -> MatMul -> LpNormalization, so the served model emits k-dim unit vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from embopt.errors import EmboptError
from embopt.export.onnx import OUTPUT_NAME

log = logging.getLogger(__name__)


def fit_pca(embeddings: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    """Fit PCA with scikit-learn; return plain arrays."""
    from sklearn.decomposition import PCA

    n, d = embeddings.shape
    if k > min(n, d):
        raise EmboptError(f"pca.k: {k} exceeds min(samples={n}, dim={d})")
    pca = PCA(n_components=k, random_state=seed).fit(embeddings)
    return {"mean": pca.mean_.astype(np.float32), "components": pca.components_.astype(np.float32),  # (k, d)
            "explained_variance_ratio": pca.explained_variance_ratio_.astype(np.float32)}


def save_pca(path: Path, pca: dict[str, np.ndarray]) -> None:
    np.savez(path, **pca)


def project(embeddings: np.ndarray, pca: dict[str, np.ndarray]) -> np.ndarray:
    """numpy reference of the folded graph: centre, project, L2-normalise."""
    z = (embeddings - pca["mean"]) @ pca["components"].T
    return (z / np.clip(np.linalg.norm(z, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


def fold_into_onnx(src: Path, dst: Path, pca: dict[str, np.ndarray]) -> Path:
    """Append the PCA projection to the graph of ``src`` and write ``dst``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    outputs = [o for o in graph.output if o.name == OUTPUT_NAME]
    if not outputs:
        raise EmboptError(f"{src}: graph has no output named '{OUTPUT_NAME}'")
    full = "sentence_embedding_full"
    for node in graph.node:
        node.output[:] = [full if o == OUTPUT_NAME else o for o in node.output]
    k = int(pca["components"].shape[0])
    mean = pca["mean"].reshape(1, -1).astype(np.float32)
    components_t = np.ascontiguousarray(pca["components"].T, dtype=np.float32)
    graph.initializer.extend([numpy_helper.from_array(mean, "pca_mean"),
                              numpy_helper.from_array(components_t, "pca_components_t")])
    graph.node.extend([
        helper.make_node("Sub", [full, "pca_mean"], ["pca_centred"], name="pca_sub"),
        helper.make_node("MatMul", ["pca_centred", "pca_components_t"], ["pca_projected"], name="pca_matmul"),
        helper.make_node("LpNormalization", ["pca_projected"], [OUTPUT_NAME], name="pca_l2norm", axis=1, p=2),
    ])
    graph.output.remove(outputs[0])
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", k]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    log.info("folded PCA (k=%d) into %s", k, dst)
    return dst
