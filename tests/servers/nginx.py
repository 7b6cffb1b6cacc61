"""A private nginx instance (Debian ``nginx-light``/``nginx``) with its own prefix, for tests.

Layout under ``workdir``::

    nginx.conf          main config written by us (see below)
    conf.d/*.conf       site configs: written by tests (``write_conf``) or by mamoru's installer
    nginx.pid           pid file (the master's PID)
    error.log           error log (also given with ``-e`` so even pre-config errors land here)
    access.log
    tmp/                client_body/proxy/fastcgi/uwsgi/scgi temp paths (never /var/lib/nginx)

The main ``nginx.conf`` has ``user root root;`` by default (tests run as root and keep files in
root-only ``/tmp/pytest-of-root``; workers as root can read them; ``user="www-data"`` runs them
as Debian's nginx does, for tests of what a web server's user may read), one worker,
``include /etc/nginx/mime.types;`` and ``include <workdir>/conf.d/*.conf;`` inside ``http{}``.
It has no ``listen``: the site configs bring their own ``listen 127.0.0.1:PORT``.

nginx runs in the foreground as our direct child (``-g 'daemon off;'`` on the start command
line only, so ``nginx -t`` / ``-s reload`` read the very same file): the PID we hold *is* the
master, and stop() is "SIGTERM, wait, SIGKILL" on that PID.

``test_argv`` / ``reload_argv`` are the exact commands a tool should run to test/reload this
instance (mamoru's installer tests take them as its configured commands).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from .ports import LOOPBACK, wait_for_port
from .process import ForegroundServer, ServerError, children_of, require_binary, spawn

NGINX_BIN = "/usr/sbin/nginx"
MIME_TYPES = "/etc/nginx/mime.types"


class Nginx(ForegroundServer):
    """nginx with a private prefix in ``workdir``; a context manager.

    Args:
        workdir: the instance's directory (created if missing).
        http_extra: extra directives placed in ``http{}`` before the conf.d include.
        main_extra: extra directives at the main (top) level.
        user: the workers' user (and group), as in nginx's ``user`` directive; ``"www-data"``
            is what Debian's nginx runs them as: the files they serve must then be readable
            by that user (and every directory above them searchable).

    Attributes: ``workdir``, ``conf_path``, ``conf_dir``, ``pid_file``, ``error_log``,
    ``access_log``, ``test_argv``, ``reload_argv``, ``start_argv``, ``pid`` (master PID
    while running).
    """

    stop_timeout = 5.0

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        http_extra: str = "",
        main_extra: str = "",
        user: str = "root root",
    ) -> None:
        self.binary = NGINX_BIN
        self.workdir = Path(workdir).absolute()
        self.conf_path = self.workdir / "nginx.conf"
        self.conf_dir = self.workdir / "conf.d"
        self.pid_file = self.workdir / "nginx.pid"
        self.error_log = self.workdir / "error.log"
        self.access_log = self.workdir / "access.log"
        self.stdout_log = self.workdir / "nginx.stdout.log"
        self.tmp_dir = self.workdir / "tmp"
        self.http_extra = http_extra
        self.main_extra = main_extra
        self.user = user
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_main_conf()

    # ---- argv ------------------------------------------------------------------------------

    @property
    def _base_argv(self) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.workdir}/",
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log),
        ]

    @property
    def test_argv(self) -> list[str]:
        """``nginx -t`` for this instance."""
        return [*self._base_argv, "-t"]

    @property
    def reload_argv(self) -> list[str]:
        """``nginx -s reload`` for this instance (signals the master via our pid file)."""
        return [*self._base_argv, "-s", "reload"]

    @property
    def start_argv(self) -> list[str]:
        return [*self._base_argv, "-g", "daemon off; master_process on;"]

    # ---- config ----------------------------------------------------------------------------

    def _write_main_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(exist_ok=True)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.tmp_dir / sub).mkdir(parents=True, exist_ok=True)
        w = self.workdir
        self.conf_path.write_text(
            f"""# Test nginx instance (tests/servers/nginx.py). Started with -g 'daemon off;'.
user {self.user};
worker_processes 1;
pid {w}/nginx.pid;
error_log {self.error_log} notice;
lock_file {w}/nginx.lock;
{self.main_extra}

events {{
    worker_connections 256;
}}

http {{
    include {MIME_TYPES};
    default_type application/octet-stream;
    access_log {self.access_log};
    sendfile off;
    server_tokens off;
    client_body_temp_path {w}/tmp/body;
    proxy_temp_path {w}/tmp/proxy;
    fastcgi_temp_path {w}/tmp/fastcgi;
    uwsgi_temp_path {w}/tmp/uwsgi;
    scgi_temp_path {w}/tmp/scgi;
{self.http_extra}
    include {self.conf_dir}/*.conf;
}}
"""
        )

    def write_conf(self, name: str, text: str) -> Path:
        """Write ``conf.d/<name>`` (``.conf`` appended if missing); returns the path."""
        if not name.endswith(".conf"):
            name += ".conf"
        path = self.conf_dir / name
        path.write_text(text)
        return path

    def remove_conf(self, name: str) -> None:
        if not name.endswith(".conf"):
            name += ".conf"
        (self.conf_dir / name).unlink(missing_ok=True)

    def config_test(self) -> subprocess.CompletedProcess[str]:
        """Run ``nginx -t`` (never raises; check ``.returncode`` / ``.stderr``)."""
        require_binary(self.binary, "nginx-light")
        return subprocess.run(self.test_argv, capture_output=True, text=True, timeout=30)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, *, wait_ports: tuple[int, ...] = (), timeout: float = 10.0) -> Nginx:
        """Start the master in the foreground; return once it wrote its pid file and workers
        run (and every port in ``wait_ports`` accepts connections)."""
        if self._proc is not None and self._proc.poll() is None:
            raise ServerError("nginx already running")
        require_binary(self.binary, "nginx-light")
        self.pid_file.unlink(missing_ok=True)
        self._proc = spawn(self.start_argv, self.stdout_log, cwd=self.workdir)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self._proc.poll() is not None:
                    raise ServerError(f"nginx exited with status {self._proc.returncode}")
                if self._read_pid() == self._proc.pid and children_of(self._proc.pid):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nginx did not start within {timeout}s")
                time.sleep(0.01)
            for port in wait_ports:
                wait_for_port(LOOPBACK, port, timeout, proc=self._proc)
        except BaseException as exc:
            self.stop()
            raise ServerError(f"nginx did not start: {exc}\n{self.diagnostics()}") from exc
        return self

    def reload(
        self, *, wait: bool = True, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        """``nginx -s reload``; with ``wait``, return once the old workers were replaced.

        Raises ``ServerError`` if the reload command fails (e.g. a bad config) or the master
        keeps its old workers (it logs the reason in error.log).
        """
        if self._proc is None or self._proc.poll() is not None:
            raise ServerError("nginx is not running")
        old_workers = set(children_of(self._proc.pid))
        result = subprocess.run(self.reload_argv, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise ServerError(
                f"nginx -s reload failed ({result.returncode}): {result.stderr}\n"
                f"{self.diagnostics()}"
            )
        if wait:
            self.wait_workers_replaced(old_workers, timeout)
        return result

    def wait_workers_replaced(self, old_workers: Iterable[int], timeout: float = 10.0) -> None:
        """Block until none of ``old_workers`` serves any more and new workers run: how to wait
        for a reload that someone else triggered (e.g. mamoru running ``reload_argv``)::

            before = nginx.worker_pids()
            run_mamoru_install(...)
            nginx.wait_workers_replaced(before)
        """
        old = set(old_workers)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise ServerError(f"nginx is not running\n{self.diagnostics()}")
            current = set(children_of(self._proc.pid))
            if current and not (current & old):
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"nginx reload: workers {sorted(old)} not replaced within "
                    f"{timeout}s (config rejected?)\n{self.diagnostics()}"
                )
            time.sleep(0.01)

    # ---- state (lifecycle, pid, running, logs: ForegroundServer) ----------------------

    def worker_pids(self) -> list[int]:
        return self._children()
