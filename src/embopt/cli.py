"""The ``embopt`` command line (typer)."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="embopt: fast sentence embeddings, measured."
)


@app.callback()
def _main() -> None:
    """embopt command line."""


# embopt bench: every variant against the anchors (src/embopt/bench_cli.py holds the options).
from embopt.bench_cli import bench  # noqa: E402

app.command("bench")(bench)

# embopt embed: a file of texts to embeddings (src/embopt/embed_cli.py holds the options).
from embopt.embed_cli import embed  # noqa: E402

app.command("embed")(embed)

# embopt bench-runtime: the runtime's own benchmark (src/embopt/runtime_bench_cli.py).
from embopt.runtime_bench_cli import bench_runtime  # noqa: E402

app.command("bench-runtime")(bench_runtime)

if __name__ == "__main__":
    app()
