"""scripts/tracking_server.py without starting anything: finding PostgreSQL, the store URI, refusals."""

from __future__ import annotations

import pytest

from scripts import tracking_server as ts


def _fake_bindir(path):
    path.mkdir(parents=True)
    for tool in ("initdb", "pg_ctl", "postgres", "psql", "createdb"):
        (path / tool).write_text("")
    return path


def test_pg_bindir_from_environment_first(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBOPT_PG_BINDIR", str(_fake_bindir(tmp_path / "pg" / "bin")))
    assert ts.find_pg_bindir() == tmp_path / "pg" / "bin"


@pytest.mark.parametrize("missing", ["initdb", "createdb"])
def test_incomplete_bindir_is_not_taken(tmp_path, monkeypatch, missing):
    bindir = _fake_bindir(tmp_path / "bin")
    (bindir / missing).unlink()
    monkeypatch.setenv("EMBOPT_PG_BINDIR", str(bindir))
    assert ts.find_pg_bindir() != bindir


def test_backend_uri_uses_the_clusters_own_socket(tmp_path):
    pg = ts.Postgres(tmp_path / "srv", tmp_path / "bin")
    assert pg.uri == f"postgresql+psycopg2://postgres@/mlflow?host={tmp_path / 'srv' / 'pg'}&port=5432"


def test_socket_path_too_long_is_refused_with_the_reason(tmp_path):
    pg = ts.Postgres(tmp_path / ("x" * 120), tmp_path / "bin")
    with pytest.raises(ts.ServerError, match="too long for a Unix socket"):
        pg.init()


def test_cli_reports_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ts, "find_pg_bindir", lambda: None)
    monkeypatch.setattr(ts, "healthy", lambda url, timeout=2.0: False)
    assert ts.main(["start", "--root", str(tmp_path / "srv"), "--port", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tracking-server: PostgreSQL server binaries") and "\n" not in err
