"""The first certificate on a web server that has no port-80 server yet.

A brand-new clinic site in site mode has nothing that answers http://<name>/ before its first
certificate: a fresh nginx or Apache, or one whose distribution default site was removed. The
CA's http-01 validation would find the port closed. So, before the first order, mamoru writes
the site's own file (`mamoru-<site>.conf`) with only its plain-HTTP server: the ACME challenge
path served from the site's webroot, everything else answered with a short plain-text page (no
redirect yet: there is no HTTPS to send anyone to). It tests the config, reloads, and waits
until a probe file in the webroot is served for the site's first name. Then the order runs,
and the install transaction replaces the file with the full site (HTTPS server and the
redirecting plain-HTTP server, which keeps serving the challenge path for every renewal).

When anything fails (the config test, the reload, the order, the install), `take_down` puts
the file back as it was before the bootstrap (removed, usually) and reloads again, so the
server is left exactly as mamoru found it.

Only for site mode with `redirect: true` and an http-01 webroot: that is when the full site has
its own plain-HTTP server, so the bootstrap is the same server without the redirect. In
include mode and with `redirect: false` the user's own blocks answer port 80.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mamoru.config.model import Site
from mamoru.errors import ConfigTestFailed, InstallError, MamoruError, ReloadFailed
from mamoru.netaddr import connect_address, show_address
from mamoru.observe.events import Events

if TYPE_CHECKING:  # imported when a bootstrap is put up: most runs only ask needed()
    from mamoru.install.base import Installer
    from mamoru.install.files import Deployment

PROBE_TIMEOUT = 10.0
"""Seconds to wait for the reloaded server to serve the probe file (nginx and Apache load a
new config in well under a second; a slow machine gets the rest)."""

PROBE_INTERVAL = 0.05


def needed(site: Site, has_certificate: bool) -> bool:
    """Whether `site`'s first order needs mamoru's own port-80 server first: a site-mode
    nginx or Apache site with the redirect (so its full file has a plain-HTTP server), http-01
    from a webroot, and no certificate installed yet."""
    server, challenge = site.server, site.challenge
    return (not has_certificate and server.type in ("nginx", "apache")
            and server.mode == "site" and server.redirect
            and challenge.type == "http-01" and challenge.webroot is not None)


@dataclass
class Bootstrap:
    """mamoru's temporary port-80 server for one site: `put_up`, then `take_down` on failure
    (after a successful install the full site file has replaced it and nothing is left to
    take down)."""

    site: Site
    installer: Installer
    events: Events
    deployment: Deployment | None = None
    reloaded: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.emit(kind, self.site.name, **fields)

    def put_up(self, probe: Callable[[], tuple[str, bytes]] | None = None,
               cleanup: Callable[[], None] | None = None) -> None:
        """Write the port-80-only site file, test the config, reload, and (with `probe`, which
        puts a file in the webroot and returns its challenge path and content) wait until the
        server answers with it. Raises ConfigTestFailed or ReloadFailed having put everything
        back; a server that never serves the probe is a warning, not an error (the CA's own
        validation is the judge: it may reach the server where mamoru cannot)."""
        from mamoru.install.base import ConfigWritingInstaller
        from mamoru.install.files import site_file, write_owned

        installer = self.installer
        assert isinstance(installer, ConfigWritingInstaller)
        started = time.monotonic()
        path = site_file(self.site)
        self.deployment = write_owned({path: installer.bootstrap_config(self.site)},
                                      self.site.name)
        try:
            tested = installer.config_test()
            self.reloaded = True  # a reload that fails may still have been half applied
            installer.reload()
        except (ConfigTestFailed, ReloadFailed) as error:
            raise self._failed(error) from None
        except BaseException as error:
            self.take_down(error)
            raise
        served = None
        if probe is not None:
            try:
                served = self.wait_for(*probe())
            finally:
                if cleanup is not None:
                    cleanup()
        address = _http_address(self.site)
        self.timings["bootstrap"] = time.monotonic() - started
        self.emit("port80-up", server=installer.kind, file=path, address=_where(address),
                  command=tested.command or None, served=served,
                  duration=round(self.timings["bootstrap"], 3),
                  level=4 if served is False else None)

    def wait_for(self, path: str, content: bytes, timeout: float = PROBE_TIMEOUT) -> bool | None:
        """Whether the server answers GET `path` (Host: the site's first name) with `content`
        within `timeout` seconds (None: no address to ask)."""
        from mamoru.check.fetch import exchange
        from mamoru.check.tls import Deadline, tcp_connect

        address = _http_address(self.site)
        if address is None:
            return None
        host = self.site.domains[0]
        end = time.monotonic() + timeout
        while True:
            deadline = Deadline(min(2.0, max(end - time.monotonic(), 0.1)))
            try:
                sock = tcp_connect(address, deadline)
                try:
                    answer = exchange(sock, host, path, deadline, read_body=True)
                finally:
                    sock.close()
                if answer.status == 200 and answer.body.strip() == content.strip():
                    return True
            except (OSError, ValueError):  # refused, reset, timed out, not HTTP
                pass
            if time.monotonic() >= end:
                return False
            time.sleep(PROBE_INTERVAL)

    def take_down(self, error: BaseException | None = None) -> list[str]:
        """Put the site file back as it was before `put_up` and reload again if the server
        was reloaded. Returns the problems met (never raises)."""
        if self.deployment is None:
            return []
        from mamoru.install.files import restore

        problems = restore(self.deployment)
        self.deployment = None
        reloaded_again = False
        if self.reloaded:
            try:
                self.installer.reload()
                reloaded_again = True
            except (ReloadFailed, InstallError) as reload_error:
                problems.append(f"reloading again failed: {reload_error}")
        self.reloaded = False
        self.emit("port80-down", server=self.installer.kind,
                  error_class=type(error).__name__ if error is not None else None,
                  reloaded=reloaded_again, problems=problems or None,
                  level=3 if problems else None)
        return problems

    def _failed(self, error: MamoruError) -> MamoruError:
        problems = self.take_down(error)
        what = ("rejected the temporary plain-HTTP server mamoru wrote for the first "
                "certificate" if isinstance(error, ConfigTestFailed)
                else "could not be reloaded with the temporary plain-HTTP server mamoru wrote "
                     "for the first certificate")
        note = f" ({'; '.join(problems)})" if problems else ""
        message = (f"{self.installer.server_name} {what}; it was taken back and nothing was "
                   f"ordered: {error}{note}")
        if isinstance(error, ConfigTestFailed):
            return ConfigTestFailed(message, hint=error.hint, output=error.output)
        assert isinstance(error, ReloadFailed)
        return ReloadFailed(message, hint=error.hint, output=error.output)


def _http_address(site: Site) -> tuple[str, int] | None:
    verify_host = site.server.verify[0] if site.server.verify else None
    address = connect_address(site.server.listen_http)
    if address is not None and verify_host is not None and site.server.listen_http.isdigit():
        return verify_host, address[1]
    return address


def _where(address: tuple[str, int] | None) -> str | None:
    return None if address is None else show_address(*address)


@contextlib.contextmanager
def kept_until_replaced(bootstrap: Bootstrap | None) -> Iterator[Bootstrap | None]:
    """Take the bootstrap down when the block raises (the order or the install failed); after
    a successful install the full site file stands in its place."""
    try:
        yield bootstrap
    except BaseException as error:
        if bootstrap is not None:
            bootstrap.take_down(error)
        raise
