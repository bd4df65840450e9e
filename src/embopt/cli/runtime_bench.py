"""The ``embopt bench-runtime`` command: the runtime's own benchmark (overhead, same-file speed, cache)."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from embopt.cli.options import command
from embopt.errors import EmboptError
from embopt.pipeline import config

if TYPE_CHECKING:
    from embopt.pipeline.params import Base

log = logging.getLogger("embopt.bench_runtime")
Opt = typer.Option


@dataclass
class RuntimeBenchOptions:
    """``embopt bench-runtime``'s options; 0 or empty means params.yaml's value, set by :meth:`resolve`."""

    teacher: Annotated[str, Opt("--teacher", help="Teacher (package, folder or hub id; default: params.yaml "
                                "base.teacher).")] = ""
    sts_file: Annotated[Path | None, Opt("--sts-file", help="STS dev pairs (default: data/prepared/"
                                         "sts_dev.tsv if present, else ../shared/data/stsbenchmark/"
                                         "sts-dev.csv).")] = None
    work_dir: Annotated[Path, Opt("--work", help="Folder for the ONNX exports the benchmark builds once and "
                                  "reuses.")] = config.MODELS_DIR / "bench_runtime"
    out_dir: Annotated[Path, Opt("--out", help="Folder for runtime_bench.json and runtime_bench.md.")] = (
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

    def resolve(self, base: Base) -> RuntimeBenchOptions:
        """Fill the values left to params.yaml's ``base`` (and the STS file); ``--quick`` shrinks the run."""
        from embopt.bench.run import default_sts_file

        self.teacher, self.sts_file = self.teacher or base.teacher, self.sts_file or default_sts_file()
        self.threads = self.threads or base.threads
        self.max_seq_length = self.max_seq_length or base.max_seq_length
        if self.quick:
            self.repeats, self.sentences = 2, self.sentences or 48
            self.zipf_queries = min(self.zipf_queries, 400)
        return self

    @property
    def hit_probes(self) -> int:
        """Rounds of the cache-hit timing."""
        return 2 if self.quick else 20

    def params(self) -> dict[str, Any]:
        """The measurement's options as MLflow params (the targets are tags)."""
        cli_only = ("modes_only", "bundle", "variant", "quick", "mlflow")
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k not in cli_only
                } | {"hit_probes": self.hit_probes}


@command(RuntimeBenchOptions)
def bench_runtime(opts: RuntimeBenchOptions) -> None:
    """Measure the runtime: overhead outside the ONNX run, same-file speed vs sentence-transformers,
    fidelity, and the cache on a Zipf stream of repeated queries. Prints a markdown table."""
    from embopt.bench import runtime_bench as rb
    from embopt.pipeline.params import Params, flatten, load_params
    from embopt.pipeline.stage import setup_logging

    setup_logging()
    try:
        try:
            params = load_params()
        except EmboptError:  # running outside the repository: built-in defaults
            params = Params()
        opts.resolve(params.base)
        if opts.modes_only:
            result = rb.run_mode_bench(opts)
            print(rb.modes_markdown(result["modes"], result["setup"]))
            log.info("results -> %s", opts.out_dir / "runtime_modes.json")
            return
        result = rb.run_runtime_bench(opts, params.bench.runtime_targets)
        if opts.mlflow:
            from embopt.pipeline.tracking import standalone_run

            with standalone_run("bench-runtime", params.base.experiment, params=opts.params()) as run:
                measured = flatten({k: result[k] for k in ("speed", "fidelity", "cache")})
                run.log_metrics({k: v for k, v in measured.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)})
                run.set_tags({f"target.{k}": "met" if t["met"] else "missed"
                              for k, t in result["targets"].items()})
                run.log_artifact(opts.out_dir / "runtime_bench.json")
                run.log_artifact(opts.out_dir / "runtime_bench.md")
    except EmboptError as exc:
        print(f"embopt bench-runtime: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(rb.markdown(result))
    log.info("results -> %s", opts.out_dir / "runtime_bench.json")
