"""Team MLflow tracking server: a PostgreSQL backend store and a proxied artifact store, on loopback.

``make tracking-server`` / ``make tracking-server-stop`` call this script. It keeps everything
under one folder (default ``.mlflow-server/``, git-ignored)::

    .mlflow-server/
    ├── pg/data/        # the PostgreSQL cluster (initdb), owned by the user PostgreSQL runs as
    ├── pg/postgres.log
    ├── pg/.s.PGSQL.N   # its only listening socket: a Unix socket, no TCP port (mode 0700)
    ├── artifacts/      # --artifacts-destination: clients upload/download through the server
    ├── mlflow.log
    └── mlflow.pid

Clients need only the URL (``MLFLOW_TRACKING_URI=http://127.0.0.1:5000``): the server proxies
artifacts (``--serve-artifacts``), so nothing is shared through the file system.

PostgreSQL refuses to run as root; when this script runs as root it runs PostgreSQL as the
``postgres`` system user (Debian's package creates it), otherwise as the current user.

Usage (from the repository root)::

    .venv/bin/python scripts/tracking_server.py start            # idempotent: a second call finds it running
    .venv/bin/python scripts/tracking_server.py status
    .venv/bin/python scripts/tracking_server.py stop             # stops the server, then PostgreSQL
    python3 scripts/tracking_server.py ensure-postgres           # apt-get install postgresql if missing

Only the standard library is imported, so ``ensure-postgres`` runs before ``.venv`` exists.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path(".mlflow-server")
DEFAULT_PORT = 5000
PG_PORT = 5432  # only names the Unix socket file; PostgreSQL listens on no TCP port
DB_NAME = "mlflow"
PG_SUPERUSER = "postgres"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes, and the file name adds ".s.PGSQL.5432"


class ServerError(RuntimeError):
    """A one-line reason the server cannot be started or stopped."""


# --- PostgreSQL ---------------------------------------------------------------------------------


def find_pg_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: ``EMBOPT_PG_BINDIR``, ``PATH``, or Debian's layout."""
    candidates: list[Path] = []
    if os.environ.get("EMBOPT_PG_BINDIR"):
        candidates.append(Path(os.environ["EMBOPT_PG_BINDIR"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    # Debian/Ubuntu install the server binaries off PATH, one folder per major version (newest first).
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                    if Path(p).parent.name.isdigit() else 0, reverse=True)
    candidates += [Path(p) for p in debian]
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "pg_ctl", "postgres", "psql", "createdb")):
            return folder
    return None


def missing_postgres_reason() -> str:
    return ("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install them with "
            "`apt-get install -y postgresql` or set EMBOPT_PG_BINDIR")


def apt_install(package: str, find, reason: str, error=RuntimeError):
    """``find()``, first installing Debian's ``package`` when it finds nothing and may (root, apt)."""
    found = find()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise error(reason + " (not root or no apt-get: not installing)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:  # stale package lists: update once
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)
    found = find()
    if not found:
        raise error(reason + f" (apt-get install {package} did not provide it)")
    return found


def ensure_postgres() -> Path:
    """The PostgreSQL bin folder; installs Debian's ``postgresql`` when missing and allowed (root, apt)."""
    return apt_install("postgresql", find_pg_bindir, missing_postgres_reason(), ServerError)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServerError(missing_postgres_reason() + " (not root or no apt-get: not installing)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:  # stale package lists: update once
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)
    found = find_pg_bindir()
    if not found:
        raise ServerError(missing_postgres_reason() + " (apt-get install postgresql did not provide them)")
    return found


@dataclass
class PgUser:
    """Who PostgreSQL runs as: the current user, or ``postgres`` when we are root."""

    name: str
    uid: int
    gid: int

    @classmethod
    def for_current_process(cls) -> PgUser:
        import pwd

        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid())
            return cls(me.pw_name, me.pw_uid, me.pw_gid)
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ServerError("running as root, but there is no `postgres` system user to run "
                              "PostgreSQL as (initdb refuses root): install Debian's postgresql "
                              "package or run as an unprivileged user") from exc
        return cls(pg.pw_name, pg.pw_uid, pg.pw_gid)

    @property
    def is_other(self) -> bool:
        return self.uid != os.geteuid()

    def preexec(self):
        if not self.is_other:
            return None

        def drop() -> None:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)

        return drop

    def run(self, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        if self.is_other:
            env["HOME"] = "/tmp"  # postgres tools read ~/.psqlrc etc.; root's home is not readable
        return subprocess.run(cmd, preexec_fn=self.preexec(), env=env, capture_output=True, text=True,
                              **kwargs)


class Postgres:
    """One PostgreSQL cluster in ``<root>/pg``, reachable only through its Unix socket there."""

    def __init__(self, root: Path, bindir: Path, port: int = PG_PORT):
        self.dir = root / "pg"
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.bindir = bindir
        self.port = port
        self._user: PgUser | None = None

    @property
    def user(self) -> PgUser:
        """Looked up on first use: as root, this needs the ``postgres`` system user."""
        if self._user is None:
            self._user = PgUser.for_current_process()
        return self._user

    def _tool(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI MLflow uses (psycopg2 over the Unix socket)."""
        return f"postgresql+psycopg2://{PG_SUPERUSER}@/{DB_NAME}?host={self.dir}&port={self.port}"

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.dir / f".s.PGSQL.{self.port}")) > SOCKET_PATH_MAX:
            raise ServerError(f"socket path under {self.dir} is too long for a Unix socket; "
                              "pass a shorter --root")
        if self.user.is_other:
            os.chown(self.dir, self.user.uid, self.user.gid)
            probe = self.user.run(["test", "-w", str(self.dir)], check=False)
            if probe.returncode != 0:
                raise ServerError(f"the `{self.user.name}` user cannot reach {self.dir} (a parent folder "
                                  "is private, e.g. /root): use a checkout it can traverse, a --root "
                                  "outside it, or run as an unprivileged user")

    def init(self) -> bool:
        """``initdb`` once; False when the cluster already exists."""
        self._prepare_dir()
        if (self.data / "PG_VERSION").exists():
            return False
        out = self.user.run([self._tool("initdb"), "-D", str(self.data), "-U", PG_SUPERUSER,
                             "--auth=trust", "-E", "UTF8", "--no-instructions"], check=False)
        if out.returncode != 0:
            raise ServerError(f"initdb failed: {(out.stderr or out.stdout).strip()[-500:]}")
        return True

    def running(self) -> bool:
        out = self.user.run([self._tool("pg_ctl"), "-D", str(self.data), "status"], check=False)
        return out.returncode == 0

    def start(self) -> bool:
        """Start the cluster and create the ``mlflow`` database; False when it was already running."""
        self.init()
        started = False
        if not self.running():
            # No TCP (listen_addresses=''), the socket in our own folder, readable by its owner only.
            opts = (f"-c listen_addresses='' -c unix_socket_directories='{self.dir}' "
                    f"-c unix_socket_permissions=0700 -p {self.port}")
            out = self.user.run([self._tool("pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                 "-o", opts, "-w", "-t", "60", "start"], check=False)
            if out.returncode != 0:
                tail = self.log.read_text()[-800:] if self.log.exists() else ""
                raise ServerError(f"pg_ctl start failed: {(out.stderr or out.stdout).strip()} {tail}")
            started = True
        self._create_db()
        return started

    def _create_db(self) -> None:
        q = self.user.run([self._tool("psql"), "-h", str(self.dir), "-p", str(self.port), "-U", PG_SUPERUSER,
                           "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname='{DB_NAME}'"],
                          check=False)
        if q.returncode != 0:
            raise ServerError(f"psql failed: {q.stderr.strip()}")
        if q.stdout.strip() != "1":
            out = self.user.run([self._tool("createdb"), "-h", str(self.dir), "-p", str(self.port),
                                 "-U", PG_SUPERUSER, DB_NAME], check=False)
            if out.returncode != 0:
                raise ServerError(f"createdb failed: {out.stderr.strip()}")

    def stop(self) -> bool:
        if not (self.data / "PG_VERSION").exists() or not self.running():
            return False
        out = self.user.run([self._tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                            check=False)
        if out.returncode != 0:
            raise ServerError(f"pg_ctl stop failed: {out.stderr.strip()}")
        return True


# --- MLflow server --------------------------------------------------------------------------------


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """The process exists and, where /proc tells, is an ``mlflow`` process (not a reused pid)."""
    if Path("/proc/self").exists():
        try:
            if b"mlflow" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return False
        except FileNotFoundError:
            return False
        except OSError:
            pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(root: Path) -> int | None:
    try:
        return int((root / "mlflow.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def mlflow_command(backend_uri: str, artifacts: Path, host: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", backend_uri,
            "--artifacts-destination", str(artifacts),
            "--serve-artifacts",
            "--host", host, "--port", str(port), "--workers", str(workers)]


def start(root: Path = DEFAULT_ROOT, host: str = "127.0.0.1", port: int = DEFAULT_PORT, workers: int = 2,
          timeout: float = 180.0) -> str:
    """Start PostgreSQL and ``mlflow server`` (both idempotent); the tracking URL."""
    root = root.resolve()
    url = f"http://{host}:{port}"
    pid = _read_pid(root)
    if pid and _pid_alive(pid):
        # Ours, running or still starting (another call launched it): wait for it, never start a second.
        _wait_healthy(url, root, pid, timeout)
        Postgres(root, ensure_bindir()).start()  # no-op when running; restarts it if it was stopped alone
        print(f"tracking server already running at {url} (pid {pid}, {root})")
        return url
    if healthy(url):
        raise ServerError(f"something else already answers on {url}; stop it or pass --port")
    pg = Postgres(root, ensure_bindir())
    pg.start()
    artifacts = root / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = open(root / "mlflow.log", "ab")
    # A session of its own: `stop` ends the server and its workers as one process group.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(mlflow_command(pg.uri, artifacts, host, port, workers), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root, env=env,
                            start_new_session=True)
    log.close()
    (root / "mlflow.pid").write_text(f"{proc.pid}\n")
    try:
        _wait_healthy(url, root, proc.pid, timeout, proc)
    except ServerError:
        _stop_group(proc.pid)
        raise
    print(f"tracking server at {url} (pid {proc.pid}): backend {pg.uri}, artifacts {artifacts}")
    return url


def _wait_healthy(url: str, root: Path, pid: int, timeout: float,
                  proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(url):
        exited = proc.poll() is not None if proc is not None else not _pid_alive(pid)
        if exited:
            tail = (root / "mlflow.log").read_text()[-1500:]
            raise ServerError(f"mlflow server (pid {pid}) exited: {tail}")
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server not healthy after {timeout:.0f} s; see {root / 'mlflow.log'}")
        time.sleep(0.5)


def ensure_bindir() -> Path:
    found = find_pg_bindir()
    if not found:
        raise ServerError(missing_postgres_reason())
    return found


def _stop_group(pid: int, timeout: float = 30.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it when it is our own child (tests start and stop in one process)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(root: Path = DEFAULT_ROOT) -> None:
    """Stop ``mlflow server`` (its process group), then PostgreSQL; nothing running is not an error."""
    root = root.resolve()
    pid = _read_pid(root)
    if pid and _pid_alive(pid):
        _stop_group(pid)
        print(f"stopped mlflow server (pid {pid})")
    (root / "mlflow.pid").unlink(missing_ok=True)
    bindir = find_pg_bindir()
    if bindir and (root / "pg" / "data" / "PG_VERSION").exists():
        if Postgres(root, bindir).stop():
            print("stopped PostgreSQL")


def status(root: Path = DEFAULT_ROOT, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> dict:
    root = root.resolve()
    pid = _read_pid(root)
    bindir = find_pg_bindir()
    pg = (bindir is not None and (root / "pg" / "data" / "PG_VERSION").exists()
          and Postgres(root, bindir).running())
    return {"url": f"http://{host}:{port}", "mlflow_pid": pid if pid and _pid_alive(pid) else None,
            "healthy": healthy(f"http://{host}:{port}"), "postgres_running": bool(pg), "root": str(root)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "ensure-postgres"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="folder for the cluster, artifacts, logs and pid file (default .mlflow-server)")
    parser.add_argument("--host", default="127.0.0.1", help="address the MLflow server binds (loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="MLflow server port (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            start(args.root, args.host, args.port, args.workers)
        elif args.command == "stop":
            stop(args.root)
        elif args.command == "status":
            print(json.dumps(status(args.root, args.host, args.port)))
        else:
            print(f"PostgreSQL binaries: {ensure_postgres()}")
    except (ServerError, subprocess.CalledProcessError) as exc:
        print(f"tracking-server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
