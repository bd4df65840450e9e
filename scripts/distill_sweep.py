"""Distillation sweep: 1, 2, 3 and 4 student layers, which layers, and the loss options, as DVC experiments.

Queues one ``dvc exp run --queue`` per grid point (``-S distill.num_layers=N`` or an explicit
``-S distill.layers=[...]``), runs the queue with ``dvc exp run --run-all``, then prints one
markdown table from ``dvc exp show --json``: layers, corpus size, steps, validation retention (what
a choice reads) and training time from distill; dev retention and speed against the teacher of
the torch student and its ONNX int8 graph from the experiment's own evaluate stage (one that
stopped before ``evaluate`` still carries its parent commit's evaluate.json, so it shows ``-``
there and ``(no evaluate)`` after its name). Experiments with the workspace's corpus restore the
teacher embeddings from the DVC cache instead of re-encoding it.

Usage (from the repository root; commit or ``git add`` code first: queued experiments see only
git-tracked files)::

    .venv/bin/python scripts/distill_sweep.py --dry-run             # print the commands only
    .venv/bin/python scripts/distill_sweep.py                       # queue, run all, print the table
    .venv/bin/python scripts/distill_sweep.py --only n1,n2,l0-5     # a subset of the grid
    .venv/bin/python scripts/distill_sweep.py --target distill      # train only (no throughput columns)
    .venv/bin/python scripts/distill_sweep.py --workspace           # run one by one in the workspace
    .venv/bin/python scripts/distill_sweep.py --show                # only print the table of past runs
    .venv/bin/python scripts/distill_sweep.py --set distill.epochs=2 --set data.corpus_max_sentences=200000

Queued experiments run in temporary copies under ``.dvc/tmp/exps`` as DVC documents them: each
stage imports the copy's own code (``PYTHONPATH=src`` in dvc.yaml), reads the data the copy got
from the DVC cache (``data/raw``) and logs to the workspace's MLflow store. ``--workspace`` runs
them one after the other in the workspace instead, which is left with the last one's outputs.

The ``c*`` points spend the default profile's 1,563 optimizer steps (100k sentences, one epoch,
batch 64) on corpora of other sizes: quality against corpus size at a fixed training budget.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> overrides. Layer indices refer to the 6-layer all-MiniLM-L6-v2 teacher.
GRID: dict[str, list[str]] = {
    # evenly spaced, first and last kept (num_layers)
    "n1": ["distill.layers=null", "distill.num_layers=1"],
    "n2": ["distill.layers=null", "distill.num_layers=2"],
    "n3": ["distill.layers=null", "distill.num_layers=3"],
    "n4": ["distill.layers=null", "distill.num_layers=4"],
    # explicit layer choices
    "l0": ["distill.layers=[0]"],
    "l3-5": ["distill.layers=[3,5]"],
    "l4-5": ["distill.layers=[4,5]"],
    "l0-2-4": ["distill.layers=[0,2,4]"],
    "l1-3-5": ["distill.layers=[1,3,5]"],
    "l0-1-3-5": ["distill.layers=[0,1,3,5]"],
    "l0-2-4-5": ["distill.layers=[0,2,4,5]"],
    # loss options on the 2-layer student
    "n2-cos": ["distill.layers=null", "distill.num_layers=2", "distill.loss=cosine"],
    "n2-msecos": ["distill.layers=null", "distill.num_layers=2", "distill.loss=mse+cosine"],
    "n2-hid01": ["distill.layers=null", "distill.num_layers=2", "distill.hidden_weight=0.01"],
    "n2-hid03": ["distill.layers=null", "distill.num_layers=2", "distill.hidden_weight=0.03"],
    # in-batch similarity-structure losses (alone and added to MSE)
    "n2-sim": ["distill.layers=null", "distill.num_layers=2", "distill.loss=sim"],
    "n2-msesim": ["distill.layers=null", "distill.num_layers=2", "distill.loss=mse+sim"],
    "n2-kl": ["distill.layers=null", "distill.num_layers=2", "distill.loss=kl"],
    "n2-msekl": ["distill.layers=null", "distill.num_layers=2", "distill.loss=mse+kl"],
    # the default 2-layer student, 1,563 steps on 25k, 50k and all 234,801 corpus sentences (max_words 30)
    "c25k": ["data.corpus_max_sentences=25000", "distill.epochs=4"],
    "c50k": ["data.corpus_max_sentences=50000", "distill.epochs=2"],
    "call": ["data.corpus_max_sentences=10000000", "distill.epochs=0.426"],
}

COLUMNS = ["experiment", "layers", "loss", "hidden w", "sentences", "epochs", "steps (best)", "val retention",
           "train s", "dev retention", "torch x teacher", "int8 dev retention", "int8 x teacher"]


def run(cmd: list[str], dry: bool, check: bool = True) -> int:
    print(f"$ {shlex.join(cmd)}", flush=True)
    if dry:
        return 0
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if check and rc != 0:
        sys.exit(f"distill_sweep: '{shlex.join(cmd)}' failed with exit code {rc}")
    return rc


def _metric(metrics: dict, file: str, *path: str):
    node = (metrics.get(file) or {}).get("data") or {}
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def own_evaluate(metrics: dict) -> bool:
    """Whether ``metrics/evaluate.json`` of an experiment measured that experiment's own student.

    An experiment run only up to ``distill`` (``--target distill``) or whose evaluate failed still
    carries the evaluate.json of the commit it started from (a git-tracked file), so its numbers
    would be the workspace's. Both stages score the distilled student on the validation split: the
    two retentions agree only when they saw the same student.
    """
    student = _metric(metrics, "metrics/distill.json", "retention")
    evaluated = _metric(metrics, "metrics/evaluate.json", "variants", "student_torch", "val_retention")
    if student is None or evaluated is None:
        return False
    return abs(float(student) - float(evaluated)) < 5e-5


def _loss_label(d: dict) -> str:
    loss = str(d.get("loss", "-"))
    if loss in ("sim", "mse+sim", "kl", "mse+kl"):
        w = d.get("structure_weight", 1.0)
        loss += f" w{w:g}" if loss.startswith("mse+") and isinstance(w, (int, float)) else ""
        t = d.get("temperature", 0.05)
        loss += f" T{t:g}" if loss.startswith(("kl", "mse+kl")) and isinstance(t, (int, float)) else ""
    return loss


def rows_from_exp_show(entries: list, names: set[str] | None) -> list[list[str]]:
    """One table row per experiment in ``dvc exp show --json`` (dvc 3.x layout).

    The dev and speed columns come from the experiment's own ``metrics/evaluate.json`` and are ``-``
    (with ``no evaluate`` in the name) where that file was inherited, not measured (:func:`own_evaluate`).
    """
    rows = []

    def visit(rev: dict, label: str, state: str | None = None) -> None:
        data = rev.get("data") or {}
        name = rev.get("name") or label
        if names is not None and name not in names:
            return
        # A queued or running experiment shows the workspace's metrics until it finishes: none of its own.
        metrics = {} if state in ("queued", "running") else data.get("metrics") or {}
        name += f" ({state})" if state in ("queued", "running") else ""
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        d = params.get("distill", {})
        distill = "metrics/distill.json"
        evaluate = "metrics/evaluate.json"
        # DVC drops list-valued metrics, so the layer choice comes from the params.
        layers = _fmt(d["layers"]) if d.get("layers") else f"{d.get('num_layers', '?')} even"
        if rev.get("error"):
            name += " (failed)"
        own = own_evaluate(metrics)
        if not own and not rev.get("error") and _metric(metrics, distill, "retention") is not None:
            name += " (no evaluate)"

        def ev(*path: str):
            return _metric(metrics, evaluate, "variants", *path) if own else None

        def pct(value):
            return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"

        steps, best = _metric(metrics, distill, "steps"), _metric(metrics, distill, "best_step")
        rows.append([
            name, layers, _loss_label(d),
            _fmt(d.get("hidden_weight")), _fmt(_metric(metrics, distill, "train_sentences")),
            _fmt(d.get("epochs")),
            f"{steps} ({best})" if steps is not None else "-",
            pct(_metric(metrics, distill, "retention")),
            _fmt(_metric(metrics, distill, "train_seconds"), 0),
            pct(ev("student_torch", "retention")), _fmt(ev("student_torch", "speedup_vs_teacher")),
            pct(ev("onnx_int8", "retention")), _fmt(ev("onnx_int8", "speedup_vs_teacher")),
        ])

    for entry in entries:
        visit(entry, entry.get("rev", "?"))
        for exp in entry.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for rev in exp.get("revs") or []:
                visit(rev, rev.get("rev", "?")[:7], state)
    return rows


def print_table(names: set[str] | None, commits: int) -> None:
    # -n: experiments based on earlier commits too (a sweep outlives the commit it was queued on)
    proc = subprocess.run(["dvc", "exp", "show", "--json", "-n", str(commits)], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"distill_sweep: dvc exp show failed: {proc.stderr.strip().splitlines()[-1:]}")
    rows = rows_from_exp_show(json.loads(proc.stdout or "[]"), names)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if not rows:
        print("(no matching experiments yet: `dvc queue status` shows queued and failed ones)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"comma-separated grid names (default all: {','.join(GRID)})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every experiment (repeatable), e.g. distill.epochs=2")
    ap.add_argument("--target", default="evaluate",
                    help="stage to reproduce up to (default evaluate: gives the throughput columns)")
    ap.add_argument("--prefix", default="sweep", help="experiment name prefix (names must be new)")
    ap.add_argument("--jobs", type=int, default=1, help="experiments run at once (1 on a 2-core machine)")
    ap.add_argument("--workspace", action="store_true", help="run one by one in the workspace, no queue")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--show", action="store_true", help="only print the table of existing experiments")
    ap.add_argument("--commits", type=int, default=20,
                    help="the table looks at experiments of this many commits")
    args = ap.parse_args(argv)

    chosen = list(GRID) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in GRID]
    if unknown:
        sys.exit(f"distill_sweep: --only: unknown grid names {unknown}; known: {', '.join(GRID)}")
    names = {f"{args.prefix}-{n}" for n in chosen}
    if args.show:
        print_table(names, args.commits)
        return

    for n in chosen:
        cmd = ["dvc", "exp", "run", "-n", f"{args.prefix}-{n}"]
        if not args.workspace:
            cmd.append("--queue")
        for override in GRID[n] + args.set:
            # "++": set the key even where params.yaml leaves it out (Hydra's add-or-override).
            cmd += ["-S", override if override.startswith("+") else f"++{override}"]
        cmd.append(args.target)
        run(cmd, args.dry_run)
    if not args.workspace:
        t0 = time.perf_counter()
        run(["dvc", "exp", "run", "--run-all", "--jobs", str(args.jobs)], args.dry_run)
        if not args.dry_run:
            print(f"queue finished in {time.perf_counter() - t0:.0f} s wall ({len(chosen)} experiments)")
        run(["dvc", "queue", "status"], args.dry_run, check=False)
    if not args.dry_run:
        print_table(names, args.commits)


if __name__ == "__main__":
    main()
