"""Apache httpd: generated virtual hosts (site mode) or snippets (include mode), and commands.

Site mode writes `<conf_dir>/mamoru-<site>.conf`: a `<VirtualHost>` with mod_ssl for every name
of the site and, with `redirect: true`, a plain-HTTP `<VirtualHost>` that serves
/.well-known/acme-challenge/ from the challenge webroot (mod_alias) and 301-redirects everything
else to https:// (mod_rewrite). HSTS needs mod_headers. The file carries a `Listen` only for
addresses no other file of Apache's listens on (listen.py says why and how), each wrapped in
`<IfDefine>`/`Define` guards so that two mamoru sites on one port produce it once.

Include mode writes `mamoru-<site>-tls.inc` (and `mamoru-<site>-redirect.inc`) for the user's own
`<VirtualHost>` blocks (base.ConfigWritingInstaller); the `.inc` ending keeps them out of
`IncludeOptional *.conf` globs.
"""

from __future__ import annotations

import os
import re

from mamoru.config.model import Site
from mamoru.install.base import (
    ACME_CHALLENGE_PATH,
    BOOTSTRAP_STATUS,
    BOOTSTRAP_TEXT,
    TLS12_CIPHERS,
    ConfigWritingInstaller,
)
from mamoru.install.files import header, indent, quote
from mamoru.install.listen import (
    UserListen,
    apache_included_files,
    listens_needed,
    user_listens,
)

_CHALLENGE_PATTERN = "^" + ACME_CHALLENGE_PATH.replace(".", "\\.")  # a regex for RewriteCond


def vhost_address(raw: str) -> str:
    """The <VirtualHost> address for a listen setting: "443" -> "*:443", else as given."""
    return f"*:{raw}" if raw.isdigit() else raw


def _define_name(raw: str) -> str:
    return "MAMORU_LISTEN_" + re.sub(r"[^A-Za-z0-9]", "_", raw)


def listen_block(raw: str, protocol: str) -> str:
    """A `Listen` for `raw`, written once however many mamoru files carry it."""
    name = _define_name(raw)
    return (f"<IfDefine !{name}>\n    Define {name}\n    Listen {raw} {protocol}\n"
            "</IfDefine>\n")


def _names(site: Site) -> list[str]:
    first, *others = site.domains
    lines = [f"ServerName {first}"]
    if others:
        lines.append(f"ServerAlias {' '.join(others)}")
    return lines


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


class ApacheInstaller(ConfigWritingInstaller):
    kind = "apache"
    server_name = "Apache"
    tls_use = "Include this file inside your HTTPS <VirtualHost>."
    redirect_use = "Include this file inside your plain-HTTP <VirtualHost>."

    def included_files(self) -> set[str] | None:
        """Every file Apache's config reads (`<test> -D DUMP_INCLUDES`), or None."""
        if self.test_argv is None:
            return None
        return apache_included_files(self.test_argv, self.timeout)

    def user_listens(self) -> list[UserListen] | None:
        """The `Listen` lines in the files Apache reads, mamoru's own files left out (None:
        Apache cannot say which files it reads)."""
        files = self.included_files()
        return None if files is None else user_listens(files)

    def site_config(self, site: Site, live: str) -> str:
        """The complete site-mode file, with a `Listen` for each address nobody listens on."""
        server = site.server
        wanted = [server.listen_https] + ([server.listen_http] if server.redirect else [])
        listens = listens_needed(wanted, self.user_listens())
        text = header(site, "HTTPS virtual host" + (" and HTTP->HTTPS redirect"
                                                     if server.redirect else ""))
        text += "\n"
        for raw in listens:
            text += listen_block(raw, "https" if raw == server.listen_https else "http")
        https = [*_names(site)]
        if server.root:
            https += [f"DocumentRoot {quote(server.root)}", f"<Directory {quote(server.root)}>",
                      "    Require all granted", "</Directory>"]
        https += ["", *self.tls_directives(site, live)]
        text += (f"\n<VirtualHost {vhost_address(server.listen_https)}>\n{indent(https)}"
                 "</VirtualHost>\n")
        if server.redirect:
            plain = [*_names(site), "", *self.redirect_directives(site)]
            text += (f"\n<VirtualHost {vhost_address(server.listen_http)}>\n{indent(plain)}"
                     "</VirtualHost>\n")
        return text

    def bootstrap_config(self, site: Site) -> str:
        assert site.challenge.webroot is not None  # bootstrap.needed() requires one
        server = site.server
        text = header(site, "temporary plain-HTTP virtual host for the first certificate",
                      "It answers ACME challenges until the certificate is installed; then "
                      "mamoru writes the whole site here.") + "\n"
        for raw in listens_needed([server.listen_http], self.user_listens()):
            text += listen_block(raw, "http")
        plain = [*_names(site), "", *self.challenge_lines(site.challenge.webroot),
                 f"ErrorDocument {BOOTSTRAP_STATUS} {quote(BOOTSTRAP_TEXT)}",
                 "RewriteEngine on",
                 f"RewriteCond %{{REQUEST_URI}} !{_CHALLENGE_PATTERN}",
                 f"RewriteRule ^ - [R={BOOTSTRAP_STATUS},L]"]
        return text + (f"\n<VirtualHost {vhost_address(server.listen_http)}>\n{indent(plain)}"
                       "</VirtualHost>\n")

    def tls_lines(self, chain: str, key: str) -> list[str]:
        return [
            "SSLEngine on",
            f"SSLCertificateFile {chain}",
            f"SSLCertificateKeyFile {key}",
            "SSLProtocol -all +TLSv1.2 +TLSv1.3",
            f"SSLCipherSuite {TLS12_CIPHERS}",
            "SSLHonorCipherOrder off",
        ]

    def hsts_line(self, max_age: int) -> str:
        return f'Header always set Strict-Transport-Security "max-age={max_age}"'

    def challenge_lines(self, webroot: str) -> list[str]:
        challenge_dir = os.path.join(webroot, ".well-known", "acme-challenge")
        return [
            f"Alias {ACME_CHALLENGE_PATH} {quote(challenge_dir + '/')}",
            f"<Directory {quote(challenge_dir)}>",
            "    Require all granted",
            "</Directory>",
        ]

    def redirect_lines(self, https_suffix: str) -> list[str]:
        # %{SERVER_NAME} is the requested host name without its port (UseCanonicalName Off,
        # the default); the query string is kept by mod_rewrite.
        return [
            "RewriteEngine on",
            f"RewriteCond %{{REQUEST_URI}} !{_CHALLENGE_PATTERN}",
            f"RewriteRule ^ https://%{{SERVER_NAME}}{https_suffix}%{{REQUEST_URI}} [R=301,L]",
        ]

    def include_line(self, path: str) -> str:
        return f"Include {path}"

    def include_where(self, site: Site, purpose: str) -> str:
        listen = site.server.listen_https if purpose == "tls" else site.server.listen_http
        return f"inside `<VirtualHost {vhost_address(listen)}>` with ServerName {site.domains[0]}"

    def config_hint(self, output: str) -> str | None:
        for needle, hint in _MODULE_HINTS:
            if needle in output:
                return hint
        return None
