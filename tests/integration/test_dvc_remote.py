"""The DVC remote: push from one clone, pull into a fresh one, and find nothing to re-run.

On a tiny git + DVC repository in tmp (not the full pipeline): a frozen ``dvc import-url``
output under ``data/raw/`` (as the real repo's external data) and a one-stage ``dvc.yaml``.
The local round trip uses this repository's own ``.dvc/config`` (default remote
``../embopt-dvc-remote``); the S3 one runs against ``moto`` in server mode on loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import free_port

REPO = Path(__file__).resolve().parents[2]

DVC_YAML = """\
stages:
  count:
    cmd: python -c "import pathlib; t = pathlib.Path('data/raw/words.txt').read_text();
      pathlib.Path('out').mkdir(exist_ok=True); pathlib.Path('out/count.txt').write_text(str(len(t.split())))"
    deps:
      - data/raw/words.txt
    outs:
      - out
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "AWS_"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    })
    return env


def sh(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    cmd = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    proc = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def make_repo(path: Path, source: Path, dvc_config: Path | None) -> Path:
    """git + dvc repo with an import-url'd ``data/raw/words.txt`` and one stage, reproduced and committed."""
    path.mkdir(parents=True)
    sh(path, "git", "init", "-q")
    sh(path, "dvc", "init", "-q")
    if dvc_config is not None:
        shutil.copy2(dvc_config, path / ".dvc" / "config")
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "data" / "raw").mkdir(parents=True)
    sh(path, "dvc", "import-url", str(source), "data/raw/words.txt")
    sh(path, "dvc", "repro")
    sh(path, "git", "add", "-A")
    sh(path, "git", "commit", "-qm", "tiny pipeline")
    return path


def assert_fresh_clone_is_complete(clone: Path) -> None:
    assert (clone / "data" / "raw" / "words.txt").read_text() == "one two three four\n"
    assert (clone / "out" / "count.txt").read_text() == "4"
    assert "up to date" in sh(clone, "dvc", "status")
    repro = sh(clone, "dvc", "repro")
    assert "Running stage" not in repro and "up to date" in repro, repro


def test_default_remote_is_a_folder_next_to_the_repo():
    out = subprocess.run([sys.executable, "-m", "dvc", "remote", "list"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, check=True).stdout
    name, url = out.split()[:2]
    default = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=REPO, env=_env(),
                             capture_output=True, text=True, check=True).stdout.strip()
    assert name == default
    assert (REPO / ".dvc" / url).resolve() == (REPO.parent / "embopt-dvc-remote").resolve()


def test_local_remote_push_then_pull_into_a_fresh_clone(tmp_path):
    source = tmp_path / "external" / "words.txt"
    source.parent.mkdir()
    source.write_text("one two three four\n")
    work = tmp_path / "team"
    origin = make_repo(work / "origin", source, REPO / ".dvc" / "config")
    sh(origin, "dvc", "push")
    assert any((work / "embopt-dvc-remote").rglob("*")), "the default remote is ../embopt-dvc-remote"

    source.unlink()  # a teammate needs neither the import's source nor the origin's cache
    sh(work, "git", "clone", "-q", str(origin), "clone")
    clone = work / "clone"
    assert not (clone / "out").exists() and not (clone / "data" / "raw" / "words.txt").exists()
    t0 = time.perf_counter()
    sh(clone, "dvc", "pull")
    assert_fresh_clone_is_complete(clone)
    assert time.perf_counter() - t0 < 60


@pytest.mark.services
def test_s3_remote_against_moto_server(tmp_path):
    pytest.importorskip("dvc_s3", reason="dvc-s3 (requirements/lock.txt) is not installed")
    pytest.importorskip("moto", reason="moto[server] (requirements/lock.txt) is not installed")
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)  # a real HTTP S3 endpoint
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**_env(), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="embopt")
        source = tmp_path / "words.txt"
        source.write_text("one two three four\n")
        origin = make_repo(tmp_path / "origin", source, None)
        # The README's S3 commands: a default remote plus an endpoint (any S3-compatible store).
        sh(origin, "dvc", "remote", "add", "-d", "s3", "s3://embopt/dvc-store", env=env)
        sh(origin, "dvc", "remote", "modify", "s3", "endpointurl", endpoint, env=env)
        sh(origin, "git", "commit", "-qam", "s3 remote", env=env)
        sh(origin, "dvc", "push", env=env)
        keys = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1") \
            .list_objects_v2(Bucket="embopt", Prefix="dvc-store/").get("KeyCount", 0)
        assert keys >= 3  # words.txt, the out/ directory listing and count.txt

        source.unlink()
        sh(tmp_path, "git", "clone", "-q", str(origin), "clone", env=env)
        clone = tmp_path / "clone"
        sh(clone, "dvc", "pull", env=env)
        assert_fresh_clone_is_complete(clone)
    finally:
        server.stop()
