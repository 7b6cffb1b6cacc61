"""What every installer shares: the `Installer` seam, the command installer every server type
builds on, and the include-mode files of the servers whose config mamoru writes.

An installer knows one server: which files to write for a site (files.py keeps them mamoru's
own), how to test its config and how to reload it (commands.py runs the commands). The
transaction (transaction.py) decides when each step runs and what to put back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from mamoru.config.model import Site
from mamoru.errors import ConfigTestFailed, ReloadFailed
from mamoru.install.commands import OUTPUT_TAIL, CommandResult, important_lines, run_command
from mamoru.install.files import (
    Deployment,
    IncludeLine,
    header,
    indent,
    quote,
    redirect_file,
    restore,
    site_file,
    tls_file,
    write_owned,
)
from mamoru.install.listen import https_suffix

# TLS 1.2 and 1.3 only. For TLS 1.2, forward-secret AEAD suites (ECDHE with AES-GCM or
# ChaCha20-Poly1305) in both ECDSA and RSA flavours, so either key type works; TLS 1.3 suites
# are all modern and left to the library. No DHE (it needs a dhparam file) and no OCSP
# stapling (Let's Encrypt switched its responders off in 2025; nginx would only warn).
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
# What mamoru's temporary plain-HTTP server (install/bootstrap.py) answers for everything but
# the challenge path while a site's first certificate is on its way: 503, as the site is not
# there yet, with a line a person understands.
BOOTSTRAP_STATUS = 503
BOOTSTRAP_TEXT = "This site's secure address is being set up. Please try again in a minute."


def live_files(live: str) -> tuple[str, str]:
    """The quoted paths of the certificate chain and the private key in a site's live
    directory `live`, as the server's config names them (nginx and Apache 2.4.8+ read the
    intermediates from the certificate's file)."""
    return quote(os.path.join(live, "fullchain.pem")), quote(os.path.join(live, "privkey.pem"))


# --- the seam ---------------------------------------------------------------------------------


class Installer(Protocol):
    """Puts a site's certificate (the files in its live directory) into a web server.

    One installer serves one site's `server:` settings. The transaction calls deploy, then
    flips the site's live link, then config_test, reload, and on any failure rollback; it holds
    the site's lock, so an installer never runs twice for one site at once (different sites'
    installers may run concurrently)."""

    kind: str  # nginx | apache | command
    server_name: str  # how messages name the server: nginx | Apache | the server

    def deploy(self, site: Site, live: str) -> Deployment:
        """Write the generated config file(s) for `site`, whose certificate and key the server
        reads from the directory `live` (Storage.live_path), atomically, all or nothing.
        Returns what to restore. Raises InstallRefused or StorageError, having changed
        nothing."""
        ...

    def config_test(self) -> CommandResult:
        """Run the server's config test. Raises ConfigTestFailed carrying the server's output
        when the config is rejected (or the test cannot run)."""
        ...

    def reload(self) -> CommandResult:
        """Ask the server to load its config again. Raises ReloadFailed with the command's
        output when the command fails or times out. The server may finish reloading after
        this returns (verification waits for it)."""
        ...

    def rollback(self, deployment: Deployment) -> list[str]:
        """Put back the files `deployment` changed. Returns problems found (never raises)."""
        ...


class CommandInstaller:
    """Runs the configured test and reload argv; writes no files of its own. The server reads
    live/<site>/fullchain.pem and privkey.pem directly (type `command`, and the base of the
    nginx and Apache installers)."""

    kind = "command"
    server_name = "the server"

    def __init__(self, test: Sequence[str] | None, reload: Sequence[str], timeout: float
                 ) -> None:
        self.test_argv = tuple(test) if test else None
        self.reload_argv = tuple(reload)
        self.timeout = timeout

    def deploy(self, site: Site, live: str) -> Deployment:
        return Deployment(site.name)

    def config_test(self) -> CommandResult:
        if self.test_argv is None:
            return CommandResult((), 0, "", 0.0)
        result = run_command(self.test_argv, self.timeout)
        if not result.ok:
            raise ConfigTestFailed(
                f"{self.server_name} rejected its config: {result.describe()}: "
                f"{important_lines(result.output)}",
                output=result.output[-OUTPUT_TAIL:], hint=self.config_hint(result.output))
        return result

    def reload(self) -> CommandResult:
        result = run_command(self.reload_argv, self.timeout)
        if not result.ok:
            raise ReloadFailed(
                f"reloading {self.server_name} failed: {result.describe()}"
                + (f": {important_lines(result.output)}" if result.output.strip() else ""),
                output=result.output[-OUTPUT_TAIL:],
                hint="Check that the server runs and that server.reload is the right command; "
                     "the previous certificate and config were put back.")
        return result

    def rollback(self, deployment: Deployment) -> list[str]:
        return restore(deployment)

    def config_hint(self, output: str) -> str | None:
        """A hint for a rejected config, from the server's output (None: the default)."""
        return None


class ConfigWritingInstaller(CommandInstaller):
    """A server whose config mamoru writes (nginx, Apache), in either mode of `server.mode`:

    - site: one complete file, `mamoru-<site>.conf`, that the server's own `*.conf` glob picks up;
    - include: `mamoru-<site>-tls.inc` (and, with `redirect: true`, `mamoru-<site>-redirect.inc`)
      for the user's own blocks to include, and the exact include lines to add, which the
      deployment carries so messages can name them.

    A subclass supplies the server's words: the site file, the TLS and redirect directives, the
    include directive and where it goes."""

    tls_use = ""  # the header line of the TLS snippet: where to include it
    redirect_use = ""  # the same for the redirect snippet

    def site_config(self, site: Site, live: str) -> str:
        """The whole site-mode file."""
        raise NotImplementedError

    def tls_lines(self, chain: str, key: str) -> list[str]:
        """The directives that load the certificate `chain` and `key` (quoted paths) and set
        the protocols and ciphers."""
        raise NotImplementedError

    def hsts_line(self, max_age: int) -> str:
        """The directive that sends Strict-Transport-Security with `max_age` seconds."""
        raise NotImplementedError

    def challenge_lines(self, webroot: str) -> list[str]:
        """The plain-HTTP block's answer to ACME challenges: files under `webroot`."""
        raise NotImplementedError

    def redirect_lines(self, https_suffix: str) -> list[str]:
        """The plain-HTTP block's 301 to https://<host><https_suffix><path>."""
        raise NotImplementedError

    def tls_directives(self, site: Site, live: str) -> list[str]:
        """The HTTPS block's TLS directives for `site` (certificate in the directory `live`),
        and HSTS when the site asks for it."""
        lines = self.tls_lines(*live_files(live))
        if site.server.hsts:
            lines.append(self.hsts_line(site.server.hsts))
        return lines

    def redirect_directives(self, site: Site) -> list[str]:
        """The plain-HTTP block's body: ACME challenges from the webroot (when the site has
        one), a 301 to https:// for everything else."""
        webroot = site.challenge.webroot
        return ((self.challenge_lines(webroot) if webroot else [])
                + self.redirect_lines(https_suffix(site)))

    def bootstrap_config(self, site: Site) -> str:
        """The site-mode file before the first certificate: only the plain-HTTP server, which
        answers ACME challenges from the webroot and everything else with BOOTSTRAP_TEXT
        (install/bootstrap.py)."""
        raise NotImplementedError

    def include_line(self, path: str) -> str:
        """The server's directive that includes `path`."""
        raise NotImplementedError

    def include_where(self, site: Site, purpose: str) -> str:
        """Where the include line for `purpose` (tls | redirect) goes in the user's config."""
        raise NotImplementedError

    def files(self, site: Site, live: str) -> dict[str, str]:
        """path -> text of every file `site` needs."""
        if site.server.mode != "include":
            return {site_file(site): self.site_config(site, live)}
        files = {tls_file(site): header(site, "TLS directives", self.tls_use) + "\n"
                 + indent(self.tls_directives(site, live), 0)}
        if site.server.redirect:
            files[redirect_file(site)] = (header(site, "HTTP->HTTPS redirect", self.redirect_use)
                                          + "\n" + indent(self.redirect_directives(site), 0))
        return files

    def deploy(self, site: Site, live: str) -> Deployment:
        deployment = write_owned(self.files(site, live), site.name)
        if site.server.mode == "include":
            snippets = [("tls", tls_file(site))]
            if site.server.redirect:
                snippets.append(("redirect", redirect_file(site)))
            deployment.includes = [
                IncludeLine(path, self.include_line(path), self.include_where(site, purpose),
                            purpose) for purpose, path in snippets]
        return deployment
