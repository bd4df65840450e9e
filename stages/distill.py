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
from embopt.training.ddp import train_data_parallel
from embopt.training.distill import (
    TrainConfig,
    clear_checkpoints,
    fingerprint,
    layer_modules,
)
from embopt.training.modeling import load_sentence_model, pick_device
from embopt.training.student import choose_layers, make_student, uniform_layer_map

log = logging.getLogger("stages.distill")


def main() -> None:
    params = load_params(sections=("base", "distill"))
    p = params.distill
    pin_threads(params.base.threads)
    with stage_run("distill", params, ["distill"]) as run:
        sentences = read_lines(config.PREPARED_DIR / "corpus.txt")
        targets = np.load(config.TEACHER_EMBED_DIR / "embeddings.npy")
        val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
        teacher_val = read_json(config.METRICS_DIR / "teacher_embed.json")["teacher_val_spearman"]

        index = read_json(config.TEACHER_EMBED_DIR / "index.json")
        if len(targets) != len(sentences):
            raise EmboptError(f"{config.TEACHER_EMBED_DIR / 'embeddings.npy'}: {len(targets)} rows but "
                              f"corpus.txt has {len(sentences)} lines; re-run teacher_embed (dvc repro)")

        teacher = load_sentence_model(params.base.teacher)
        # The student is cut from the teacher (default) or from a separate, possibly narrower, model.
        base = load_sentence_model(p.student) if p.student else teacher
        keep = choose_layers(len(layer_modules(base)), p.layers, p.num_layers)
        student = make_student(base, keep)
        n_teacher = len(layer_modules(teacher))
        # Which teacher layers the student kept, readable on the run (and its pipeline's parent).
        kept = {"distill.layers_kept": ",".join(map(str, keep)), "distill.teacher_layers": n_teacher}
        run.set_tags(kept)
        run.log_to_pipeline(tags=kept)
        # Hidden-state matching pairs each student layer with the teacher layer it was copied from.
        layer_map = keep if not p.student else uniform_layer_map(len(keep), n_teacher)
        if p.hidden_weight > 0 and p.student and (
                student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab()):
            raise EmboptError(f"distill.hidden_weight: student '{p.student}' and teacher "
                              f"'{params.base.teacher}' tokenize differently; cannot match hidden states")
        if p.hidden_weight == 0:
            teacher = None  # not needed in the loop: targets are precomputed
        del base
        cfg = TrainConfig(
            epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, warmup_ratio=p.warmup_ratio,
            weight_decay=p.weight_decay, max_grad_norm=p.max_grad_norm, max_seq_length=p.max_seq_length,
            loss=p.loss, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
            early_stopping_patience=p.early_stopping_patience, seed=params.base.seed,
            hidden_weight=p.hidden_weight, group_by_length=p.group_by_length,
            temperature=p.temperature, structure_weight=p.structure_weight,
        )
        device = pick_device()
        job = fingerprint(cfg, len(sentences), {
            "layers": keep, "layer_map": layer_map, "teacher": params.base.teacher, "student": p.student,
            "eval_pairs": p.eval_pairs, "corpus_sha256": index.get("corpus_sha256"),
            # N ranks draw other dropout masks than one process: their checkpoints are not interchangeable.
            **({"processes": p.processes} if p.processes > 1 else {}),
        })
        log.info("distilling %d sentences into layers %s on %s (checkpoints: %s)", len(sentences), keep,
                 device, config.DISTILL_CKPT_DIR)
        # processes 1: train_student here; N: this process is rank 0 (logs, checkpoints) of N.
        result = train_data_parallel(
            p.processes, student, sentences, targets, cfg, val[: p.eval_pairs],
            ckpt_dir=config.DISTILL_CKPT_DIR, job_id=job,
            on_metrics=lambda m, step: run.log_metrics(m, step=step), device=device, teacher=teacher,
            layer_map=layer_map, threads=max(1, params.base.threads // p.processes),
        )
        del teacher
        # Selection used val[:eval_pairs]; the reported score is on the whole val split.
        from embopt.eval.sts import sts_spearman

        student_val = sts_spearman(lambda s: student.encode(list(s), batch_size=64), val)
        metrics = {
            "layers": keep, "num_layers": len(keep),
            "student_val_spearman": round(student_val, 4), "teacher_val_spearman": teacher_val,
            "retention": round(retention(student_val, teacher_val), 5),
            "steps": result.steps, "best_step": result.best_step,
            "train_seconds": round(result.train_seconds, 1),
            "resumed_from_step": result.resumed_from_step, "stopped_early": result.stopped_early,
            "train_sentences": len(sentences), "loss": p.loss, "hidden_weight": p.hidden_weight,
            "structure_weight": p.structure_weight, "temperature": p.temperature,
            "student_dim": int(targets.shape[1] if result.projection is None else result.projection.shape[1]),
            "projection": result.projection is not None, "device": device,
            **({"processes": p.processes} if p.processes > 1 else {}),
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
