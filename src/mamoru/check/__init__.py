"""A patient's-browser view of a live site: TLS, chain, names, expiry, redirect, HSTS and mixed
content, as a report; `site` runs it for configured sites against the stored certificate.

What lives here, from the bottom up:

- `tls`: the one TLS probe stack of mamoru (connect with SNI under a hard deadline; the served
  chain, leaf and protocol). `mamoru.install.verify` probes through it too.
- `target` (URL -> host, port, path), `fetch` (one HTTP GET over a connection; failures in
  plain words), `report` (findings, verdicts, table, JSON, exit code).
- The judges, one per finding: `certificate` (names, expiry, matches-stored), `chain`,
  `hsts`, `mixed_content`; the two sides of a check that use them: `https` and `redirect`
  (the plain-HTTP redirect and the ACME challenge path).
- `url` (`check_url`: one URL, every check) and `site` (every name of configured sites).
- `browser`: the same names in a real headless Chromium (`--browser`, `check.browser`),
  imported only then, so the plain check loads no browser code.

The CLI imports `report`, `url` and `site` directly; this file imports nothing, so `tls` stays
light for the install.

May import: config, netaddr, errors, storage (read only). Never protocol, install, pipeline or
cli: a check only looks.
"""
