"""Knot DNS (Debian ``knot``) as an authoritative primary on 127.0.0.1, for dns-01 tests:
a second, independent implementation of RFC 2136 beside BIND (they answer updates
differently: Knot applies an update through its journal and answers NOTAUTH/REFUSED in its
own way).

Same interface as :class:`tests.servers.bind.Bind`. Runs ``knotd -c <dir>/knot.conf`` in the
foreground as user ``knot`` (stopped by PID) on a free 127.0.0.1 port. Each updatable zone has
an ACL granting the key ``action: update`` with ``update-type: TXT``; a zone with
``updatable=False`` has no update ACL (Knot answers NOTAUTH with TSIG error BADKEY). The log
is ``<workdir>/knotd.log``.

With ``primary=PORT`` it is instead a *secondary* of the server on 127.0.0.1:PORT for every
zone: it loads them by zone transfer and asks for a new serial every SOA refresh interval
(the zone's ``refresh``; Knot's minimum is 2 s). The primaries here send no NOTIFY, so a
secondary lags by up to that interval: the real shape of a lagging secondary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .authdns import AuthoritativeServer, TestKey, Zone, give, private_dir, remove_dir
from .ports import LOOPBACK, free_port
from .process import ServerError, require_binary, spawn, stop_process, tail

KNOTD_BIN = "/usr/sbin/knotd"
USER = "knot"


class Knot(AuthoritativeServer):
    def __init__(self, workdir: str | os.PathLike[str], *, zones: Sequence[Zone],
                 key: TestKey | None = None, primary: int | None = None) -> None:
        self.primary = primary  # a port on 127.0.0.1: serve the zones as its secondary
        self.workdir = Path(workdir)
        self.zones = list(zones)
        self.key = key or TestKey()
        self.port = 0
        self.log_path = self.workdir / "knotd.log"
        self._dir: Path | None = None
        self._proc = None

    def _config(self, directory: Path) -> str:
        zones = []
        for zone in self.zones:
            if self.primary is not None:  # no zone file: it comes by zone transfer
                zones.append(f"  - domain: {zone.name}\n    master: primary\n"
                             "    acl: [notify, transfer]\n")
                continue
            give(directory / f"{zone.name}.zone", USER, zone.text(), 0o644)
            acl = "[update, transfer]" if zone.updatable else "[transfer]"
            zones.append(f"  - domain: {zone.name}\n    acl: {acl}\n")
        remote = (f"remote:\n  - id: primary\n    address: {LOOPBACK}@{self.primary}\n\n"
                  if self.primary is not None else "")
        return f"""server:
    rundir: "{directory}"
    user: {USER}:{USER}
    listen: {LOOPBACK}@{self.port}
    background-workers: 1
    udp-workers: 1
    tcp-workers: 1

log:
  - target: stderr
    any: info

database:
    storage: "{directory}/db"

key:
  - id: {self.key.name}
    algorithm: {self.key.algorithm}
    secret: {self.key.secret}

{remote}acl:
  - id: notify
    address: 127.0.0.0/8
    action: notify
  - id: update
    key: {self.key.name}
    action: update
    update-type: TXT
  - id: transfer
    address: 127.0.0.0/8
    action: transfer

template:
  - id: default
    storage: "{directory}"
    file: "%s.zone"
    semantic-checks: off

zone:
{"".join(zones)}"""

    def start(self) -> Knot:
        knotd = require_binary(KNOTD_BIN, "knot")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._dir = private_dir(USER, "mamoru-knot-")
        self.port = free_port(udp=True)
        conf = self._dir / "knot.conf"
        database = self._dir / "db"
        database.mkdir(mode=0o700)
        shutil.chown(database, USER, USER)
        give(conf, USER, self._config(self._dir), 0o600)
        try:
            self._proc = spawn([knotd, "-c", str(conf)], self.log_path)
            self.wait_serving(lambda: self._proc is not None and self._proc.poll() is None)
        except BaseException as error:
            self.stop()
            raise ServerError(f"Knot did not start: {error}\n--- knotd.log ---\n"
                              f"{tail(self.log_path)}") from error
        return self

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
        remove_dir(self._dir)
        self._dir = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Knot:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
