"""Subprocess entry point that serves acme2certifier's WSGI app on 127.0.0.1 (test use only).

Run by :class:`tests.servers.acme2certifier.Acme2Certifier` as
``python a2c_serve.py --port P --request-log FILE [--http01-port H] [--dns-port D]
[--ari-window START,END]`` with ``ACME_SRV_CONFIGFILE`` pointing at the generated config.
It is a standalone script (no package imports) so it runs from any cwd.

What it changes in acme2certifier, in this process only:

* ``--http01-port H``: acme2certifier always fetches http-01 tokens from port 80. Its HTTP-01
  validator builds the URL in ``acme2certifier.acme_srv.helpers.network.url_get_dns_pinned`` as
  ``f"http://{_http_url_host(ip)}{path}"``; we wrap ``_http_url_host`` to append ``:H`` and keep
  the ``Host`` header (built through ``_http_host_header``) exactly as before (no port).
* ``--dns-port D`` (D != 53): every ``dns.resolver.Resolver`` created afterwards queries port
  D, so acme2certifier's ``dns_server_list`` resolution can use a stub on an unprivileged port.
* ``--ari-window START,END``: ARI ``suggestedWindow`` for every certificate is replaced by
  ``[now+START, now+END]`` (seconds, may be negative): e.g. ``-7200,-3600`` is a window wholly
  in the past ("renew now" deterministically; the stock ``renewal_force`` only moves the start
  a year back and keeps the end one day ahead).
* A WSGI middleware appends one JSON line per request to ``--request-log``: time, method, path,
  status, and for JWS POSTs the decoded protected header and payload (``null`` payload for
  POST-as-GET). Orders carrying ``replaces`` are visible there.
"""

from __future__ import annotations

import os
import sys

# This file sits next to tests/servers/acme2certifier.py, which would shadow the real package
# if the script's directory were on sys.path (the launcher also runs us with ``python -P``).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from socketserver import ThreadingMixIn  # noqa: E402
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server  # noqa: E402


def _b64url_json(value: str):
    if not value:
        return None
    data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def patch_http01_port(port: int) -> None:
    from acme2certifier.acme_srv.helpers import network

    orig_url_host = network._http_url_host

    def url_host_with_port(host: str) -> str:
        return f"{orig_url_host(host)}:{port}"

    def host_header(host: str) -> str:
        return orig_url_host(host)

    network._http_host_header = host_header
    network._http_url_host = url_host_with_port


def patch_dns_port(port: int) -> None:
    import dns.resolver

    orig_init = dns.resolver.Resolver.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        orig_init(self, *args, **kwargs)
        self.port = port
        # nameservers read from resolv.conf were built with port 53: rebuild them.
        self.nameservers = [getattr(ns, "address", ns) for ns in self.nameservers]

    dns.resolver.Resolver.__init__ = init


def patch_ari_window(start: int, end: int) -> None:
    from acme2certifier.acme_srv import renewalinfo
    from acme2certifier.acme_srv.helper import uts_now, uts_to_date_utc

    def window(self, cert_dic):  # type: ignore[no-untyped-def]
        if not cert_dic or not cert_dic.get("expire_uts"):
            return {}
        now = uts_now()
        return {
            "suggestedWindow": {
                "start": uts_to_date_utc(now + start),
                "end": uts_to_date_utc(now + end),
            }
        }

    renewalinfo.Renewalinfo._generate_renewalinfo_window = window


class RequestLog:
    """WSGI middleware writing one JSON line per request."""

    def __init__(self, app, path: str) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.path = path
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        record: dict[str, object] = {
            "time": time.time(),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or "",
        }
        if body:
            try:
                jws = json.loads(body)
                record["protected"] = _b64url_json(jws.get("protected", ""))
                record["payload"] = _b64url_json(jws.get("payload", ""))
            except (ValueError, AttributeError):
                record["body"] = body.decode("utf-8", "replace")
        status_holder: dict[str, object] = {}

        def sr(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
            status_holder["status"] = int(status.split()[0])
            status_holder["headers"] = {k: v for k, v in headers}
            return start_response(status, headers, exc_info)

        result = self.app(environ, sr)
        chunks = list(result)
        if hasattr(result, "close"):
            result.close()
        record["status"] = status_holder.get("status")
        hdrs = status_holder.get("headers") or {}
        if isinstance(hdrs, dict) and "Location" in hdrs:
            record["location"] = hdrs["Location"]
        if isinstance(hdrs, dict) and "Retry-After" in hdrs:
            record["retry_after"] = hdrs["Retry-After"]
        if record["status"] and int(record["status"]) >= 400:  # keep problem documents
            with contextlib.suppress(ValueError):
                record["response"] = json.loads(b"".join(chunks))
        with self.lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        return chunks


class QuietHandler(WSGIRequestHandler):
    def address_string(self) -> str:  # no reverse DNS
        return self.client_address[0]

    def log_message(self, format, *args):  # type: ignore[no-untyped-def]
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--request-log", required=True)
    ap.add_argument("--http01-port", type=int, default=80)
    ap.add_argument("--dns-port", type=int, default=53)
    ap.add_argument("--ari-window", default="")
    args = ap.parse_args()

    if args.http01_port != 80:
        patch_http01_port(args.http01_port)
    if args.dns_port != 53:
        patch_dns_port(args.dns_port)
    if args.ari_window:
        start, end = (int(x) for x in args.ari_window.split(","))
        patch_ari_window(start, end)

    # Importing the stock WSGI module loads the config (ACME_SRV_CONFIGFILE) and the DB.
    from acme2certifier.share import acme2certifier_wsgi as a2c

    app = RequestLog(a2c.application, args.request_log)
    server = make_server(
        "127.0.0.1", args.port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    sys.stderr.write(f"a2c_serve: listening on 127.0.0.1:{args.port}\n")
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
