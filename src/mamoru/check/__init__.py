"""A patient's-browser view of a live site: TLS, chain, names, expiry, redirect, HSTS and mixed
content, as a report; `site` runs it for configured sites against the stored certificate.

May import: config, netaddr, errors, storage (read only). Never protocol, install, pipeline or
cli: a check only looks.
"""
