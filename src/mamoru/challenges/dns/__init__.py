"""dns-01 solvers: prove control of a name by publishing a TXT record at
`_acme-challenge.<name>` (RFC 8555 §8.4).

- `base`: the plain-value `DnsTask`, the batch `DnsSolver` protocol and the optional `Waiter`;
- `rfc2136`: dynamic update (TSIG) to the zone's primary, e.g. BIND or Knot;
- `propagation`: wait until every authoritative nameserver serves every value of an order;
- `hook`: any DNS provider through a user's program (argv lists, never a shell);
- `lexicon`: the DNS providers of `dns-lexicon` (Cloudflare, Route 53, Gandi, OVH, ...).

May import: config, errors, challenges.base. Never protocol, install, renewal, pipeline or cli.
"""
