import numpy as np
import onnx
import pytest

from embopt.errors import EmboptError
from embopt.export.onnx import INPUT_NAMES, OUTPUT_NAME, check_onnx, export_onnx, optimize_onnx
from embopt.serving.runtime import Embedder

SENTS = ["A man is playing a guitar.", "The cat.", "A young girl is riding a horse on the fence."]


def test_graph_interface(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "onnx" / "model.onnx"))
    assert [i.name for i in model.graph.input] == INPUT_NAMES
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]


def test_fused_graph_has_fused_ops(tiny_bundle):
    ops = {n.op_type for n in onnx.load(str(tiny_bundle / "onnx" / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= ops


@pytest.mark.parametrize("variant, atol", [("onnx_fp32", 1e-5), ("onnx_int8", 0.05)])
def test_onnx_matches_sentence_transformers(tiny_model, tiny_bundle, variant, atol):
    ref = tiny_model.encode(SENTS, normalize_embeddings=True)
    got = Embedder(tiny_bundle, variant=variant, threads=1).embed(SENTS)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised in the graph
    cos = (got * ref).sum(1)
    assert cos.min() > 1 - atol


def test_unfused_export_matches(tiny_model, tmp_path):
    path = export_onnx(tiny_model, tmp_path / "raw.onnx")
    stats = optimize_onnx(path, tmp_path / "opt.onnx")
    assert stats.get("Attention", 0) == 4


def test_corrupt_onnx_named_in_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07not really a protobuf" * 3)
    with pytest.raises(EmboptError, match=str(bad)):
        check_onnx(bad)


def test_truncated_onnx(tiny_bundle, tmp_path):
    data = (tiny_bundle / "onnx" / "model.onnx").read_bytes()
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(EmboptError, match="trunc.onnx"):
        check_onnx(bad)
