"""The ``embopt bench-runtime`` command: the runtime's own benchmark (overhead, same-file speed, cache)."""

from __future__ import annotations

import logging
import sys

import typer

from embopt.bench.runtime_bench import RuntimeBenchOptions
from embopt.cli.options import command
from embopt.errors import EmboptError

log = logging.getLogger("embopt.bench_runtime")


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
