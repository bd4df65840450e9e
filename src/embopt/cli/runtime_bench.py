"""The ``embopt bench-runtime`` command: the runtime's own benchmark (overhead, same-file speed, cache)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from embopt.cli.options import command
from embopt.errors import EmboptError
from embopt.pipeline import config

log = logging.getLogger("embopt.bench_runtime")
Opt = typer.Option


@dataclass
class RuntimeBenchArgs:
    """The command line of ``embopt bench-runtime``; 0 or empty means params.yaml's value."""

    teacher: Annotated[str, Opt("--teacher", help="Teacher (package, folder or hub id; default: params.yaml "
                                "base.teacher).")] = ""
    sts_file: Annotated[Path | None, Opt("--sts-file", help="STS dev pairs (default: data/prepared/"
                                         "sts_dev.tsv if present, else ../shared/data/stsbenchmark/"
                                         "sts-dev.csv).")] = None
    work: Annotated[Path, Opt("--work", help="Folder for the ONNX exports the benchmark builds once and "
                              "reuses.")] = config.MODELS_DIR / "bench_runtime"
    out: Annotated[Path, Opt("--out", help="Folder for runtime_bench.json and runtime_bench.md.")] = (
        config.REPORTS_DIR / "runtime")
    threads: Annotated[int, Opt("--threads", min=0, help="Threads for every backend (0: base.threads).")] = 0
    batch_size: Annotated[int, Opt("--batch-size", min=1, help="Sentences per call.")] = 32
    max_seq_length: Annotated[int, Opt("--max-seq-length", min=0, help="Truncation "
                                       "(0: base.max_seq_length).")] = 0
    repeats: Annotated[int, Opt("--repeats", min=1, help="Interleaved rounds; medians are reported.")] = 5
    sentences: Annotated[int, Opt("--sentences", min=0, help="Limit the STSb dev sentences (0: all).")] = 0
    student_layers: Annotated[int, Opt("--student-layers", min=1, help="Layers of the student cut from the "
                                       "teacher (evenly spaced, last kept).")] = 2
    zipf_s: Annotated[float, Opt("--zipf-s", min=0.0, help="Zipf exponent of the cached query stream.")] = 1.0
    zipf_queries: Annotated[int, Opt("--zipf-queries", min=1, help="Queries in the cached stream.")] = 10_000
    modes_only: Annotated[bool, Opt("--modes-only", help="Only the Embedder's modes (bulk sessions, overlap, "
                                    "token budget) and batch-1 latency, on --bundle; writes "
                                    "runtime_modes.json/.md.")] = False
    bundle: Annotated[Path, Opt("--bundle", help="Exported bundle for --modes-only.")] = config.EXPORT_DIR
    variant: Annotated[str, Opt("--variant", help="Variant of --bundle for --modes-only (default: the "
                                "bundle's).")] = ""
    quick: Annotated[bool, Opt("--quick", help="Tiny run that checks the command works (numbers are not "
                               "meaningful).")] = False
    mlflow: Annotated[bool, Opt("--mlflow/--no-mlflow", help="Log the results to the MLflow store.")] = True


@command(RuntimeBenchArgs)
def bench_runtime(args: RuntimeBenchArgs) -> None:
    """Measure the runtime: overhead outside the ONNX run, same-file speed vs sentence-transformers,
    fidelity, and the cache on a Zipf stream of repeated queries. Prints a markdown table."""
    from embopt.bench import runtime_bench as rb
    from embopt.bench.run import default_sts_file
    from embopt.pipeline.params import Params, flatten, load_params
    from embopt.pipeline.stage import setup_logging

    setup_logging()
    try:
        try:
            params = load_params()
        except EmboptError:  # running outside the repository: built-in defaults
            params = Params()
        base = params.base
        opts = rb.RuntimeBenchOptions(
            teacher=args.teacher or base.teacher, sts_file=args.sts_file or default_sts_file(),
            work_dir=args.work, out_dir=args.out, threads=args.threads or base.threads,
            batch_size=args.batch_size, max_seq_length=args.max_seq_length or base.max_seq_length,
            repeats=args.repeats, sentences=args.sentences, student_layers=args.student_layers,
            zipf_s=args.zipf_s, zipf_queries=args.zipf_queries, targets=params.bench.runtime_targets,
        )
        if args.quick:
            opts.quick_mode()
        if args.modes_only:
            result = rb.run_mode_bench(args.bundle, opts, args.variant or None)
            print(rb.modes_markdown(result["modes"], result["setup"]))
            log.info("results -> %s", args.out / "runtime_modes.json")
            return
        result = rb.run_runtime_bench(opts)
        if args.mlflow:
            from embopt.pipeline.tracking import standalone_run

            with standalone_run("bench-runtime", base.experiment, params=opts.params()) as run:
                measured = flatten({k: result[k] for k in ("speed", "fidelity", "cache")})
                run.log_metrics({k: v for k, v in measured.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)})
                run.set_tags({f"target.{k}": "met" if t["met"] else "missed"
                              for k, t in result["targets"].items()})
                run.log_artifact(args.out / "runtime_bench.json")
                run.log_artifact(args.out / "runtime_bench.md")
    except EmboptError as exc:
        print(f"embopt bench-runtime: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(rb.markdown(result))
    log.info("results -> %s", args.out / "runtime_bench.json")

