"""MPNet as a teacher (all-mpnet-base-v2's architecture at toy size): distill -> prune -> ONNX export
with pooling -> int8 -> PCA, the ONNX teacher backend, and one-line errors where prune cannot follow."""

from __future__ import annotations

import numpy as np
import pytest
import tiny
import torch

from embopt.errors import EmboptError
from embopt.training.distill import TrainConfig, layer_modules, train_student
from embopt.training.prune import prune_model
from embopt.training.student import choose_layers, make_student
from embopt.training.teacher_encode import teacher_encoder


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    folder = tiny.build_tiny_mpnet(tmp_path_factory.mktemp("mpnet") / "model")
    return SentenceTransformer(str(folder), device="cpu")


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return tiny.sentences(64, seed=21)


def test_mpnet_teacher_onnx_backend_equals_torch(mpnet, corpus):
    sentences = corpus[:40] + [" ".join(corpus[40:50])]  # one sentence truncated at 32 tokens
    t = teacher_encoder(mpnet, "torch", batch_size=16, max_seq_length=32)(sentences)
    o = teacher_encoder(mpnet, "onnx", batch_size=16, max_seq_length=32, threads=1)(sentences)
    assert (o * t).sum(axis=1).min() >= 0.9999


def test_mpnet_distill_prune_export_int8_pca(mpnet, corpus, dev_pairs, tmp_path):
    from sentence_transformers import SentenceTransformer

    from embopt.bench.simple_bundle import build_simple_bundle
    from embopt.export.pca import fit_pca, fold_into_onnx
    from embopt.serving.runtime import Embedder

    targets = teacher_encoder(mpnet, "torch", batch_size=32, max_seq_length=32)(corpus)
    keep = choose_layers(len(layer_modules(mpnet)), None, 2)
    assert keep == [0, 3]
    student = make_student(mpnet, keep)
    cfg = TrainConfig(epochs=2.0, batch_size=16, lr=1e-3, warmup_ratio=0.1, weight_decay=0.01,
                      max_grad_norm=1.0, max_seq_length=32, loss="mse+sim", eval_every=4,
                      checkpoint_every=10**6, early_stopping_patience=0, seed=1)
    result = train_student(student, corpus, targets, cfg, dev_pairs, device="cpu")
    assert result.steps == 8 and np.isfinite(result.final_loss)

    rep = prune_model(student, corpus[:32], ffn_keep_ratio=0.5, heads_to_prune=0)
    assert (rep.ffn_before, rep.ffn_after) == (64, 32)
    assert (rep.heads_before, rep.heads_after) == (8, 8)
    assert rep.params_after < rep.params_before
    st_dir = tmp_path / "pruned"
    student.save(str(st_dir))
    reloaded = SentenceTransformer(str(st_dir), device="cpu")  # config.pruned_heads rebuilds the shapes
    sents = tiny.sentences(30, seed=22)
    ref = reloaded.encode(sents, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(student.encode(sents, convert_to_numpy=True), ref, atol=1e-5)

    bundle = build_simple_bundle(reloaded, st_dir, tmp_path / "bundle", max_seq_length=32)
    fp32 = Embedder(bundle, variant="onnx_fp32", threads=1).embed(sents)
    assert (fp32 * ref).sum(axis=1).min() >= 0.9999
    int8 = Embedder(bundle, variant="onnx_int8", threads=1).embed(sents)
    assert (int8 * ref).sum(axis=1).min() >= 0.95

    pca = fit_pca(fp32, k=8, seed=0)
    folded = fold_into_onnx(bundle / "onnx" / "model_qint8.onnx", tmp_path / "pca.onnx", pca)
    out = Embedder(bundle, onnx_path=folded, threads=1).embed(sents)
    assert out.shape == (30, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_mpnet_head_pruning_is_refused_in_one_line(mpnet):
    import copy

    with pytest.raises(EmboptError, match=r"^prune.heads_to_prune: MPNetModel adds one relative position bias"
                                          r".*set prune.heads_to_prune: 0 \(FFN pruning works\)$"):
        prune_model(copy.deepcopy(mpnet), ["A man is eating."], 0.5, 1)


def test_unknown_attention_names_prune_enabled_false(mpnet):
    import copy

    model = copy.deepcopy(mpnet)
    block = layer_modules(model)[0]
    block.attention = torch.nn.Identity()
    with pytest.raises(EmboptError, match=r"prune: attention type Identity is not supported .*"
                                          r"set prune.enabled: false to skip pruning"):
        prune_model(model, ["A man is eating."], 0.5, 0)


@pytest.mark.slow
def test_mpnet_teacher_through_the_stages(mpnet, corpus, dev_pairs, tmp_path):
    """teacher_embed (ONNX backend) -> distill -> prune as stage processes with base.teacher = a tiny MPNet:
    head pruning fails in one line, FFN pruning runs, prune.enabled: false passes the student through."""
    import json
    import os
    import subprocess
    import sys

    from embopt.data.corpus import write_lines
    from embopt.data.sts import write_sts_tsv

    repo = tiny.REPO
    root = tmp_path / "proj"
    (root / "data" / "prepared").mkdir(parents=True)
    write_lines(root / "data" / "prepared" / "corpus.txt", corpus)
    write_sts_tsv(root / "data" / "prepared" / "sts_val.tsv", dev_pairs)  # the selection split
    teacher = tmp_path / "mpnet"
    mpnet.save(str(teacher))
    env = {**os.environ, "EMBOPT_ROOT": str(root),
           "PYTHONPATH": f"{repo / 'src'}:{repo}", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def stage(name: str, prune: str) -> subprocess.CompletedProcess:
        (root / "params.yaml").write_text(
            f"base:\n  teacher: '{teacher}'\n  threads: 1\n  max_seq_length: 32\n"
            "teacher_embed:\n  backend: onnx\n  batch_size: 16\n  max_seq_length: 32\n"
            "distill:\n  num_layers: 2\n  epochs: 1.0\n  batch_size: 16\n  lr: 0.001\n  max_seq_length: 32\n"
            "  eval_pairs: 40\n  loss: mse+kl\n  gate:\n    min_retention: null\n"
            f"prune:\n  importance_sentences: 32\n  recovery_max_sentences: 32\n  batch_size: 16\n"
            f"  max_seq_length: 32\n  gate:\n    min_retention: null\n{prune}")
        return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=600)

    for name in ("teacher_embed", "distill"):
        proc = stage(name, "")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((root / "metrics" / "teacher_embed.json").read_text())["backend"] == "onnx"
    assert not list((root / "models" / "teacher_embed_ckpt").glob("chunk_*"))  # cleared once written
    assert json.loads((root / "metrics" / "distill.json").read_text())["layers"] == [0, 3]

    proc = stage("prune", "  heads_to_prune: 1\n")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "prune: error: prune.heads_to_prune: MPNetModel adds one relative position bias")

    proc = stage("prune", "  heads_to_prune: 0\n  ffn_keep_ratio: 0.5\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((root / "metrics" / "prune.json").read_text())
    assert (m["ffn_before"], m["ffn_after"], m["enabled"]) == (64, 32, True)

    proc = stage("prune", "  enabled: false\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((root / "metrics" / "prune.json").read_text())
    assert m["enabled"] is False and m["params_after"] == m["params_before"] and m["ffn_after"] == 64
    assert m["val_spearman"] == m["val_spearman_before"]
