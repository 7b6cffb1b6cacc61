"""Putting a stored certificate into service, as a transaction.

    write generated file(s) -> flip live/<site> -> config test -> reload -> verify (per name)

Any failure puts back the previous live/<site> link and the previous generated files, reloads
again if the server had been told to reload, and raises the step's error (ConfigTestFailed,
ReloadFailed, VerifyFailed) carrying the server's own output. A config test failure never
leads to a reload. One exception to "put back": when the previous state fails the config
test itself (a first install in include mode whose include line the user has already added),
mamoru keeps the new files, which passed, rather than leave a config the server would refuse
at its next start; the error says so. A site without a server (type none) only gets its
live/ link flipped.

The installers (nginx.py, apache.py, base.CommandInstaller) know their server; verify.py knows
how to prove what a server serves; this module chooses the installer, tells the story and keeps
the books. It reaches certificates only through the Storage seam (mamoru.storage.base).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mamoru.config.model import Site
from mamoru.errors import (
    Cancelled,
    ConfigTestFailed,
    InstallError,
    MamoruError,
    ReloadFailed,
    StorageError,
    VerifyFailed,
)
from mamoru.install.files import Deployment, IncludeLine, InstallRefused
from mamoru.netaddr import show_address
from mamoru.observe.events import Events
from mamoru.storage.base import Storage
from mamoru.storage.lineage import CertVersion

if TYPE_CHECKING:
    from mamoru.install.base import Installer
    from mamoru.install.verify import VerifyReport

# The installers, the commands and the TLS proof are imported when a site with a server is
# installed: a site without one (and every process that never installs) does not load them.

__all__ = ["InstallRefused", "InstallResult", "install", "installer_for"]


def __getattr__(name: str) -> Any:
    """`Installer` and `served_matches`, still importable from here, loaded on first use."""
    if name == "Installer":
        from mamoru.install import base

        return base.Installer
    if name == "served_matches":
        from mamoru.install import verify

        return verify.served_matches
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class InstallResult:
    """`verified`: every name was proven to serve the new certificate (False when the site's
    server cannot be asked, see verify.verify_address; None when it was down and so not
    reloaded). `timings`: seconds per step."""

    installed: bool
    verified: bool | None
    timings: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class ListsIncludes(Protocol):
    """Optional installer capability: the files the server's config reads right now."""

    def included_files(self) -> set[str] | None: ...


@runtime_checkable
class KnowsKeyMode(Protocol):
    """Optional storage capability: the mode it gives private keys (0640 with a key group)."""

    key_mode: int


def installer_for(site: Site, *, systemd: Callable[[], bool] | None = None,
                  active: Callable[[str], bool] | None = None) -> Installer:
    """The installer for `site`'s server settings (type nginx, apache or command): explicit
    `server.test` / `server.reload` argv, else the defaults for this machine (commands.py;
    `systemd` and `active` answer its questions about this machine's systemd, for tests)."""
    from mamoru.install.apache import ApacheInstaller
    from mamoru.install.base import CommandInstaller
    from mamoru.install.commands import (
        DEFAULT_TEST,
        default_reload,
        default_test,
        systemd_running,
        systemd_unit,
        unit_active,
    )
    from mamoru.install.nginx import NginxInstaller

    systemd = systemd or systemd_running
    active = active or unit_active
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
    reload = server.reload or default_reload(server.type, unit)
    if server.type == "nginx":
        return NginxInstaller(test, reload, timeout)
    return ApacheInstaller(test, reload, timeout)


def install(site: Site, version: CertVersion, storage: Storage, events: Events, *,
            stop: threading.Event | None = None) -> InstallResult:
    """Make `version` the site's live certificate and, with a server, prove it is served.

    Holds no lock itself: the caller holds the site's lock. On failure everything is put back
    as it was and an InstallError (ConfigTestFailed, ReloadFailed, VerifyFailed,
    InstallRefused), a StorageError, or Cancelled (when `stop` was set during verification) is
    raised."""
    if site.server.type == "none":
        previous = storage.activate(version)
        events.emit("installed", site.name, version=version.number,
                    serial=version.meta.get("serial"),
                    previous=previous.meta.get("serial") if previous else None)
        return InstallResult(installed=True, verified=False)
    return _Transaction(site, version, storage, events, installer_for(site), stop).run()


class _Transaction:
    def __init__(self, site: Site, version: CertVersion, storage: Storage, events: Events,
                 installer: Installer, stop: threading.Event | None) -> None:
        self.site, self.version, self.storage, self.events = site, version, storage, events
        self.installer = installer
        self.stop = stop
        self.deployment: Deployment | None = None
        self.flipped = False
        self.previous: CertVersion | None = None
        self.reload_attempted = False
        self.test_output = ""
        self.timings: dict[str, float] = {}
        self._lap_started = time.monotonic()

    def _lap(self, step: str) -> float:
        now = time.monotonic()
        self.timings[step] = now - self._lap_started
        self._lap_started = now
        return self.timings[step]

    def emit(self, kind: str, **fields: Any) -> None:
        """An event about this site; its words come from observe/messages.py."""
        self.events.emit(kind, self.site.name, **fields)

    # -- the story ---------------------------------------------------------------------------

    def run(self) -> InstallResult:
        site, version, installer = self.site, self.version, self.installer
        started = time.monotonic()
        try:
            check_pair(version)
            self.deployment = installer.deploy(site, self.storage.live_path(site.name))
            self.previous = self.storage.activate(version)
            self.flipped = True
            self.emit("installed", version=version.number, serial=version.meta.get("serial"),
                      previous=self.previous.meta.get("serial") if self.previous else None,
                      files=self.deployment.files or None, duration=round(self._lap("deploy"), 3))
            self.key_permissions()

            tested = installer.config_test()
            self.test_output = tested.output
            self.emit("config-test", server=installer.kind, command=tested.command or None,
                      duration=round(self._lap("config_test"), 3),
                      warnings=_warnings(tested.output) or None)

            from mamoru.install.verify import server_down

            down = server_down(site) if self.previous is not None else None
            if down is not None:
                # Never reload a server that is down (`apachectl -k graceful` would start it):
                # the files are in place and tested, so it serves this certificate when
                # someone starts it; the next check reports the server as unreachable. Only
                # for a renewal: a first install always reloads (its ports may not exist yet).
                self.emit("server-unreachable", server=installer.kind, address=_where(down),
                          level=4)
                self.timings["install"] = time.monotonic() - started
                return InstallResult(installed=True, verified=None, timings=self.timings)

            self.reload_attempted = True
            reloaded = installer.reload()
            self.emit("reloaded", server=installer.kind, command=reloaded.command,
                      duration=round(self._lap("reload"), 3))

            verified = self.verify()
            self.timings["install"] = time.monotonic() - started
            return InstallResult(installed=True, verified=verified, timings=self.timings)
        except MamoruError as error:
            raise self.undo(error) from None
        except BaseException as error:  # a bug or an interrupt: still put everything back
            self.undo(error)
            raise

    def verify(self) -> bool:
        from mamoru.install.verify import leaf_der, verify_address, wait_until_served

        address = verify_address(self.site)
        if address is None:
            return False
        report = wait_until_served(address, self.site.domains,
                                   leaf_der(self.version.read("cert.pem")),
                                   timeout=self.site.server.verify_timeout, stop=self.stop)
        self._lap("verify")
        if not report.stable:
            if self.stop is not None and self.stop.is_set():
                raise Cancelled("stopped while proving the new certificate is served; the "
                                "install was rolled back")
            raise self.verify_failed(report)
        self.emit("verified", names=list(self.site.domains), serial=self.version.meta.get("serial"),
                  address=_where(address), duration=round(report.duration, 3),
                  attempts=report.rounds)
        return True

    # -- failure -----------------------------------------------------------------------------

    def undo(self, error: BaseException) -> BaseException:
        """Put back the generated files and the live link, reload again if a reload was
        attempted, and return the error to raise (the original, with what rollback did)."""
        problems: list[str] = []
        if self.deployment is not None:
            problems += self.installer.rollback(self.deployment)
        if self.flipped:
            self.restore_link(problems)
        reloaded_again = kept_new = False
        if self.reload_attempted and (self.deployment is not None and self.deployment.files):
            try:
                self.installer.config_test()
            except ConfigTestFailed:
                kept_new = self.roll_forward(problems)
        if self.reload_attempted:
            try:
                self.installer.reload()
                reloaded_again = True
            except ReloadFailed as reload_error:
                problems.append(f"reloading again after the rollback failed too: {reload_error}")
        already_broken = None
        if isinstance(error, ConfigTestFailed) and self.deployment is not None:
            try:
                self.installer.config_test()
                already_broken = False
            except ConfigTestFailed:
                already_broken = True

        if kept_new:
            problems.append(f"mamoru kept its new files and live/{self.site.name}: without them "
                            f"{self.installer.server_name}'s config fails its test (it "
                            "includes mamoru's files)")
        if self.deployment is not None or self.flipped:
            self.emit("rollback", error_class=type(error).__name__,
                      restored=self.previous.meta.get("serial") if self.previous else None,
                      restored_version=self.previous.number if self.previous else None,
                      kept_new=kept_new or None,
                      files_restored=bool(self.deployment is not None and self.deployment.files)
                      or None, reloaded=reloaded_again, problems=problems or None,
                      level=3 if problems else None)
        if not isinstance(error, MamoruError):
            return error
        note = f" ({'; '.join(problems)})" if problems else ""
        if isinstance(error, ConfigTestFailed) and already_broken is not None:
            return self.config_failed(error, already_broken, note)
        if note and isinstance(error, InstallError):
            return _with_message(error, str(error) + note)
        return error

    def restore_link(self, problems: list[str]) -> None:
        """Point live/<site> back at the previous version (remove it after a first install)."""
        try:
            if self.previous is not None:
                self.storage.activate(self.previous)
            else:
                self.storage.deactivate(self.site.name)
        except StorageError as storage_error:
            problems.append(f"could not restore live/{self.site.name}: {storage_error}")

    def roll_forward(self, problems: list[str]) -> bool:
        """Put the new files and live link back after a rollback whose result fails the
        config test — the previous state was itself broken, typically a first install in
        include mode whose include line the user added already: removing mamoru's file would
        leave a config the server refuses at its next restart. The new state passed the test
        minutes ago, so it is the one to keep. Returns whether it was restored."""
        again: Deployment | None = None
        try:
            again = self.installer.deploy(self.site, self.storage.live_path(self.site.name))
            self.storage.activate(self.version)
            self.installer.config_test()
            return True
        except (InstallError, StorageError) as error:
            problems.append(f"keeping the new files instead did not pass either: {error}")
        # Neither state passes: leave the previous one, as the transaction promises.
        if again is not None:
            problems += self.installer.rollback(again)
        self.restore_link(problems)
        return False

    def config_failed(self, error: ConfigTestFailed, already_broken: bool, note: str
                      ) -> ConfigTestFailed:
        from mamoru.install.commands import important_lines

        name = self.installer.server_name
        lines = important_lines(error.output) or str(error)
        if already_broken:
            message = (f"{name}'s config is broken even without mamoru's change, so nothing was "
                       f"reloaded and the previous certificate stays in service: {lines}")
            hint = (f"Fix the error {name} names above (file and line), then run "
                    "`mamoru provision` again.")
        else:
            message = (f"{name} rejected the config mamoru generated, so nothing was reloaded "
                       f"and the previous certificate stays in service: {lines}")
            hint = error.hint
        return ConfigTestFailed(message + note, hint=hint, output=error.output)

    def verify_failed(self, report: VerifyReport) -> VerifyFailed:
        from mamoru.install.verify import leaf_der
        from mamoru.observe.messages import render

        previous_der = leaf_der(self.previous.read("cert.pem")) if self.previous else None
        old: list[str] = []
        other: list[dict[str, object]] = []
        unreachable: list[dict[str, object]] = []
        for name in report.failed:
            served = report.served[name] if name in report.mismatched else report.last_wrong[name]
            if served.der is None:
                unreachable.append({"name": name, "error": served.error})
            elif served.der == previous_der:
                old.append(name)
            else:
                other.append({"name": name, "serial": served.serial()})
        why, hint = self.explain_mismatch()
        fields: dict[str, object] = {
            "names": report.failed, "address": _where(report.address),
            "duration": round(report.duration, 3), "switching": report.ok or None,
            "old": old or None, "other": other or None, "unreachable": unreachable or None,
            "explanation": why or None,
            "include": [i.line for i in self.deployment.includes] if self.deployment and
            self.deployment.includes else None}
        self.emit("verify-failed", **fields)
        message = render("verify-failed", {k: v for k, v in fields.items() if v is not None},
                         self.site.name)
        return VerifyFailed(message, names=report.failed, hint=hint)

    def explain_mismatch(self) -> tuple[str, str]:
        """Why names usually keep an old certificate, made specific where mamoru can tell."""
        server, kind = self.site.server, self.installer.kind
        deployment = self.deployment
        block = "VirtualHost" if kind == "apache" else "server block"
        if server.type == "command":
            return ("", "Check that the server reads live/<site>/fullchain.pem and privkey.pem "
                    "and that server.reload really makes it load them again.")
        if server.mode == "include" and deployment is not None and deployment.includes:
            tls = next(i for i in deployment.includes if i.purpose == "tls")
            missing = self.missing_includes(deployment)
            if missing is None:
                why = (f"The {block} answering for these names must include mamoru's TLS "
                       f"file: add {tls}")
            elif tls in missing:
                why = (f"{self.installer.server_name}'s config does not include {tls.path}: "
                       f"add {tls}")
            else:
                why = (f"The {block} that includes {tls.path} is not the one answering for "
                       f"these names (another {block} with the same names, loaded first?)")
            others = [i for i in missing or [] if i != tls]
            if others:
                why += f"; also add {'; '.join(map(str, others))}"
            return why + ", then run `mamoru provision` again", (
                f"Add the include line(s) to the {block} for these names, check there is no "
                f"other {block} with the same names, then run `mamoru provision` again.")
        from mamoru.install.commands import important_lines

        conflicts = [line for line in self.test_output.splitlines()
                     if "conflicting server name" in line]
        why = (f"Another {block} answers for these names before mamoru's "
               f"({deployment.files[0] if deployment and deployment.files else 'file'})")
        if conflicts:
            why += f": {important_lines(chr(10).join(conflicts), 3)}"
        return why, (f"Remove or rename the other {block} for these names (or move its names "
                     "to mamoru's file), then run `mamoru provision` again.")

    def missing_includes(self, deployment: Deployment) -> list[IncludeLine] | None:
        """The include lines whose file the server's config does not read (None: unknown)."""
        if not isinstance(self.installer, ListsIncludes):
            return None
        included = self.installer.included_files()
        if included is None:
            return None
        return [i for i in deployment.includes if os.path.realpath(i.path) not in included]

    def key_permissions(self) -> None:
        """Warn when the live key is readable beyond its owner (and the key group)."""
        key = os.path.join(self.storage.live_path(self.site.name), "privkey.pem")
        try:
            mode = stat.S_IMODE(os.stat(key).st_mode)
        except OSError:
            return
        allowed = self.storage.key_mode if isinstance(self.storage, KnowsKeyMode) else 0o600
        if mode & ~allowed:
            self.emit("warning", warning="key-mode", path=key, mode=mode, expected=allowed,
                      level=4)


def check_pair(version: CertVersion) -> None:
    """Refuse a version whose key does not match its certificate: Apache's config test does
    not load certificates, and a graceful restart with a mismatched pair stops the server."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    try:
        cert = x509.load_pem_x509_certificate(version.read("cert.pem"))
        key = load_pem_private_key(version.read("privkey.pem"), password=None)
        matches = key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    except (OSError, ValueError, TypeError) as error:
        raise InstallRefused(f"version {version.name} of {version.site} is unreadable or "
                             f"damaged ({type(error).__name__}); nothing was changed",
                             hint="Run `mamoru provision --force` for a new certificate.") from None
    if not matches:
        raise InstallRefused(f"version {version.name} of {version.site}: the private key does "
                             "not belong to the certificate; nothing was changed",
                             hint="Run `mamoru provision --force` for a new certificate.")


def _warnings(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if "[warn]" in line][:10]


def _where(address: tuple[str, int]) -> str:
    return show_address(*address)


def _with_message(error: InstallError, message: str) -> InstallError:
    from mamoru.install.commands import OUTPUT_TAIL

    if isinstance(error, VerifyFailed):
        return VerifyFailed(message, names=error.names, hint=error.hint, output=error.output)
    return type(error)(message, hint=error.hint, output=error.output[-OUTPUT_TAIL:])
