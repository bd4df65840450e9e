"""Stage static: a Model2Vec-style static embedding model, trained on the teacher's corpus embeddings.

Writes a bundle to models/static: the teacher's tokenizer, ``static/embeddings.npy`` (one
row per token id) and a manifest whose one variant, ``static``, has ``"backend": "static"``,
so the runtime, evaluate and promote treat it like any other variant. Selection (the epoch
kept) reads the validation split only.
"""

from __future__ import annotations

import logging

import numpy as np

from embopt.bench.timing import pin_threads
from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv
from embopt.errors import EmboptError
from embopt.eval.sts import retention, sts_spearman
from embopt.pipeline import config
from embopt.pipeline.files import atomic_dir, read_json
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.serving.bundle import copy_tokenizer, write_manifest
from embopt.serving.runtime import load_tokenizer
from embopt.training.modeling import resolve_model_source
from embopt.training.static import distill_table, encode_with_table, fit_table

log = logging.getLogger("stages.static")
VARIANT = "static"
TABLE = "static/embeddings.npy"


def main() -> None:
    params = load_params(sections=("base", "static"))
    p = params.static
    pin_threads(params.base.threads)
    with stage_run("static", params, ["static"]) as run:
        sentences = read_lines(config.PREPARED_DIR / "corpus.txt")
        targets = np.load(config.TEACHER_EMBED_DIR / "embeddings.npy", mmap_mode="r")
        if len(targets) != len(sentences):
            raise EmboptError(f"{config.TEACHER_EMBED_DIR / 'embeddings.npy'}: {len(targets)} rows but "
                              f"corpus.txt has {len(sentences)} lines; re-run teacher_embed (dvc repro)")
        n = len(sentences) if p.max_sentences is None else min(p.max_sentences, len(sentences))
        val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
        teacher_val = read_json(config.METRICS_DIR / "teacher_embed.json")["teacher_val_spearman"]
        teacher_dir = resolve_model_source(params.base.teacher)
        with atomic_dir(config.STATIC_DIR) as tmp:
            copy_tokenizer(teacher_dir, tmp)
            tok = load_tokenizer(tmp, params.base.max_seq_length)
            specials = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]

            def token_ids(texts):
                return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]

            def score(table):
                return sts_spearman(lambda texts: encode_with_table(table, token_ids(texts)), val)

            table = distill_table(teacher_dir, tok.get_vocab(), specials)
            table, history = fit_table(table, token_ids(sentences[:n]), targets[:n], score, p.epochs,
                                       p.batch_size, p.lr, params.base.seed)
            (tmp / "static").mkdir()
            np.save(tmp / TABLE, table)
            write_manifest(tmp, {VARIANT: {"file": TABLE, "backend": "static", "precision": "fp32"}}, VARIANT,
                           dim=int(table.shape[1]), max_seq_length=params.base.max_seq_length, pooling="mean",
                           normalize=True, teacher=params.base.teacher)
        best = int(np.argmax(history))
        metrics = {
            "model2vec_val_spearman": round(history[0], 4),
            "val_spearman": round(history[best], 4),
            "val_retention": round(retention(history[best], teacher_val), 5),
            "model2vec_val_retention": round(retention(history[0], teacher_val), 5),
            "best_epoch": best,
            "train_sentences": n,
        }
        log.info("static: val Spearman %.2f (Model2Vec alone %.2f, teacher %.2f), epoch %d kept -> %s",
                 history[best], history[0], teacher_val, best, config.STATIC_DIR)
        report(run, "static", metrics, details={"val_spearman_by_epoch": [round(h, 4) for h in history]})


if __name__ == "__main__":
    run_stage("static", main)
