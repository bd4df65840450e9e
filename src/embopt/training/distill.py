"""Embedding distillation: train a student to reproduce the teacher's sentence embeddings.

The loop is plain PyTorch so every choice is visible: AdamW with linear warmup and decay, gradient
clipping, evaluation on the validation split every N steps keeping the best weights, optional early
stopping, and checkpoints that make an interrupted run resume where it stopped with the same result as an
uninterrupted one (the data order is a pure function of seed and epoch; RNG state is saved with the weights).

Targets are teacher embeddings computed once by the teacher_embed stage, so by default the teacher never
runs here; the losses are :data:`LOSSES` (see :func:`distill_loss`). Opt-in: intermediate hidden-state
matching (MiniLM / TinyBERT style, ``hidden_weight > 0``: the frozen teacher then runs on every batch,
roughly doubling the step cost of a 2-layer student of a 6-layer teacher), and learned linear projections
(see :func:`_build_heads`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embopt.data.sts import StsPair
from embopt.eval.sts import sts_spearman
from embopt.pipeline.files import atomic_file
from embopt.training.ddp import all_reduce_gradients, broadcast_flag, gather_rng_states, rank_world
from embopt.training.modeling import hf_model, layer_modules, pick_device

log = logging.getLogger(__name__)

CKPT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    epochs: float
    batch_size: int
    lr: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    max_seq_length: int
    loss: str
    eval_every: int
    checkpoint_every: int
    early_stopping_patience: int
    seed: int
    log_every: int = 25
    # Weight of the hidden-state loss (MiniLM/TinyBERT style); 0 (default): off, the teacher does not run.
    hidden_weight: float = 0.0
    # Batches of sentences of similar token length (see epoch_batches): far fewer padded tokens per step.
    group_by_length: bool = False
    # Softmax temperature of the ``kl`` structure loss (over in-batch cosine similarities).
    temperature: float = 0.05
    # Weight of the structure term in ``mse+sim`` / ``mse+kl``.
    structure_weight: float = 1.0


# Sentences are sorted by length within chunks of this many batches: batches stay varied in content.
BUCKET_BATCHES = 50


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_val_spearman: float
    final_loss: float
    train_seconds: float
    resumed_from_step: int
    stopped_early: bool
    # (teacher_dim, student_dim) weights of the learned projection at the best step, when the
    # student's embedding is narrower (or wider) than the teacher's; None when the widths agree.
    projection: np.ndarray | None = None


LOSSES = ("mse", "cosine", "mse+cosine", "sim", "mse+sim", "kl", "mse+kl")


def distill_loss(student_emb, target_emb, kind: str, temperature: float = 0.05,
                 structure_weight: float = 1.0):
    """Loss between the L2-normalised (batch, dim) embeddings of student and teacher, one of :data:`LOSSES`.

    ``mse``/``cosine`` compare each embedding; ``sim`` (MSE between the in-batch cosine matrices:
    relational distillation; the diagonal is 1 on both sides, so only how sentences relate counts)
    and ``kl`` (mean KL(teacher || student) between softmaxes of each sentence's cosine to the other
    sentences of the batch at ``temperature``: contrastive distillation) train what STS Spearman
    measures, which neighbours rank closest. ``a+b`` adds the second term, weighted by
    ``structure_weight`` when it is ``sim`` or ``kl``. Returns a scalar tensor; 0 when the student's
    embeddings equal the teacher's.
    """
    import torch
    import torch.nn.functional as F

    if kind not in LOSSES:
        raise ValueError(f"unknown distill loss: {kind} (one of {', '.join(LOSSES)})")
    s = F.normalize(student_emb, p=2, dim=1)
    t = F.normalize(target_emb, p=2, dim=1)

    def neighbours(x):  # log-softmax over in-batch neighbours, the sentence itself left out
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        return F.log_softmax((x @ x.T / temperature).masked_fill(eye, -1e4), dim=1)

    def kl():
        log_ps, log_pt = neighbours(s), neighbours(t)
        return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()

    terms = {"mse": lambda: F.mse_loss(s, t), "cosine": lambda: (1.0 - (s * t).sum(dim=1)).mean(),
             "sim": lambda: ((s @ s.T - t @ t.T) ** 2).mean(), "kl": kl}
    first, _, second = kind.partition("+")
    if not second:
        return terms[first]()
    return terms[first]() + (terms[second]() if second == "cosine" else structure_weight * terms[second]())


def masked_hidden_mse(student_hidden, teacher_hidden, attention_mask):
    """MSE between hidden states over real tokens only (padding is ignored), averaged per element."""
    mask = attention_mask.unsqueeze(-1).to(student_hidden.dtype)
    sq = (student_hidden - teacher_hidden).pow(2) * mask
    return sq.sum() / (mask.sum() * student_hidden.shape[-1]).clamp(min=1.0)


def fingerprint(cfg: TrainConfig, n_sentences: int, extra: dict) -> str:
    """Identify a training job, so a checkpoint from other settings is never resumed."""
    blob = json.dumps({"cfg": asdict(cfg), "n": n_sentences, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: np.ndarray | None = None) -> list:
    """Row indices of every batch of one epoch, a pure function of (seed, epoch): a resumed run sees the same.

    Without ``lengths``: a random permutation cut into batches. With token ``lengths``: the
    permutation is cut into chunks of :data:`BUCKET_BATCHES` batches, each chunk is sorted by
    length and cut into batches, and the batch order is shuffled.
    """
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    if lengths is None:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    batches = []
    chunk = batch_size * BUCKET_BATCHES
    for start in range(0, n, chunk):
        idx = perm[start:start + chunk]
        idx = idx[torch.from_numpy(np.argsort(lengths[idx.numpy()], kind="stable"))]
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed + epoch + 1_000_003))
    return [batches[k] for k in order.tolist()]


def token_lengths(student, sentences: Sequence[str], max_seq_length: int) -> np.ndarray:
    """Token count of each sentence after truncation, with the student's own tokenizer."""
    enc = student.tokenizer(list(sentences), add_special_tokens=True, truncation=True,
                            max_length=max_seq_length)
    return np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(sentences))


def _build_heads(student, teacher, target_dim: int, student_dim: int, layer_map: Sequence[int] | None,
                 hidden_on: bool, seed: int, loss: str = "mse"):
    """Learned linear projections, created only where the student's width differs from the teacher's.

    ``sentence``: student embedding -> teacher embedding space (for the embedding loss); none for
    ``sim``/``kl`` alone, which compare in-batch similarity matrices and so need no common width
    (a fresh projection there only adds what the student must fight: measured in the README).
    ``hidden_i``: student hidden state of block i -> teacher hidden state (TinyBERT's W_h).
    They are training heads: the saved student keeps its own width.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 7919)  # private RNG: the dropout stream stays untouched

    def linear(d_in: int, d_out: int):
        layer = torch.nn.utils.skip_init(torch.nn.Linear, d_in, d_out, bias=False)  # no global RNG draw
        with torch.no_grad():
            # Semi-orthogonal start: a narrower student's space is embedded isometrically at step 0.
            q, _ = torch.linalg.qr(torch.randn(max(d_in, d_out), min(d_in, d_out), generator=gen))
            layer.weight.copy_(q if d_out >= d_in else q.T)
        return layer

    heads = torch.nn.ModuleDict()
    if student_dim != target_dim and loss not in ("sim", "kl"):
        heads["sentence"] = linear(student_dim, target_dim)
    if hidden_on:  # hidden_size: DistilBERT's config maps it to its ``dim``
        d_student, d_teacher = (hf_model(m).config.hidden_size for m in (student, teacher))
        if d_student != d_teacher:
            for i in range(len(layer_map)):
                heads[f"hidden_{i}"] = linear(d_student, d_teacher)
    return heads


@dataclass
class _Progress:
    """The loop's counters, saved in every checkpoint under these names."""

    step: int = 0
    best_score: float = -math.inf
    best_step: int = 0
    stale: int = 0
    stopped_early: bool = False
    # The best weights so far travel with the checkpoint: a separate file could be newer than
    # the checkpoint (an improvement after it), and the resumed run would keep the wrong best.
    best: dict | None = None


def _check_inputs(student, sentences: Sequence[str], targets: np.ndarray, cfg: TrainConfig, teacher,
                  layer_map: Sequence[int] | None) -> None:
    if len(sentences) != len(targets):
        raise ValueError(f"{len(sentences)} sentences but {len(targets)} target embeddings")
    if len(sentences) == 0:
        raise ValueError("no training sentences")
    if cfg.hidden_weight > 0:
        if teacher is None or layer_map is None:
            raise ValueError("hidden-state matching (hidden_weight > 0) needs the teacher and a layer_map")
        n_student, n_teacher = len(layer_modules(student)), len(layer_modules(teacher))
        if len(layer_map) != n_student or not all(0 <= t < n_teacher for t in layer_map):
            raise ValueError(f"layer_map {list(layer_map)} must give one teacher layer (0..{n_teacher - 1}) "
                             f"for each of the {n_student} student layers")


def _optimizer(student, heads, cfg: TrainConfig, total: int) -> tuple:
    """AdamW (no weight decay on biases and LayerNorm weights) with linear warmup and decay;
    returns (optimizer, scheduler, every trained parameter)."""
    import torch

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    named = list(student.named_parameters()) + [(f"heads.{k}", v) for k, v in heads.named_parameters()]
    decayed = [p for name, p in named if not any(k in name for k in no_decay)]
    others = [p for name, p in named if any(k in name for k in no_decay)]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": cfg.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        (step + 1) / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))))
    return optimizer, scheduler, [p for _, p in named]


def _resume(ckpt_path: Path | None, job_id: str, device: str, parts: dict, rank: int, world: int,
            total: int) -> _Progress:
    """The progress of this job's checkpoint, with its weights, optimizer and RNG state loaded into
    ``parts`` (named as in the checkpoint); a fresh start without one, or from other settings."""
    import torch

    if ckpt_path is None or not ckpt_path.exists():
        return _Progress()
    # weights_only: the checkpoint holds tensors and plain values only, so unpickling can
    # never run code from a planted or tampered file. An unreadable one is not resumed.
    try:
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle: start over, as for other settings
        log.warning("checkpoint %s is unreadable (%s); starting over", ckpt_path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return _Progress()
    if not isinstance(state, dict) or state.get("job_id") != job_id:
        if state is not None:
            log.info("checkpoint %s is from other settings; starting over", ckpt_path)
        return _Progress()
    for key, part in parts.items():
        part.load_state_dict(state.get(key, {}) if key == "heads" else state[key])
    ranks_rng = state.get("rng_ranks")
    torch.set_rng_state(ranks_rng[rank] if world > 1 and ranks_rng and len(ranks_rng) == world
                        else state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    progress = _Progress(*(state[k] for k in ("step", "best_score", "best_step", "stale")),
                         stopped_early=bool(state.get("stopped_early", False)), best=state.get("best"))
    log.info("resuming from checkpoint %s at step %d/%d", ckpt_path, progress.step, total)
    return progress


def _save_checkpoint(path: Path, job_id: str, parts: dict, progress: _Progress, world: int) -> None:
    """Rank 0 saves; every rank must call this (the RNG states of all ranks are gathered)."""
    import torch

    rng_ranks = gather_rng_states() if world > 1 else None  # a collective: every rank calls it
    if rank_world()[0] != 0:
        return
    state = {"job_id": job_id, **{key: part.state_dict() for key, part in parts.items()},
             "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             **vars(progress), **({"rng_ranks": rng_ranks} if rng_ranks is not None else {})}
    with atomic_file(path, "wb") as fh:  # removed on SIGTERM; a SIGKILL's is removed by the next save
        torch.save(state, fh)


@contextlib.contextmanager
def _hidden_matching(student, teacher, cfg: TrainConfig, layer_map: Sequence[int] | None, device: str):
    """Yields the frozen teacher transformer, the student's forward then returning every block's output
    (``all_layer_embeddings``); None when hidden-state matching is off. Both models' settings are restored."""
    if cfg.hidden_weight <= 0:
        yield None
        return
    teacher_hf, student_config = hf_model(teacher).to(device), hf_model(student).config
    was_training, had_hidden = teacher_hf.training, student_config.output_hidden_states
    teacher_hf.eval()
    student_config.output_hidden_states = True
    log.info("hidden-state matching (weight %g): student layers -> teacher layers %s; the teacher runs "
             "on every batch", cfg.hidden_weight, list(layer_map))
    try:
        yield teacher_hf
    finally:
        student_config.output_hidden_states = had_hidden
        teacher_hf.train(was_training)


def _batch_loss(student, heads, sentences: Sequence[str], target, cfg: TrainConfig, device: str,
                teacher_hf, layer_map) -> tuple[float, dict]:
    """Forward and backward on ``sentences``.

    Returns (loss, its embedding and hidden terms when hidden-state matching is on, else {}).
    """
    import torch

    # sentence-transformers 5.x renamed tokenize() to preprocess(); keep both working.
    tokenize = student.preprocess if hasattr(student, "preprocess") else student.tokenize
    features = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in tokenize(list(sentences)).items()}
    features = student(features)
    out = features["sentence_embedding"]
    if "sentence" in heads:
        out = heads["sentence"](out)
    loss = emb_loss = distill_loss(out, target.to(device), cfg.loss, cfg.temperature, cfg.structure_weight)
    terms = {}
    if teacher_hf is not None:  # mean masked MSE of each student block (through its head) to its teacher's
        keys = ("input_ids", "attention_mask", "token_type_ids")
        model_inputs = {k: features[k] for k in keys if k in features}
        with torch.no_grad():  # the teacher runs frozen
            t_hidden = teacher_hf(**model_inputs, output_hidden_states=True).hidden_states
        hidden = []
        # all_layer_embeddings[0] is the embedding output, as is the teacher's hidden_states[0].
        s_hidden = features["all_layer_embeddings"][1:]
        for li, (s_h, t_layer) in enumerate(zip(s_hidden, layer_map, strict=True)):
            if f"hidden_{li}" in heads:
                s_h = heads[f"hidden_{li}"](s_h)
            hidden.append(masked_hidden_mse(s_h, t_hidden[t_layer + 1], model_inputs["attention_mask"]))
        hid = torch.stack(hidden).mean()
        loss = emb_loss + cfg.hidden_weight * hid
        terms = {"train_loss_embedding": float(emb_loss.detach()), "train_loss_hidden": float(hid.detach())}
    loss.backward()
    return float(loss.detach()), terms


def _evaluate(p: _Progress, student, heads, dev_pairs: Sequence[StsPair], total: int, patience: int,
              emit: Callable[[dict, int], None]) -> None:
    """Validation Spearman at ``p.step``: reported, best weights kept (a CPU copy), early stopping decided."""
    score = sts_spearman(lambda s: student.encode(list(s), batch_size=128, show_progress_bar=False),
                         dev_pairs)
    student.train()  # encode() left it in eval mode
    emit({"val_spearman": score}, p.step)
    if score > p.best_score:
        p.best_score, p.best_step, p.stale = score, p.step, 0
        p.best = {name: {k: v.detach().to("cpu").clone() for k, v in part.state_dict().items()}
                  for name, part in (("student", student), ("heads", heads))}
    else:
        p.stale += 1
    log.info("step %d/%d: val Spearman %.2f (best %.2f at %d)", p.step, total, score, p.best_score,
             p.best_step)
    if patience and p.stale >= patience:
        log.info("early stopping: no improvement in %d evaluations", p.stale)
        p.stopped_early = True


def train_student(student, sentences: Sequence[str], targets: np.ndarray, cfg: TrainConfig,
                  dev_pairs: Sequence[StsPair], ckpt_dir: Path | None = None, job_id: str = "",
                  on_metrics: Callable[[dict, int], None] | None = None, device: str | None = None,
                  teacher=None, layer_map: Sequence[int] | None = None) -> TrainResult:
    """Train ``student`` (a SentenceTransformer) in place so that its embeddings match ``targets``.

    ``targets`` rows are the teacher embeddings of ``sentences``, float32 (N, dim); a student of another width
    gets a learned projection to ``dim`` for the loss (see :class:`TrainResult`). Its best weights by Spearman
    on ``dev_pairs`` are loaded at the end.

    Args:
        ckpt_dir: where checkpoints go; a checkpoint there of the same ``job_id`` (:func:`fingerprint`)
            is resumed.
        on_metrics: callback(metrics, step) for MLflow logging.
        device: torch device; default CUDA if available.
        teacher: the teacher SentenceTransformer; needed only when ``cfg.hidden_weight > 0``
            (it then runs on every batch, frozen, to give the hidden states to match).
        layer_map: for hidden-state matching, the teacher layer matched to each student layer
            (the layer it was copied from; :func:`embopt.training.student.uniform_layer_map` otherwise).

    Under an initialised ``torch.distributed`` process group (see :mod:`embopt.training.ddp`) each rank trains
    on its share of every batch with gradients all-reduced; rank 0 alone evaluates, checkpoints and calls
    ``on_metrics``, and only its returned student holds the best weights.
    """
    import torch
    from tqdm.auto import tqdm

    _check_inputs(student, sentences, targets, cfg, teacher, layer_map)
    device = device or pick_device()
    rank, world = rank_world()
    emit = on_metrics if rank == 0 and on_metrics is not None else lambda metrics, step: None
    torch.manual_seed(cfg.seed + rank)  # rank 0 draws as one process does; other ranks their own dropout
    student.to(device)
    original_max_len, student.max_seq_length = student.max_seq_length, cfg.max_seq_length
    student_dim = int(student.encode([sentences[0]], show_progress_bar=False).shape[1])  # eval mode, no grad
    target_dim = int(targets.shape[1])
    heads = _build_heads(student, teacher, target_dim, student_dim, layer_map, cfg.hidden_weight > 0,
                         cfg.seed, cfg.loss).to(device)
    if "sentence" in heads:
        log.info("student embeddings are %d wide, the teacher's %d: training a projection for the loss",
                 student_dim, target_dim)
    n = len(sentences)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer, scheduler, trainable = _optimizer(student, heads, cfg, total)
    parts = {"model": student, "heads": heads, "optimizer": optimizer, "scheduler": scheduler}
    ckpt_path = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = ckpt_dir / CKPT_FILE
    p = _resume(ckpt_path, job_id, device, parts, rank, world, total)
    resumed_from = p.step
    target_t = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    student.train()
    t0 = time.perf_counter()
    loss_val = float("nan")
    lengths = token_lengths(student, sentences, cfg.max_seq_length) if cfg.group_by_length else None
    # One epoch's batches at a time; the order depends only on (seed, epoch): a resumed run sees the same.
    batches_of = functools.lru_cache(maxsize=1)(
        lambda epoch: epoch_batches(n, cfg.batch_size, cfg.seed, epoch, lengths))
    with _hidden_matching(student, teacher, cfg, layer_map, device) as teacher_hf, \
            tqdm(total=total, initial=p.step, desc="distill", unit="step", dynamic_ncols=True,
                 disable=rank != 0) as bar:
        while p.step < total and not p.stopped_early:
            idx = batches_of(p.step // steps_per_epoch)[p.step % steps_per_epoch]
            # This rank's rows of the step's batch, and their share of it (all of it in one process).
            share, idx = len(idx[rank::world]) / len(idx), idx[rank::world]
            loss_val, terms = 0.0, {}
            if len(idx):  # a last batch smaller than the world leaves some ranks without rows
                loss_val, terms = _batch_loss(student, heads, [sentences[j] for j in idx.tolist()],
                                              target_t[idx], cfg, device, teacher_hf, layer_map)
            if world > 1:  # every rank now holds the whole batch's gradient and loss
                loss_val = all_reduce_gradients(trainable, share, loss_val)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            p.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.2e}", best=f"{p.best_score:.2f}")
            if p.step % cfg.log_every == 0 or p.step == total:
                emit({"train_loss": loss_val, "lr": scheduler.get_last_lr()[0], **terms}, p.step)
            eval_step = p.step % cfg.eval_every == 0 or p.step == total
            if eval_step and rank == 0:
                _evaluate(p, student, heads, dev_pairs, total, cfg.early_stopping_patience, emit)
            if world > 1 and eval_step:
                p.stopped_early = broadcast_flag(p.stopped_early)  # rank 0 decided; every rank stops together
            if ckpt_path is not None and (p.stopped_early or p.step % cfg.checkpoint_every == 0):
                _save_checkpoint(ckpt_path, job_id, parts, p, world)
    if p.best is not None:
        student.load_state_dict(p.best["student"])
        heads.load_state_dict(p.best["heads"])
    student.eval()
    student.max_seq_length = original_max_len
    projection = heads["sentence"].weight.detach().cpu().numpy().copy() if "sentence" in heads else None
    return TrainResult(steps=p.step, best_step=p.best_step, best_val_spearman=float(p.best_score),
                       final_loss=loss_val, train_seconds=time.perf_counter() - t0,
                       resumed_from_step=resumed_from, stopped_early=p.stopped_early, projection=projection)


def clear_checkpoints(ckpt_dir: Path) -> None:
    """Drop checkpoints once a job finished: the stage's output is the result."""
    (ckpt_dir / CKPT_FILE).unlink(missing_ok=True)
