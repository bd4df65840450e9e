from pathlib import Path

import pytest

from embopt.pipeline.files import atomic_dir, atomic_file, read_json, write_json


def test_atomic_dir_replaces_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()  # nothing visible until the block ends
    assert (target / "new.txt").read_text() == "new" and not (target / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_and_json(tmp_path):
    f = tmp_path / "m.json"
    write_json(f, {"a": 1})
    with pytest.raises(ValueError), atomic_file(f) as fh:
        fh.write("garbage")
        raise ValueError
    assert read_json(f) == {"a": 1}


@pytest.fixture()
def umask():
    """Set the process umask for one test; restored after it."""
    import os

    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                      (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    """Like a file made with open() or a folder with mkdir(), not mkstemp's private 0600/0700."""
    umask(mask)
    write_json(tmp_path / "m.json", {"a": 1})
    with atomic_file(tmp_path / "w.bin", "wb") as fh:
        fh.write(b"x")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "model").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "model" / "weights.bin").stat().st_mode & 0o777 == file_mode


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_no_temp_leftovers_on_any_exception(tmp_path, kind, exc):
    target = tmp_path / "out"
    with pytest.raises(exc):
        if kind == "file":
            with atomic_file(target, "wb") as fh:
                fh.write(b"half")
                raise exc()
        else:
            with atomic_dir(target) as tmp:
                (tmp / "half.bin").write_bytes(b"half")
                raise exc()
    assert list(tmp_path.iterdir()) == []


SIGTERM_MID_WRITE = """
import os, signal, sys, time
from embopt.pipeline.files import atomic_dir, atomic_file, exit_on_sigterm
if sys.argv[1] == "handler":
    exit_on_sigterm()
with atomic_dir(sys.argv[2] + "/model") as tmp:
    (tmp / "weights.bin").write_bytes(b"x" * 1000)
    with atomic_file(sys.argv[2] + "/metrics.json") as fh:
        fh.write("{")
        fh.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
"""


@pytest.mark.parametrize("mode", ["handler", "default"])
def test_sigterm_mid_write_leaves_nothing_once_turned_into_an_exception(tmp_path, mode):
    """With exit_on_sigterm (what the stage runner and `embopt embed` install) a SIGTERM removes the
    temporary files; without it the process dies on the spot and leaves them (why the handler exists)."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    # The checkout's src/ explicitly: the test process's sys.path can hold a served model's
    # serving-only copy of embopt (mlflow.pyfunc.load_model prepends its code/ folder).
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    run = subprocess.run([sys.executable, "-c", SIGTERM_MID_WRITE, mode, str(out)], env=env,
                         capture_output=True, text=True, timeout=60)
    left = sorted(p.name for p in out.iterdir())
    if mode == "handler":
        assert run.returncode == 128 + signal.SIGTERM, run.stderr
        assert left == []
    else:
        assert run.returncode == -signal.SIGTERM
        assert any(name.startswith(".model.tmp-") for name in left)
        assert any(name.startswith(".metrics.json.tmp-") for name in left)
        # The next write of each target removes what the dead writer left (a killed quantize's 58 MB).
        with atomic_dir(out / "model") as tmp:
            (tmp / "weights.bin").write_bytes(b"y")
        with atomic_file(out / "metrics.json") as fh:
            fh.write("{}")
        assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model"]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    import subprocess
    import sys

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".model.tmp-{live.pid}-abc"
        busy.mkdir()
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"x")
        assert busy.is_dir()
    finally:
        live.kill()
        live.wait()
    with atomic_dir(tmp_path / "model"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
