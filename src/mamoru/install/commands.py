"""Which installer a site gets, and the default test/reload commands for each server type.

Defaults: when systemd runs the server, the reload goes through it (`systemctl reload nginx`,
`apache2` or `httpd`), so the unit's state stays true, and nginx's config test runs through
PID 1 too (`systemd-run ... nginx -t`): inside mamoru.service's sandbox a direct `nginx -t`
cannot open the pid file, the logs and the ports it checks (see systemd/mamoru.service).
Otherwise `nginx -t` and `nginx -s reload`. Apache: `apachectl -t` (it only reads files, so it
works in the sandbox) and, without systemd, `apachectl -k graceful`. Explicit `server.test` /
`server.reload` always win.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from mamoru.config.model import Site
from mamoru.install.apache import ApacheInstaller
from mamoru.install.base import CommandInstaller, Installer, run_command
from mamoru.install.nginx import NginxInstaller

DETECT_TIMEOUT = 5.0
SYSTEMD_UNITS = {"nginx": ("nginx",), "apache": ("apache2", "httpd")}
DIRECT_RELOAD = {"nginx": ("nginx", "-s", "reload"), "apache": ("apachectl", "-k", "graceful")}
DEFAULT_TEST = {"nginx": ("nginx", "-t"), "apache": ("apachectl", "-t")}


def systemd_running() -> bool:
    """True when systemd is the init system (sd_booted(3): /run/systemd/system exists)."""
    return os.path.isdir("/run/systemd/system")


def unit_active(unit: str) -> bool:
    return run_command(["systemctl", "is-active", "--quiet", unit], DETECT_TIMEOUT).ok


def systemd_unit(server_type: str, *, systemd: Callable[[], bool] = systemd_running,
                 active: Callable[[str], bool] = unit_active) -> str | None:
    """The systemd unit running the server of `server_type`, or None (not under systemd)."""
    if systemd():
        for unit in SYSTEMD_UNITS[server_type]:
            if active(unit):
                return unit
    return None


def default_reload(server_type: str, *, systemd: Callable[[], bool] = systemd_running,
                   active: Callable[[str], bool] = unit_active) -> tuple[str, ...]:
    """The reload argv for `server_type` (nginx | apache) on this machine."""
    unit = systemd_unit(server_type, systemd=systemd, active=active)
    return ("systemctl", "reload", unit) if unit else DIRECT_RELOAD[server_type]


def default_test(server_type: str, unit: str | None) -> tuple[str, ...]:
    """The config-test argv; nginx under systemd is tested through PID 1 (see above)."""
    if server_type == "nginx" and unit is not None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        return ("systemd-run", "--quiet", "--wait", "--pipe", "--collect",
                "--service-type=exec", binary, "-t")
    return DEFAULT_TEST[server_type]


def installer_for(site: Site, *, systemd: Callable[[], bool] = systemd_running,
                  active: Callable[[str], bool] = unit_active) -> Installer:
    """The installer for `site`'s server settings (type nginx, apache or command)."""
    server = site.server
    timeout = server.command_timeout
    if server.type == "command":
        assert server.reload is not None  # the loader requires it for type command
        return CommandInstaller(server.test, server.reload, timeout)
    if server.type not in DEFAULT_TEST:
        raise ValueError(f"no installer for server type {server.type!r}")
    unit = None
    if not (server.test and server.reload):
        unit = systemd_unit(server.type, systemd=systemd, active=active)
    test = server.test or default_test(server.type, unit)
    reload = server.reload or (("systemctl", "reload", unit) if unit
                               else DIRECT_RELOAD[server.type])
    if server.type == "nginx":
        return NginxInstaller(test, reload, timeout)
    return ApacheInstaller(test, reload, timeout)
