"""Stage evaluate: every variant on the same STS dev sentences, same threads; metrics and plot data."""

from __future__ import annotations

import logging

from embopt.bench.timing import pin_threads
from embopt.data.sts import read_sts_tsv
from embopt.eval.evaluate import evaluate_all, markdown_table, onnx_variant, torch_variant
from embopt.export.variants import onnx_variants, unavailable_variants
from embopt.pipeline import config
from embopt.pipeline.files import atomic_file, write_json
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.serving.runtime import Embedder
from embopt.training.modeling import load_sentence_model, resolve_model_source

log = logging.getLogger("stages.evaluate")


def main() -> None:
    params = load_params()
    p = params.evaluate
    threads, max_len = params.base.threads, params.base.max_seq_length
    pin_threads(threads)
    with stage_run("evaluate", params, ["evaluate"]) as run:
        dev = read_sts_tsv(config.PREPARED_DIR / "sts_dev.tsv")
        variants = []
        for name, folder in (("teacher_torch", params.base.teacher), ("student_torch", config.DISTILL_DIR),
                             ("pruned_torch", config.PRUNE_DIR)):
            model = load_sentence_model(folder, max_seq_length=max_len)
            src = resolve_model_source(str(folder))
            variants.append(torch_variant(name, model, p.batch_size, config.resolve(src)))
        onnx = onnx_variants()
        for name, path in onnx.items():
            # No cache here: throughput repeats the same sentences, so a cache would fake the speed.
            emb = Embedder(config.EXPORT_DIR, variant=name, onnx_path=path, threads=threads,
                           batch_size=p.batch_size, max_seq_length=max_len,
                           graph_optimization=params.runtime.graph_optimization,
                           providers=params.runtime.providers)
            variants.append(onnx_variant(name, emb, path))
        final = list(onnx)[-1]  # the last stage's output: int8 + PCA
        result = evaluate_all(variants, dev, p.throughput_sentences, p.latency_sentences, p.repeats, final)
        result["setup"].update({"threads": threads, "batch_size": p.batch_size, "max_seq_length": max_len})
        # Variants built for hardware this machine lacks (fp16 needs CUDA): listed, not silently dropped.
        result["not_evaluated"] = unavailable_variants()
        for name, reason in result["not_evaluated"].items():
            log.warning("not evaluated here: %s (%s)", name, reason)
        table = markdown_table(result)
        print(table)
        points = [{"variant": n, "throughput_sps": r["throughput_sps"], "retention": r["retention"]}
                  for n, r in result["variants"].items()]
        write_json(config.PLOTS_DIR / "evaluate_variants.json", points)
        with atomic_file(config.PLOTS_DIR / "evaluate_table.md") as fh:
            fh.write(table)
        run.log_artifact(config.PLOTS_DIR / "evaluate_variants.json")
        run.log_artifact(config.PLOTS_DIR / "evaluate_table.md")
        for name, row in result["variants"].items():
            run.log_metrics(row, prefix=f"{name}.")
        report(run, "evaluate", result, gate=p.gate)


if __name__ == "__main__":
    run_stage("evaluate", main)
