"""Stage distill: a student made of a subset of the teacher's layers, trained on teacher embeddings."""

from __future__ import annotations

import logging

import numpy as np

from embopt.bench.timing import pin_threads
from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv
from embopt.errors import EmboptError
from embopt.eval.sts import retention
from embopt.pipeline import config
from embopt.pipeline.files import atomic_dir, read_json
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.training import ddp
from embopt.training.distill import (
    TrainConfig,
    clear_checkpoints,
    fingerprint,
    layer_modules,
    train_student,
)
from embopt.training.modeling import load_sentence_model, pick_device
from embopt.training.student import choose_layers, make_student, uniform_layer_map

log = logging.getLogger("stages.distill")


def main() -> None:
    params = load_params(sections=("base", "distill"))
    p = params.distill
    if p.nproc > 1 and not ddp.under_torchrun():
        # N ranks: torchrun runs this module N times; rank 0 (below) logs, checkpoints and writes.
        code = ddp.torchrun(p.nproc, "stages.distill", max(1, params.base.threads // p.nproc))
        if code:
            raise EmboptError(f"distill.nproc={p.nproc}: torchrun exited with {code} "
                              "(the rank's error is above)")
        return
    rank, world, device = ddp.init_from_env(pick_device())
    pin_threads(max(1, params.base.threads // world))  # the ranks share the machine's threads
    try:
        if rank == 0:
            _lead(params, world, device)
        else:  # trains its share of every batch in step with rank 0; writes nothing
            job = _Job(params, world, device)
            job.train(on_metrics=None)
    finally:
        ddp.leave_group()


class _Job:
    """What every rank needs to train: data, the student cut from the teacher, the loop's settings."""

    def __init__(self, params, world: int, device: str) -> None:
        p = params.distill
        self.params, self.device = params, device
        self.sentences = read_lines(config.PREPARED_DIR / "corpus.txt")
        self.targets = np.load(config.TEACHER_EMBED_DIR / "embeddings.npy")
        self.val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
        index = read_json(config.TEACHER_EMBED_DIR / "index.json")
        if len(self.targets) != len(self.sentences):
            raise EmboptError(f"{config.TEACHER_EMBED_DIR / 'embeddings.npy'}: {len(self.targets)} rows but "
                              f"corpus.txt has {len(self.sentences)} lines; re-run teacher_embed (dvc repro)")
        teacher = load_sentence_model(params.base.teacher)
        # The student is cut from the teacher (default) or from a separate, possibly narrower, model.
        base = load_sentence_model(p.student) if p.student else teacher
        self.keep = choose_layers(len(layer_modules(base)), p.layers, p.num_layers)
        self.student = make_student(base, self.keep)
        self.n_teacher = len(layer_modules(teacher))
        # Hidden-state matching pairs each student layer with the teacher layer it was copied from.
        self.layer_map = self.keep if not p.student else uniform_layer_map(len(self.keep), self.n_teacher)
        if p.hidden_weight > 0 and p.student and (
                self.student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab()):
            raise EmboptError(f"distill.hidden_weight: student '{p.student}' and teacher "
                              f"'{params.base.teacher}' tokenize differently; cannot match hidden states")
        self.teacher = teacher if p.hidden_weight > 0 else None  # else targets are precomputed
        self.cfg = TrainConfig(
            epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, warmup_ratio=p.warmup_ratio,
            weight_decay=p.weight_decay, max_grad_norm=p.max_grad_norm, max_seq_length=p.max_seq_length,
            loss=p.loss, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
            early_stopping_patience=p.early_stopping_patience, seed=params.base.seed,
            hidden_weight=p.hidden_weight, group_by_length=p.group_by_length,
            temperature=p.temperature, structure_weight=p.structure_weight,
        )
        self.job_id = fingerprint(self.cfg, len(self.sentences), {
            "layers": self.keep, "layer_map": self.layer_map, "teacher": params.base.teacher,
            "student": p.student, "eval_pairs": p.eval_pairs, "corpus_sha256": index.get("corpus_sha256"),
            # N ranks draw other dropout masks than one process: their checkpoints are not interchangeable.
            **({"processes": world} if world > 1 else {}),
        })

    def train(self, on_metrics):
        return train_student(
            self.student, self.sentences, self.targets, self.cfg, self.val[: self.params.distill.eval_pairs],
            ckpt_dir=config.DISTILL_CKPT_DIR, job_id=self.job_id, on_metrics=on_metrics, device=self.device,
            teacher=self.teacher, layer_map=self.layer_map,
        )


def _lead(params, world: int, device: str) -> None:
    p = params.distill
    with stage_run("distill", params, ["distill"]) as run:
        teacher_val = read_json(config.METRICS_DIR / "teacher_embed.json")["teacher_val_spearman"]
        job = _Job(params, world, device)
        keep, student = job.keep, job.student
        # Which teacher layers the student kept, readable on the run (and its pipeline's parent).
        kept = {"distill.layers_kept": ",".join(map(str, keep)), "distill.teacher_layers": job.n_teacher}
        run.set_tags(kept)
        run.log_to_pipeline(tags=kept)
        log.info("distilling %d sentences into layers %s on %s%s (checkpoints: %s)", len(job.sentences), keep,
                 device, f", rank 0 of {world}" if world > 1 else "", config.DISTILL_CKPT_DIR)
        result = job.train(on_metrics=lambda m, step: run.log_metrics(m, step=step))
        job.teacher = None
        # Selection used val[:eval_pairs]; the reported score is on the whole val split.
        from embopt.eval.sts import sts_spearman

        student_val = sts_spearman(lambda s: student.encode(list(s), batch_size=64), job.val)
        metrics = {
            "layers": keep, "num_layers": len(keep),
            "student_val_spearman": round(student_val, 4), "teacher_val_spearman": teacher_val,
            "retention": round(retention(student_val, teacher_val), 5),
            "steps": result.steps, "best_step": result.best_step,
            "train_seconds": round(result.train_seconds, 1),
            "resumed_from_step": result.resumed_from_step, "stopped_early": result.stopped_early,
            "train_sentences": len(job.sentences), "loss": p.loss, "hidden_weight": p.hidden_weight,
            "structure_weight": p.structure_weight, "temperature": p.temperature,
            "student_dim": int((job.targets if result.projection is None else result.projection).shape[1]),
            "projection": result.projection is not None, "device": device,
            **({"nproc": world} if world > 1 else {}),
        }
        with atomic_dir(config.DISTILL_DIR) as tmp:
            student.save(str(tmp))
            if result.projection is not None:
                # Maps this (narrower) student's embeddings into the teacher's space: teacher ~ P @ student.
                np.save(tmp / "teacher_projection.npy", result.projection)
        clear_checkpoints(config.DISTILL_CKPT_DIR)
        log.info("student (%d layers) -> %s: val %.2f vs teacher %.2f", len(keep), config.DISTILL_DIR,
                 student_val, teacher_val)
        report(run, "distill", metrics, gate=p.gate)


if __name__ == "__main__":
    run_stage("distill", main)
