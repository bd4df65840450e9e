"""Do two commits give the same pipeline outputs? The real ``dvc repro`` of each on the tiny profile.

For a refactor that must not change results (issue 9: "byte-identical metrics where nothing else
changed"). Each commit is exported with ``git archive`` and run as the e2e test runs it
(``tests/tiny.py:make_pipeline_repo``: tiny model, STS and corpus fixtures, its own MLflow store);
then every JSON value under metrics/, plots/ and reports/ and every model file (ONNX, safetensors,
npy) is compared. Timing fields (throughput, speed-ups, latencies, spreads, run ids) differ between
any two runs and are left out (by the last key of their path); the run's own folder in a value
(the fixture model in manifests) reads ``<work>``. A speed-based pick (the
quantize recipe, the champion) can flip between two candidates whose speeds are within noise on the
tiny model: run it again before reading that as a change.

Usage (from the repository root; about 70 s a commit on 2 cores)::

    .venv/bin/python scripts/same_outputs.py 083052f HEAD     # exit 1 when a value or a model differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING = ("throughput", "speedup", "latency", "spread", "run_id", "sentences_per_second", "seconds")
MODEL_FILES = (".onnx", ".safetensors", ".npy", ".npz")


def run_tiny(rev: str, work: Path) -> Path:
    """The tiny-profile repo of ``rev`` after ``dvc repro``."""
    tree = work / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    code = ("import sys, tiny; repo, env = tiny.make_pipeline_repo(__import__('pathlib').Path(sys.argv[1]));"
            "import subprocess; p = subprocess.run(['dvc', 'repro'], cwd=repo, env=env, capture_output=True,"
            " text=True); sys.stderr.write(p.stderr[-3000:] if p.returncode else ''); print(repo);"
            " sys.exit(p.returncode)")
    env = {**os.environ, "PYTHONPATH": f"{tree / 'tests'}{os.pathsep}{tree / 'src'}"}
    proc = subprocess.run([sys.executable, "-c", code, str(work / "run")], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"{rev}: dvc repro on the tiny profile failed:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


def leaves(x, path: str = ""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def outputs(repo: Path, work: Path) -> dict[str, object]:
    """Every non-timing JSON value of metrics/, plots/, reports/ and models/, and each model file's md5."""
    out: dict[str, object] = {}
    own = str(work)
    for folder in ("metrics", "plots", "reports", "models"):
        for f in sorted((repo / folder).rglob("*")):
            rel = str(f.relative_to(repo))
            if f.suffix == ".json":
                for key, value in leaves(json.loads(f.read_text(encoding="utf-8"))):
                    last = key.rsplit(".", 1)[-1]
                    if not any(t in last for t in TIMING):
                        out[rel + key] = value.replace(own, "<work>") if isinstance(value, str) else value
            elif f.suffix in MODEL_FILES:
                out[rel] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="embopt-same-") as tmp:
        a, b = (outputs(run_tiny(rev, Path(tmp) / name), Path(tmp) / name)
                for rev, name in ((args.before, "a"), (args.after, "b")))
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k, "<missing>") != b.get(k, "<missing>"))
    for k in diff:
        print(f"{k}: {a.get(k, '<missing>')} -> {b.get(k, '<missing>')}")
    print(f"{len(a)} values and model files compared: {len(diff)} differ")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
