"""Embedding distillation: train a student to reproduce the teacher's sentence embeddings.

The loop is plain PyTorch so every choice is visible: AdamW with linear warmup and
decay, gradient clipping, evaluation on STSb dev every N steps keeping the best
weights, optional early stopping, and checkpoints that make an interrupted run
resume where it stopped with the same result as an uninterrupted one (the data
order is a pure function of seed and epoch; RNG state is saved with the weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embopt.data import StsPair
from embopt.sts import sts_spearman

log = logging.getLogger(__name__)

CKPT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"


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


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_dev_spearman: float
    final_loss: float
    train_seconds: float
    resumed_from_step: int
    stopped_early: bool


def pick_device() -> str:
    """CUDA when present (the large profile on a GPU), else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def distill_loss(student_emb, target_emb, kind: str):
    """Loss between L2-normalised embeddings: ``mse``, ``cosine`` or their sum."""
    import torch.nn.functional as F

    s = F.normalize(student_emb, p=2, dim=1)
    t = F.normalize(target_emb, p=2, dim=1)
    mse = F.mse_loss(s, t)
    cos = (1.0 - (s * t).sum(dim=1)).mean()
    if kind == "mse":
        return mse
    if kind == "cosine":
        return cos
    if kind == "mse+cosine":
        return mse + cos
    raise ValueError(f"unknown distill loss: {kind}")


def fingerprint(cfg: TrainConfig, n_sentences: int, extra: dict) -> str:
    """Identify a training job, so a checkpoint from other settings is never resumed."""
    blob = json.dumps({"cfg": asdict(cfg), "n": n_sentences, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_atomic(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return fn


def train_student(
    student,
    sentences: Sequence[str],
    targets: np.ndarray,
    cfg: TrainConfig,
    dev_pairs: Sequence[StsPair],
    ckpt_dir: Path | None = None,
    job_id: str = "",
    on_metrics: Callable[[dict, int], None] | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train ``student`` in place so that its embeddings match ``targets``.

    Args:
        student: a SentenceTransformer; its best weights (by dev Spearman) are loaded at the end.
        sentences: training sentences, aligned with ``targets`` rows.
        targets: teacher embeddings, float32 (N, dim).
        cfg: hyperparameters.
        dev_pairs: STS pairs for periodic evaluation.
        ckpt_dir: where checkpoints go; a matching checkpoint there is resumed.
        job_id: fingerprint of the job (see :func:`fingerprint`).
        on_metrics: callback(metrics, step) for MLflow logging.
        device: torch device; default CUDA if available.
    """
    import torch
    from tqdm.auto import tqdm

    if len(sentences) != len(targets):
        raise ValueError(f"{len(sentences)} sentences but {len(targets)} target embeddings")
    device = device or pick_device()
    torch.manual_seed(cfg.seed)
    student.to(device)
    original_max_len = student.max_seq_length
    student.max_seq_length = cfg.max_seq_length

    n = len(sentences)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = int(cfg.warmup_ratio * total)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for name, p in student.named_parameters() if not any(k in name for k in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for name, p in student.named_parameters() if any(k in name for k in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total))

    step, best_score, best_step, stale, resumed_from = 0, -math.inf, 0, 0, 0
    best_state = None
    ckpt_path = best_path = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path, best_path = ckpt_dir / CKPT_FILE, ckpt_dir / BEST_FILE
        if ckpt_path.exists():
            state = torch.load(ckpt_path, map_location=device, weights_only=False)
            if state.get("job_id") == job_id:
                student.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                torch.set_rng_state(state["rng"])
                step, best_score, best_step, stale = state["step"], state["best_score"], state["best_step"], state["stale"]
                if best_path.exists():
                    best_state = torch.load(best_path, map_location="cpu", weights_only=False)
                resumed_from = step
                log.info("resuming from checkpoint %s at step %d/%d", ckpt_path, step, total)
            else:
                log.info("checkpoint %s is from other settings; starting over", ckpt_path)

    def evaluate() -> float:
        student.eval()
        with torch.inference_mode():
            score = sts_spearman(
                lambda s: student.encode(list(s), batch_size=128, convert_to_numpy=True, show_progress_bar=False),
                dev_pairs,
            )
        student.train()
        return score

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        _save_atomic({
            "job_id": job_id, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "step": step,
            "best_score": best_score, "best_step": best_step, "stale": stale,
        }, ckpt_path)

    target_t = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    student.train()
    t0 = time.perf_counter()
    loss_val, stopped_early = float("nan"), False
    bar = tqdm(total=total, initial=step, desc="distill", unit="step", dynamic_ncols=True)
    perm, perm_epoch = None, -1
    while step < total:
        epoch = step // steps_per_epoch
        if epoch != perm_epoch:
            # The order depends only on (seed, epoch): a resumed run sees the same batches.
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
            perm_epoch = epoch
        i = step % steps_per_epoch
        idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        batch_texts = [sentences[j] for j in idx.tolist()]
        # sentence-transformers 5.x renamed tokenize() to preprocess(); keep both working.
        features = (student.preprocess if hasattr(student, "preprocess") else student.tokenize)(batch_texts)
        features = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in features.items()}
        out = student(features)["sentence_embedding"]
        loss = distill_loss(out, target_t[idx].to(device), cfg.loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_val = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.2e}", best=f"{best_score:.2f}")
        if on_metrics is not None and (step % cfg.log_every == 0 or step == total):
            on_metrics({"train_loss": loss_val, "lr": scheduler.get_last_lr()[0]}, step)
        if step % cfg.eval_every == 0 or step == total:
            score = evaluate()
            if on_metrics is not None:
                on_metrics({"dev_spearman": score}, step)
            if score > best_score:
                best_score, best_step, stale = score, step, 0
                best_state = {k: v.detach().to("cpu").clone() for k, v in student.state_dict().items()}
                if best_path is not None:
                    _save_atomic(best_state, best_path)
            else:
                stale += 1
            log.info("step %d/%d: dev Spearman %.2f (best %.2f at %d)", step, total, score, best_score, best_step)
            if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
                log.info("early stopping: no improvement in %d evaluations", stale)
                stopped_early = True
                checkpoint()
                break
        if step % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    student.max_seq_length = original_max_len
    return TrainResult(
        steps=step, best_step=best_step, best_dev_spearman=float(best_score), final_loss=loss_val,
        train_seconds=time.perf_counter() - t0, resumed_from_step=resumed_from, stopped_early=stopped_early,
    )


def clear_checkpoints(ckpt_dir: Path) -> None:
    """Drop checkpoints once a job finished: the stage's output is the result."""
    for name in (CKPT_FILE, BEST_FILE):
        (ckpt_dir / name).unlink(missing_ok=True)
