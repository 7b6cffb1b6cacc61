"""The `mamoru` command: verbs and their wiring only (the work lives in the modules).

Imports are lazy so `mamoru --help` and `mamoru check-config` start fast.
Exit codes: 0 ok, 1 a site failed (or is in danger, for status), 2 config or usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mamoru import i18n  # light (gettext only); main sets the language before anything speaks
from mamoru.i18n import N_

if TYPE_CHECKING:
    from mamoru.app import App
    from mamoru.config.model import Settings, Site

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Verbs that read local files and print, and log nothing: without -v they start without the
# logging machinery (a warning from a library would still reach stderr, through logging's
# last-resort handler).
QUIET_VERBS = frozenset({"status", "log", "check-config"})


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # Accepted before and after the verb; the verb's value wins when both are given.
    from mamoru.i18n import _

    default = None if top else argparse.SUPPRESS
    parser.add_argument("-c", "--config", metavar="FILE", default=default,
                        help=_("config file (default: $MAMORU_CONFIG or /etc/mamoru/config.yaml)"))
    parser.add_argument("-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
                        help=_("more detail (-vv: debug)"))
    parser.add_argument("--lang", metavar="LANG", default=default,
                        help=_("language for people (ja, en; default: from LANGUAGE, LC_ALL, "
                             "LC_MESSAGES, LANG)"))


def _lang_of(argv: Sequence[str]) -> str | None:
    """--lang's value, read before the parser is built (its help is translated too)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--lang" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--lang="):
            found = arg.partition("=")[2]
    return found


def _remember_argparse_words() -> None:
    """argparse looks its own words ("usage: ", "show this help message and exit"...) up with
    gettext at every argument it adds, and each look-up searches the locale directories anew
    (about a third of `mamoru --help`): remember each answer, the same for the whole process."""
    import functools

    for name in ("_", "ngettext"):
        lookup = getattr(argparse, name, None)
        if callable(lookup) and not hasattr(lookup, "cache_info"):
            setattr(argparse, name, functools.lru_cache(maxsize=None)(lookup))


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() finds it ($COLUMNS, then stdout's
    terminal, else 80), without importing shutil."""
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    stream = sys.__stdout__
    if columns <= 0 and stream is not None:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own formatter, measuring the terminal itself: the stock one imports shutil
    for that (and shutil bz2 and lzma) at every argument added, to check its help: about 3 ms
    of every command, most of which print no help at all."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


class _Unbuilt:
    """Stands in for the parser of a verb this command line does not use: every call to it is
    accepted and does nothing (`build_parser(only=...)`)."""

    def __getattr__(self, name: str) -> Callable[..., _Unbuilt]:
        return lambda *args, **kwargs: self


class _Listed:
    """Subparsers that add each verb other than `only` by its name and help line alone."""

    def __init__(self, verbs: Any, only: str | None) -> None:
        self.verbs, self.only = verbs, only

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        kwargs.setdefault("formatter_class", _Formatter)
        if self.only is None or name == self.only:
            return self.verbs.add_parser(name, **kwargs)
        self.verbs.add_parser(name, help=kwargs.get("help"),
                              formatter_class=kwargs["formatter_class"])
        return _Unbuilt()


def verb_of(argv: Sequence[str]) -> str | None:
    """The verb of a command line, found without the parser: the first word that is neither
    an option nor the value of -c/--config or --lang. None when there is none."""
    words = iter(argv)
    for word in words:
        if word in ("-c", "--config", "--lang"):
            next(words, None)
        elif word == "--":
            return next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; its help is in the language `mamoru.i18n.setup` chose (main runs it first).
    With `only`, only that verb's own arguments are built (every verb is still listed, with
    its help line): a command builds what it parses, not the whole tree (docs/PERFORMANCE.md,
    `--help`)."""
    from mamoru.i18n import _

    _remember_argparse_words()

    parser = argparse.ArgumentParser(
        prog="mamoru", formatter_class=_Formatter,
        description=_("Keeps a clinic's HTTPS certificates valid with nobody touching them."))
    _common(parser, top=True)
    verbs = _Listed(parser.add_subparsers(dest="verb", metavar="VERB"), only)

    def verb(name: str, help_text: str, func: Callable[[argparse.Namespace], int]
             ) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        _common(sub)
        sub.set_defaults(func=func)
        result: argparse.ArgumentParser = sub
        return result

    p = verb("provision", _("obtain and install certificates for sites that need one"),
             cmd_provision)
    p.add_argument("sites", nargs="*", metavar="SITE", help=_("sites to provision (default: all)"))
    p.add_argument("--force", action="store_true", help=_("order even if the certificate is good"))
    p.add_argument("--dry-run", action="store_true",
                   help=_("go through the whole ACME exchange but change nothing in live/"))
    p.add_argument("--json", action="store_true", help=_("print a JSON summary on stdout"))

    p = verb("renew", _("one pass over the sites that are due, then exit (for timers and cron); "
             "sites backing off after a failure wait for their next attempt"), cmd_renew)
    p.add_argument("sites", nargs="*", metavar="SITE", help=_("sites to look at (default: all)"))
    p.add_argument("--force", action="store_true",
                   help=_("renew even if not due (and even while backing off)"))
    p.add_argument("--dry-run", action="store_true",
                   help=_("go through the whole ACME exchange but change nothing in live/"))
    p.add_argument("--json", action="store_true", help=_("print a JSON summary on stdout"))

    verb("run", _("the renewal daemon: renews every site when due, until stopped (systemd: "
         "mamoru.service; SIGHUP reloads the config)"), cmd_run)

    verb("check-config", _("validate the config and list every problem with its line"),
         cmd_check_config)

    p = verb("check-dns", _("prove mamoru can write, see on every authoritative nameserver and "
             "remove a TXT record for each dns-01 name of a site (before its first order)"),
             cmd_check_dns)
    p.add_argument("sites", nargs="*", metavar="SITE",
                   help=_("sites to check (default: every site with dns-01 names)"))

    p = verb("init", _("write a first config by looking at this machine (never replaces one)"),
             cmd_init)
    p.add_argument("-d", "--domain", dest="domains", action="append", default=[],
                   metavar="NAME", help=_("a name on the certificate (repeat; asked if omitted "
                   "and a terminal is attached)"))
    p.add_argument("--contact", metavar="EMAIL", help=_("address the CA may write to"))
    p.add_argument("--server", choices=("nginx", "apache"),
                   help=_("the web server (default: the one that runs here)"))
    p.add_argument("--directory", metavar="URL", default="letsencrypt",
                   help=_("the CA: letsencrypt (default), letsencrypt-staging, or a URL"))
    p.add_argument("--ca-bundle", metavar="PEM", help=_("trust this bundle for the CA's TLS"))
    p.add_argument("--https-listen", metavar="[ADDR:]PORT", default="443",
                   help=_("the site's HTTPS address (default 443)"))
    p.add_argument("--http-listen", metavar="[ADDR:]PORT",
                   help=_("the site's plain-HTTP address (default: the default site's, else 80)"))

    p = verb("check", _("look at live sites the way a patient's browser does"), cmd_check)
    p.add_argument("targets", nargs="*", metavar="URL|SITE",
                   help=_("URLs or host names, or configured site names (default: every site)"))
    p.add_argument("--json", action="store_true", help=_("JSON output for scripts and vendors"))
    p.add_argument("--ca-bundle", metavar="FILE",
                   help=_("trust these roots instead of the system's"))
    p.add_argument("--connect", metavar="HOST:PORT",
                   help=_("connect here for HTTPS while using the real host name"))
    p.add_argument("--http-connect", metavar="HOST:PORT",
                   help=_("connect here for the plain-HTTP checks (default: HOST:80 of --connect)"))
    p.add_argument("--strict", action="store_true", help=_("exit 1 on warnings too"))
    p.add_argument("--timeout", type=float, default=None, help=_("seconds per connection"))
    p.add_argument("--browser", action="store_true",
                   help=_("also open each name in a real headless Chromium (apt-get install "
                        "chromium libnss3-tools) and report what it shows"))

    p = verb("status", _("one row per site from local state (exit 1 if any site is in danger)"),
             cmd_status)
    p.add_argument("--json", action="store_true", help=_("JSON output for scripts and monitoring"))

    p = verb("log", _("query the event log (rotated files too), newest last"), cmd_log)
    p.add_argument("--site", metavar="SITE", help=_("only this site's events"))
    p.add_argument("--since", metavar="WHEN",
                   help=_("only events since: 30m, 12h, 7d, 2w, or a date/time (2026-11-01)"))
    p.add_argument("--failed", action="store_true", help=_("only failures (error-level events)"))
    p.add_argument("--json", action="store_true", help=_("one JSON object per line"))

    verb("alert-test", _("send a test alert through every configured channel"), cmd_alert_test)

    p = verb("import-certbot", _("take over certbot's lineages: certificates, account and "
             "renewals (the /etc/letsencrypt/live/ paths keep working); --undo gives them back"),
             cmd_import_certbot)
    p.add_argument("--from", dest="from_dir", metavar="DIR", default="/etc/letsencrypt",
                   help=_("certbot's config directory (default: /etc/letsencrypt)"))
    p.add_argument("--write-config", metavar="FILE",
                   help=_("write the imported sites as a mamoru config file (never over an "
                   "existing file without --force)"))
    p.add_argument("--force", action="store_true", help=_("let --write-config replace FILE"))
    p.add_argument("--dry-run", action="store_true",
                   help=_("show what would be imported and the config; change nothing"))
    p.add_argument("--undo", action="store_true",
                   help=_("restore certbot's files from the backup taken before the import and "
                   "remove the imported sites"))

    if only in (None, "fleet"):
        from mamoru.fleet.commands import add_parser as fleet_verbs  # no fleet extra needed

        fleet_verbs(verbs, _(FLEET_HELP))
    else:  # listed by its help line, without importing the vendor's side
        verbs.add_parser("fleet", help=_(FLEET_HELP))

    p = verb("revoke", _("revoke a site's current certificate and put a new one in service"),
             cmd_revoke)
    p.add_argument("site", metavar="SITE")
    p.add_argument("--reason", default="unspecified",
                   choices=sorted(REVOCATION_REASONS), help=_("RFC 5280 reason"))
    p.add_argument("--no-replace", action="store_true",
                   help=_("only revoke: do not order a replacement (the site keeps serving the "
                   "revoked certificate until the next provision)"))
    return parser


def _status_word(status: str) -> str:
    """An outcome's status for a person (the JSON summary keeps the English word)."""
    from mamoru.i18n import N_, _

    words = {"issued": N_("issued"), "renewed": N_("renewed"), "reinstalled": N_("reinstalled"),
             "revoked": N_("revoked")}
    return _(words[status]) if status in words else status


FLEET_HELP = N_("the vendor's side: every clinic in one PostgreSQL (needs `pip install "
                "mamoru[fleet]`)")
REVOCATION_REASONS = {"unspecified": 0, "keyCompromise": 1, "superseded": 4,
                      "cessationOfOperation": 5}


def _setup_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        # requests/urllib3 debug lines would print JWS bodies; never below WARNING by default.
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        logging.getLogger("acme").setLevel(logging.WARNING)


def _load(args: argparse.Namespace, *, cached: bool = True) -> Settings:
    """The config, validated; kept Settings are used while nothing they came from changed
    (config/cache.py), except for `check-config` (`cached=False`), which reads the file."""
    from mamoru.config import find_config_path, load_config

    settings = load_config(find_config_path(args.config), cached=cached)
    for warning in settings.warnings:
        print(warning, file=sys.stderr)
    return settings


def _select(settings: Settings, names: Sequence[str]) -> list[Site]:
    from mamoru.errors import UsageError

    if not names:
        return list(settings.sites)
    known = {s.name: s for s in settings.sites}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(i18n._("no site named {names} in {file} (sites: {sites})").format(
            names=", ".join(unknown), file=settings.config_file,
            sites=", ".join(known) or i18n._("none")))
    return [known[n] for n in names]


def run_sites(app: App, sites: list[Site], *, force: bool, dry_run: bool,
              honour_backoff: bool = False) -> list[Any]:
    """Provision `sites` concurrently: at most acme.max_concurrent_orders orders at the CA at
    once (`App.order_slots`), and as many sites again at work beside them, so that one site's
    storage (fsync) and install overlap the next sites' orders instead of holding a slot."""
    from concurrent.futures import ThreadPoolExecutor

    from mamoru.pipeline import provision

    workers = max(1, min(len(sites), 2 * app.settings.acme.max_concurrent_orders))
    if workers == 1:
        return [provision(site, app, force=force, dry_run=dry_run,
                          honour_backoff=honour_backoff) for site in sites]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="site") as pool:
        return list(pool.map(lambda s: provision(s, app, force=force, dry_run=dry_run,
                                                 honour_backoff=honour_backoff), sites))


def _stop_on_signals(app: App) -> Callable[[], None]:
    """Ctrl-C / SIGTERM: ask every site's work to stop at its next wait (the challenge cleanup
    runs, nothing half-done goes live); a second Ctrl-C interrupts at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: object) -> None:
        if app.stop.is_set():
            raise KeyboardInterrupt
        print(i18n._("mamoru: {signal}: stopping after cleanup (again to interrupt at "
                     "once)").format(signal=signal.Signals(signum).name), file=sys.stderr)
        app.stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def cmd_provision(args: argparse.Namespace) -> int:
    from mamoru.app import build_app

    settings = _load(args)
    sites = _select(settings, args.sites)
    if args.dry_run:
        # A dry run changes no schedule, attempt count or alert: no alert or metrics sinks,
        # and the pipeline writes no state. Said before it starts, on stderr.
        from mamoru.app import dry_run

        plan = dry_run(settings)
        print(f"mamoru: {plan.note}", file=sys.stderr)
        app = build_app(plan.settings, observers=False)
        app.dry_run_finalizes = plan.finalizes
    else:
        app = build_app(settings)
    restore = _stop_on_signals(app)
    try:
        # `renew` is the same pass, but leaves sites that are backing off after a failure
        # alone until their next attempt (a timer or cron must not undo the backoff).
        outcomes = run_sites(app, sites, force=args.force, dry_run=args.dry_run,
                             honour_backoff=args.verb == "renew")
        stats = app.session_stats()
    finally:
        restore()
        app.reset_session()
        app.events.close(ALERT_FLUSH_SECONDS)  # queued alerts go out before we exit
    if args.json:
        import json

        print(json.dumps({"sites": [o.to_json() for o in outcomes],
                          "ok": all(o.ok for o in outcomes), "ca": stats}, indent=2))
    else:
        for outcome in outcomes:
            if outcome.version is not None and outcome.status in ("issued", "renewed",
                                                                   "reinstalled"):
                print(i18n._("{site}: {status} — {file}").format(
                    site=outcome.site, status=_status_word(outcome.status),
                    file=outcome.version.file("fullchain.pem")))
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


cmd_renew = cmd_provision  # the same command; `args.verb` tells them apart


def cmd_run(args: argparse.Namespace) -> int:
    from mamoru.app import build_app
    from mamoru.config import find_config_path
    from mamoru.service.daemon import run
    from mamoru.service.worker import load_settings

    # Read in a child process: the resident daemon keeps the Settings, not the memory that
    # composing the YAML took (service/worker.py).
    settings = load_settings(find_config_path(args.config))
    for warning in settings.warnings:
        print(warning, file=sys.stderr)
    return run(build_app(settings, serve_metrics=True))


def cmd_init(args: argparse.Namespace) -> int:
    from mamoru.config import find_config_path
    from mamoru.errors import UsageError
    from mamoru.setup.init import Answers, ask, detect, refuse_existing, render, write_config

    path = find_config_path(args.config)
    refuse_existing(path)
    domains, contact = list(args.domains), args.contact
    if not domains and sys.stdin.isatty():
        domains = ask(i18n._("Names on the certificate (space-separated): ")).split()
        contact = contact or ask(i18n._("Contact e-mail for the CA (empty: none): ")) or None
    if not domains:
        raise UsageError(i18n._("init needs the site's names: mamoru init -d clinic.example "
                                "[-d www.clinic.example] [--contact EMAIL]"))
    machine = detect(args.server)
    answers = Answers(domains=domains, contact=contact, directory=args.directory,
                      ca_bundle=args.ca_bundle, https_listen=args.https_listen,
                      http_listen=args.http_listen)
    write_config(path, render(answers, machine))
    for note in machine.notes:
        print(i18n._("mamoru: note: {note}").format(note=note), file=sys.stderr)
    print(i18n._("{path}: written for {server} ({names}); next: mamoru check-config && "
                 "mamoru provision").format(path=path, server=machine.server,
                                            names=", ".join(domains)))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args, cached=False)
    names = sum(len(s.domains) for s in settings.sites)
    from mamoru.i18n import _, ngettext

    sites = ngettext("{n} site", "{n} sites", len(settings.sites)).format(n=len(settings.sites))
    said = ngettext("{n} name", "{n} names", names).format(n=names)
    print(_("{file}: ok — {sites}, {names}, CA {ca}").format(
        file=settings.config_file, sites=sites, names=said, ca=settings.acme.directory))
    return EXIT_OK


def cmd_check_dns(args: argparse.Namespace) -> int:
    from mamoru.challenges.dns.base import DnsFailed
    from mamoru.challenges.dns.check import check_dns
    from mamoru.challenges.dns.setup import dns_solver_for
    from mamoru.errors import UsageError

    settings = _load(args)
    sites = [site for site in _select(settings, args.sites) if site.challenge.dns01 is not None]
    if not sites:
        raise UsageError(i18n._("no site with dns-01 names to check (challenge.type: dns-01 "
                                "or challenge.dns01_names)"))
    failed = 0
    for site in sites:
        dns01 = site.challenge.dns01
        assert dns01 is not None
        names = [name for name in site.domains if site.challenge.type_for(name) == "dns-01"]
        try:
            solver, waiter = dns_solver_for(dns01)
        except DnsFailed as error:
            failed += 1
            print(i18n._("{site}: FAILED — {error}").format(site=site.name, error=error)
                  + (f"\n  {i18n._(error.hint)}" if error.hint else ""))
            continue
        result = check_dns(solver, waiter, names, dns01.propagation_timeout)
        if result.ok:
            print(i18n._("{site}: ok — wrote, saw on every authoritative nameserver after "
                         "{seconds} s and removed a TXT record at {records}").format(
                site=site.name, seconds=f"{result.published_seconds:.1f}",
                records=", ".join(result.records)))
        else:
            failed += 1
            problem = result.error
            assert problem is not None
            print(i18n._("{site}: FAILED — {error}").format(site=site.name, error=problem)
                  + (f"\n  {i18n._(problem.hint)}" if problem.hint else ""))
    return EXIT_FAILED if failed else EXIT_OK


# How long a one-shot command waits at exit for alerts still being delivered (retries
# included); what is not delivered by then is sent when the problem is next seen.
ALERT_FLUSH_SECONDS = 30.0


def _stdout_gone() -> None:
    """The reader of our stdout went away: point stdout at /dev/null so the interpreter's
    final flush does not print a second BrokenPipeError."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def cmd_status(args: argparse.Namespace) -> int:
    from mamoru.observe.status import collect, danger_summary, exit_code, render_table, to_json

    settings = _load(args)
    rows = collect(settings)
    fleet = None
    if settings.fleet is not None:
        from mamoru.observe.outbox import describe_lag, lag

        fleet = lag(settings)
    try:
        if args.json:
            data = to_json(rows)
            if fleet is not None:
                data["fleet"] = fleet
            import json

            print(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            print(render_table(rows))
            if fleet is not None:
                print(describe_lag(fleet))
    except BrokenPipeError:  # `mamoru status | head`: the exit code still tells
        _stdout_gone()
    summary = danger_summary(rows)
    if summary:
        print(f"mamoru: {summary}", file=sys.stderr)
    return exit_code(rows)


def cmd_log(args: argparse.Namespace) -> int:
    from mamoru.errors import UsageError
    from mamoru.observe.logquery import Query, Reader, parse_since, render_line, to_json_line

    settings = _load(args)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.site and args.site not in {s.name for s in settings.sites}:
        print(i18n._("mamoru: note: {site} is not a site in {file}").format(
            site=args.site, file=settings.config_file), file=sys.stderr)
    reader = Reader(settings.paths.event_log)
    render = to_json_line if args.json else render_line
    try:
        for event in reader.events(Query(site=args.site, since=since, failed=args.failed)):
            print(render(event))
    except BrokenPipeError:  # `mamoru log | head`
        _stdout_gone()
        return EXIT_OK
    if reader.skipped:
        print(i18n.ngettext("mamoru: skipped {n} damaged line in {file}",
                            "mamoru: skipped {n} damaged lines in {file}", reader.skipped
                            ).format(n=reader.skipped, file=settings.paths.event_log),
              file=sys.stderr)
    return EXIT_OK


def cmd_alert_test(args: argparse.Namespace) -> int:
    from mamoru.errors import UsageError
    from mamoru.observe.alerts import AlertSink
    from mamoru.storage import FileStorage

    settings = _load(args)
    storage = FileStorage(settings.paths.state, settings.paths.live, settings.paths.key_group)
    sink = AlertSink(settings.alerts, storage)
    try:
        if not sink.channels:
            raise UsageError(i18n._("no alert channel in {file} (set alerts.email and/or "
                                    "alerts.webhook)").format(file=settings.config_file))
        results = sink.send_test()
    finally:
        sink.close(1.0)
    for channel, error in results:
        print(i18n._("{channel}: sent").format(channel=channel) if error is None else
              i18n._("{channel}: FAILED: {error}").format(channel=channel, error=error))
    return EXIT_OK if all(error is None for _, error in results) else EXIT_FAILED


def cmd_import_certbot(args: argparse.Namespace) -> int:
    import os

    from mamoru.config import find_config_path
    from mamoru.migrate.command import import_certbot, undo_import

    # The config names the store and the CA; without one (a first install) mamoru's defaults.
    settings = _load(args) if args.config or os.path.exists(find_config_path(None)) else None
    if args.undo:
        undone = undo_import(settings)
        for item in undone:
            print(i18n._("{lineage}: given back to certbot (site {site} removed)").format(
                lineage=item.lineage, site=item.site))
            if item.warning:
                print(i18n._("{lineage}: warning: {warning}").format(
                    lineage=item.lineage, warning=item.warning), file=sys.stderr)
        if not undone:
            print(i18n._("nothing to undo: no import by mamoru is recorded"))
        return EXIT_OK
    report = import_certbot(args.from_dir, settings=settings, write_config_to=args.write_config,
                            force=args.force, dry_run=args.dry_run)
    for line in report.lines():
        print(line)
    if args.dry_run and report.config_text:
        print("\n" + i18n._("The config it would write:") + "\n\n" + report.config_text,
              end="")
    return report.exit_code


def cmd_revoke(args: argparse.Namespace) -> int:
    from mamoru.app import build_app
    from mamoru.pipeline import revoke

    settings = _load(args)
    site = _select(settings, [args.site])[0]
    app = build_app(settings)
    try:
        outcome = revoke(site, app, reason=args.reason,
                         reason_code=REVOCATION_REASONS[args.reason],
                         replace=not args.no_replace)
    finally:
        app.reset_session()
        app.events.close(ALERT_FLUSH_SECONDS)
    if outcome is None:
        return EXIT_OK
    if outcome.version is not None and outcome.ok:
        print(i18n._("{site}: {status} — {file}").format(
            site=outcome.site, status=_status_word(outcome.status),
            file=outcome.version.file("fullchain.pem")))
    return EXIT_OK if outcome.ok else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from mamoru.check.report import exit_code, render_table, to_json
    from mamoru.check.url import check_url
    from mamoru.config.defaults import CHECK_TIMEOUT
    from mamoru.errors import UsageError
    from mamoru.netaddr import parse_address

    connect = parse_address(args.connect, "127.0.0.1") if args.connect else None
    http_connect = parse_address(args.http_connect, "127.0.0.1") if args.http_connect else None
    if (args.connect and connect is None) or (args.http_connect and http_connect is None):
        raise UsageError("--connect and --http-connect take HOST:PORT")
    if connect and not http_connect:
        http_connect = (connect[0], 80)
    site_names = [t for t in args.targets if "." not in t and "/" not in t]
    urls = [t for t in args.targets if t not in site_names]
    reports = []
    settings = None
    if site_names or not args.targets:
        from mamoru.check.site import check_site
        from mamoru.storage import FileStorage

        settings = _load(args)
        storage = FileStorage(settings.paths.state, settings.paths.live, settings.paths.key_group)
        for site in _select(settings, site_names):
            reports += check_site(site, storage.live(site.name),
                                  ca_bundle=args.ca_bundle or settings.check.ca_bundle,
                                  timeout=args.timeout or settings.check.timeout,
                                  connect=connect, http_connect=http_connect)
    for url in urls:
        try:
            reports.append(check_url(url, ca_bundle=args.ca_bundle, connect=connect,
                                     http_connect=http_connect,
                                     timeout=args.timeout or CHECK_TIMEOUT))
        except ValueError as error:
            raise UsageError(str(error)) from None
    if args.browser:
        # Imported only here: the plain check never loads the browser driver.
        from mamoru.check.browser import add_browser_findings, find_chromium

        find_chromium()  # no Chromium: say how to install it (exit 2) before any output
        add_browser_findings(reports, ca_bundle=args.ca_bundle or (
            settings.check.ca_bundle if settings else None), connect=connect,
            http_connect=http_connect, timeout=max((args.timeout or 5.0) * 3, 15.0))
    if args.json:
        import json

        print(json.dumps(to_json(reports), indent=2, ensure_ascii=False))
    else:
        print(render_table(reports))
    return exit_code(reports, args.strict)


def _config_problems(error: Exception) -> str:
    """The config's problems, the head line in the reader's language (each problem keeps its
    file:line, key and words)."""
    from mamoru.i18n import ngettext

    problems = getattr(error, "problems", None)
    if not isinstance(problems, list):
        return str(error)
    from mamoru.config.yamlnodes import localized

    head = ngettext("{n} problem in the config:", "{n} problems in the config:",
                    len(problems)).format(n=len(problems))
    return "\n".join([head, *(f"  {localized(p)}" for p in problems)])


def main(argv: Sequence[str] | None = None) -> int:
    i18n.setup(_lang_of(sys.argv[1:] if argv is None else argv))
    i18n.route_argparse(argparse)  # "usage:", "options", its errors: in the same language
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=verb_of(words) or "")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if args.verbose or args.verb not in QUIET_VERBS:
        _setup_logging(args.verbose)
    from mamoru.errors import ConfigError, MamoruError, UsageError

    try:
        return int(args.func(args))
    except ConfigError as error:
        print(_config_problems(error), file=sys.stderr)
        return EXIT_USAGE
    except UsageError as error:
        hint = i18n._(error.hint) if error.hint else ""
        print(f"mamoru: {error}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
        return EXIT_USAGE
    except MamoruError as error:
        hint = i18n._(error.hint) if error.hint else ""
        print(f"mamoru: {error}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(i18n._("mamoru: interrupted"), file=sys.stderr)
        return 130


def console() -> int:
    """The `mamoru` command (and `python -m mamoru.cli`): `main`, then an exit that skips the
    interpreter's last collection over every object. A one-shot verb has written, flushed and
    closed all it keeps (storage fsyncs; the event log and sinks are closed by `events.close`),
    so that pass only costs time: 30-40 ms of a 0.3 s provision, with cryptography, ssl and
    PyYAML loaded (docs/PERFORMANCE.md). Not in `main`, which tests call in their own process."""
    import gc

    try:
        return main()
    finally:  # also after argparse's own exit (--help, a usage error)
        gc.freeze()  # objects now alive are left out of the collections at exit


if __name__ == "__main__":
    sys.exit(console())
