"""nginx: the generated server blocks (site mode) or snippets (include mode), and the commands.

Site mode writes `<conf_dir>/mamoru-<site>.conf`, which nginx's own `include conf.d/*.conf`
picks up: an HTTPS server for every name of the site and, with `redirect: true`, a plain-HTTP
server that answers /.well-known/acme-challenge/ from the challenge webroot and sends
everything else to https:// with a 301.

Include mode writes `mamoru-<site>-tls.inc` (and `mamoru-<site>-redirect.inc`) for the user's own
server blocks to include (base.ConfigWritingInstaller). The `.inc` ending keeps them out of a
`*.conf` glob: a snippet pulled in at the `http{}` level would break the config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from mamoru.config.model import Site
from mamoru.install.base import (
    ACME_CHALLENGE_PATH,
    BOOTSTRAP_STATUS,
    BOOTSTRAP_TEXT,
    TLS12_CIPHERS,
    TLS_PROTOCOLS,
    ConfigWritingInstaller,
)
from mamoru.install.commands import run_command
from mamoru.install.files import header, indent, quote
from mamoru.install.listen import has_ipv6


def _listens(raw: str, extra: str, ipv6: bool) -> list[str]:
    suffix = f" {extra}" if extra else ""
    if raw.isdigit():  # every address: IPv4, and IPv6 when the machine has it
        lines = [f"listen {raw}{suffix};"]
        if ipv6:
            lines.append(f"listen [::]:{raw}{suffix};")
        return lines
    return [f"listen {raw}{suffix};"]


_CONFIG_FILE = re.compile(r"^# configuration file (.+):$", re.MULTILINE)


class NginxInstaller(ConfigWritingInstaller):
    kind = "nginx"
    server_name = "nginx"
    tls_use = "Include this file inside your HTTPS server block."
    redirect_use = ("Include this file inside your plain-HTTP server block, in place of its "
                    "locations.")

    def __init__(self, test: Sequence[str], reload: Sequence[str], timeout: float, *,
                 ipv6: bool | None = None) -> None:
        super().__init__(test, reload, timeout)
        self.ipv6 = has_ipv6() if ipv6 is None else ipv6

    def site_config(self, site: Site, live: str) -> str:
        """The complete site-mode file: HTTPS server, and the redirect server when asked."""
        server = site.server
        names = " ".join(site.domains)
        https = [
            *_listens(server.listen_https, "ssl", self.ipv6),
            f"server_name {names};",
            "",
            *self.tls_directives(site, live),
            "",
        ]
        if server.root:
            https.append(f"root {quote(server.root)};")
        https.append("index index.html index.htm;")
        text = header(site, "HTTPS server" + (" and HTTP->HTTPS redirect" if server.redirect
                                              else ""))
        text += f"\nserver {{\n{indent(https)}}}\n"
        if server.redirect:
            plain = [*_listens(server.listen_http, "", self.ipv6), f"server_name {names};", "",
                     *self.redirect_directives(site)]
            text += f"\nserver {{\n{indent(plain)}}}\n"
        return text

    def bootstrap_config(self, site: Site) -> str:
        assert site.challenge.webroot is not None  # bootstrap.needed() requires one
        plain = [*_listens(site.server.listen_http, "", self.ipv6),
                 f"server_name {' '.join(site.domains)};", "",
                 *self.challenge_lines(site.challenge.webroot),
                 "location / {", "    default_type text/plain;",
                 f"    return {BOOTSTRAP_STATUS} {quote(BOOTSTRAP_TEXT)[:-1]}\\n\";", "}"]
        text = header(site, "temporary plain-HTTP server for the first certificate",
                      "It answers ACME challenges until the certificate is installed; then "
                      "mamoru writes the whole site here.")
        return text + f"\nserver {{\n{indent(plain)}}}\n"

    def tls_lines(self, chain: str, key: str) -> list[str]:
        return [
            f"ssl_certificate {chain};",
            f"ssl_certificate_key {key};",
            f"ssl_protocols {' '.join(TLS_PROTOCOLS)};",
            f"ssl_ciphers {TLS12_CIPHERS};",
            "ssl_prefer_server_ciphers off;",
        ]

    def hsts_line(self, max_age: int) -> str:
        # `always`: error pages carry the header too. A location with its own add_header
        # drops it (nginx inheritance), so site mode keeps its HTTPS server location-free.
        return f'add_header Strict-Transport-Security "max-age={max_age}" always;'

    def challenge_lines(self, webroot: str) -> list[str]:
        return [
            f"location ^~ {ACME_CHALLENGE_PATH} {{",
            f"    root {quote(webroot)};",
            "    default_type text/plain;",
            "}",
        ]

    def redirect_lines(self, https_suffix: str) -> list[str]:
        # $host is the request's host name, lower-cased and without a port.
        return ["location / {", f"    return 301 https://$host{https_suffix}$request_uri;", "}"]

    def include_line(self, path: str) -> str:
        return f"include {path};"

    def include_where(self, site: Site, purpose: str) -> str:
        names = " ".join(site.domains)
        if purpose == "tls":
            return (f"inside `server {{ listen {site.server.listen_https} ssl; server_name "
                    f"{names}; }}`")
        return (f"inside `server {{ listen {site.server.listen_http}; server_name {names}; }}`"
                " as its only content")

    def included_files(self) -> set[str] | None:
        """Every file the running config reads (`nginx -T`), or None when the test command
        has no `-t` to turn into `-T`."""
        if self.test_argv is None or "-t" not in self.test_argv:
            return None
        argv = ["-T" if arg == "-t" else arg for arg in self.test_argv]
        result = run_command(argv, self.timeout)
        if not result.ok:
            return None
        return {os.path.realpath(path) for path in _CONFIG_FILE.findall(result.output)}

    def config_hint(self, output: str) -> str | None:
        if "cannot load certificate" in output or "PEM_read_bio" in output:
            return ("nginx could not read the certificate or key: check the live directory "
                    "(paths.live) exists and that nginx's master runs as root, or set "
                    "paths.key_group.")
        return None
