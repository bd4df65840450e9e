"""The Embedder: input order under length sorting, truncation, batching, PCA, token-level graphs."""

from __future__ import annotations

import numpy as np
import pytest
import tiny

from embopt.errors import EmboptError
from embopt.serving.runtime import Embedder

MIXED = [
    "A dog.",
    "A man is playing a guitar while the child is eating an apple and the cat is watching the fence.",
    "The chef is cutting the bread.",
    "",
    "A woman is riding a horse.",
    "The teacher is cleaning the window and a musician is holding a flute.",
    "Doc",
    "A young girl is painting the fence.",
]


@pytest.fixture(scope="module")
def fp32(tiny_bundle) -> Embedder:
    return Embedder(tiny_bundle, variant="onnx_fp32", threads=1)


def test_order_preserved_under_length_sorting(fp32):
    texts = MIXED * 3 + tiny.sentences(30, seed=5)
    batched = Embedder(fp32.bundle, variant="onnx_fp32", threads=1, batch_size=4).embed(texts)
    one_by_one = np.stack([fp32.embed([t])[0] for t in texts])  # batch 1: no padding, no sorting
    assert batched.dtype == np.float32 and batched.shape == (len(texts), fp32.dim)
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)
    # Rows really differ, so a permutation would have been caught.
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_same_result_for_any_batch_size(fp32, batch_size):
    texts = MIXED + tiny.sentences(20, seed=6)
    ref = fp32.embed(texts)
    got = Embedder(fp32.bundle, variant="onnx_fp32", threads=1, batch_size=batch_size).embed(texts)
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_matches_sentence_transformers(fp32, tiny_model):
    texts = MIXED + tiny.sentences(40, seed=7)
    ref = tiny_model.encode(texts, batch_size=8, convert_to_numpy=True, normalize_embeddings=True)
    got = fp32.embed(texts)
    cos = np.sum(ref * got, axis=1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.9999


def test_truncation_honoured(tiny_bundle, tiny_model):
    long = " ".join(["a man is playing a guitar"] * 20)
    emb = Embedder(tiny_bundle, variant="onnx_fp32", threads=1, max_seq_length=8)
    assert len(emb.tokenize([long])[0]) == 8
    assert len(fp32_ids := Embedder(tiny_bundle, variant="onnx_fp32").tokenize([long])[0]) == 32  # manifest's
    assert fp32_ids[:7] == emb.tokenize([long])[0][:7]
    old = tiny_model.max_seq_length
    try:
        tiny_model.max_seq_length = 8
        ref = tiny_model.encode([long], convert_to_numpy=True)
    finally:
        tiny_model.max_seq_length = old
    np.testing.assert_allclose(emb.embed([long]), ref, atol=2e-5)
    # Truncated: a longer text with the same first tokens embeds identically.
    np.testing.assert_allclose(emb.embed([long + " and more words"]), emb.embed([long]), atol=1e-6)


def test_int8_default_variant_close_to_fp32(tiny_bundle, fp32):
    texts = tiny.sentences(20, seed=8)
    int8 = Embedder(tiny_bundle, threads=1)
    assert int8.variant == "onnx_int8"
    cos = np.sum(int8.embed(texts) * fp32.embed(texts), axis=1)
    assert cos.min() > 0.95


def test_pca_projection(tiny_bundle, fp32, tmp_path):
    from embopt.export.pca import fit_pca, project, save_pca

    texts = tiny.sentences(60, seed=9)
    full = fp32.embed(texts)
    pca = fit_pca(full, k=8, seed=0)
    save_pca(tmp_path / "pca.npz", pca)
    emb = Embedder(tiny_bundle, variant="onnx_fp32", threads=1, pca=tmp_path / "pca.npz")
    got = emb.embed(texts)
    assert emb.dim == 8 and got.shape == (60, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, project(full, pca), atol=1e-5)


def test_pca_with_wrong_dim_is_refused(tiny_bundle, tmp_path):
    np.savez(tmp_path / "bad.npz", mean=np.zeros(5, np.float32), components=np.zeros((2, 5), np.float32))
    with pytest.raises(EmboptError, match="bad.npz: PCA expects dim 5"):
        Embedder(tiny_bundle, pca=tmp_path / "bad.npz")


def test_token_level_graph_gets_pooling(tiny_model, tiny_bundle, fp32, tmp_path):
    """An Optimum-style export (last_hidden_state out) runs with pooling folded into the graph."""
    import torch

    from embopt.training.modeling import hf_model

    path = tmp_path / "tokens.onnx"
    ids = torch.ones(2, 8, dtype=torch.long)
    with torch.inference_mode():
        torch.onnx.export(hf_model(tiny_model).eval(), (ids, torch.ones_like(ids)), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                        "last_hidden_state": {0: "b", 1: "s"}},
                          opset_version=17, dynamo=False)
    emb = Embedder(tiny_bundle, onnx_path=path, threads=1)
    texts = MIXED + tiny.sentences(10, seed=10)
    assert emb.output_name == "sentence_embedding"
    np.testing.assert_allclose(emb.embed(texts), fp32.embed(texts), atol=2e-5)


def test_timings_split_run_from_overhead(fp32):
    fp32.reset_timings()
    fp32.embed(tiny.sentences(50, seed=11))
    t = fp32.timings
    assert t.calls == 1 and t.sentences == 50 and t.batches == 2
    assert 0 < t.run_s < t.total_s and 0 < t.tokenize_s < t.total_s
    assert 0 < t.overhead_fraction < 1


def test_empty_list_and_bad_input(fp32, tiny_bundle, tmp_path):
    assert fp32.embed([]).shape == (0, fp32.dim)
    with pytest.raises(TypeError):
        fp32.embed("a single string")
    with pytest.raises(EmboptError, match="no variant 'nope'"):
        Embedder(tiny_bundle, variant="nope")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EmboptError, match="bad.onnx: cannot load ONNX model"):
        Embedder(tiny_bundle, onnx_path=bad)
    with pytest.raises(EmboptError, match="graph_optimization 'fast'"):
        Embedder(tiny_bundle, graph_optimization="fast")


@pytest.mark.parametrize("bad,described", [
    (None, "null"), (float("nan"), "null"), (3, "int 3"), (2.5, "float 2.5"), (True, "bool True"),
    (["a", "b"], "list ['a', 'b']"), ({"text": "a"}, "dict {'text': 'a'}"), (b"a dog", "bytes b'a dog'"),
    (np.int64(7), "int64"),
])
def test_values_that_are_not_text_are_refused_by_row(fp32, bad, described):
    """Nothing is embedded as str(x): null would embed as "None", 3 as "3"."""
    with pytest.raises(EmboptError, match=r"^row 1: ") as exc:
        fp32.embed(["A dog.", bad, "A cat."])
    assert described in str(exc.value) and "not a string" in str(exc.value)


def test_lone_surrogate_is_refused_by_row(fp32):
    with pytest.raises(EmboptError, match=r"row 2: not valid Unicode"):
        fp32.embed(["A dog.", "ok", "bad \ud800 text"])


def test_check_texts_bounds_bytes_and_keeps_str_subclasses():
    from embopt.serving.runtime import check_texts

    assert check_texts(["ab", "\u00e9"], max_bytes=4) == ["ab", "\u00e9"]  # 2 + 2 UTF-8 bytes
    with pytest.raises(EmboptError, match="5 bytes of text, over the limit of 4"):
        check_texts(["abc", "\u00e9"], max_bytes=4)
    got = check_texts(list(np.array(["a", "b"])))
    assert got == ["a", "b"] and all(type(t) is str for t in got)


@pytest.mark.parametrize("entry,message", [
    ("/etc/hostname", "leaves the bundle folder"),
    ("../model.onnx", "leaves the bundle folder"),
    ("onnx/../../model.onnx", "leaves the bundle folder"),
    ("", "is not a relative path"),
])
def test_manifest_file_entries_stay_inside_the_bundle(tiny_bundle, tmp_path, entry, message):
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    shutil.copy2(tiny_bundle / "onnx" / "model.onnx", tmp_path / "model.onnx")  # a real model outside
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["variants"]["onnx_fp32"]["file"] = entry
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmboptError, match=f"manifest.json: variant 'onnx_fp32' file entry .*{message}"):
        Embedder(bundle, variant="onnx_fp32")
    Embedder(bundle, variant="onnx_int8")  # the other entries still load


MODES = [
    {"mode": "bulk", "threads": 2},  # two 1-thread sessions pulling batches in parallel
    {"mode": "bulk", "threads": 2, "tokenize_chunk": 7},  # + tokenization ahead in a thread
    {"mode": "latency", "threads": 2, "tokenize_chunk": 7},
    {"mode": "bulk", "threads": 2, "token_budget": 40},
    {"mode": "latency", "threads": 2, "token_budget": 40},
]


@pytest.mark.parametrize("kwargs", MODES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_modes_return_the_plain_vectors_in_input_order(tiny_bundle, kwargs):
    plain = Embedder(tiny_bundle, variant="onnx_fp32", threads=1, batch_size=4, mode="latency")
    emb = Embedder(tiny_bundle, variant="onnx_fp32", batch_size=4, **kwargs)
    assert len(emb.sessions) == (2 if kwargs["mode"] == "bulk" else 1)
    texts = MIXED * 3 + tiny.sentences(40, seed=12)
    ref, got = plain.embed(texts), emb.embed(texts)
    assert got.shape == ref.shape and got.dtype == np.float32
    cos = np.sum(ref * got, axis=1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.9999
    assert np.abs(got[0] - got[1]).max() > 1e-3  # rows differ: a permutation would have been caught
    assert emb.timings.batches > 2 and emb.timings.run_s > 0
    assert emb.embed([]).shape == (0, emb.dim)
    one = emb.embed([texts[1]])
    assert one.shape == (1, emb.dim) and float(one[0] @ ref[1]) >= 0.9999


@pytest.mark.parametrize("kwargs", MODES[1:3], ids=["bulk", "latency"])
def test_modes_name_a_bad_row_raised_in_the_tokenizing_thread(tiny_bundle, kwargs):
    emb = Embedder(tiny_bundle, variant="onnx_fp32", batch_size=4, **kwargs)
    texts = tiny.sentences(30, seed=13)
    texts[20] = "bad \ud800 text"  # a lone surrogate: the tokenizer refuses it
    with pytest.raises(EmboptError, match="row 20: not valid Unicode"):
        emb.embed(texts)
    assert emb.embed(texts[:3]).shape == (3, emb.dim)  # still serves after the failure


def test_token_budget_batches(tiny_bundle):
    emb = Embedder(tiny_bundle, variant="onnx_fp32", threads=1, token_budget=40)
    lens = np.array([3, 30, 12, 12, 5, 50, 7, 12, 12, 12, 4])
    order = np.argsort(lens, kind="stable")
    groups = emb._groups(order, lens)
    assert np.array_equal(np.concatenate(groups), order)
    for g in groups:  # within the budget, or a single row longer than it
        assert len(g) * lens[g].max() <= 40 or len(g) == 1
    assert [len(g) for g in groups] == [4, 3, 2, 1, 1]  # 3,4,5,7 | 12x3 | 12x2 | 30 | 50
    with pytest.raises(EmboptError, match="mode 'fast'"):
        Embedder(tiny_bundle, mode="fast")
