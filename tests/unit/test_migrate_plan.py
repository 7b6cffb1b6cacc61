"""Mapping a certbot lineage to a mamoru site (mamoru.migrate.plan): pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from mamoru.migrate.certbot_state import Account, CertbotState, Lineage
from mamoru.migrate.plan import Unmappable, plan_lineage, plan_state, reload_argv, site_name

ACCOUNT = Account(id="abc", path="/x", server="https://ca.example/dir",
                  uri="https://ca.example/acct/1", key_pem=b"")


def lineage(params: dict[str, Any], names: tuple[str, ...] = ("clinic.example",),
            webroot_map: dict[str, str] | None = None, name: str = "clinic.example",
            renew_before_expiry: str | None = None) -> Lineage:
    links = {k: f"/etc/letsencrypt/live/{name}/{k}.pem"
             for k in ("cert", "privkey", "chain", "fullchain")}
    return Lineage(name=name, conf_path=f"/etc/letsencrypt/renewal/{name}.conf",
                   archive_dir=f"/etc/letsencrypt/archive/{name}", live_links=links,
                   targets=links, version=1, params={"key_type": "ecdsa", **params},
                   webroot_map=webroot_map or {}, renewal_info={},
                   renew_before_expiry=renew_before_expiry, account=ACCOUNT, names=names)


@pytest.mark.parametrize(("hook", "argv"), [
    ("systemctl reload nginx", ["systemctl", "reload", "nginx"]),
    ("/usr/bin/systemctl restart apache2", ["/usr/bin/systemctl", "restart", "apache2"]),
    ("service nginx reload", ["service", "nginx", "reload"]),
    ("nginx -s reload", ["nginx", "-s", "reload"]),
    ("/usr/sbin/nginx -c /etc/nginx/nginx.conf -s reload",
     ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf", "-s", "reload"]),
    ("apachectl -k graceful", ["apachectl", "-k", "graceful"]),
    ("apache2ctl graceful", ["apache2ctl", "graceful"]),
    ("systemctl reload nginx && curl https://x", None),
    ("systemctl reload nginx; rm -rf /", None),
    ("cp $RENEWED_LINEAGE/fullchain.pem /opt/app/", None),
    ("nginx -s stop", None),
    ("systemctl stop nginx", None),
    ("/usr/local/bin/deploy.sh", None),
    ("echo 'unbalanced", None),
    ("", None),
])
def test_only_a_plain_reload_command_becomes_the_reload_argv(hook: str,
                                                              argv: list[str] | None) -> None:
    assert reload_argv(hook) == argv


@pytest.mark.parametrize(("params", "key"), [
    ({"key_type": "rsa"}, "rsa-2048"),
    ({"key_type": "rsa", "rsa_key_size": "4096"}, "rsa-4096"),
    ({"key_type": "ecdsa"}, "ec-p256"),
    ({"key_type": "ecdsa", "elliptic_curve": "secp384r1"}, "ec-p384"),
])
def test_key_types(params: dict[str, Any], key: str) -> None:
    plan = plan_lineage(lineage({"authenticator": "webroot", "webroot_path": "/var/www",
                                 **params}))
    assert plan.key == key


@pytest.mark.parametrize(("params", "why"), [
    ({"key_type": "ecdsa", "elliptic_curve": "secp521r1"}, "secp521r1 is not one mamoru"),
    ({"key_type": "rsa", "rsa_key_size": "1024"}, "rsa-1024 is not one mamoru"),
    ({"authenticator": "manual"}, "manual authenticator needs a person"),
    ({"authenticator": "dns-rfc2136", "dns_rfc2136_credentials": "/etc/x.ini"}, "dns-01"),
    ({"authenticator": "certbot-plugin-gandi:dns"}, "unknown authenticator"),
    ({"authenticator": "webroot"}, "without webroot_path"),
])
def test_lineages_mamoru_cannot_take_say_why(params: dict[str, Any], why: str) -> None:
    base = {"authenticator": "webroot", "webroot_path": "/var/www"}
    with pytest.raises(Unmappable, match=why):
        plan_lineage(lineage({**base, **params}) if "authenticator" not in params
                     else lineage(params))


def test_webroot_map_with_one_directory_is_one_webroot_and_two_are_refused() -> None:
    names = ("a.example", "b.example", "c.example")
    one = plan_lineage(lineage({"authenticator": "webroot", "webroot_path": ["/var/www/", ""]},
                               names, {n: "/var/www" for n in names}))
    assert one.challenge == {"webroot": "/var/www"} and one.domains == names
    with pytest.raises(Unmappable, match="2 webroots"):
        plan_lineage(lineage({"authenticator": "webroot"}, names,
                             {"a.example": "/var/www/a", "b.example": "/var/www/b"}))


def test_wildcards_are_refused() -> None:
    with pytest.raises(Unmappable, match="wildcard"):
        plan_lineage(lineage({"authenticator": "webroot", "webroot_path": "/w"},
                             ("*.clinic.example", "clinic.example")))


def test_standalone_keeps_certbots_address_and_port() -> None:
    local = plan_lineage(lineage({"authenticator": "standalone", "http01_port": "8080",
                                  "http01_address": "127.0.0.1"}))
    assert local.challenge == {"standalone": "127.0.0.1:8080"}
    public = plan_lineage(lineage({"authenticator": "standalone"}))
    assert public.challenge == {"standalone": "*:80", "standalone_public": True}
    v6 = plan_lineage(lineage({"authenticator": "standalone", "http01_address": "::1"}))
    assert v6.challenge == {"standalone": "[::1]:80"}


def test_nginx_plugin_gets_a_webroot_and_a_reload_and_tells_the_user_what_to_add() -> None:
    plan = plan_lineage(lineage({"authenticator": "nginx", "installer": "nginx"}),
                        acme_webroot="/srv/acme")
    assert plan.challenge == {"webroot": "/srv/acme"}
    assert plan.server == {"type": "command", "reload": ["nginx", "-s", "reload"]}
    assert any("location ^~ /.well-known/acme-challenge/ { root /srv/acme; }" in n
               for n in plan.notes)
    apache = plan_lineage(lineage({"authenticator": "apache", "deploy_hook":
                                   "systemctl reload apache2"}))
    assert apache.server == {"type": "command", "reload": ["systemctl", "reload", "apache2"]}


def test_hooks_that_are_not_a_reload_are_shown_not_run() -> None:
    plan = plan_lineage(lineage({"authenticator": "webroot", "webroot_path": "/w",
                                 "renew_hook": "cp $RENEWED_LINEAGE/x /y",
                                 "pre_hook": "systemctl stop haproxy",
                                 "post_hook": "systemctl start haproxy",
                                 "preferred_chain": "ISRG Root X1"},
                                renew_before_expiry="30 days"))
    assert plan.server is None
    text = "\n".join(plan.notes)
    for part in ("cp $RENEWED_LINEAGE/x /y", "pre_hook", "post_hook", "preferred_chain",
                 "renew_before_expiry", "no reload command"):
        assert part in text


def test_site_names_are_valid_and_unique() -> None:
    assert site_name("clinic.example", set()) == "clinic-example"
    assert site_name("clinic.example", {"clinic-example"}) == "clinic-example-2"
    assert site_name("Clinic.Example-0001", set()) == "clinic-example-0001"
    assert site_name("...", set()) == "site"
    state = CertbotState("/etc/letsencrypt", (
        lineage({"authenticator": "webroot", "webroot_path": "/w"}, name="a.example"),
        lineage({"authenticator": "manual"}, name="b.example"),
        lineage({"authenticator": "webroot", "webroot_path": "/w"}, name="a-example")), ())
    plans, refused = plan_state(state)
    assert [p.site for p in plans] == ["a-example", "a-example-2"]
    assert [r.name for r in refused] == ["b.example"]
