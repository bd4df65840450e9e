"""Stage distill: a student made of a subset of the teacher's layers, trained on teacher embeddings."""

from __future__ import annotations

import logging

import numpy as np

from embopt import config
from embopt.data import read_lines, read_sts_tsv
from embopt.distill import TrainConfig, clear_checkpoints, fingerprint, train_student
from embopt.files import atomic_dir, read_json
from embopt.modeling import choose_layers, load_sentence_model, make_student, num_layers
from embopt.params import load_params
from embopt.stage import report, run_stage
from embopt.sts import retention
from embopt.timing import pin_threads
from embopt.tracking import stage_run

log = logging.getLogger("stages.distill")


def main() -> None:
    params = load_params()
    p = params.distill
    pin_threads(params.base.threads)
    with stage_run("distill", params, ["distill"]) as run:
        sentences = read_lines(config.PREPARED_DIR / "corpus.txt")
        targets = np.load(config.TEACHER_EMBED_DIR / "embeddings.npy")
        dev = read_sts_tsv(config.PREPARED_DIR / "sts_dev.tsv")
        teacher_dev = read_json(config.METRICS_DIR / "teacher_embed.json")["teacher_dev_spearman"]

        teacher = load_sentence_model(params.base.teacher)
        keep = choose_layers(num_layers(teacher), p.layers, p.num_layers)
        student = make_student(teacher, keep)
        del teacher
        cfg = TrainConfig(
            epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, warmup_ratio=p.warmup_ratio,
            weight_decay=p.weight_decay, max_grad_norm=p.max_grad_norm, max_seq_length=p.max_seq_length,
            loss=p.loss, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
            early_stopping_patience=p.early_stopping_patience, seed=params.base.seed,
        )
        job = fingerprint(cfg, len(sentences), {"layers": keep, "teacher": params.base.teacher,
                                                "eval_pairs": p.eval_pairs})
        result = train_student(
            student, sentences, targets, cfg, dev[: p.eval_pairs], ckpt_dir=config.DISTILL_CKPT_DIR, job_id=job,
            on_metrics=lambda m, step: run.log_metrics(m, step=step),
        )
        # Selection used dev[:eval_pairs]; the reported score is on the whole dev split.
        from embopt.sts import sts_spearman

        student_dev = sts_spearman(lambda s: student.encode(list(s), batch_size=64), dev)
        metrics = {
            "layers": keep, "num_layers": len(keep),
            "student_dev_spearman": round(student_dev, 4), "teacher_dev_spearman": teacher_dev,
            "retention": round(retention(student_dev, teacher_dev), 5),
            "steps": result.steps, "best_step": result.best_step, "train_seconds": round(result.train_seconds, 1),
            "resumed_from_step": result.resumed_from_step, "stopped_early": result.stopped_early,
            "train_sentences": len(sentences),
        }
        with atomic_dir(config.DISTILL_DIR) as tmp:
            student.save(str(tmp))
        clear_checkpoints(config.DISTILL_CKPT_DIR)
        log.info("student (%d layers) -> %s: dev %.2f vs teacher %.2f", len(keep), config.DISTILL_DIR,
                 student_dev, teacher_dev)
        report(run, "distill", metrics, gate=p.gate)


if __name__ == "__main__":
    run_stage("distill", main)
