"""The ``embopt`` command line (typer)."""

from __future__ import annotations

import typer

from embopt.cli.bench import bench  # every variant against the anchors (bench.py holds the options)
from embopt.cli.embed import embed  # a file of texts to embeddings (embed.py holds the options)
from embopt.cli.runtime_bench import bench_runtime  # the runtime's own benchmark

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="embopt: fast sentence embeddings, measured.")

app.command("bench")(bench)
app.command("embed")(embed)
app.command("bench-runtime")(bench_runtime)

if __name__ == "__main__":
    app()
