"""dvc.yaml must declare, for every stage, exactly the project modules the stage runs.

DVC re-runs a stage only when a declared dep changes, so a missing module means a
code change silently reuses stale outputs, and an extra one re-runs work for nothing.
The closure follows every import (module level and inside functions) through the
project's own modules; third-party imports are not files of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROOTS = (REPO / "src", REPO)  # embopt.* lives under src/, stages.* at the root


def module_file(name: str) -> Path | None:
    for base in ROOTS:
        p = base.joinpath(*name.split("."))
        for cand in (p.with_suffix(".py"), p / "__init__.py"):
            if cand.exists():
                return cand
    return None


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from embopt.pipeline import config` imports the module embopt.pipeline.config
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in ("embopt", "stages")}


def import_closure(entry: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [module_file(entry)]
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(module_file(m) for m in imported_modules(f))
    # Package __init__ files are empty (checked below), so they change no stage's output.
    return {f for f in seen if f.name != "__init__.py"}


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def declared(stage: dict) -> set[str]:
    return {(d if isinstance(d, str) else next(iter(d))).rstrip("/") for d in stage.get("deps", [])}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_exactly_its_code(name: str) -> None:
    stage = stages()[name]
    entry = stage["cmd"].split("-m", 1)[1].split()[0]
    code = {str(f.relative_to(REPO)) for f in import_closure(entry)}
    deps = declared(stage)
    missing = sorted(code - deps)
    extra = sorted(d for d in deps if d.endswith(".py") and d not in code)
    assert not missing, f"{name}: imports {missing} but dvc.yaml does not list them"
    assert not extra, f"{name}: dvc.yaml lists {extra}, which the stage never imports"


def test_package_init_files_are_empty() -> None:
    # import_closure skips __init__.py; that is only sound while they hold no code.
    for init in [*(REPO / "src" / "embopt").rglob("__init__.py"), REPO / "stages" / "__init__.py"]:
        nodes = ast.parse(init.read_text()).body
        constant = (ast.Expr, ast.Assign)  # a docstring, __version__ = "..."
        body = [n for n in nodes if not (isinstance(n, constant) and isinstance(n.value, ast.Constant))]
        assert not body, f"{init} holds code; list it in dvc.yaml deps instead"


if __name__ == "__main__":  # print each stage's code deps, for editing dvc.yaml
    for name, stage in stages().items():
        entry = stage["cmd"].split("-m", 1)[1].split()[0]
        print(name, *sorted(str(f.relative_to(REPO)) for f in import_closure(entry)), sep="\n  - ")
