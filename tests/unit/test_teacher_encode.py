"""Teacher embedding backends: the fp32 ONNX teacher run by embopt's runtime embeds like the torch teacher."""

from __future__ import annotations

import numpy as np
import pytest
import tiny

from embopt.errors import EmboptError
from embopt.training.teacher_encode import resolve_backend, teacher_encoder


def test_onnx_teacher_equals_torch_teacher(tiny_model):
    # Mixed lengths (and one long enough to be truncated) so the length-sorted batches differ from torch's.
    sentences = tiny.sentences(70, seed=5) + [" ".join(tiny.sentences(12, seed=6))]
    torch_emb = teacher_encoder(tiny_model, "torch", batch_size=16, max_seq_length=32)(sentences)
    onnx_emb = teacher_encoder(tiny_model, "onnx", batch_size=16, max_seq_length=32, threads=1)(sentences)
    assert onnx_emb.shape == torch_emb.shape and onnx_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(onnx_emb, axis=1), 1.0, atol=1e-5)
    cos = (onnx_emb * torch_emb).sum(axis=1)
    assert cos.min() >= 0.9999, cos.min()


@pytest.mark.parametrize(("backend", "device", "expected"),
                         [("auto", "cpu", "onnx"), ("auto", "cuda:0", "torch"), ("torch", "cpu", "torch"),
                          ("onnx", "cpu", "onnx")])
def test_backend_choice(backend, device, expected):
    assert resolve_backend(backend, device) == expected


def test_unknown_backend_is_a_one_line_error():
    with pytest.raises(EmboptError, match="teacher_embed.backend: 'tf' is not one of auto, onnx, torch"):
        resolve_backend("tf", "cpu")
