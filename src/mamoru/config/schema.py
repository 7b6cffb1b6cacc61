"""The sections of a mamoru config: which keys each holds, their types, ranges and defaults.

`build()` reads a composed document section by section — acme, paths, renewal, alerts, metrics,
check, fleet, sites (each site: domains, key, profile, challenge, server) — with the typed reader of
`fields.py`, takes every default from `defaults.py`, and returns the `Settings` of `model.py`, or
None when it recorded a problem. The rules that span keys live here too: webroot or standalone,
a loopback standalone unless asked otherwise, no wildcard names for http-01, what nginx, Apache
and a reload command need.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from urllib.parse import SplitResult, urlsplit

from mamoru.config import defaults as D
from mamoru.config import dns01
from mamoru.config.fields import Fields
from mamoru.config.model import (
    AcmeSettings,
    AlertSettings,
    Challenge,
    CheckSettings,
    Eab,
    EmailAlerts,
    FleetSettings,
    MetricsSettings,
    Paths,
    RenewalSettings,
    Secret,
    Server,
    Settings,
    Site,
    WebhookAlerts,
)
from mamoru.config.names import NameError_, check_site_name, normalize_domain
from mamoru.config.secrets import read_secret
from mamoru.config.yamlnodes import Node, Problems, kind
from mamoru.i18n import N_
from mamoru.netaddr import is_loopback

_MAX_NAMES = 100  # names on one certificate (Let's Encrypt's limit)


def build(root: Node, problems: Problems, file_mode: int | None) -> Settings | None:
    """The Settings the document `root` describes; None when any problem was recorded.
    `file_mode` (the config file's st_mode) decides whether inline secrets are warned about."""
    top = Fields(problems, root, "", required=True)
    if not isinstance(root.value, dict):
        return None
    acme = _acme(top.sub("acme"), file_mode)
    paths = _paths(top.sub("paths"))
    renewal = _renewal(top.sub("renewal"))
    alerts = _alerts(top.sub("alerts"), file_mode)
    metrics = _metrics(top.sub("metrics"))
    check = _check(top.sub("check"))
    fleet = _fleet(top.sub("fleet"), file_mode, paths)
    sites = list(_sites(top, file_mode))
    top.finish()
    if problems.errors:
        return None
    return Settings(
        config_file=problems.file,
        acme=acme,
        paths=paths,
        sites=tuple(sites),
        renewal=renewal,
        alerts=alerts,
        metrics=metrics,
        check=check,
        fleet=fleet,
        warnings=tuple(str(w) for w in problems.warnings),
    )


def _split_url(url: str) -> SplitResult:
    """`url` split into its parts; ValueError when it is malformed (a bad port, a broken
    IPv6 literal)."""
    parts = urlsplit(url)
    _ = parts.port  # raises ValueError for a port out of range or not a number
    return parts


def _acme(m: Fields, file_mode: int | None) -> AcmeSettings:
    directory = m.text("directory", D.ACME_DIRECTORY)
    url = D.DIRECTORIES.get(directory, directory) if isinstance(directory, str) else ""
    if isinstance(directory, str) and directory not in D.DIRECTORIES:
        _check_directory_url(m, directory)
    ca_bundle = m.path_value("ca_bundle", None)
    if isinstance(ca_bundle, str) and ca_bundle:
        m.problems.observe(ca_bundle)
    if isinstance(ca_bundle, str) and ca_bundle and not os.path.isfile(ca_bundle):
        m.error("ca_bundle", N_("{path} does not exist"), path=ca_bundle)
    contact_node = m.node("contact")
    contacts: list[str] = []
    if contact_node is not None and contact_node.value is not None:
        raw = contact_node.value
        for item in raw if isinstance(raw, list) else [contact_node]:
            value = item.value
            if not isinstance(value, str) or "@" not in value or any(c in value for c in " ,<>"):
                m.problems.error(item.line, "acme.contact", N_("{value} is not an email address"),
                                 value=repr(value))
                continue
            contacts.append(value if value.startswith("mailto:") else "mailto:" + value)
    eab = None
    eab_map = m.sub("eab")
    if eab_map.present:
        kid = eab_map.text("kid")
        hmac = read_secret(eab_map, "hmac_key", "hmac_key_file", file_mode)
        if hmac is None and not (eab_map.has("hmac_key") or eab_map.has("hmac_key_file")):
            m.problems.error(eab_map.line, "acme.eab", N_("needs hmac_key or hmac_key_file"))
        if kid and hmac:
            eab = Eab(kid=kid, hmac_key=hmac)
        eab_map.finish()
    profile = m.text("profile", None)
    settings = AcmeSettings(
        directory=url,
        ca_bundle=ca_bundle,
        contact=tuple(contacts),
        eab=eab,
        profile=profile,
        max_concurrent_orders=m.number("max_concurrent_orders", D.ACME_MAX_CONCURRENT_ORDERS,
                                       minimum=1, maximum=64, integer=True),
        timeout=m.number("timeout", D.ACME_TIMEOUT, minimum=1, maximum=600),
        order_timeout=m.number("order_timeout", D.ACME_ORDER_TIMEOUT, minimum=5,
                               maximum=86400),
    )
    m.finish()
    return settings


def _check_directory_url(m: Fields, directory: str) -> None:
    """A directory URL must be https://, or http:// to this machine's loopback (a test CA)."""
    try:
        parts = _split_url(directory)
    except ValueError as error:
        m.error("directory", N_("{value} is not a valid URL ({why})"), value=repr(directory),
                why=str(error))
        return
    plain_local = parts.scheme == "http" and is_loopback(parts.hostname or "")
    if parts.scheme != "https" and not plain_local:
        m.error("directory",
                N_("{value} must be letsencrypt, letsencrypt-staging or an https:// URL"),
                value=repr(directory))
    elif not parts.hostname:
        m.error("directory", N_("{value} has no host"), value=repr(directory))


def _paths(m: Fields) -> Paths:
    paths = Paths(
        state=m.path_value("state", D.PATHS_STATE),
        live=m.path_value("live", D.PATHS_LIVE),
        event_log=m.path_value("event_log", D.PATHS_EVENT_LOG),
        event_log_max_bytes=m.number("event_log_max_bytes", D.PATHS_EVENT_LOG_MAX_BYTES,
                                     minimum=4096, maximum=2**40, integer=True),
        event_log_keep=m.number("event_log_keep", D.PATHS_EVENT_LOG_KEEP, minimum=0,
                                maximum=1000, integer=True),
        key_group=m.text("key_group", None),
    )
    if paths.key_group:
        import grp

        m.problems.observe("/etc/group", content=True)  # where groups come from (files)
        try:
            grp.getgrnam(paths.key_group)
        except KeyError:
            m.error("key_group", N_("there is no group {group} on this machine"),
                    group=repr(paths.key_group))
    m.finish()
    return paths


def _renewal(m: Fields) -> RenewalSettings:
    out = RenewalSettings(
        check_interval_hours=m.number("check_interval_hours", D.RENEWAL_CHECK_INTERVAL_HOURS,
                                      minimum=0.01, maximum=24 * 7),
        retry_first_seconds=m.number("retry_first_seconds", D.RENEWAL_RETRY_FIRST_SECONDS,
                                     minimum=1, maximum=86400),
        retry_max_seconds=m.number("retry_max_seconds", D.RENEWAL_RETRY_MAX_SECONDS,
                                   minimum=1, maximum=7 * 86400),
        permanent_retry_seconds=m.number("permanent_retry_seconds",
                                         D.RENEWAL_PERMANENT_RETRY_SECONDS,
                                         minimum=1, maximum=7 * 86400),
        jitter_fraction=m.number("jitter_fraction", D.RENEWAL_JITTER_FRACTION,
                                 minimum=0, maximum=0.5),
    )
    m.finish()
    return out


def _alerts(m: Fields, file_mode: int | None) -> AlertSettings:
    email = None
    em = m.sub("email")
    if em.present:
        email = _email(em, file_mode)
    webhook = None
    wh = m.sub("webhook")
    if wh.present:
        webhook = _webhook(wh, file_mode)
    out = AlertSettings(
        email=email,
        webhook=webhook,
        after_failures=m.number("after_failures", D.ALERTS_AFTER_FAILURES, minimum=1,
                                maximum=1000, integer=True),
        days_left=m.number("days_left", D.ALERTS_DAYS_LEFT, minimum=0, maximum=365),
        remind_hours=m.number("remind_hours", D.ALERTS_REMIND_HOURS, minimum=1,
                              maximum=24 * 30),
        language=m.text("language", D.ALERTS_LANGUAGE, choices=D.ALERT_LANGUAGES),
    )
    m.finish()
    return out


def _email(em: Fields, file_mode: int | None) -> EmailAlerts:
    to_node = em.node("to")
    to: list[str] = []
    if to_node is None:
        em.problems.error(em.line, "alerts.email.to", N_("is required"))
    else:
        for item in to_node.value if isinstance(to_node.value, list) else [to_node]:
            if not isinstance(item.value, str) or "@" not in item.value:
                em.problems.error(item.line, "alerts.email.to",
                                  N_("{value} is not an address"), value=repr(item.value))
            else:
                to.append(item.value)
    tls = em.flag("tls", D.EMAIL_TLS)
    starttls_default = False if tls else D.EMAIL_STARTTLS
    port_default = D.EMAIL_TLS_PORT if tls else D.EMAIL_PORT
    starttls = em.flag("starttls", starttls_default)
    if tls and starttls:
        em.error("starttls", N_("give tls: true (implicit TLS, port 465) or starttls: true "
                    "(port 587), not both"))
    email = EmailAlerts(
        host=em.text("host"),
        port=em.number("port", port_default, minimum=1, maximum=65535, integer=True),
        sender=em.text("from"),
        to=tuple(to),
        starttls=starttls,
        tls=tls,
        username=em.text("username", None),
        password=read_secret(em, "password", "password_file", file_mode),
        timeout=em.number("timeout", D.ALERT_TIMEOUT, minimum=1, maximum=120),
        ca_bundle=em.path_value("ca_bundle", None),
    )
    if ((email.username or email.password) and not (email.tls or email.starttls)
            and isinstance(email.host, str) and not is_loopback(email.host)):
        em.error("starttls", N_("would send the SMTP password to {host} unencrypted: set "
                    "starttls: true (port 587) or tls: true (port 465); only a relay on this "
                    "machine (127.0.0.1, ::1, localhost) may take a login in the clear"),
                 host=email.host)
    em.finish()
    return email


def _webhook(wh: Fields, file_mode: int | None) -> WebhookAlerts:
    url = wh.text("url")
    if isinstance(url, str) and not _http_url(url):
        wh.error("url", N_("{value} is not an http(s) URL"), value=repr(url))
    webhook = WebhookAlerts(
        url=url,
        secret=read_secret(wh, "secret", "secret_file", file_mode),
        timeout=wh.number("timeout", D.ALERT_TIMEOUT, minimum=1, maximum=120),
        ca_bundle=wh.path_value("ca_bundle", None),
    )
    wh.finish()
    return webhook


def _http_url(url: str) -> bool:
    """True for a well-formed http(s) URL with a host (and a valid port, if any)."""
    try:
        parts = _split_url(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _metrics(m: Fields) -> MetricsSettings:
    listen = m.address("listen", default_host=D.ADDRESS_HOST)
    out = MetricsSettings(listen=listen, textfile=m.path_value("textfile", None))
    m.finish()
    return out


_CLINIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _fleet(m: Fields, file_mode: int | None, paths: Paths) -> FleetSettings | None:
    if not m.present:
        m.finish()
        return None
    url = m.text("url")
    if isinstance(url, str) and not (_http_url(url) and url.startswith("https://")):
        m.error("url", f"{url!r} is not an https:// URL (the fleet collector is reached over "
                "HTTPS only)")
    token = read_secret(m, "token", "token_file", file_mode)
    if token is None and not m.has("token") and not m.has("token_file"):
        m.problems.error(m.line, "fleet.token_file", "is required (the file holding the token "
                         "`mamoru fleet add-clinic` printed)")
    clinic = m.text("clinic", None)
    if clinic is None:
        clinic = D.fleet_clinic()
    if isinstance(clinic, str) and not _CLINIC.match(clinic):
        m.error("clinic", f"{clinic!r} is not a clinic name (letters, digits, '.', '_', '-')")
    state = paths.state if isinstance(paths.state, str) else D.PATHS_STATE
    out = FleetSettings(
        url=url.rstrip("/") if isinstance(url, str) else "",
        token=token or Secret(""),
        clinic=clinic if isinstance(clinic, str) else "",
        outbox=m.path_value("outbox", None) or os.path.join(state, D.FLEET_OUTBOX_DIR),
        ca_bundle=m.path_value("ca_bundle", None),
        snapshot_minutes=m.number("snapshot_minutes", D.FLEET_SNAPSHOT_MINUTES, minimum=1,
                                  maximum=24 * 60),
        heartbeat_minutes=m.number("heartbeat_minutes", D.FLEET_HEARTBEAT_MINUTES,
                                   minimum=0.05, maximum=24 * 60),
        outbox_max_bytes=m.number("outbox_max_bytes", D.FLEET_OUTBOX_MAX_BYTES,
                                  minimum=64 * 1024, maximum=2**40, integer=True),
        batch=m.number("batch", D.FLEET_BATCH, minimum=1, maximum=1000, integer=True),
        timeout=m.number("timeout", D.FLEET_TIMEOUT, minimum=1, maximum=300),
    )
    m.finish()
    return out


def _check(m: Fields) -> CheckSettings:
    out = CheckSettings(
        after_install=m.flag("after_install", D.CHECK_AFTER_INSTALL),
        ca_bundle=m.path_value("ca_bundle", None),
        timeout=m.number("timeout", D.CHECK_TIMEOUT, minimum=0.5, maximum=120),
        browser=m.flag("browser", D.CHECK_BROWSER),
    )
    m.finish()
    return out


def _sites(top: Fields, file_mode: int | None) -> Iterator[Site]:
    problems = top.problems
    node = top.node("sites")
    if node is None or node.value is None:
        problems.error(top.line, "sites", N_("is required (at least one site with its domains)"))
        return
    if not isinstance(node.value, dict):
        problems.error(node.line, "sites",
                       N_("must be a mapping of site name to site, not {kind}"), kind=kind(node))
        return
    seen: dict[str, str] = {}
    for name, (line, site_node) in node.value.items():
        path = f"sites.{name}"
        try:
            check_site_name(name)
        except NameError_ as error:
            problems.error(line, path, str(error))
            continue
        site = _site(name, Fields(problems, site_node, path, required=True, parent_line=line),
                     line, file_mode)
        if site is None:
            continue
        for domain in site.domains:
            if domain in seen:
                problems.warn(line, path, N_("{name} is also a name of site {site}"), name=domain,
                              site=repr(seen[domain]))
            seen.setdefault(domain, name)
        yield site


def _site(name: str, m: Fields, line: int, file_mode: int | None) -> Site | None:
    before = len(m.problems.errors)
    domains = _domains(m)
    key = m.text("key", D.SITE_KEY, choices=D.KEY_TYPES)
    profile = m.text("profile", None)
    challenge = _challenge(m.sub("challenge"), domains, file_mode)
    server = _server(m.sub("server"))
    m.finish()
    if len(m.problems.errors) > before:
        return None
    return Site(name=name, domains=tuple(domains), key=key, profile=profile,
                challenge=challenge, server=server, line=line)


def _domains(m: Fields) -> list[str]:
    """The site's names, normalised to A-labels, each once."""
    problems = m.problems
    path = m.child_path("domains")
    domains: list[str] = []
    node = m.node("domains")
    if node is None or not node.value:
        problems.error(m.line, path, N_("is required: a list of the site's names"))
    elif not isinstance(node.value, list):
        problems.error(node.line, path, N_("must be a list of names, not {kind}"), kind=kind(node))
    else:
        if len(node.value) > _MAX_NAMES:
            problems.error(node.line, path, N_("at most {n} names per certificate"), n=_MAX_NAMES)
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            try:
                domain = normalize_domain(item.value)
            except NameError_ as error:
                problems.error(item.line, item_path, str(error))
                continue
            if domain in domains:
                problems.error(item.line, item_path, N_("{name} is listed twice"), name=domain)
                continue
            domains.append(domain)
    return domains


def _challenge(m: Fields, domains: list[str], file_mode: int | None) -> Challenge:
    problems = m.problems
    ctype = m.text("type", D.CHALLENGE_TYPE, choices=D.CHALLENGE_TYPES)
    dns_names = dns01.dns01_names(m, domains)
    dns = None
    if dns01.wanted(m, ctype, dns_names):
        dns = dns01.dns01(m, file_mode)
    else:
        dns01.ignore(m)
    http_names = [] if ctype == "dns-01" else [d for d in domains if d not in dns_names]
    webroot = m.path_value("webroot", None)
    standalone = m.address("standalone", default_host=D.ADDRESS_HOST)
    public = m.flag("standalone_public", D.CHALLENGE_STANDALONE_PUBLIC)
    if webroot and standalone:
        problems.error(m.key_line("standalone"), m.path,
                       N_("give webroot or standalone, not both"))
    elif not webroot and not standalone and http_names:
        problems.error(m.line, m.path,
                       N_("http-01 needs webroot: DIR (a directory your web server serves) or "
                          "standalone: \"HOST:PORT\" (mamoru answers on that address itself)"
                          "; or set type: dns-01"))
    elif (webroot or standalone) and not http_names:
        m.error("webroot" if webroot else "standalone",
                N_("is for http-01, and every name of this site uses dns-01: remove it"))
    if standalone and not is_loopback(standalone[0]) and not public:
        m.error("standalone",
                N_("{address} is not a loopback address; mamoru answers challenges on "
                   "other addresses only with standalone_public: true"), address=standalone[0])
    wildcards = [d for d in http_names if d.startswith("*.")]
    if wildcards:
        problems.error(m.line, m.path, N_("{name} is a wildcard: http-01 cannot validate "
                                          "wildcard names (they need dns-01: set type: dns-01, "
                                          "or list it in dns01_names with an rfc2136, provider "
                                          "or hook section)"), name=wildcards[0])
    m.finish()
    return Challenge(type=ctype or D.CHALLENGE_TYPE, webroot=webroot, standalone=standalone,
                     dns01=dns, dns01_names=tuple(dns_names))


def _server(m: Fields) -> Server:
    if not m.present:
        m.finish()
        return Server()
    problems = m.problems
    stype = m.text("type", D.SERVER_TYPE, choices=D.SERVER_TYPES)
    mode = m.text("mode", D.SERVER_MODE, choices=D.SERVER_MODES)
    listen = m.sub("listen")
    https = listen.listen("https", D.SERVER_LISTEN_HTTPS)
    http = listen.listen("http", D.SERVER_LISTEN_HTTP)
    listen.finish()
    server = Server(
        type=stype,
        mode=mode,
        conf_dir=m.path_value("conf_dir", None),
        listen_https=https,
        listen_http=http,
        root=m.path_value("root", None),
        test=m.argv("test"),
        reload=m.argv("reload"),
        verify=m.address("verify", default_host=D.ADDRESS_HOST),
        redirect=m.flag("redirect", D.SERVER_REDIRECT),
        hsts=m.number("hsts", D.SERVER_HSTS, minimum=0, maximum=2 * 365 * 86400, integer=True),
        command_timeout=m.number("command_timeout", D.SERVER_COMMAND_TIMEOUT,
                                 minimum=1, maximum=3600),
        verify_timeout=m.number("verify_timeout", D.SERVER_VERIFY_TIMEOUT, minimum=0.5,
                                maximum=600),
    )
    if stype in ("nginx", "apache") and not server.conf_dir:
        problems.error(m.line, f"{m.path}.conf_dir",
                       N_("is required for {type}: the directory mamoru writes <site>.conf into"),
                       type=stype)
    if stype in ("nginx", "apache") and mode == "site" and not server.root:
        problems.error(m.line, f"{m.path}.root",
                       N_("is required in site mode: the document root"))
    if stype == "command" and not server.reload:
        problems.error(m.line, f"{m.path}.reload",
                       N_("is required for type command: the reload argv"))
    m.finish()
    return server
