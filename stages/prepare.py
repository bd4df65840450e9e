"""Stage prepare: STS splits (train, val carved from train, dev) and the corpus into data/prepared/."""

from __future__ import annotations

import logging

from embopt.data.corpus import build_corpus, write_lines
from embopt.data.sts import load_sts, split_digest, split_validation, unique_sentences, write_sts_tsv
from embopt.pipeline import config
from embopt.pipeline.files import atomic_dir
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run

log = logging.getLogger("stages.prepare")


def main() -> None:
    params = load_params(sections=("base", "data"))
    p = params.data
    with stage_run("prepare", params, ["data"]) as run:
        sts, source = load_sts(p.source, config.resolve(p.sts_dir), p.sts_hub_id)
        sts["train"], sts["val"] = split_validation(sts["train"], p.val_pairs, params.base.seed)
        # Every sentence of a val, dev or test pair stays out of the corpus, even one that
        # also occurs in a train pair: the student must not be fitted to what it is judged on.
        held_out = set()
        for split in ("val", "dev", "test"):
            held_out.update(unique_sentences(sts.get(split, [])))
        log.info("building corpus from %s", p.corpus_path)
        corpus, stats = build_corpus(
            [config.resolve(p.corpus_path)],
            held_out,
            unique_sentences(sts["train"]),
            p.corpus_max_sentences,
            p.min_words,
            p.max_words,
            params.base.seed,
            head_share=p.sts_train_share,
            fmt=p.corpus_format,
            column=p.text_column,
        )
        with atomic_dir(config.PREPARED_DIR) as tmp:
            for split, pairs in sts.items():
                write_sts_tsv(tmp / f"sts_{split}.tsv", pairs)
            write_lines(tmp / "corpus.txt", corpus)
        sizes = {k: len(v) for k, v in sts.items()}
        log.info("wrote %s (%d corpus sentences, STS pairs %s)", config.PREPARED_DIR, len(corpus), sizes)
        run.set_tags(
            {"data.sts_source": source, **{f"data.{k}_sha256": split_digest(v) for k, v in sts.items()}}
        )
        report(
            run,
            "prepare",
            {
                "sts_pairs": sizes,
                "sts_sha256": {k: split_digest(v) for k, v in sts.items()},
                "corpus": stats,
            },
        )


if __name__ == "__main__":
    run_stage("prepare", main)
