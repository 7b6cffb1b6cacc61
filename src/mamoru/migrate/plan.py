"""From a certbot lineage to a mamoru site: pure mapping, no I/O.

    authenticator webroot     -> challenge.webroot (one directory for all names)
    authenticator standalone  -> challenge.standalone (certbot's http01 address and port)
    authenticator nginx       -> challenge.webroot + a location the user adds to the port-80
    authenticator apache         server (mamoru never edits the server's own files); server:
                                 command with the server's reload
    deploy_hook / renew_hook  -> server: {type: command, reload: [...]} when it is one reload
                                 command; anything else is shown to the user, not run
    key_type + rsa_key_size / elliptic_curve -> key; preferred_profile -> profile

A lineage that cannot be mapped (manual or DNS authenticators, wildcards, a webroot map with
several directories, a key type mamoru does not make) raises Unmappable with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from mamoru.config.defaults import KEY_TYPES
from mamoru.errors import MamoruError
from mamoru.migrate.certbot_state import CertbotState, Lineage, Refusal, as_list
from mamoru.netaddr import is_loopback, show_address

#: Where mamoru serves http-01 answers for lineages certbot's nginx/apache plugin validated:
#: under /var/www, which the web server's workers can read and mamoru.service may write.
DEFAULT_ACME_WEBROOT = "/var/www/mamoru-acme"

_RELOAD_VERBS = {"reload", "restart", "reload-or-restart", "try-reload-or-restart",
                 "force-reload"}
_SHELL = re.compile(r"[;&|`$<>(){}*?\\\n]")


class Unmappable(MamoruError):
    """The lineage has no faithful mamoru equivalent; the message says why and what to do."""


@dataclass(frozen=True)
class SitePlan:
    """What one lineage becomes: the site's config and the things the user must decide."""

    lineage: Lineage
    site: str
    domains: tuple[str, ...]
    key: str
    challenge: dict[str, Any]
    server: dict[str, Any] | None
    profile: str | None = None
    notes: tuple[str, ...] = field(default=())

    def config(self) -> dict[str, Any]:
        """The site as mamoru config (the `sites.<name>` mapping)."""
        entry: dict[str, Any] = {"domains": list(self.domains), "key": self.key,
                                 "challenge": dict(self.challenge)}
        if self.profile:
            entry["profile"] = self.profile
        if self.server:
            entry["server"] = dict(self.server)
        return entry


def site_name(lineage_name: str, taken: set[str]) -> str:
    """A valid, unused mamoru site name for certbot's lineage name (dots become '-')."""
    base = re.sub(r"[^a-z0-9-]+", "-", lineage_name.lower()).strip("-")[:60] or "site"
    if not base[0].isalnum():
        base = f"s{base}"[:60]
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def plan_lineage(lineage: Lineage, *, taken: set[str] | None = None,
                 acme_webroot: str = DEFAULT_ACME_WEBROOT,
                 verify: str | None = None) -> SitePlan:
    """Map `lineage` to a site. Raises Unmappable. `verify` ("HOST:PORT") is where mamoru
    checks the served certificate after a reload (default: 127.0.0.1:443)."""
    params = lineage.params
    names = lineage.names
    wildcards = [n for n in names if n.startswith("*.")]
    if wildcards:
        raise Unmappable(f"{wildcards[0]} is a wildcard: it needs dns-01, which mamoru does not "
                         "do yet; keep this lineage on certbot")
    notes: list[str] = []
    authenticator = str(params.get("authenticator", ""))
    reload = _hook_reload(params, notes)
    server: dict[str, Any] | None = None
    if authenticator == "webroot":
        challenge: dict[str, Any] = {"webroot": _one_webroot(lineage)}
    elif authenticator == "standalone":
        address = str(params.get("http01_address", "") or "")
        port = int(str(params.get("http01_port", "80") or "80"))
        # Without an address certbot listened on every address of both families: so does
        # "*" (an IPv4-only 0.0.0.0 would fail where the CA validates over IPv6).
        host = address or "*"
        challenge = {"standalone": show_address(host, port)}
        if not is_loopback(host):
            challenge["standalone_public"] = True
    elif authenticator in ("nginx", "apache"):
        challenge = {"webroot": acme_webroot}
        notes.append(
            f"certbot's {authenticator} plugin answered http-01 by editing the server config for "
            f"each order; mamoru reads the answer files from {acme_webroot}: add "
            + ("`location ^~ /.well-known/acme-challenge/ { root " + acme_webroot + "; }`"
               if authenticator == "nginx" else
               f"`Alias /.well-known/acme-challenge/ {acme_webroot}/.well-known/acme-challenge/`")
            + f" to the port-80 server of {', '.join(names)} before the next renewal")
        if reload is None:
            reload = (["nginx", "-s", "reload"] if authenticator == "nginx"
                      else ["apachectl", "-k", "graceful"])
    elif authenticator == "manual":
        raise Unmappable("the manual authenticator needs a person (or a hook script) at every "
                         "renewal; mamoru renews unattended: keep this lineage on certbot or "
                         "move it to webroot first")
    elif authenticator.startswith("dns"):
        raise Unmappable(f"authenticator {authenticator} validates by DNS (dns-01), which mamoru "
                         "does not do yet; keep this lineage on certbot")
    else:
        raise Unmappable(f"unknown authenticator {authenticator!r}: mamoru maps webroot, "
                         "standalone, nginx and apache")
    installer = str(params.get("installer", "") or "")
    if reload is None and installer in ("nginx", "apache"):
        reload = ["nginx", "-s", "reload"] if installer == "nginx" else ["apachectl", "-k",
                                                                          "graceful"]
    if reload is not None:
        server = {"type": "command", "reload": reload}
        if verify:
            server["verify"] = verify
    else:
        notes.append("no reload command: after a renewal nothing tells the web server to read "
                     "the new files; add server: {type: command, reload: [...]}")
    for key in ("pre_hook", "post_hook"):
        if params.get(key):
            notes.append(f"{key} {_hook_text(params[key])!r} is not carried over: run it from "
                         "the web server's reload command or a systemd unit if it is still needed")
    if params.get("preferred_chain"):
        notes.append(f"preferred_chain {params['preferred_chain']!r} is not carried over: mamoru "
                     "uses the CA's default chain")
    if lineage.renew_before_expiry:
        notes.append(f"renew_before_expiry {lineage.renew_before_expiry!r} is not carried over: "
                     "mamoru renews at the CA's ARI window or with 1/3 of the lifetime left")
    site = site_name(lineage.name, taken or set())
    profile = params.get("preferred_profile") or None
    return SitePlan(lineage=lineage, site=site, domains=names, key=_key_type(lineage),
                    challenge=challenge, server=server,
                    profile=str(profile) if profile else None, notes=tuple(notes))


def _one_webroot(lineage: Lineage) -> str:
    paths = set(lineage.webroot_map.values())
    paths.update(as_list(lineage.params.get("webroot_path")))
    cleaned = {os.path.normpath(p) for p in paths if p}
    if not cleaned:
        raise Unmappable("authenticator webroot without webroot_path or [[webroot_map]]")
    if len(cleaned) > 1:
        raise Unmappable(f"its names are served from {len(cleaned)} webroots "
                         f"({', '.join(sorted(cleaned))}); a mamoru site has one: split the "
                         "lineage in certbot (one per webroot) and import again")
    return cleaned.pop()


def _key_type(lineage: Lineage) -> str:
    params = lineage.params
    key_type = str(params.get("key_type", "") or "")
    if not key_type:  # an old conf: keep the type of the key in service
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = serialization.load_pem_private_key(lineage.read("privkey"), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            key_type, params = "ecdsa", {**params, "elliptic_curve": key.curve.name}
        else:
            key_type = "rsa"
            params = {**params, "rsa_key_size": getattr(key, "key_size", 2048)}
    if key_type == "rsa":
        kind = f"rsa-{int(str(params.get('rsa_key_size', 2048) or 2048))}"
    elif key_type == "ecdsa":
        curve = str(params.get("elliptic_curve", "secp256r1") or "secp256r1")
        kind = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(curve, curve)
    else:
        kind = key_type
    if kind not in KEY_TYPES:
        raise Unmappable(f"key type {kind} is not one mamoru makes ({', '.join(KEY_TYPES)})")
    return kind


def _hook_text(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def _hook_reload(params: dict[str, Any], notes: list[str]) -> list[str] | None:
    """certbot's deploy hook as a reload argv, when it is exactly one reload command."""
    hook = params.get("deploy_hook") or params.get("renew_hook")
    if not hook:
        return None
    text = _hook_text(hook).strip()
    argv = reload_argv(text)
    if argv is None:
        notes.append(f"deploy hook {text!r} is not a plain reload command; mamoru does not run "
                     "shell commands: decide what it did and put the reload argv in "
                     "server.reload")
    return argv


def reload_argv(text: str) -> list[str] | None:
    """`text` as an argv when it is one command that reloads a web server, else None."""
    if _SHELL.search(text):
        return None
    try:
        argv = shlex.split(text)
    except ValueError:
        return None
    if not argv:
        return None
    program = os.path.basename(argv[0])
    rest = argv[1:]
    if program == "systemctl" and rest and rest[0] in _RELOAD_VERBS and len(rest) >= 2:
        return argv
    if program == "service" and len(rest) == 2 and rest[1] in _RELOAD_VERBS:
        return argv
    if program in ("nginx", "angie", "openresty") and "-s" in rest and rest[
            rest.index("-s") + 1:rest.index("-s") + 2] == ["reload"]:
        return argv
    if program in ("apachectl", "apache2ctl", "httpd") and rest and rest[-1] == "graceful":
        return argv
    return None


def plan_state(state: CertbotState, **options: Any) -> tuple[list[SitePlan], list[Refusal]]:
    """A plan for every lineage that maps; a Refusal with the reason for every other one
    (including those `read_state` could not read)."""
    plans: list[SitePlan] = []
    refused = list(state.refused)
    taken: set[str] = set()
    for lineage in state.lineages:
        try:
            plan = plan_lineage(lineage, taken=taken, **options)
        except Unmappable as why:
            refused.append(Refusal(lineage.name, lineage.conf_path, str(why)))
            continue
        taken.add(plan.site)
        plans.append(plan)
    return plans, refused
