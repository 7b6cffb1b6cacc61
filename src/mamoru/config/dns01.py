"""The dns-01 part of a site's `challenge:` (rfc2136, provider or hook; propagation_timeout,
nameservers; dns01_names for a site that mixes http-01 and dns-01 names).

May import: the rest of config. Secret files are read by `secrets.py`; a TSIG key file is
parsed by the solver (challenges/dns/rfc2136.py), which `mamoru check-dns` runs at setup.
"""

from __future__ import annotations

import os
import stat

from mamoru.config import defaults as D
from mamoru.config.fields import Fields
from mamoru.config.model import Dns01, DnsHook, DnsProvider, Rfc2136
from mamoru.config.names import NameError_, normalize_domain
from mamoru.config.secrets import read_secret

WRITERS = ("rfc2136", "provider", "hook")


def dns01_names(m: Fields, domains: list[str]) -> list[str]:
    """`dns01_names`: those of the site's domains validated by dns-01."""
    node = m.node("dns01_names")
    path = m.child_path("dns01_names")
    if node is None or node.value is None:
        return []
    if not isinstance(node.value, list):
        m.problems.error(node.line, path, "must be a list of this site's domains")
        return []
    names = []
    for index, item in enumerate(node.value):
        try:
            name = normalize_domain(item.value)
        except NameError_ as error:
            m.problems.error(item.line, f"{path}[{index}]", str(error))
            continue
        if name not in domains:
            m.problems.error(item.line, f"{path}[{index}]",
                             f"{name} is not in this site's domains")
        else:
            names.append(name)
    return names


def wanted(m: Fields, ctype: str | None, names: list[str]) -> bool:
    return ctype == "dns-01" or bool(names) or any(m.has(key) for key in WRITERS)


def dns01(m: Fields, file_mode: int | None) -> Dns01 | None:
    """The dns-01 keys of the challenge mapping `m`; None when unusable (problems recorded)."""
    problems = m.problems
    given = [key for key in WRITERS if m.has(key)]
    timeout = m.number("propagation_timeout", D.CHALLENGE_PROPAGATION_TIMEOUT, minimum=1,
                       maximum=3600)
    nameservers = m.argv("nameservers") or D.CHALLENGE_NAMESERVERS
    if len(given) != 1:
        problems.error(m.line, m.path, "dns-01 needs exactly one of rfc2136 (a DNS server "
                       "that takes dynamic updates), provider (a DNS provider's API) or hook "
                       "(your own program)"
                       + (f"; this has {' and '.join(given)}" if given else ""))
        for key in given:
            m.node(key)
        return None
    rfc2136 = provider = hook = None
    if given[0] == "rfc2136":
        rfc2136 = _rfc2136(m.sub("rfc2136"), file_mode)
    elif given[0] == "provider":
        provider = _provider(m.sub("provider"), file_mode)
    else:
        hook = _hook(m.sub("hook"))
    if rfc2136 is None and provider is None and hook is None:
        return None
    return Dns01(rfc2136=rfc2136, provider=provider, hook=hook,
                 propagation_timeout=float(timeout), nameservers=tuple(nameservers))


def ignore(m: Fields) -> None:
    """The dns-01-only keys of an http-01 challenge: read (so they are not unknown keys)."""
    m.number("propagation_timeout", None, minimum=1, maximum=3600)
    m.argv("nameservers")


def _rfc2136(sub: Fields, file_mode: int | None) -> Rfc2136 | None:
    server = sub.text("server")
    key_name = sub.text("key_name")
    algorithm = sub.text("key_algorithm", None, choices=D.TSIG_ALGORITHMS)
    tsig = read_secret(sub, "key_secret", "key_secret_file", file_mode)
    if tsig is None and not (sub.has("key_secret") or sub.has("key_secret_file")):
        sub.problems.error(sub.line, sub.path, "needs key_secret_file (the TSIG key: a base64 "
                           "secret or the output of tsig-keygen)")
    zone = sub.text("zone", None)
    resolver = sub.text("resolver", None)
    sub.finish()
    if not (server and key_name and tsig is not None):
        return None
    return Rfc2136(server=server, key_name=key_name, key=tsig, key_algorithm=algorithm,
                   zone=zone, resolver=resolver)


def _provider(sub: Fields, file_mode: int | None) -> DnsProvider | None:
    name = sub.text("name")
    credentials = sub.path_value("credentials_file")
    zone = sub.text("zone", None)
    sub.finish()
    if isinstance(credentials, str) and file_mode is not None:
        sub.problems.observe(credentials)
        try:
            if os.stat(credentials).st_mode & stat.S_IROTH:
                sub.problems.warn(sub.key_line("credentials_file"),
                                  sub.child_path("credentials_file"),
                                  f"{credentials} holds a secret and is readable by every "
                                  "user; chmod 600 it")
        except OSError as error:
            sub.error("credentials_file", f"cannot read {credentials}: {error.strerror}")
    if not (name and credentials):
        return None
    return DnsProvider(name=name, credentials_file=credentials, zone=zone)


def _hook(sub: Fields) -> DnsHook | None:
    present = sub.argv("present")
    cleanup = sub.argv("cleanup") or D.CHALLENGE_HOOK_CLEANUP
    timeout = sub.number("timeout", D.CHALLENGE_HOOK_TIMEOUT, minimum=1, maximum=3600)
    if present is None:
        sub.problems.error(sub.line, sub.child_path("present"), "is required: the program "
                           "(and its arguments) that adds the TXT record")
    sub.finish()
    if not present:
        return None
    return DnsHook(present=present, cleanup=cleanup, timeout=float(timeout))
