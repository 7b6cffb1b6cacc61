"""Launchers for the real servers that integration/e2e tests talk to (test code only).

* ``pebble.Pebble``: Let's Encrypt's Pebble + pebble-challtestsrv (HTTPS ACME, no ARI).
* ``acme2certifier.Acme2Certifier``: acme2certifier with ARI, profiles, a DNS stub.
* ``nginx.Nginx`` / ``apache.Apache``: private web-server instances with conf.d includes.
* ``webroot_http.WebrootServer``: a threaded static HTTP server for http-01 via a webroot.
* ``dns_stub.DnsStub``, ``ports``, ``process``, ``tls``: shared plumbing.
* ``acme_issue``: a reference issuance with certbot's ``acme`` library (fixture self-tests).

All bind 127.0.0.1 on free ports and are stopped by PID. Fixtures: ``tests/conftest.py``.
"""
