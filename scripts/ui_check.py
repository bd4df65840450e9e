"""Look at the pipeline's runs as a user does: the MLflow UI in headless Chromium.

``make ui-check`` runs the tiny pipeline twice in a temporary project (the second time with
another ``pca.k``), serves its store with ``mlflow server`` on a free loopback port, and loads
three pages in headless Chromium: the experiment's run list (model-training view), the
compare view of the two pipeline parent runs, and the registered model. Each page's rendered
DOM must show what a reviewer looks for (the runs, the differing param, key metrics, the
champion alias); screenshots go to ``reports/ui/``. Exit 1 when something is missing.

Chromium is Debian's package (``apt-get install -y chromium``): ``ensure-chromium`` installs it
when missing and allowed (root, apt), as ``.ci/run`` does.

    python scripts/ui_check.py                 # tiny pipeline, then the checks; screenshots in reports/ui
    python scripts/ui_check.py ensure-chromium
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Headless and offline: no first-run UI, no background or component downloads, no QUIC.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]
RENDER_MS = 15000  # virtual time for the JS app to fetch and render


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_chromium_reason() -> str:
    return "headless Chromium not found: install Debian's package with `apt-get install -y chromium`"


def ensure_chromium() -> str:
    """Chromium's path; installs Debian's ``chromium`` when missing and allowed (root, apt)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from tracking_server import apt_install

    return apt_install("chromium", find_chromium, missing_chromium_reason())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(store_uri: str, log_path: Path, timeout: float = 180.0) -> Iterator[str]:
    """``mlflow server`` on the store, on a free loopback port; its URL until the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).parent / "mlflow"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", store_uri, "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=log_path.parent,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text()[-1500:]
                    raise RuntimeError(f"mlflow server did not start: {tail}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def render(chromium: str, url: str, screenshot: Path | None = None, height: int = 900) -> str:
    """The page's DOM after its scripts ran (and a PNG of it when ``screenshot`` is given)."""
    with tempfile.TemporaryDirectory(prefix="embopt-chromium-") as profile:
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={RENDER_MS}",
                f"--window-size=1400,{height}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180,
                             check=True).stdout
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=180,
                           check=True)
    return dom


def pages(url: str, experiment_id: str, run_ids: list[str], model: str) -> dict[str, str]:
    """The three pages a reviewer opens: the run list, two pipeline runs compared, the registered model."""
    from embopt.pipeline.tracking import ui_url

    query = {"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])}
    compare = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return {
        "runs": ui_url(url, experiment_id),
        "compare": f"{url}/#/compare-runs?{compare}",
        "model": f"{url}/#/models/{urllib.parse.quote(model)}",
    }


def check(chromium: str, url: str, experiment: str, model: str, out_dir: Path) -> list[str]:
    """Load the pages; what each must show, missing from its rendered DOM (empty when all is there)."""
    import mlflow

    client = mlflow.MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs(
        [exp.experiment_id], "tags.`embopt.kind` = 'pipeline'", order_by=["attributes.start_time DESC"]
    )
    if len(parents) < 2:
        return [f"{len(parents)} pipeline parent runs in '{experiment}'; the compare view needs two"]
    a, b = parents[1], parents[0]  # the older one on the left
    pa, pb = a.data.params, b.data.params
    differing = sorted(k for k in pa.keys() & pb.keys() if pa[k] != pb[k])
    retention = sorted(m for m in a.data.metrics.keys() & b.data.metrics.keys() if "retention" in m)
    champion = client.get_model_version_by_alias(model, "champion")
    expected = {
        "runs": [a.info.run_name, b.info.run_name],
        "compare": [a.info.run_name, b.info.run_name, *differing[:3], *retention[:2]],
        "model": [model, "@&nbsp;champion", f"Version {champion.version}"],  # the alias chip
    }
    missing = []
    for name, page in pages(url, exp.experiment_id, [a.info.run_id, b.info.run_id], model).items():
        # The compare view's param and metric tables sit below its plots: a taller window shows them.
        dom = render(chromium, page, out_dir / f"{name}.png", height=2400 if name == "compare" else 900)
        missing += [f"{name} page ({page}): '{text}' not shown" for text in expected[name] if text not in dom]
    return missing


def tiny_pipeline(root: Path) -> tuple[str, Path]:
    """Two pipeline runs of the tiny profile (the second with pca.k changed): (store URI, project)."""
    sys.path.insert(0, str(REPO / "tests"))
    import tiny

    repo, env = tiny.make_pipeline_repo(root)

    def run(*args: str) -> None:
        proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")

    run("dvc", "repro")
    params = repo / "params.yaml"
    text = params.read_text()
    assert "  k: 8\n" in text, "the tiny profile's pca.k changed: update ui_check"
    params.write_text(text.replace("  k: 8\n", "  k: 6\n"))
    run("dvc", "repro")
    return env["MLFLOW_TRACKING_URI"], repo


def main(argv: list[str]) -> int:
    if argv[:1] == ["ensure-chromium"]:
        print(ensure_chromium())
        return 0
    chromium = find_chromium()
    if chromium is None:
        print(f"ui-check: {missing_chromium_reason()}", file=sys.stderr)
        return 1
    out_dir = REPO / "reports" / "ui"
    with tempfile.TemporaryDirectory(prefix="embopt-ui-") as tmp:
        print("ui-check: running the tiny pipeline twice (a few minutes)", file=sys.stderr)
        store, _ = tiny_pipeline(Path(tmp))
        with mlflow_server(store, Path(tmp) / "mlflow.log") as url:
            missing = check(chromium, url, "embopt-tiny", "embopt-tiny", out_dir)
    for line in missing:
        print(f"ui-check: {line}", file=sys.stderr)
    print(f"ui-check: {'FAILED' if missing else 'ok'}; screenshots in {out_dir}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
