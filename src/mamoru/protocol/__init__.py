"""ACME (RFC 8555) and ARI (RFC 9773): the only part of mamoru that speaks to the CA and the only
one that imports `acme` and `josepy`. `session` (directory, nonces, orders, polling,
revocation), `transport` (a keep-alive HTTPS pool), `jws` (signed requests, EAB), `errors` (CA
problem documents -> mamoru's typed errors), `account` (load or register, replace), `keys`
(keys and CSRs), `ari` (the renewal window).

May import: errors, clock, config.model, challenges.base (the plain-value task),
storage.atomic. Never renewal, install, check, observe, service, pipeline, app or cli.
"""
