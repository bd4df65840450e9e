"""The ``embopt`` command line (typer)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="embopt: fast sentence embeddings, measured.")


@app.callback()
def _main() -> None:
    """embopt command line."""


if __name__ == "__main__":
    app()
