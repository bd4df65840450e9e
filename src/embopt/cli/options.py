"""Typer commands whose options are the fields of one typed dataclass instead of a long parameter list."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, get_type_hints

import typer

T = TypeVar("T")


def command(options: type[T]) -> Callable[[Callable[[T], Any]], Callable[..., Any]]:
    """Decorate ``fn(opts: options)`` into a typer command with one option per field of ``options``.

    Each field is ``name: Annotated[type, typer.Option(...)] = default``; typer reads them from the
    command's signature, and ``fn`` gets them back as one ``options`` instance.
    """

    def wrap(fn: Callable[[T], Any]) -> Callable[..., Any]:
        hints = get_type_hints(options, include_extras=True)
        params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                    annotation=hints[f.name]) for f in dataclasses.fields(options)]

        def cmd(**kwargs: Any) -> Any:
            return fn(options(**kwargs))

        cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        cmd.__name__, cmd.__doc__ = fn.__name__, fn.__doc__
        return cmd

    return wrap


def ints(text: str, option: str) -> list[int]:
    """Comma-separated positive integers of ``option``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option}: expected comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"{option}: expected positive integers, got '{text}'")
    return values
