"""Stage evaluate: every variant, and the registry's current champion, on the same sentences and threads.

Writes the headline numbers to metrics/evaluate.json, the full table (intervals,
speed spread, latency, size, index compatibility) to reports/pipeline/evaluate.json,
and plot data. The champion is read from the registry (an input DVC cannot see: a
moved alias does not re-run this stage; `dvc repro -f -s evaluate promote` does;
without `-s`, `-f` forces every upstream stage too).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from embopt.bench.timing import pin_threads
from embopt.data.sts import read_sts_tsv
from embopt.eval.evaluate import evaluate_all, headline, markdown_table, onnx_variant, torch_variant
from embopt.export.variants import onnx_variants, static_variants, unavailable_variants
from embopt.pipeline import config
from embopt.pipeline.files import atomic_file, write_json
from embopt.pipeline.params import Params, load_params
from embopt.pipeline.registry import alias_bundle
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.serving.runtime import Embedder
from embopt.training.modeling import load_sentence_model, resolve_model_source

log = logging.getLogger("stages.evaluate")
INCUMBENT = "incumbent"
# Per variant, what the pipeline's parent run shows for comparing two pipeline runs.
PIPELINE_METRICS = ("retention", "val_retention", "throughput_sps", "speedup_vs_teacher", "size_mb", "dim")


def embedder(
    params: Params, bundle: Path, variant: str | None, onnx_path: Path | None, mode: str = "bulk"
) -> Embedder:
    # No cache here: throughput repeats the same sentences, so a cache would fake the speed.
    return Embedder(
        bundle,
        variant=variant,
        onnx_path=onnx_path,
        threads=params.base.threads,
        batch_size=params.evaluate.batch_size,
        max_seq_length=params.base.max_seq_length,
        graph_optimization=params.runtime.graph_optimization,
        providers=params.runtime.providers,
        mode=mode,
    )


def runtime_variant(
    params: Params, name: str, bundle: Path, variant: str | None, onnx_path: Path | None, size_path: Path
):
    """Throughput in the bulk mode (files, batch jobs), batch-1 latency in the latency mode (serving)."""
    return onnx_variant(
        name,
        embedder(params, bundle, variant, onnx_path),
        size_path,
        embedder(params, bundle, variant, onnx_path, mode="latency"),
    )


def candidates(params: Params, onnx: dict[str, Path], tmp: Path) -> tuple[list, dict | None]:
    """Every variant to measure: torch, ``onnx`` (the export bundle's), static, and the registry's champion
    when there is one."""
    variants = []
    for name, folder in (
        ("teacher_torch", params.base.teacher),
        ("student_torch", config.DISTILL_DIR),
        ("pruned_torch", config.PRUNE_DIR),
    ):
        model = load_sentence_model(folder, max_seq_length=params.base.max_seq_length)
        source = config.resolve(resolve_model_source(str(folder)))
        variants.append(torch_variant(name, model, params.evaluate.batch_size, source))
    for name, path in onnx.items():
        variants.append(runtime_variant(params, name, config.EXPORT_DIR, name, path, path))
    for name, (bundle, path) in static_variants().items():
        variants.append(runtime_variant(params, name, bundle, name, path, path))
    champion = alias_bundle(params.promote.model_name, params.promote.alias, tmp)
    if champion is not None:
        log.info(
            "incumbent: models:/%s@%s = version %s (%s)",
            params.promote.model_name,
            params.promote.alias,
            champion["version"],
            champion["variant"],
        )
        variants.append(
            runtime_variant(params, INCUMBENT, champion["bundle"], None, None, champion["bundle"])
        )
    return variants, champion


def write_tables(run, result: dict) -> None:
    """The markdown table (printed too) and the plot points, as files and run artifacts."""
    table = markdown_table(result)
    print(table)
    keys = ("throughput_sps", "retention", "retention_lo", "retention_hi")
    points = [{"variant": n, **{k: r[k] for k in keys}} for n, r in result["variants"].items()]
    write_json(config.PLOTS_DIR / "evaluate_variants.json", points)
    with atomic_file(config.PLOTS_DIR / "evaluate_table.md") as fh:
        fh.write(table)
    run.log_artifact(config.PLOTS_DIR / "evaluate_variants.json")
    run.log_artifact(config.PLOTS_DIR / "evaluate_table.md")


def main() -> None:
    params = load_params(sections=("base", "evaluate", "promote", "runtime"))
    p = params.evaluate
    pin_threads(params.base.threads)
    with stage_run("evaluate", params, ["evaluate"]) as run, tempfile.TemporaryDirectory() as tmp:
        val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
        dev = read_sts_tsv(config.PREPARED_DIR / "sts_dev.tsv")
        onnx = onnx_variants()
        variants, champion = candidates(params, onnx, Path(tmp))
        result = evaluate_all(
            variants,
            val,
            dev,
            p.throughput_sentences,
            p.latency_sentences,
            p.repeats,
            p.bootstrap_resamples,
            params.base.seed,
            incumbent=INCUMBENT if champion else None,
        )
        result["incumbent"] = {k: champion[k] for k in ("version", "variant")} if champion else None
        result["setup"].update(
            {
                "threads": params.base.threads,
                "batch_size": p.batch_size,
                "max_seq_length": params.base.max_seq_length,
            }
        )
        # Variants built for hardware this machine lacks (fp16 needs CUDA): listed, not silently dropped.
        result["not_evaluated"] = unavailable_variants()
        for name, reason in result["not_evaluated"].items():
            log.warning("not evaluated here: %s (%s)", name, reason)
        write_tables(run, result)
        for name, row in result["variants"].items():
            run.log_metrics(row, prefix=f"{name}.")
        run.log_to_pipeline(
            {f"{n}.{k}": r[k] for n, r in result["variants"].items() for k in PIPELINE_METRICS}
        )
        metrics = headline(result)
        # The gate (like every choice) reads the validation split, never the reported dev numbers.
        metrics["final_val_retention"] = result["variants"][list(onnx)[-1]]["val_retention"]  # int8 + PCA
        report(run, "evaluate", metrics, gate=p.gate, details=result)


if __name__ == "__main__":
    run_stage("evaluate", main)
