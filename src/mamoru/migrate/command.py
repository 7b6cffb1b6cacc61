"""`mamoru import-certbot` as one call for the CLI: read, plan, (dry run or) adopt, write the
config; and `--undo`. Returns a Report whose `lines()` are what the user reads."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mamoru.config import defaults as D
from mamoru.config.model import Settings
from mamoru.migrate.adopt import Failed, Imported, Undone, adopt_all, undo
from mamoru.migrate.certbot_state import Refusal, read_state
from mamoru.migrate.config_writer import render_config, write_config
from mamoru.migrate.plan import SitePlan, plan_state
from mamoru.storage.filesystem import FileStorage

DEFAULT_FROM = "/etc/letsencrypt"


@dataclass
class Report:
    from_dir: str
    dry_run: bool
    plans: list[SitePlan] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    imported: list[Imported] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    config_written: str | None = None
    config_text: str = ""

    @property
    def exit_code(self) -> int:
        """0: everything that could be imported was (or would be); 1: a lineage failed."""
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        """The report for a person, in the language mamoru.i18n chose."""
        from mamoru.i18n import _

        out: list[str] = []
        done = {i.lineage: i for i in self.imported}
        for plan in self.plans:
            name = plan.lineage.name
            if self.dry_run:
                out.append(_("{lineage}: would become site {site} ({names})").format(
                    lineage=name, site=plan.site, names=", ".join(plan.domains)))
            elif name in done:
                out.append(_("{lineage}: imported as site {site}, certificate {serial}, account "
                             "{account}; certbot no longer renews it").format(
                    lineage=name, site=plan.site, serial=done[name].serial,
                    account=done[name].account_url))
            for note in plan.notes:
                out.append(_("{lineage}: to decide: {note}").format(lineage=name, note=note))
        for failure in self.failed:
            out.append(_("{lineage}: not imported, certbot's files unchanged: {reason}").format(
                lineage=failure.lineage, reason=failure.reason))
        for refusal in self.refused:
            out.append(_("{lineage}: not imported ({file}): {reason}").format(
                lineage=refusal.name, file=refusal.conf_path, reason=refusal.reason))
        if self.config_written:
            out.append(_("config written to {file}; check it with `mamoru check-config -c "
                         "{file}`").format(file=self.config_written))
        if not self.plans and not self.refused:
            out.append(_("{dir}: no certbot lineages found").format(dir=self.from_dir))
        return out


def _paths(settings: Settings | None) -> tuple[str, str, str | None]:
    if settings is not None:
        return settings.paths.state, settings.paths.live, settings.paths.key_group
    return D.PATHS_STATE, D.PATHS_LIVE, None


def import_certbot(from_dir: str = DEFAULT_FROM, *, settings: Settings | None = None,
                   write_config_to: str | None = None, force: bool = False,
                   dry_run: bool = False, acme_webroot: str | None = None) -> Report:
    """Import every mappable lineage under `from_dir` into the store `settings` names (or
    mamoru's default paths). With `settings`, only lineages from its CA are taken; without,
    those from the CA most lineages use. Raises Unreadable when `from_dir` is not certbot's."""
    report = Report(from_dir, dry_run)
    state = read_state(from_dir)
    options = {"acme_webroot": acme_webroot} if acme_webroot else {}
    plans, refused = plan_state(state, **options)
    taken = {site.name for site in settings.sites} if settings else set()
    directory = settings.acme.directory if settings else _most_used(plans)
    for plan in plans:
        if plan.lineage.account.server != directory:
            refused.append(Refusal(plan.lineage.name, plan.lineage.conf_path,
                                   f"certbot renews it from {plan.lineage.account.server}; "
                                   f"this mamoru config uses {directory} (one CA per config)"))
        elif plan.site in taken:
            refused.append(Refusal(plan.lineage.name, plan.lineage.conf_path,
                                   f"the config already has a site {plan.site}"))
        else:
            report.plans.append(plan)
    report.refused = refused
    state_dir, live_dir, key_group = _paths(settings)
    if report.plans:
        report.config_text = render_config(report.plans, _acme(settings, report.plans),
                                           _paths_config(settings), _based_on(settings))
    if dry_run:
        return report
    if write_config_to:  # refuse before anything changes, not after
        write_config(write_config_to, report.config_text, force=force, check_only=True)
    storage = FileStorage(state_dir, live_dir, key_group)
    report.imported, report.failed = adopt_all(report.plans, storage, state_dir)
    if write_config_to and report.imported:
        ok = {i.lineage for i in report.imported}
        kept = [p for p in report.plans if p.lineage.name in ok]
        write_config(write_config_to, render_config(kept, _acme(settings, kept),
                                                    _paths_config(settings),
                                                    _based_on(settings)), force=force)
        report.config_written = write_config_to
    return report


def undo_import(settings: Settings | None = None) -> list[Undone]:
    """Give every imported lineage back to certbot (see Undone.warning)."""
    state_dir, live_dir, key_group = _paths(settings)
    return undo(FileStorage(state_dir, live_dir, key_group), state_dir)


def _most_used(plans: list[SitePlan]) -> str:
    counts = Counter(plan.lineage.account.server for plan in plans)
    return counts.most_common(1)[0][0] if counts else ""


def _acme(settings: Settings | None, plans: list[SitePlan]) -> dict[str, object]:
    if settings is not None:
        acme: dict[str, object] = {"directory": settings.acme.directory}
        if settings.acme.contact:
            acme["contact"] = [c.removeprefix("mailto:") for c in settings.acme.contact]
        if settings.acme.ca_bundle:
            acme["ca_bundle"] = settings.acme.ca_bundle
        return acme
    acme = {"directory": plans[0].lineage.account.server}
    contact = [c.removeprefix("mailto:") for c in plans[0].lineage.account.contact]
    if contact:
        acme["contact"] = contact
    return acme


def _based_on(settings: Settings | None) -> str | None:
    return settings.config_file if settings is not None and settings.sites else None


def _paths_config(settings: Settings | None) -> dict[str, object] | None:
    if settings is None:
        return None
    paths: dict[str, object] = {"state": settings.paths.state, "live": settings.paths.live,
                                "event_log": settings.paths.event_log}
    if settings.paths.key_group:
        paths["key_group"] = settings.paths.key_group
    return paths
