"""Apache httpd: generated virtual hosts (site mode) or snippets (include mode), and commands.

Site mode writes `<conf_dir>/mamoru-<site>.conf`: a `<VirtualHost>` with mod_ssl for every name
of the site and, with `redirect: true`, a plain-HTTP `<VirtualHost>` that serves
/.well-known/acme-challenge/ from the challenge webroot (mod_alias) and 301-redirects everything
else to https:// (mod_rewrite). HSTS needs mod_headers.

`Listen` lines — the choice, and why. Apache refuses two `Listen` lines for the same address
("Cannot define multiple Listeners", caught by the config test), and worse, accepts `Listen 8443`
beside `Listen 127.0.0.1:8443` in the config test but then cannot bind the second socket, so a
graceful restart stops the server. Distributions listen on 80 and 443 in their own files
(Debian's ports.conf, RHEL's httpd.conf and ssl.conf). So before writing, mamoru asks Apache
which files it reads (`<test command> -D DUMP_INCLUDES`) and collects their `Listen` lines:

- a user's `Listen` that already covers the address (same address, or every address on that
  port) -> mamoru writes no `Listen` for it;
- a user's `Listen` on the same port that cannot coexist with the configured address (one is
  every address, the other one address) -> mamoru refuses and says which line to change;
- nobody listens on it -> mamoru writes the `Listen`, wrapped in `<IfDefine>`/`Define` guards so
  that two mamoru sites on one port produce it once.

When Apache cannot list its files (a custom test command), mamoru writes `Listen` for every
port except 80 and 443, which every stock configuration already listens on.

Include mode writes `mamoru-<site>-tls.inc` (and `mamoru-<site>-redirect.inc`) for the user's own
`<VirtualHost>` blocks; the `.inc` ending keeps them out of `IncludeOptional *.conf` globs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mamoru.config.model import Site
from mamoru.install.base import (
    ACME_CHALLENGE_PATH,
    TLS12_CIPHERS,
    CommandInstaller,
    Deployment,
    IncludeLine,
    InstallRefused,
    header,
    https_suffix,
    is_mamoru_file,
    listen_address,
    quote,
    redirect_file,
    run_command,
    site_file,
    tls_file,
    write_owned,
)

STANDARD_PORTS = (80, 443)
_CHALLENGE_PATTERN = "^" + ACME_CHALLENGE_PATH.replace(".", "\\.")  # a regex for RewriteCond


def vhost_address(raw: str) -> str:
    """The <VirtualHost> address for a listen setting: "443" -> "*:443", else as given."""
    return f"*:{raw}" if raw.isdigit() else raw


# --- Listen -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserListen:
    host: str | None  # None: every address
    port: int
    where: str  # "file:line"


_LISTEN = re.compile(r"^\s*Listen\s+(\S+)", re.IGNORECASE)
_INCLUDED = re.compile(r"^\s*\((?:\*|\d+)\)\s+(\S.*?)\s*$", re.MULTILINE)


def parse_listens(text: str, where: str) -> list[UserListen]:
    """The `Listen` directives in one config file's text (conditional ones count too: safer
    to assume an `<IfModule>` around it is true)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _LISTEN.match(line)
        if not match:
            continue
        raw = match.group(1)
        try:
            host, port = listen_address(raw)
        except InstallRefused:
            continue  # ${VARIABLE} or a form we cannot read: Apache's own test judges it
        found.append(UserListen(host, port, f"{where}:{number}"))
    return found


def listens_needed(wanted: Sequence[str], existing: Sequence[UserListen] | None
                   ) -> list[str]:
    """Which of the `wanted` listen settings mamoru must write a `Listen` for, given the
    user's `existing` ones (None: unknown, so every port but 80 and 443). Raises
    InstallRefused when a wanted address and a user's `Listen` cannot both be bound."""
    needed = []
    for raw in wanted:
        host, port = listen_address(raw)
        if existing is None:
            if port not in STANDARD_PORTS:
                needed.append(raw)
            continue
        same_port = [e for e in existing if e.port == port]
        if any(theirs.host is None or theirs.host == host for theirs in same_port):
            continue  # already listened on: a second Listen would be an error
        if host is None and same_port:
            theirs = same_port[0]
            raise InstallRefused(
                f"Apache already listens on {theirs.host}:{port} ({theirs.where}), and the "
                f"site's listen setting {raw!r} means every address on port {port}: Apache "
                "cannot bind both and would stop at its next restart",
                hint=f"Set the site's server.listen to \"{theirs.host}:{port}\", or change "
                     f"that Listen line to `Listen {port}`.")
        needed.append(raw)
    return needed


def _define_name(raw: str) -> str:
    return "MAMORU_LISTEN_" + re.sub(r"[^A-Za-z0-9]", "_", raw)


def listen_block(raw: str, protocol: str) -> str:
    name = _define_name(raw)
    return (f"<IfDefine !{name}>\n    Define {name}\n    Listen {raw} {protocol}\n"
            "</IfDefine>\n")


# --- rendering ----------------------------------------------------------------------------------


def _indent(lines: Sequence[str], depth: int = 1) -> str:
    pad = "    " * depth
    return "".join(f"{pad}{line}\n" if line else "\n" for line in lines)


def _names(site: Site) -> list[str]:
    first, *others = site.domains
    lines = [f"ServerName {first}"]
    if others:
        lines.append(f"ServerAlias {' '.join(others)}")
    return lines


def tls_directives(site: Site, live_dir: str) -> list[str]:
    live = os.path.join(live_dir, site.name)
    lines = [
        "SSLEngine on",
        # Apache 2.4.8+ reads the intermediates from the same file as the certificate.
        f"SSLCertificateFile {quote(os.path.join(live, 'fullchain.pem'))}",
        f"SSLCertificateKeyFile {quote(os.path.join(live, 'privkey.pem'))}",
        "SSLProtocol -all +TLSv1.2 +TLSv1.3",
        f"SSLCipherSuite {TLS12_CIPHERS}",
        "SSLHonorCipherOrder off",
    ]
    if site.server.hsts:
        lines.append(f'Header always set Strict-Transport-Security "max-age={site.server.hsts}"')
    return lines


def redirect_directives(site: Site) -> list[str]:
    lines = []
    if site.challenge.webroot:
        challenge_dir = os.path.join(site.challenge.webroot, ".well-known", "acme-challenge")
        lines += [
            f"Alias {ACME_CHALLENGE_PATH} {quote(challenge_dir + '/')}",
            f"<Directory {quote(challenge_dir)}>",
            "    Require all granted",
            "</Directory>",
        ]
    # %{SERVER_NAME} is the requested host name without its port (UseCanonicalName Off, the
    # default); the query string is kept by mod_rewrite.
    lines += [
        "RewriteEngine on",
        f"RewriteCond %{{REQUEST_URI}} !{_CHALLENGE_PATTERN}",
        f"RewriteRule ^ https://%{{SERVER_NAME}}{https_suffix(site)}%{{REQUEST_URI}} [R=301,L]",
    ]
    return lines


def render_site(site: Site, live_dir: str, listens: Sequence[str]) -> str:
    """The complete site-mode file; `listens` are the listen settings that need a `Listen`."""
    server = site.server
    text = header(site, "HTTPS virtual host" + (" and HTTP->HTTPS redirect"
                                                 if server.redirect else ""))
    text += "\n"
    for raw in listens:
        text += listen_block(raw, "https" if raw == server.listen_https else "http")
    https = [*_names(site)]
    if server.root:
        https += [f"DocumentRoot {quote(server.root)}", f"<Directory {quote(server.root)}>",
                  "    Require all granted", "</Directory>"]
    https += ["", *tls_directives(site, live_dir)]
    text += (f"\n<VirtualHost {vhost_address(server.listen_https)}>\n{_indent(https)}"
             "</VirtualHost>\n")
    if server.redirect:
        plain = [*_names(site), "", *redirect_directives(site)]
        text += (f"\n<VirtualHost {vhost_address(server.listen_http)}>\n{_indent(plain)}"
                 "</VirtualHost>\n")
    return text


def render_tls(site: Site, live_dir: str) -> str:
    return (header(site, "TLS directives", "Include this file inside your HTTPS <VirtualHost>.")
            + "\n" + _indent(tls_directives(site, live_dir), 0))


def render_redirect(site: Site) -> str:
    return (header(site, "HTTP->HTTPS redirect",
                   "Include this file inside your plain-HTTP <VirtualHost>.")
            + "\n" + _indent(redirect_directives(site), 0))


_MODULE_HINTS = (
    ("Invalid command 'SSL", "mod_ssl is not enabled: run `a2enmod ssl` (Debian)."),
    ("Invalid command 'Rewrite", "mod_rewrite is not enabled: run `a2enmod rewrite` (Debian)."),
    ("Invalid command 'Header'",
     "mod_headers is not enabled (needed for hsts): run `a2enmod headers` (Debian)."),
    ("Invalid command 'Alias'", "mod_alias is not enabled: run `a2enmod alias` (Debian)."),
    ("Cannot define multiple Listeners",
     "Two Listen lines name the same address: remove one (mamoru writes a Listen only for "
     "addresses no other file listens on)."),
)


class ApacheInstaller(CommandInstaller):
    kind = "apache"
    server_name = "Apache"

    def included_files(self) -> set[str] | None:
        """Every file Apache's config reads (`<test> -D DUMP_INCLUDES`), or None."""
        if self.test_argv is None:
            return None
        result = run_command([*self.test_argv, "-D", "DUMP_INCLUDES"], self.timeout)
        if "Included configuration files" not in result.output:
            return None
        return {os.path.realpath(path) for path in _INCLUDED.findall(result.output)}

    def user_listens(self) -> list[UserListen] | None:
        """The `Listen` lines in the files Apache reads, mamoru's own files left out."""
        files = self.included_files()
        if files is None:
            return None
        found = []
        for path in sorted(files):
            if is_mamoru_file(path):
                continue
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    found += parse_listens(handle.read(), path)
            except OSError:
                continue
        return found

    def files(self, site: Site, live_dir: str) -> dict[str, str]:
        server = site.server
        if server.mode == "include":
            files = {tls_file(site): render_tls(site, live_dir)}
            if server.redirect:
                files[redirect_file(site)] = render_redirect(site)
            return files
        wanted = [server.listen_https] + ([server.listen_http] if server.redirect else [])
        listens = listens_needed(wanted, self.user_listens())
        return {site_file(site): render_site(site, live_dir, listens)}

    def deploy(self, site: Site, live_dir: str) -> Deployment:
        deployment = write_owned(self.files(site, live_dir), site.name)
        if site.server.mode == "include":
            server = site.server
            deployment.includes.append(IncludeLine(
                tls_file(site), f"Include {tls_file(site)}",
                f"inside `<VirtualHost {vhost_address(server.listen_https)}>` with ServerName "
                f"{site.domains[0]}", "tls"))
            if server.redirect:
                deployment.includes.append(IncludeLine(
                    redirect_file(site), f"Include {redirect_file(site)}",
                    f"inside `<VirtualHost {vhost_address(server.listen_http)}>` with "
                    f"ServerName {site.domains[0]}", "redirect"))
        return deployment

    def config_hint(self, output: str) -> str | None:
        for needle, hint in _MODULE_HINTS:
            if needle in output:
                return hint
        return None
