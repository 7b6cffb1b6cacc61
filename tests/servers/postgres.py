"""A real PostgreSQL (Debian's postgresql-15) for the fleet tests: `initdb` + `pg_ctl` as an
unprivileged user, listening on a free 127.0.0.1 port with its socket in a temp dir, stopped
by PID (never by name).

Run as root (CI), the server runs as the `postgres` system user the Debian package creates;
run as anyone else, as that user. The superuser is `mamoru` with a password (trust is never
used, so role tests see real authentication)."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.servers.ports import LOOPBACK, free_port
from tests.servers.process import ServerError, pid_alive, require_binary, tail

BIN = Path("/usr/lib/postgresql/15/bin")


class Postgres:
    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(workdir or tempfile.mkdtemp(prefix="mamoru-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.password = secrets.token_urlsafe(16)
        self.user = "mamoru"
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self._uid, self._gid = entry.pw_uid, entry.pw_gid

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        initdb = require_binary(BIN / "initdb", "postgresql-15")
        require_binary(BIN / "pg_ctl", "postgresql-15")
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._uid is not None:
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, self._uid, self._gid or -1)
        if not self.data.exists():
            self._run([initdb, "-D", str(self.data), "-U", self.user, "--pwfile", str(pwfile),
                       "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
        pwfile.unlink()
        self._start_server()
        return self

    def _start_server(self) -> None:
        if not self.port:
            self.port = free_port()
        options = (f"-c listen_addresses={LOOPBACK} -c port={self.port} "
                   f"-c unix_socket_directories={self.socket_dir} -c fsync=on "
                   "-c max_connections=100 -c shared_buffers=64MB")
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o",
                   options, "-w", "-t", "30", "start"])
        if self.pid is None:
            raise ServerError(f"postgres did not start:\n{tail(self.log)}")

    def _run(self, argv: list[str]) -> None:
        kwargs: dict[str, object] = {}
        if self._uid is not None:
            kwargs = {"user": self._uid, "group": self._gid, "extra_groups": []}
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                cwd=str(self.root), **kwargs)  # type: ignore[call-overload]
        if result.returncode != 0:
            raise ServerError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                              f"{result.stdout}\n{result.stderr}\n{tail(self.log)}")

    @property
    def pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first)
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def stop(self, *, fast: bool = True) -> None:
        """Stop the postmaster by its PID (SIGINT: fast shutdown), waiting for it to go."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT if fast else signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same port after `stop()` (the database down for a while)."""
        self._start_server()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    # -- addresses ---------------------------------------------------------------------------

    def url(self, database: str = "postgres", user: str | None = None,
            password: str | None = None) -> str:
        user = user or self.user
        password = self.password if password is None and user == self.user else password
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@{LOOPBACK}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name from the test itself
        return self.url(name)
