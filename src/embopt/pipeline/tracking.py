"""All MLflow logic lives here: store location, one run per stage, tags, artifacts.

Every stage execution is one MLflow run, tagged with the DVC stage and the git commit,
and the child of one parent run per pipeline run (``dvc repro`` or one ``dvc exp run``,
found by the pipeline id its stages share). The parent holds the whole params.yaml, the
headline metrics of evaluate and promote, and a ``stage.<name>`` tag per stage (``ran``,
``failed``, ``killed``, or ``skipped (cached)`` for an upstream stage DVC did not run), so
two pipeline runs compare side by side in the UI. Stages run as separate processes: each
re-opens the parent and ends it again (FINISHED, or FAILED/KILLED for good), so no parent
is left RUNNING between stages or after a partial ``dvc repro <stage>``. A stage killed with
SIGKILL cannot close its run: the next stage on the host ends it, and its parent, as KILLED.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embopt.errors import EmboptError
from embopt.pipeline import config
from embopt.pipeline.gates import GateResult
from embopt.pipeline.params import Params, flatten

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
PIPELINE_KIND = "pipeline"  # the embopt.kind tag that marks a pipeline's parent run
PROCESS_TAG = "process"  # host:pid:start time of the process that writes a stage run
# MLflow 3 UIs that read this experiment tag open the experiment on its runs, not the GenAI
# overview. MLflow 3.17's UI ignores it for a global switch instead (`?workflowType=` in the URL,
# else the browser's last choice, GenAI by default): see ui_url().
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow retries an unreachable server for minutes (7 retries, backoff 2, 120 s timeout); a
# stage fails within seconds instead. The user's own MLFLOW_HTTP_* settings win.
HTTP_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
REACH_SECONDS = 10.0  # how long a stage waits for a tracking server before giving up


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set (a team server), else ``sqlite:///<repo>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def default_tracking_uri() -> str:
    """The workspace's own store: a queued experiment's copy logs where the user looks."""
    return f"sqlite:///{config.workspace_root() / DEFAULT_DB}"


def masked(uri: str, replacement: str = "***@") -> str:
    """``uri`` with any ``user:password@`` shown as ``***@``: safe to log."""
    return re.sub(r"(?<=://)[^/@\s]*@", replacement, uri)


def check_reachable() -> None:
    """Fail with one line when an http(s) tracking server does not answer within ``REACH_SECONDS``.

    Any HTTP answer counts (even 401/404: the server is there); a refused or timed-out
    connection is retried until the budget is spent. Other stores (sqlite) are not checked.
    """
    uri, seconds = tracking_uri(), REACH_SECONDS
    if not uri.startswith(("http://", "https://")):
        return
    start = time.monotonic()
    # Without the credentials (urllib cannot take them in the URL): a 401 answers too.
    health = masked(uri, "").rstrip("/") + "/health"
    while True:
        try:
            urllib.request.urlopen(health, timeout=min(5.0, seconds)).close()
            return
        except urllib.error.HTTPError:
            return
        except (OSError, ValueError) as exc:
            waited = time.monotonic() - start
            if waited + 1 > seconds:
                raise EmboptError(f"tracking server {masked(uri)} unreachable after {waited:.0f} s: "
                                  f"{getattr(exc, 'reason', exc)}") from None
            time.sleep(1)


def git_commit() -> str:
    def git(*args: str, check: bool) -> str:
        return subprocess.run(["git", *args], cwd=config.PROJ_ROOT, capture_output=True, text=True,
                              check=check).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD", check=True)
        dirty = git("status", "--porcelain", "--untracked-files=no", check=False)
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pipeline_id() -> str:
    """An id shared by every stage that one ``dvc repro`` / ``dvc exp run`` starts.

    DVC starts each stage as a child process, so the id is derived from the
    nearest ancestor ``dvc`` process (pid + start time): stable across its stages,
    different for the next invocation. A stage run by hand gets a fresh id.
    """
    import psutil

    for proc in psutil.Process().parents():
        try:
            argv = proc.cmdline()
        except (psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if any(Path(a).name in ("dvc", "dvc.exe") for a in argv[:2]) or argv[1:3] == ["-m", "dvc"]:
            # One dvc process may run several queued experiments: keep them apart.
            key = f"{proc.pid}-{proc.create_time()}-{os.environ.get('DVC_EXP_NAME', '')}"
            return hashlib.sha1(key.encode()).hexdigest()[:12]
    return uuid.uuid4().hex[:12]


def _mlflow():
    import mlflow

    for key, value in HTTP_BUDGET.items():
        os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def ensure_experiment(name: str) -> str:
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(KIND_TAG) != KIND:  # created before embopt set the kind
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id
    # Keep artifacts beside the sqlite store, whatever the current directory is. mlflow.set_tracking_uri
    # exports MLFLOW_TRACKING_URI, so compare URIs, not the variable.
    default = tracking_uri() == default_tracking_uri()
    artifact_location = (config.workspace_root() / "mlartifacts").as_uri() if default else None
    return mlflow.create_experiment(name, artifact_location=artifact_location, tags={KIND_TAG: KIND})


def ui_url(server: str, experiment_id: str, view: str = "runs") -> str:
    """The MLflow UI page of an experiment, in the model-training view (``workflowType``)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/{view}?workflowType=machine_learning"


def _param_values(params: Mapping[str, Any]) -> dict[str, str]:
    # MLflow caps a param value at 6000 chars; ours are short. Lists become strings.
    return {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in params.items()}


def _numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in flatten(dict(metrics)).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class StageRun:
    """Thin handle on the active MLflow run of one stage (and its pipeline's parent run)."""

    stage: str
    run_id: str
    parent_id: str | None = None
    pipeline_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        if clean := _numbers(metrics, prefix):
            _mlflow().log_metrics(clean, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.exists():
            mlflow = _mlflow()
            log_fn = mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact
            log_fn(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        _mlflow().set_tags({k: str(v) for k, v in tags.items()})

    def log_to_pipeline(self, metrics: Mapping[str, Any] | None = None,
                        tags: Mapping[str, Any] | None = None) -> None:
        """Put headline numbers and decisions on the parent run, where two pipeline runs are compared."""
        if self.parent_id:
            from mlflow.entities import Metric, RunTag

            now = int(time.time() * 1000)
            _mlflow().MlflowClient().log_batch(
                self.parent_id, metrics=[Metric(k, v, now, 0) for k, v in _numbers(metrics or {}).items()],
                tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

    def record_gates(self, results: list[GateResult]) -> None:
        """Put every gate outcome on the run: a tag per gate and an overall status."""
        status = ("passed" if all(r.passed for r in results) else "failed") if results else "none"
        self.set_tags({**{f"gate.{r.metric}": r.line() for r in results}, "gate.status": status})
        for r in results:
            log.info(r.line())


@contextlib.contextmanager
def stage_run(stage: str, params: Params, sections: list[str]) -> Iterator[StageRun]:
    """Open the MLflow run of one execution of DVC stage ``stage``, a child of its pipeline's parent run.

    The run is logged with ``base`` and the params ``sections`` the stage reads.
    """
    import psutil

    check_reachable()  # before any output is written: a down server fails in seconds, with one line
    exp_id = ensure_experiment(params.base.experiment)
    pid = pipeline_id()
    dumped = params.model_dump()
    logged = flatten({s: dumped[s] for s in ["base", *sections] if s in dumped})
    commit = git_commit()
    client = _mlflow().MlflowClient()
    _end_orphans(client, exp_id)
    # The parent gets the whole params.yaml: DVC skips a stage only when its params are unchanged,
    # so the file describes every output of this pipeline run, and two runs compare key by key.
    parent = _open_parent(client, exp_id, pid, commit, stage, flatten(dumped))
    tags = {"dvc.stage": stage, "git.commit": commit, "pipeline.id": pid, "mlflow.runName": f"{stage}-{pid}",
            "mlflow.parentRunId": parent,
            PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time()}"}
    if os.environ.get("DVC_EXP_NAME"):  # set by dvc exp run
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    status, error = "FINISHED", None
    try:
        with _run(exp_id, tags, logged, stage) as handle:
            handle.parent_id, handle.pipeline_id = parent, pid
            log.info("mlflow run %s (stage=%s, pipeline=%s) in %s", handle.run_id, stage, pid,
                     masked(tracking_uri()))
            yield handle
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
        error = f"{stage}: {type(exc).__name__}: {exc}"[:5000]
        if _server_lost(exc):  # the server died mid-stage: one line, not a chain of tracebacks
            first = masked(str(exc).strip().splitlines()[0][:300])
            uri = masked(tracking_uri())
            raise EmboptError(f"tracking server {uri} failed during the stage: {first}") from exc
        raise
    finally:
        _best_effort(_close_parent, client, parent, stage, status, error)


def _end_orphans(client, exp_id: str) -> None:
    """End as KILLED the RUNNING stage runs whose process on this host is gone (SIGKILL, power loss).

    A process is identified by pid *and* start time, so a recycled pid is not mistaken for the writer.
    """
    import psutil
    from mlflow.entities import RunTag

    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{PROCESS_TAG}` LIKE '{host}:%'"
    for run in client.search_runs([exp_id], query):
        _, pid, started = run.data.tags[PROCESS_TAG].rsplit(":", 2)
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(int(pid)).create_time() == float(started):
                continue  # still running
        stage = run.data.tags.get("dvc.stage", "?")
        why = f"{stage}: process {pid} on {host} ended without closing its run (killed)"
        log.warning("mlflow run %s: %s; marked KILLED", run.info.run_id, why)
        client.set_tag(run.info.run_id, "error", why)
        client.set_terminated(run.info.run_id, "KILLED")
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent and client.get_run(parent).info.status == "RUNNING":
            client.log_batch(parent, tags=[RunTag(f"stage.{stage}", "killed"), RunTag("error", why)])
            client.set_terminated(parent, "KILLED")


def _server_lost(exc: BaseException) -> bool:
    """A tracking-server request that failed (after the bounded retries) on an http(s) store."""
    import requests
    from mlflow.exceptions import MlflowException

    lost = (MlflowException, requests.RequestException)
    return tracking_uri().startswith(("http://", "https://")) and isinstance(exc, lost)


def _best_effort(fn, *args) -> None:
    # Recording how a run ended must not hide why it ended (a dead server fails these calls too).
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record the run's end in MLflow: %s", str(exc).splitlines()[0][:300])


def _open_parent(client, exp_id: str, pid: str, commit: str, stage: str, params: Mapping[str, Any]) -> str:
    """Find (or create) the pipeline's parent run, mark it RUNNING and log the params it lacks."""
    query = f"tags.`pipeline.id` = '{pid}' and tags.`embopt.kind` = '{PIPELINE_KIND}'"
    found = client.search_runs([exp_id], query, max_results=1)
    if found:
        parent = found[0].info
        if parent.status == "FINISHED":  # ended by the previous stage; FAILED/KILLED stay so
            client.update_run(parent.run_id, status="RUNNING")
        existing = found[0].data.params
    else:
        exp_name = os.environ.get("DVC_EXP_NAME")
        tags = {"embopt.kind": PIPELINE_KIND, "pipeline.id": pid, "git.commit": commit,
                **({"dvc.exp_name": exp_name} if exp_name else {})}
        parent = client.create_run(exp_id, tags=tags, run_name=exp_name or f"pipeline-{pid}").info
        existing = {}
    values = _param_values(params)
    new = {k: v for k, v in values.items() if k not in existing}
    changed = [k for k, v in values.items() if k in existing and existing[k] != v]
    if changed:  # MLflow params are immutable; one params.yaml per pipeline run makes this rare
        log.warning("pipeline run %s already logged other values for %s", parent.run_id, ", ".join(changed))
    from mlflow.entities import Param, RunTag

    client.log_batch(parent.run_id, params=[Param(k, v) for k, v in new.items()],
                     tags=[RunTag(f"stage.{stage}", "running")])
    return parent.run_id


def _close_parent(client, parent: str, stage: str, status: str, error: str | None) -> None:
    """Record how this stage ended and which upstream stages DVC skipped; end the parent run."""
    from mlflow.entities import RunTag

    run = client.get_run(parent)
    done = {k.removeprefix("stage."): v for k, v in run.data.tags.items() if k.startswith("stage.")}
    tags = {f"stage.{stage}": {"FINISHED": "ran", "FAILED": "failed", "KILLED": "killed"}[status]}
    # DVC runs stages in dependency order: an upstream stage this pipeline never ran was skipped.
    tags.update({f"stage.{s}": "skipped (cached)" for s in upstream_stages(stage) if s not in done})
    if error:
        tags["error"] = error
    client.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()])
    if run.info.status in ("FAILED", "KILLED"):
        status = run.info.status  # an earlier stage's failure stands
    client.set_terminated(parent, status)


def upstream_stages(stage: str) -> list[str]:
    """The stages ``stage`` depends on, directly or not, from dvc.yaml's deps and outs."""
    import yaml

    try:
        stages = yaml.safe_load((config.PROJ_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []

    def paths(entries) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    def feeds(out: str, dep: str) -> bool:
        return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")

    outs = {name: paths(s.get("outs")) for name, s in stages.items()}
    seen: list[str] = []
    todo = [stage]
    while todo:
        deps = paths(stages.get(todo.pop(), {}).get("deps"))
        for name, produced in outs.items():
            if name not in seen and any(feeds(o, d) for o in produced for d in deps):
                seen.append(name)
                todo.append(name)
    return sorted(seen, key=list(stages).index)


@contextlib.contextmanager
def _run(exp_id: str, tags: Mapping[str, Any], params: Mapping[str, Any], name: str) -> Iterator[StageRun]:
    """Start a run with tags and flat params; record the error on the run if the block raises."""
    mlflow = _mlflow()
    with mlflow.start_run(experiment_id=exp_id, tags={k: str(v) for k, v in tags.items()}) as run:
        if params:
            mlflow.log_params(_param_values(params))
        try:
            yield StageRun(name, run.info.run_id)
        except BaseException as exc:  # start_run's exit marks the run FAILED
            _best_effort(mlflow.set_tag, "error", f"{type(exc).__name__}: {exc}"[:5000])
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                # Ctrl-C, or SIGTERM (run_stage turns it into SystemExit): the run was stopped, not broken.
                _best_effort(mlflow.end_run, "KILLED")
            raise


@contextlib.contextmanager
def standalone_run(kind: str, experiment: str, params: Mapping[str, Any] | None = None,
                   tags: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
    """An MLflow run for work outside the DVC pipeline (``embopt bench``): same store and experiment.

    Tagged ``embopt.kind=<kind>`` and with the git commit, so it sits beside the
    stage runs without being mistaken for one (no ``dvc.stage``/``pipeline.id`` tags).
    """
    check_reachable()
    exp_id = ensure_experiment(experiment)
    all_tags = {"embopt.kind": kind, "git.commit": git_commit(),
                "mlflow.runName": f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}", **(tags or {})}
    with _run(exp_id, all_tags, flatten(dict(params or {})), kind) as handle:
        log.info("mlflow run %s (%s) in %s", handle.run_id, kind, masked(tracking_uri()))
        yield handle
