import numpy as np
import pytest
import tiny

from embopt.errors import EmboptError
from embopt.export.pca import fit_pca, fold_into_onnx, project, save_pca
from embopt.serving.runtime import Embedder


def test_fit_save_load_roundtrip(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    pca = fit_pca(x, 4, seed=0)
    save_pca(tmp_path / "p.npz", pca)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as back:  # plain arrays: what the runtime reads
        assert set(back.files) == {"mean", "components", "explained_variance_ratio"}
        np.testing.assert_array_equal(back["components"], pca["components"])
    z = project(x, pca)
    assert z.shape == (50, 4)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)


def test_k_too_large():
    with pytest.raises(EmboptError, match="pca.k"):
        fit_pca(np.zeros((5, 3), dtype=np.float32), 4, seed=0)


def test_folded_graph_equals_numpy_projection(tiny_bundle, tmp_path):
    parent = Embedder(tiny_bundle, variant="onnx_fp32", threads=1)
    sents = tiny.sentences(120, seed=5)
    emb = parent.embed(sents)
    pca = fit_pca(emb, 8, seed=0)
    folded_path = fold_into_onnx(parent.onnx_path, tmp_path / "pca.onnx", pca)
    folded = Embedder(tiny_bundle, onnx_path=folded_path, threads=1)
    assert folded.dim == 8
    np.testing.assert_allclose(folded.embed(sents[:10]), project(emb[:10], pca), atol=1e-5)
