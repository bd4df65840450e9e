"""The ``embopt`` command line (typer)."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="embopt: fast sentence embeddings, measured."
)


@app.callback()
def _main() -> None:
    """embopt command line."""


# embopt bench: every variant against the anchors (src/embopt/cli/bench.py holds the options).
from embopt.cli.bench import bench  # noqa: E402

app.command("bench")(bench)

# embopt embed: a file of texts to embeddings (src/embopt/cli/embed.py holds the options).
from embopt.cli.embed import embed  # noqa: E402

app.command("embed")(embed)

# embopt bench-runtime: the runtime's own benchmark (src/embopt/cli/runtime_bench.py).
from embopt.cli.runtime_bench import bench_runtime  # noqa: E402

app.command("bench-runtime")(bench_runtime)

if __name__ == "__main__":
    app()
