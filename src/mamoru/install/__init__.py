"""Putting a stored certificate in service: the transaction (write generated files, flip live,
config test, reload, verify per name, roll back on any failure), the nginx/Apache/command
installers, and the TLS proof that each name serves the new certificate.

May import: config, errors, netaddr, storage, observe.events, check.tls (the probe stack).
Never protocol, challenges, renewal, pipeline or cli.
"""
