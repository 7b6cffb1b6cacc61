"""BIND 9 (Debian ``bind9``) as an authoritative primary on 127.0.0.1, for dns-01 tests.

Usage::

    key = TestKey()
    with Bind(tmp_path / "bind", zones=[Zone("clinic.test")], key=key) as bind:
        bind.port, bind.address, bind.txt("_acme-challenge.clinic.test")

It runs ``named -g -u bind -n 1 -c <dir>/named.conf`` in the foreground (stopped by PID),
listening on a free 127.0.0.1 port (UDP+TCP), recursion off, zone transfers allowed from
loopback (tests read the zone back with AXFR). Each updatable zone has
``update-policy { grant <key> subdomain <zone>. TXT; }``: the key may change TXT records and
nothing else. A zone with ``updatable=False`` has no update rule: BIND answers REFUSED.
The log is ``<workdir>/named.log``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .authdns import AuthoritativeServer, TestKey, Zone, give, private_dir, remove_dir
from .ports import LOOPBACK, free_port
from .process import ServerError, require_binary, spawn, stop_process, tail

NAMED_BIN = "/usr/sbin/named"
USER = "bind"


class Bind(AuthoritativeServer):
    def __init__(self, workdir: str | os.PathLike[str], *, zones: Sequence[Zone],
                 key: TestKey | None = None, extra_keys: Sequence[TestKey] = ()) -> None:
        self.workdir = Path(workdir)
        self.zones = list(zones)
        self.key = key or TestKey()
        self.extra_keys = list(extra_keys)
        self.port = 0
        self.log_path = self.workdir / "named.log"
        self._dir: Path | None = None
        self._proc = None

    def _config(self, directory: Path) -> str:
        keys = "".join(key.bind_clause() for key in [self.key, *self.extra_keys])
        zones = []
        for zone in self.zones:
            give(directory / f"{zone.name}.zone", USER, zone.text(), 0o644)
            policy = (f"update-policy {{ grant {self.key.name} subdomain {zone.name}. TXT; }};"
                      if zone.updatable else "")
            zones.append(f'zone "{zone.name}" {{ type primary; file "{zone.name}.zone"; '
                         f"{policy} }};")
        return f"""options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    listen-on port {self.port} {{ {LOOPBACK}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ 127.0.0.0/8; }};
}};
controls {{ }};
{keys}
{chr(10).join(zones)}
"""

    def start(self) -> Bind:
        named = require_binary(NAMED_BIN, "bind9")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._dir = private_dir(USER, "mamoru-bind-")
        self.port = free_port(udp=True)
        conf = self._dir / "named.conf"
        give(conf, USER, self._config(self._dir), 0o600)
        try:
            self._proc = spawn([named, "-g", "-u", USER, "-n", "1", "-c", str(conf)],
                               self.log_path)
            self.wait_serving(lambda: self._proc is not None and self._proc.poll() is None)
        except BaseException as error:
            self.stop()
            raise ServerError(f"BIND did not start: {error}\n--- named.log ---\n"
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

    def __enter__(self) -> Bind:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
