"""`mamoru fleet ...`: the vendor's verbs (migrate, add-clinic, add-user, serve, status,
alerts). Argument parsing here imports nothing heavy; each verb imports what it needs, so a
clinic's `mamoru` without the fleet extra still starts (and says what to install)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mamoru.i18n import _

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(verbs: Any, help_text: str) -> None:
    """The `fleet` verb and its own verbs; `help_text` is its line in `mamoru --help`."""
    fleet = verbs.add_parser("fleet", help=help_text,
                             description=_("The vendor's side: every clinic's renewals in one "
                             "PostgreSQL, one page and one command."))
    sub = fleet.add_subparsers(dest="fleet_verb", metavar="VERB", required=True)

    def verb(name: str, text: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
        p.add_argument("--database", metavar="URL",
                       help=_("postgresql://... (default: $MAMORU_FLEET_DATABASE)"))
        p.set_defaults(func=lambda args: run(func, args))
        return p

    verb("migrate", _("create or upgrade the fleet schema (safe to run again)"), cmd_migrate)
    p = verb("add-clinic", _("register a clinic and print its new token (only its hash is kept)"),
             cmd_add_clinic)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--db-role", action="store_true",
                   help=_("also create a database login that may insert only this clinic's "
                        "rows (the direct path, for vendors with a VPN)"))
    p = verb("add-user", _("create (or reset) a login for the fleet page; prints the password"),
             cmd_add_user)
    p.add_argument("name", metavar="NAME")
    p = verb("serve", _("the HTTPS collector and page (TLS only)"), cmd_serve)
    p.add_argument("--listen", metavar="HOST:PORT", required=True)
    p.add_argument("--tls-cert", metavar="PEM", required=True)
    p.add_argument("--tls-key", metavar="PEM", required=True)
    p.add_argument("--rate", type=float, default=5.0,
                   help=_("requests per second per clinic (default 5, bursts of 30)"))
    p.add_argument("--alert-webhook", metavar="URL", help=_("send fleet alerts here"))
    p.add_argument("--alert-webhook-secret-file", metavar="FILE",
                   help=_("sign webhook alerts with the secret in this file"))
    p.add_argument("--alert-ca-bundle", metavar="PEM", help=_("trust for the webhook's HTTPS"))
    p.add_argument("--silent-after", default="24h", metavar="SPAN",
                   help=_("alert when a clinic has not reported for this long (default 24h)"))
    p.add_argument("--alert-interval", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--digest-min", type=int, default=5, metavar="N",
                   help=_("N or more clinics failing the same way are one digest (default 5)"))
    p = verb("status", _("every clinic and site from the fleet database (exit 1 if any site "
             "is in danger or any clinic silent)"), cmd_status)
    p.add_argument("--failing", action="store_true", help=_("only sites failing to renew"))
    p.add_argument("--expiring", metavar="SPAN", help=_("only certificates expiring within "
                   "SPAN (14d, 48h)"))
    p.add_argument("--silent", metavar="SPAN", help=_("only clinics silent for SPAN (24h)"))
    p.add_argument("--clinic", metavar="NAME", help=_("one clinic"))
    p.add_argument("--json", action="store_true", help=_("JSON for scripts"))


def _url(args: argparse.Namespace) -> str:
    from mamoru.fleet.db import database_url

    return database_url(args.database)


def _missing_extra(error: ImportError) -> int:
    print(f"mamoru fleet: {error.name or 'a dependency'} is not installed: "
          "pip install 'mamoru[fleet]'", file=sys.stderr)
    return EXIT_USAGE


def run(func: Any, args: argparse.Namespace) -> int:
    from mamoru.errors import MamoruError

    try:
        code: int = func(args)
    except ImportError as error:
        return _missing_extra(error)
    except MamoruError as error:
        print(f"mamoru fleet: {error}", file=sys.stderr)
        return EXIT_FAILED
    return code


def cmd_migrate(args: argparse.Namespace) -> int:
    from mamoru.fleet.db import migrate

    applied = migrate(_url(args))
    print(_("applied {migrations}").format(migrations=", ".join(applied)) if applied
          else _("the schema is up to date"))
    return EXIT_OK


def cmd_add_clinic(args: argparse.Namespace) -> int:
    from mamoru.fleet.db import add_clinic

    new = add_clinic(_url(args), args.name, db_role=args.db_role)
    print(new.token)
    if new.db_role:
        print(f"database role: {new.db_role}\ndatabase password: {new.db_password}",
              file=sys.stderr)
    print(_("clinic {name} added; put the token above in its fleet token_file (mode "
            "0600)").format(name=new.name),
          file=sys.stderr)
    return EXIT_OK


def cmd_add_user(args: argparse.Namespace) -> int:
    from mamoru.fleet.db import add_user

    print(add_user(_url(args), args.name))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from mamoru.fleet.query import parse_span
    from mamoru.fleet.server import ServeConfig, serve
    from mamoru.netaddr import parse_address

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    address = parse_address(args.listen)
    if address is None:
        print(f"mamoru fleet serve: --listen {args.listen!r} is not HOST:PORT", file=sys.stderr)
        return EXIT_USAGE
    host, port = address
    config = ServeConfig(database=_url(args), rate=args.rate)
    if args.alert_webhook:
        from mamoru.config.model import AlertSettings, Secret, WebhookAlerts
        from mamoru.fleet.alerts import FleetAlerts

        secret = None
        if args.alert_webhook_secret_file:
            with open(args.alert_webhook_secret_file, encoding="utf-8") as handle:
                secret = Secret(handle.read().strip())
        config.alerts = FleetAlerts(
            AlertSettings(webhook=WebhookAlerts(args.alert_webhook, secret,
                                                ca_bundle=args.alert_ca_bundle)),
            silent_after=parse_span(args.silent_after), digest_min=args.digest_min,
            interval=args.alert_interval)
    serve(config, host, port, args.tls_cert, args.tls_key)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from mamoru.fleet.db import connect
    from mamoru.fleet.query import Filters, fleet, parse_span

    try:
        filters = Filters(failing=args.failing,
                          expiring=parse_span(args.expiring) if args.expiring else None,
                          silent=parse_span(args.silent) if args.silent else None,
                          clinic=args.clinic)
    except ValueError as error:
        print(f"mamoru fleet status: {error}", file=sys.stderr)
        return EXIT_USAGE
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    with connect(_url(args)) as conn:
        clinics = fleet(conn, now, filters)
    danger = any(s["danger"] for c in clinics for s in c["sites"])
    if args.json:
        json.dump({"time": now.isoformat().replace("+00:00", "Z"), "ok": not danger,
                   "clinics": clinics}, sys.stdout, indent=1)
        print()
    else:
        _table(clinics)
    return EXIT_FAILED if danger else EXIT_OK


def _table(clinics: list[dict[str, Any]]) -> None:
    rows = [("CLINIC", "SITE", "DAYS LEFT", "LAST RENEWAL", "FAILING SINCE", "LAST REPORT")]
    for clinic in clinics:
        for site in clinic["sites"] or [{}]:
            days = site.get("days_left")
            rows.append((clinic["clinic"], site.get("site") or "-",
                         f"{days:.1f}" if days is not None else "-",
                         (site.get("last_renewal") or "-")[:16],
                         (site.get("failing_since") or "-")[:16]
                         + (f" {site.get('problem_type')}" if site.get("failing_since") else ""),
                         (clinic["last_report"] or "never")[:16]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
