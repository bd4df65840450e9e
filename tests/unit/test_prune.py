import copy

import numpy as np
import pytest
import torch

from embopt.errors import EmboptError
from embopt.training.modeling import hf_model
from embopt.training.prune import collect_importance, count_params, prune_ffn, prune_model

SENTS = ["A man is playing a guitar.", "The cat is eating the bread.", "A young girl is riding a horse."] * 4


@pytest.fixture
def model(tiny_model):
    return copy.deepcopy(tiny_model)


def test_ffn_pruning_shrinks_matrices_and_config(model):
    before = count_params(model)
    rep = prune_model(model, SENTS, ffn_keep_ratio=0.5, heads_to_prune=0)
    hf = hf_model(model)
    for layer in hf.encoder.layer:
        assert layer.intermediate.dense.weight.shape == (32, 32)  # (intermediate, hidden): 64 -> 32
        assert layer.output.dense.weight.shape == (32, 32)
    assert hf.config.intermediate_size == 32 == rep.ffn_after
    assert rep.params_after == count_params(model) < before


def test_keeps_the_most_important_neurons(model):
    ffn, _ = collect_importance(model, SENTS)
    layer0 = hf_model(model).encoder.layer[0]
    w_out = layer0.output.dense.weight.detach().clone()
    score = ffn[0] * w_out.norm(dim=0)
    expected = torch.topk(score, 16).indices.sort().values
    prune_ffn(model, ffn, keep_ratio=0.25)
    assert torch.equal(hf_model(model).encoder.layer[0].output.dense.weight, w_out[:, expected])


def test_head_pruning_and_reload(model, tmp_path):
    from sentence_transformers import SentenceTransformer

    rep = prune_model(model, SENTS, ffn_keep_ratio=0.75, heads_to_prune=3)
    assert rep.heads_before == 16 and rep.heads_after == 13
    emb = model.encode(SENTS[:3])
    model.save(str(tmp_path / "pruned"))
    reloaded = SentenceTransformer(str(tmp_path / "pruned"), device="cpu")
    np.testing.assert_allclose(reloaded.encode(SENTS[:3]), emb, atol=1e-5)
    assert count_params(reloaded) == rep.params_after


def test_keep_ratio_one_is_identity(model):
    emb = model.encode(SENTS[:3])
    rep = prune_model(model, SENTS, ffn_keep_ratio=1.0, heads_to_prune=0)
    assert rep.params_after == rep.params_before
    np.testing.assert_allclose(model.encode(SENTS[:3]), emb, atol=1e-6)


def test_unsupported_architecture_is_a_clear_error(model):
    hf = hf_model(model)
    hf.encoder.layer = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    with pytest.raises(EmboptError, match="prune: layer type Linear"):
        prune_model(model, SENTS, 0.5, 0)
