"""Stage prune: remove FFN neurons (and heads) physically, then a short recovery distillation."""

from __future__ import annotations

import logging

import numpy as np

from embopt.bench.timing import pin_threads
from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv
from embopt.eval.sts import retention, sts_spearman
from embopt.pipeline import config
from embopt.pipeline.files import atomic_dir, read_json
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.training.distill import train_student
from embopt.training.modeling import load_sentence_model
from embopt.training.prune import prune_model, recovery_config, unpruned_report

log = logging.getLogger("stages.prune")


def main() -> None:
    params = load_params(sections=("base", "prune"))
    p = params.prune
    pin_threads(params.base.threads)
    with stage_run("prune", params, ["prune"]) as run:
        sentences = read_lines(config.PREPARED_DIR / "corpus.txt")
        targets = np.load(config.TEACHER_EMBED_DIR / "embeddings.npy")
        val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
        teacher_val = read_json(config.METRICS_DIR / "teacher_embed.json")["teacher_val_spearman"]
        model = load_sentence_model(config.DISTILL_DIR)
        before_val = sts_spearman(lambda s: model.encode(list(s), batch_size=64), val)
        if p.enabled:
            # Importance is measured on corpus sentences, never on val.
            rep = prune_model(model, sentences[: p.importance_sentences], p.ffn_keep_ratio, p.heads_to_prune)
        else:
            log.info("prune.enabled is false: the distilled student passes through unchanged")
            rep = unpruned_report(model)
        pruned_val = sts_spearman(lambda s: model.encode(list(s), batch_size=64), val)
        n = min(len(sentences), p.recovery_max_sentences)
        rec = None
        if p.enabled and p.recovery_epochs > 0 and rep.params_after < rep.params_before:
            cfg = recovery_config(p, params.base.seed)
            log.info("recovery distillation on %d sentences", n)
            rec = train_student(
                model,
                sentences[:n],
                targets[:n],
                cfg,
                val[:200],
                on_metrics=lambda m, step: run.log_metrics(m, step=step, prefix="recovery_"),
            )
        final_val = sts_spearman(lambda s: model.encode(list(s), batch_size=64), val)
        metrics = {
            "enabled": p.enabled,
            "ffn_before": rep.ffn_before,
            "ffn_after": rep.ffn_after,
            "heads_before": rep.heads_before,
            "heads_after": rep.heads_after,
            "params_before": rep.params_before,
            "params_after": rep.params_after,
            "val_spearman_before": round(before_val, 4),
            "val_spearman_pruned": round(pruned_val, 4),
            "val_spearman": round(final_val, 4),
            "teacher_val_spearman": teacher_val,
            "retention": round(retention(final_val, teacher_val), 5),
            "retention_vs_parent": round(retention(final_val, before_val), 5),
            "recovery_seconds": round(rec.train_seconds, 1) if rec else 0.0,
        }
        with atomic_dir(config.PRUNE_DIR) as tmp:
            model.save(str(tmp))
        log.info(
            "pruned model -> %s: val %.2f (before %.2f, right after pruning %.2f)",
            config.PRUNE_DIR,
            final_val,
            before_val,
            pruned_val,
        )
        report(run, "prune", metrics, gate=p.gate)


if __name__ == "__main__":
    run_stage("prune", main)
