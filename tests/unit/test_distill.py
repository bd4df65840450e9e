"""The distillation loop on tiny models: learning, resume, early stopping, loss options,
the distill stage's one-line errors, and (slow) the teacher_embed cache under DVC."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch

from embopt.training.distill import (
    CKPT_FILE,
    LOSSES,
    TrainConfig,
    distill_loss,
    epoch_batches,
    fingerprint,
    layer_modules,
    masked_hidden_mse,
    token_lengths,
    train_student,
)
from embopt.training.student import make_student, uniform_layer_map

REPO = Path(__file__).resolve().parents[2]


class Interrupted(Exception):
    """Stands for the process being killed mid-epoch."""


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return tiny.sentences(96, seed=11)  # 6 batches of 16 per epoch


@pytest.fixture(scope="module")
def targets(tiny_model, corpus) -> np.ndarray:
    return tiny_model.encode(corpus, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def cfg_for(**overrides) -> TrainConfig:
    base = dict(epochs=3.0, batch_size=16, lr=1e-3, warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0,
                max_seq_length=32, loss="mse", eval_every=4, checkpoint_every=5, early_stopping_patience=0,
                seed=3, log_every=1)
    base.update(overrides)
    return TrainConfig(**base)


def scrambled_student(teacher, keep: list[int], seed: int = 0):
    """A student cut from ``teacher`` whose block weights are then randomised.

    The tiny teacher has random weights (std 0.02), so its blocks barely change the residual stream and a
    copied student already matches it almost exactly; scrambling leaves something to learn.
    """
    student = make_student(teacher, keep)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in layer_modules(student):
            for p in block.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return student


def corpus_loss(student, corpus, targets, kind: str = "mse") -> float:
    emb = torch.from_numpy(student.encode(corpus, convert_to_numpy=True, show_progress_bar=False))
    return float(distill_loss(emb, torch.from_numpy(targets), kind))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-5), k


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("loss", ["mse", "cosine", "sim", "mse+sim", "kl", "mse+kl"])
def test_loss_decreases(tiny_model, corpus, targets, dev_pairs, loss):
    student = scrambled_student(tiny_model, [0, 3])
    before = corpus_loss(student, corpus, targets, loss)
    seen: list[float] = []
    # eval only at the end, so the kept "best" weights are the final ones
    cfg = cfg_for(epochs=8.0, eval_every=10**6, loss=loss, lr=2e-3)
    def on_metrics(m, step):
        if "train_loss" in m:
            seen.append(m["train_loss"])

    result = train_student(student, corpus, targets, cfg, dev_pairs, device="cpu", on_metrics=on_metrics)
    after = corpus_loss(student, corpus, targets, loss)
    assert result.steps == 48 and len(seen) == 48
    assert after < 0.7 * before, (before, after)
    assert np.mean(seen[-6:]) < np.mean(seen[:6])
    assert not student.training and student.max_seq_length == tiny_model.max_seq_length


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_is_zero_when_student_equals_teacher(tiny_model, corpus, targets, loss):
    same = torch.from_numpy(targets)
    # Zero up to float rounding (cosine's 1 - <s, t> rounds to about 1e-8).
    assert abs(float(distill_loss(same, same.clone(), loss))) < 1e-6
    # A student of every teacher layer is the teacher.
    student = make_student(tiny_model, [0, 1, 2, 3])
    assert abs(corpus_loss(student, corpus, targets, loss)) < 1e-6
    other = torch.from_numpy(targets[::-1].copy())
    assert float(distill_loss(same, other, loss)) > 0.0


def test_structure_losses_ignore_a_rotation_that_mse_sees():
    # Relational losses compare how sentences relate; a rotation of the whole space keeps that intact.
    gen = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen), dim=1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
    s = t @ q
    assert float(distill_loss(s, t, "mse")) > 1e-3
    assert float(distill_loss(s, t, "sim")) < 1e-10 and float(distill_loss(s, t, "kl")) < 1e-6


def test_kl_loss_ranks_neighbours_at_the_temperature():
    t = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    swapped = torch.tensor([[0.0, 1.0], [0.8, 0.6], [1.0, 0.0]])  # nearest neighbours swapped
    sharp = float(distill_loss(swapped, t, "kl", temperature=0.05))
    soft = float(distill_loss(swapped, t, "kl", temperature=1.0))
    assert sharp > soft > 0.0


def test_unknown_loss_names_the_options():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="one of mse, cosine, mse\\+cosine, sim"):
        distill_loss(x, x, "huber")


def test_best_dev_weights_are_kept(tiny_model, corpus, targets, dev_pairs):
    student = make_student(tiny_model, [0, 3])
    scores: dict[int, float] = {}
    result = train_student(student, corpus, targets, cfg_for(eval_every=3), dev_pairs, device="cpu",
                           on_metrics=lambda m, step: scores.__setitem__(step, m["val_spearman"])
                           if "val_spearman" in m else None)
    assert sorted(scores) == [3, 6, 9, 12, 15, 18]
    best_step = max(scores, key=lambda s: scores[s])
    assert result.best_step == best_step
    assert result.best_val_spearman == pytest.approx(scores[best_step])
    from embopt.eval.sts import sts_spearman

    # The returned student carries the best weights: re-scoring it gives the best score.
    rescored = sts_spearman(lambda s: student.encode(list(s), show_progress_bar=False), dev_pairs)
    assert rescored == pytest.approx(result.best_val_spearman, abs=1e-6)


# --------------------------------------------------------------------------- resume


def _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=None, job_id="job", stop_at=None,
         steps_seen=None, teacher=None, layer_map=None, layers=(0, 3)):
    student = make_student(tiny_model, list(layers))

    def on_metrics(m, step):
        if steps_seen is not None and "train_loss" in m:
            steps_seen.append(step)
        if stop_at is not None and step == stop_at:
            raise Interrupted(f"killed at step {step}")

    result = train_student(student, corpus, targets, cfg, dev_pairs, ckpt_dir=ckpt_dir, job_id=job_id,
                           on_metrics=on_metrics, device="cpu", teacher=teacher, layer_map=layer_map)
    return student, result


@pytest.mark.parametrize(("hidden_weight", "group_by_length"), [(0.0, False), (0.05, False), (0.0, True)])
def test_resume_after_interruption_matches_uninterrupted_run(tiny_model, corpus, targets, dev_pairs, tmp_path,
                                                            hidden_weight, group_by_length):
    # 18 steps; evals 4, 8, 12, 16, 18; checkpoints 5, 10, 15
    cfg = cfg_for(hidden_weight=hidden_weight, group_by_length=group_by_length)
    extra = {"teacher": copy.deepcopy(tiny_model), "layer_map": [0, 3]} if hidden_weight else {}
    ref_student, ref = _run(tiny_model, corpus, targets, dev_pairs, cfg, **extra)
    assert ref.steps == 18 and ref.resumed_from_step == 0

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        # Killed at step 13: after the checkpoint at 10 and an evaluation at 12.
        _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=ckpt, stop_at=13, **extra)
    state = torch.load(ckpt / CKPT_FILE, weights_only=False)
    assert state["step"] == 10

    seen: list[int] = []
    student, result = _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=ckpt, steps_seen=seen,
                           **extra)
    assert result.resumed_from_step == 10
    assert seen == list(range(11, 19)), "the resumed run must continue after the checkpoint, not start over"
    assert result.steps == 18
    assert result.best_step == ref.best_step
    assert result.best_val_spearman == pytest.approx(ref.best_val_spearman, abs=1e-6)
    assert result.final_loss == pytest.approx(ref.final_loss, rel=1e-4, abs=1e-9)
    assert_same_weights(weights(student), weights(ref_student))


class _Planted:
    """A pickle that runs code when loaded with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.parametrize("content", ["planted pickle", "truncated"])
def test_unsafe_or_broken_checkpoint_is_not_loaded(tiny_model, corpus, targets, dev_pairs, tmp_path, content,
                                                   caplog):
    """weights_only=True: a planted checkpoint runs no code; it, or a truncated one, is not resumed."""
    ckpt, marker = tmp_path / "ckpt", tmp_path / "marker"
    ckpt.mkdir()
    if content == "planted pickle":
        torch.save({"job_id": "job", "payload": _Planted(marker)}, ckpt / CKPT_FILE)
    else:
        torch.save({"job_id": "job", "step": 3, "model": make_student(tiny_model, [0, 3]).state_dict()},
                   ckpt / CKPT_FILE)
        data = (ckpt / CKPT_FILE).read_bytes()
        (ckpt / CKPT_FILE).write_bytes(data[: len(data) // 2])
    cfg = cfg_for(epochs=1.0)
    with caplog.at_level("WARNING", logger="embopt.training.distill"):
        _, result = _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=ckpt)
    assert not marker.exists() and result.resumed_from_step == 0 and result.steps == 6
    assert any("is unreadable" in r.getMessage() for r in caplog.records)


def test_resume_with_best_before_the_checkpoint_keeps_that_best(tiny_model, corpus, targets, dev_pairs,
                                                              tmp_path):
    # lr so high that later evaluations are worse: the best stays early, and must survive the resume.
    cfg = cfg_for(lr=0.5, eval_every=2, checkpoint_every=7)
    ref_student, ref = _run(tiny_model, corpus, targets, dev_pairs, cfg)
    assert ref.best_step < 14, "precondition: the best is found before the last checkpoint"
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=ckpt, stop_at=16)
    student, result = _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=ckpt)
    assert result.resumed_from_step == 14
    assert result.best_step == ref.best_step
    assert result.best_val_spearman == pytest.approx(ref.best_val_spearman)
    assert_same_weights(weights(student), weights(ref_student))


def test_checkpoint_of_other_settings_is_not_resumed(tiny_model, corpus, targets, dev_pairs, tmp_path):
    cfg = cfg_for()
    other = cfg_for(lr=2e-3)
    job_a = fingerprint(cfg, len(corpus), {"layers": [0, 3]})
    job_b = fingerprint(other, len(corpus), {"layers": [0, 3]})
    assert job_a != job_b
    assert job_a != fingerprint(cfg, len(corpus), {"layers": [0, 2]})
    assert job_a == fingerprint(cfg_for(), len(corpus), {"layers": [0, 3]})

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=ckpt, job_id=job_a, stop_at=12)
    assert (ckpt / CKPT_FILE).exists()
    seen: list[int] = []
    _, result = _run(tiny_model, corpus, targets, dev_pairs, other, ckpt_dir=ckpt, job_id=job_b,
                     steps_seen=seen)
    assert result.resumed_from_step == 0
    assert seen == list(range(1, 19))


def test_early_stopping_triggers(tiny_model, corpus, targets, dev_pairs, tmp_path):
    # A learning rate this small cannot move the dev score: every evaluation after the first is stale.
    cfg = cfg_for(epochs=20.0, lr=1e-12, warmup_ratio=0.0, eval_every=1, early_stopping_patience=3)
    _, result = _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=tmp_path / "ckpt")
    assert result.stopped_early
    assert result.steps < 120
    assert result.steps - result.best_step == 3
    # Re-running the finished job does not train further.
    seen: list[int] = []
    _, again = _run(tiny_model, corpus, targets, dev_pairs, cfg, ckpt_dir=tmp_path / "ckpt", steps_seen=seen)
    assert again.stopped_early and again.steps == result.steps and seen == []
    # Without patience, the same job runs to the end.
    _, full = _run(tiny_model, corpus, targets, dev_pairs, cfg_for(epochs=2.0, lr=1e-12, eval_every=1))
    assert not full.stopped_early and full.steps == 12


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("with_lengths", [False, True])
def test_epoch_batches_cover_every_row_once_and_depend_only_on_seed_and_epoch(with_lengths):
    n, bs = 1003, 16
    lengths = np.random.default_rng(0).integers(5, 64, size=n) if with_lengths else None
    batches = epoch_batches(n, bs, seed=1, epoch=0, lengths=lengths)
    rows = torch.cat(batches).tolist()
    assert sorted(rows) == list(range(n))
    assert len(batches) == -(-n // bs) and sorted(len(b) for b in batches)[1:] == [bs] * (len(batches) - 1)
    again = epoch_batches(n, bs, seed=1, epoch=0, lengths=lengths)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = epoch_batches(n, bs, seed=1, epoch=1, lengths=lengths)
    assert torch.cat(other).tolist() != rows


def test_group_by_length_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 64, size=3200)
    grouped = epoch_batches(3200, 32, seed=0, epoch=0, lengths=lengths)
    plain = epoch_batches(3200, 32, seed=0, epoch=0)

    def padded_per_real(batches):
        return sum(lengths[b.numpy()].max() * len(b) for b in batches) / lengths.sum()

    assert padded_per_real(plain) > 1.6
    assert padded_per_real(grouped) < 1.1
    # Batch order is shuffled: lengths do not simply rise through the epoch.
    firsts = [lengths[b.numpy()].min() for b in grouped]
    assert firsts != sorted(firsts)


def test_token_lengths_follow_the_student_tokenizer(tiny_model):
    sents = ["A man is eating.", "The old man is playing a guitar . " * 10]
    lengths = token_lengths(tiny_model, sents, max_seq_length=16)
    assert lengths.tolist() == [len(tiny_model.tokenizer(sents[0])["input_ids"]), 16]


# --------------------------------------------------------------------------- loss options


def test_masked_hidden_mse_ignores_padding():
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert float(masked_hidden_mse(s, t, mask)) == pytest.approx(1.0)
    assert float(masked_hidden_mse(s, t, torch.ones(1, 3, dtype=torch.long))) > 1000


def test_hidden_state_matching_trains_toward_the_copied_layers(tiny_model, corpus, targets, dev_pairs):
    teacher = copy.deepcopy(tiny_model)
    teacher_before = weights(teacher)
    logged: list[dict] = []
    student = scrambled_student(teacher, [1, 3])
    cfg = cfg_for(epochs=6.0, hidden_weight=1.0, eval_every=10**6, lr=2e-3)
    result = train_student(student, corpus, targets, cfg, dev_pairs, device="cpu", teacher=teacher,
                           layer_map=[1, 3], on_metrics=lambda m, step: logged.append(m))
    train = [m for m in logged if "train_loss_hidden" in m]
    assert len(train) == result.steps == 36
    first, last = train[0], train[-1]
    assert last["train_loss_hidden"] < 0.7 * first["train_loss_hidden"]
    for m in train:  # the reported total is embedding + weight * hidden
        assert m["train_loss"] == pytest.approx(m["train_loss_embedding"] + m["train_loss_hidden"], rel=1e-5)
    assert result.projection is None  # same width: no projection
    # The teacher is only read: weights and mode as before, every block still has its hooks removed.
    assert_same_weights(weights(teacher), teacher_before, atol=0)
    assert teacher.training == tiny_model.training
    assert all(not b._forward_hooks for b in layer_modules(student))


def test_hidden_matching_needs_teacher_and_a_valid_layer_map(tiny_model, corpus, targets, dev_pairs):
    student = make_student(tiny_model, [0, 3])
    cfg = cfg_for(hidden_weight=0.1)
    with pytest.raises(ValueError, match="needs the teacher"):
        train_student(student, corpus, targets, cfg, dev_pairs, device="cpu")
    with pytest.raises(ValueError, match="layer_map"):
        train_student(student, corpus, targets, cfg, dev_pairs, device="cpu", teacher=tiny_model,
                      layer_map=[0])
    with pytest.raises(ValueError, match="layer_map"):
        train_student(student, corpus, targets, cfg, dev_pairs, device="cpu", teacher=tiny_model,
                      layer_map=[0, 4])


@pytest.fixture(scope="module")
def narrow_model(tmp_path_factory):
    """A 16-wide, 2-layer model with the tiny teacher's tokenizer (the teacher is 32 wide)."""
    from sentence_transformers import SentenceTransformer

    folder = tiny.build_tiny_model(tmp_path_factory.mktemp("narrow") / "model", layers=2, hidden=16, heads=2,
                                   intermediate=32)
    return SentenceTransformer(str(folder), device="cpu")


@pytest.mark.parametrize("hidden_weight", [0.0, 0.5])
def test_narrower_student_gets_a_learned_projection(narrow_model, tiny_model, corpus, targets, dev_pairs,
                                                    hidden_weight):
    student = make_student(narrow_model, [0, 1])
    assert student.encode(["A man is eating."]).shape == (1, 16)
    logged: list[dict] = []
    cfg = cfg_for(epochs=8.0, hidden_weight=hidden_weight, eval_every=10**6, lr=3e-3)
    extra = {}
    if hidden_weight:
        extra = {"teacher": copy.deepcopy(tiny_model), "layer_map": uniform_layer_map(2, 4)}
    result = train_student(student, corpus, targets, cfg, dev_pairs, device="cpu",
                           on_metrics=lambda m, step: logged.append(m), **extra)
    assert result.projection is not None and result.projection.shape == (32, 16)
    # The student keeps its own width; the projection maps it onto the teacher's space.
    emb = student.encode(corpus, convert_to_numpy=True, show_progress_bar=False)
    assert emb.shape == (96, 16)
    projected = torch.from_numpy(emb @ result.projection.T)
    proj_loss = float(distill_loss(projected, torch.from_numpy(targets), "mse"))
    losses = [m["train_loss_embedding" if hidden_weight else "train_loss"] for m in logged if "lr" in m]
    assert proj_loss < losses[0]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


def test_narrower_student_under_a_structure_loss_needs_no_projection(narrow_model, corpus, targets,
                                                                     dev_pairs):
    # sim compares in-batch cosine matrices (n x n on both sides): widths need not match.
    student = make_student(narrow_model, [0, 1])
    logged: list[dict] = []
    cfg = cfg_for(epochs=8.0, loss="sim", eval_every=10**6, lr=3e-3)
    result = train_student(student, corpus, targets, cfg, dev_pairs, device="cpu",
                           on_metrics=lambda m, step: logged.append(m))
    assert result.projection is None
    emb = torch.from_numpy(student.encode(corpus, convert_to_numpy=True, show_progress_bar=False))
    assert emb.shape == (96, 16)
    losses = [m["train_loss"] for m in logged if "lr" in m]
    assert float(distill_loss(emb, torch.from_numpy(targets), "sim")) < losses[0]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


def test_heads_do_not_touch_the_global_rng(narrow_model, corpus, targets, dev_pairs):
    # A projection head draws from its own generator, so adding one does not shift dropout masks.
    from embopt.training.distill import _build_heads

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    heads = _build_heads(narrow_model, None, 32, 16, None, False, seed=1)
    assert "sentence" in heads
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- stage errors


def _stage_env(root: Path) -> dict[str, str]:
    return {**os.environ, "EMBOPT_ROOT": str(root), "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _run_distill_stage(root: Path, teacher: Path, corpus, targets, dev_pairs, distill_yaml: str):
    """The distill stage as DVC runs it, on a project holding only its inputs."""
    from embopt.data.corpus import write_lines
    from embopt.data.sts import write_sts_tsv

    (root / "data" / "prepared").mkdir(parents=True)
    (root / "models" / "teacher_embed").mkdir(parents=True)
    (root / "metrics").mkdir()
    write_lines(root / "data" / "prepared" / "corpus.txt", corpus)
    write_sts_tsv(root / "data" / "prepared" / "sts_val.tsv", dev_pairs)  # the selection split
    np.save(root / "models" / "teacher_embed" / "embeddings.npy", targets)
    (root / "models" / "teacher_embed" / "index.json").write_text(json.dumps({"rows": len(corpus)}))
    (root / "metrics" / "teacher_embed.json").write_text(json.dumps({"teacher_val_spearman": 50.0}))
    base = f"base:\n  teacher: '{teacher}'\n  threads: 2\n"
    (root / "params.yaml").write_text(f"{base}distill:\n{distill_yaml}")
    return subprocess.run([sys.executable, "-m", "stages.distill"], cwd=REPO, env=_stage_env(root),
                          capture_output=True, text=True, timeout=300)


def test_stage_rejects_layers_the_teacher_lacks_in_one_line(tmp_path, tiny_model_dir, tiny_model, corpus,
                                                            targets, dev_pairs):
    root = tmp_path / "proj"
    proc = _run_distill_stage(root, tiny_model_dir, corpus, targets, dev_pairs, "  layers: [0, 9]\n")
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "distill: error: distill.layers: 9 is not a layer of the teacher (it has 4 layers: 0..3)"
    assert not (root / "models" / "distill").exists()


def test_stage_with_nproc_2_fails_with_the_ranks_one_line_error(tmp_path, tiny_model_dir, tiny_model, corpus,
                                                               targets, dev_pairs):
    root = tmp_path / "proj"
    proc = _run_distill_stage(root, tiny_model_dir, corpus, targets, dev_pairs,
                              "  layers: [0, 9]\n  nproc: 2\n")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "distill: error: distill.layers: 9 is not a layer of the teacher" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("distill: error: distill.nproc=2: torchrun exited with 1"), proc.stderr[-3000:]
    assert not (root / "models" / "distill").exists()


@pytest.mark.slow
def test_stage_with_nproc_2_runs_torchrun_and_writes_the_student(
        tmp_path, tiny_model_dir, tiny_model, corpus, targets, dev_pairs):
    """``distill.nproc: 2``: the stage starts torchrun; rank 0 saves, reports, clears checkpoints."""
    root = tmp_path / "proj"
    proc = _run_distill_stage(root, tiny_model_dir, corpus, targets, dev_pairs,
                              "  layers: [0, 3]\n  epochs: 1.0\n  batch_size: 16\n  eval_every: 3\n"
                              "  eval_pairs: 10\n  checkpoint_every: 2\n  nproc: 2\n  gate:\n"
                              "    min_retention: 0.0\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((root / "metrics" / "distill.json").read_text())
    assert metrics["nproc"] == 2 and metrics["steps"] == 6 and metrics["num_layers"] == 2
    assert (root / "models" / "distill" / "config.json").exists()
    assert not list((root / "models" / "distill_ckpt").iterdir())
    assert "torch.distributed.run --standalone --nproc-per-node=2 -m stages.distill" in proc.stderr
    assert "rank 0 of 2" in proc.stderr


# --------------------------------------------------------------------------- sweep script


def _sweep_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("distill_sweep", REPO / "scripts" / "distill_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_dry_run_queues_every_layer_count_then_runs_the_queue():
    cmd = [sys.executable, "scripts/distill_sweep.py", "--dry-run", "--only", "n1,n2,n3,n4,l0-2-4",
           "--set", "distill.epochs=2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    queued = [ln for ln in lines if " --queue " in ln]
    assert len(queued) == 5
    for n in (1, 2, 3, 4):
        line = next(ln for ln in queued if f"-n sweep-n{n} " in ln)
        assert f"-S ++distill.num_layers={n}" in line and "-S ++distill.layers=null" in line
        # no environment of its own: the copies run their own code and data as DVC documents it
        assert line.startswith("$ dvc exp run") and line.endswith(" evaluate")
        assert "-S ++distill.epochs=2" in line
    assert any("'++distill.layers=[0,2,4]'" in ln for ln in queued)
    run_all = [i for i, ln in enumerate(lines) if "--run-all" in ln]
    assert run_all and run_all[0] > max(lines.index(q) for q in queued)


def test_sweep_rejects_unknown_grid_names():
    proc = subprocess.run([sys.executable, "scripts/distill_sweep.py", "--dry-run", "--only", "n9"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown grid names ['n9']" in proc.stderr and "dvc" not in proc.stdout


def test_sweep_table_reads_dvc_exp_show_json():
    """The files as the stages write them: distill's validation numbers, evaluate's headline variants."""
    sweep = _sweep_module()
    variants = {
        "student_torch": {"retention": 0.99088, "val_retention": 0.97745, "speedup_vs_teacher": 2.532},
        "onnx_int8": {"retention": 0.97152, "val_retention": 0.965, "speedup_vs_teacher": 9.58},
    }
    ok = {"rev": "abc1234", "name": "sweep-n2", "error": None, "data": {
        "params": {"params.yaml": {"data": {"distill": {"layers": None, "num_layers": 2, "loss": "mse",
                                                        "hidden_weight": 0.0, "max_seq_length": 64,
                                                        "epochs": 1.0}}}},
        "metrics": {
            "metrics/distill.json": {"data": {"student_val_spearman": 79.3196, "retention": 0.97745,
                                              "steps": 1563, "best_step": 1200, "train_seconds": 806.5,
                                              "train_sentences": 100000}},
            "metrics/evaluate.json": {"data": {"variants": variants}},
        }}}
    # Run only up to distill: its evaluate.json is the one of the commit it started from (sweep-n2's here).
    inherited = {"rev": "aaa1111", "name": "sweep-n2-msekl", "error": None, "data": {
        "params": {"params.yaml": {"data": {"distill": {"layers": None, "num_layers": 2, "loss": "mse+kl",
                                                        "structure_weight": 0.5, "temperature": 0.05,
                                                        "hidden_weight": 0.0, "max_seq_length": 64,
                                                        "epochs": 1.0}}}},
        "metrics": {
            "metrics/distill.json": {"data": {"retention": 0.952, "steps": 1563, "best_step": 1563,
                                              "train_seconds": 820.0, "train_sentences": 100000}},
            "metrics/evaluate.json": ok["data"]["metrics"]["metrics/evaluate.json"],
        }}}
    failed = {"rev": "def5678", "name": "sweep-l0-5", "error": {"msg": "Experiment run failed"}, "data": {
        "params": {"params.yaml": {"data": {"distill": {"layers": [0, 5]}}}},
        "metrics": {"metrics/distill.json": {"error": {"type": "FileNotFoundError"}}}}}
    other = {"rev": "0000000", "name": "unrelated", "data": {}}
    running = {**ok, "rev": "bbb2222", "name": "sweep-n3"}  # shows the workspace's metrics while it runs
    entries = [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
               {"rev": "main", "name": "main", "data": {}, "experiments": [
                   {"revs": [ok], "executor": {"state": "success"}}, {"revs": [failed]},
                   {"revs": [inherited]}, {"revs": [other]},
                   {"revs": [running], "executor": {"state": "running"}}]}]
    rows = sweep.rows_from_exp_show(entries, {"sweep-n2", "sweep-l0-5", "sweep-n2-msekl", "sweep-n3"})
    assert rows[0] == ["sweep-n2", "2 even", "mse", "0.00", "100000", "1.00", "1563 (1200)", "97.7%",
                       "806", "99.1%", "2.53", "97.2%", "9.58"]
    assert rows[1][:2] == ["sweep-l0-5 (failed)", "0,5"] and rows[1][6:] == ["-"] * 7
    # Its own training columns, and no dev or speed borrowed from another student.
    assert rows[2] == ["sweep-n2-msekl (no evaluate)", "2 even", "mse+kl w0.5 T0.05", "0.00", "100000",
                       "1.00", "1563 (1563)", "95.2%", "820", "-", "-", "-", "-"]
    assert rows[3][0] == "sweep-n3 (running)" and rows[3][6:] == ["-"] * 7
    assert len(rows) == 4


# --------------------------------------------------------------------------- data parallel


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout_prob"):  # BERT's SDPA attention takes its dropout as a float
            m.dropout_prob = 0.0
    return model


_DDP_CHILD = """
import sys, torch
from embopt.training import ddp
from embopt.training.distill import train_student
rank, world, device = ddp.init_from_env("cpu")
torch.set_num_threads(1)
job = torch.load(sys.argv[1], weights_only=False)
logged = []
on_metrics = (lambda m, step: logged.append(step) if "train_loss" in m else None) if rank == 0 else None
result = train_student(*job["args"], on_metrics=on_metrics, device=device, **job["kwargs"])
ddp.leave_group()
if rank == 0:
    torch.save({"result": result, "student": job["args"][0], "logged": logged, "world": world}, sys.argv[2])
"""


def _data_parallel_in_subprocess(tmp_path: Path, *args, **kwargs) -> dict:
    """``train_student`` on 2 ranks that ``torchrun --standalone`` starts, with a deadline: a hang or a
    dead rank fails the test instead of leaving the other waiting in a collective."""
    import embopt

    job, out = tmp_path / "job.pt", tmp_path / "out.pt"
    torch.save({"args": args, "kwargs": kwargs}, job)
    child = tmp_path / "ddp_child.py"
    child.write_text(_DDP_CHILD)
    src = str(Path(embopt.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run([*torchrun, str(child), str(job), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_two_gloo_ranks_under_torchrun_train_like_one_on_the_same_batches(
        tiny_model, corpus, targets, dev_pairs, tmp_path):
    """2 ranks (gloo, CPU) split every batch and all-reduce the gradients: for a row-averaged loss without
    dropout that is the one-process update, so both runs end with the same weights. 96 rows in batches of
    19: shards of 10 and 9 rows (weighted by their share), and a last batch of one row that leaves rank 1
    without any. Rank 0 alone logs and checkpoints; a second call resumes from that checkpoint."""
    cfg = cfg_for(epochs=1.0, batch_size=19, eval_every=2, checkpoint_every=3)  # 6 steps
    one = _no_dropout(scrambled_student(tiny_model, [0, 3]))
    two = copy.deepcopy(one)
    start = weights(one)
    ref = train_student(one, corpus, targets, cfg, dev_pairs, device="cpu")
    done = _data_parallel_in_subprocess(tmp_path, two, corpus, targets, cfg, dev_pairs, ckpt_dir=tmp_path,
                                        job_id="ddp")
    result, two, logged = done["result"], done["student"], done["logged"]
    assert done["world"] == 2
    assert result.steps == ref.steps == 6
    assert logged == list(range(1, 7))
    assert result.final_loss == pytest.approx(ref.final_loss, rel=1e-4)
    assert result.best_step == ref.best_step
    assert result.best_val_spearman == pytest.approx(ref.best_val_spearman, abs=0.05)  # ranks of near ties
    # Adam divides each gradient by its own size, so float noise in a gradient that is ~0 (attention
    # key biases) moves that weight by up to ~lr x noise/eps: 2e-4, against lr x steps = 6e-3.
    assert_same_weights(weights(two), weights(one), atol=2e-4)
    assert not torch.allclose(weights(two)["0.model.encoder.layer.0.attention.self.query.weight"],
                              start["0.model.encoder.layer.0.attention.self.query.weight"])
    state = torch.load(tmp_path / CKPT_FILE, weights_only=True)
    assert state["step"] == 6 and len(state["rng_ranks"]) == 2

    again = _data_parallel_in_subprocess(tmp_path, two, corpus, targets, cfg, dev_pairs, ckpt_dir=tmp_path,
                                         job_id="ddp")["result"]
    assert again.resumed_from_step == 6 and again.best_step == result.best_step
