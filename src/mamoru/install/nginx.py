"""nginx: the generated server blocks (site mode) or snippets (include mode), and the commands.

Site mode writes `<conf_dir>/mamoru-<site>.conf`, which nginx's own `include conf.d/*.conf`
picks up: an HTTPS server for every name of the site and, with `redirect: true`, a plain-HTTP
server that answers /.well-known/acme-challenge/ from the challenge webroot and sends
everything else to https:// with a 301.

Include mode writes `mamoru-<site>-tls.inc` (and `mamoru-<site>-redirect.inc`) for the user's own
server blocks to include. The `.inc` ending keeps them out of a `*.conf` glob: a snippet pulled in
at the `http{}` level would break the config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from mamoru.config.model import Site
from mamoru.install.base import (
    ACME_CHALLENGE_PATH,
    TLS12_CIPHERS,
    TLS_PROTOCOLS,
    CommandInstaller,
    Deployment,
    IncludeLine,
    header,
    https_suffix,
    quote,
    redirect_file,
    run_command,
    site_file,
    tls_file,
    write_owned,
)


def has_ipv6() -> bool:
    """True when this machine has an IPv6 address configured (so `[::]:PORT` can be bound)."""
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as handle:
            return bool(handle.read().strip())
    except OSError:
        return False


def _listens(raw: str, extra: str, ipv6: bool) -> list[str]:
    suffix = f" {extra}" if extra else ""
    if raw.isdigit():  # every address: IPv4, and IPv6 when the machine has it
        lines = [f"listen {raw}{suffix};"]
        if ipv6:
            lines.append(f"listen [::]:{raw}{suffix};")
        return lines
    return [f"listen {raw}{suffix};"]


def tls_directives(site: Site, live_dir: str) -> list[str]:
    """The TLS (and HSTS) directives of the site's HTTPS server."""
    live = os.path.join(live_dir, site.name)
    lines = [
        f"ssl_certificate {quote(os.path.join(live, 'fullchain.pem'))};",
        f"ssl_certificate_key {quote(os.path.join(live, 'privkey.pem'))};",
        f"ssl_protocols {' '.join(TLS_PROTOCOLS)};",
        f"ssl_ciphers {TLS12_CIPHERS};",
        "ssl_prefer_server_ciphers off;",
    ]
    if site.server.hsts:
        # `always`: error pages carry the header too. A location with its own add_header
        # drops it (nginx inheritance), so site mode keeps its HTTPS server location-free.
        lines.append(f'add_header Strict-Transport-Security "max-age={site.server.hsts}" always;')
    return lines


def redirect_directives(site: Site) -> list[str]:
    """The plain-HTTP server's body: answer ACME challenges from the webroot, 301 the rest."""
    lines = []
    if site.challenge.webroot:
        lines += [
            f"location ^~ {ACME_CHALLENGE_PATH} {{",
            f"    root {quote(site.challenge.webroot)};",
            "    default_type text/plain;",
            "}",
        ]
    # $host is the request's host name, lower-cased and without a port.
    lines += [
        "location / {",
        f"    return 301 https://$host{https_suffix(site)}$request_uri;",
        "}",
    ]
    return lines


def _indent(lines: Sequence[str], depth: int = 1) -> str:
    pad = "    " * depth
    return "".join(f"{pad}{line}\n" if line else "\n" for line in lines)


def render_site(site: Site, live_dir: str, *, ipv6: bool) -> str:
    """The complete site-mode file: HTTPS server, and the redirect server when asked."""
    server = site.server
    names = " ".join(site.domains)
    https = [
        *_listens(server.listen_https, "ssl", ipv6),
        f"server_name {names};",
        "",
        *tls_directives(site, live_dir),
        "",
    ]
    if server.root:
        https.append(f"root {quote(server.root)};")
    https.append("index index.html index.htm;")
    text = header(site, "HTTPS server" + (" and HTTP->HTTPS redirect" if server.redirect else ""))
    text += f"\nserver {{\n{_indent(https)}}}\n"
    if server.redirect:
        plain = [*_listens(server.listen_http, "", ipv6), f"server_name {names};", "",
                 *redirect_directives(site)]
        text += f"\nserver {{\n{_indent(plain)}}}\n"
    return text


def render_tls(site: Site, live_dir: str) -> str:
    return (header(site, "TLS directives", "Include this file inside your HTTPS server block.")
            + "\n" + _indent(tls_directives(site, live_dir), 0))


def render_redirect(site: Site) -> str:
    return (header(site, "HTTP->HTTPS redirect", "Include this file inside your plain-HTTP "
                   "server block, in place of its locations.")
            + "\n" + _indent(redirect_directives(site), 0))


_CONFIG_FILE = re.compile(r"^# configuration file (.+):$", re.MULTILINE)


class NginxInstaller(CommandInstaller):
    kind = "nginx"
    server_name = "nginx"

    def __init__(self, test: Sequence[str], reload: Sequence[str], timeout: float, *,
                 ipv6: bool | None = None) -> None:
        super().__init__(test, reload, timeout)
        self.ipv6 = has_ipv6() if ipv6 is None else ipv6

    def files(self, site: Site, live_dir: str) -> dict[str, str]:
        if site.server.mode == "include":
            files = {tls_file(site): render_tls(site, live_dir)}
            if site.server.redirect:
                files[redirect_file(site)] = render_redirect(site)
            return files
        return {site_file(site): render_site(site, live_dir, ipv6=self.ipv6)}

    def deploy(self, site: Site, live_dir: str) -> Deployment:
        deployment = write_owned(self.files(site, live_dir), site.name)
        if site.server.mode == "include":
            names = " ".join(site.domains)
            deployment.includes.append(IncludeLine(
                tls_file(site), f"include {tls_file(site)};",
                f"inside `server {{ listen {site.server.listen_https} ssl; server_name {names}; "
                "}`", "tls"))
            if site.server.redirect:
                deployment.includes.append(IncludeLine(
                    redirect_file(site), f"include {redirect_file(site)};",
                    f"inside `server {{ listen {site.server.listen_http}; server_name {names}; }}`"
                    " as its only content", "redirect"))
        return deployment

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
