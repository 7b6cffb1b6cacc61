"""The imported sites as a mamoru config file, each with comments naming its certbot lineage
and anything the user still has to decide. Never overwrites a file unless asked (`force`)."""

from __future__ import annotations

import os
from typing import Any

import yaml

from mamoru.errors import ConfigError
from mamoru.migrate.plan import SitePlan
from mamoru.storage.atomic import write_file


def render_config(plans: list[SitePlan], acme: dict[str, Any],
                  paths: dict[str, Any] | None = None, based_on: str | None = None) -> str:
    """The YAML text: acme, paths (when given), then one site per lineage. `based_on` names
    the config whose acme and paths were copied (its own sites are not)."""
    out = ["# Written by `mamoru import-certbot`: one site per certbot lineage.",
           "# certbot no longer renews these lineages (autorenew = False in their renewal",
           "# conf); `mamoru import-certbot --undo` gives them back."]
    if based_on:
        out.append(f"# acme and paths are those of {based_on}; its own sites are not copied:")
        out.append("# merge the sites below into it, or add its sites here.")
    out.append("")
    out.append(yaml.safe_dump({"acme": acme}, sort_keys=False).rstrip())
    if paths:
        out.append(yaml.safe_dump({"paths": paths}, sort_keys=False).rstrip())
    out.append("sites:")
    for plan in plans:
        out.append(f"  # certbot lineage {plan.lineage.name} ({plan.lineage.conf_path}),")
        out.append(f"  # authenticator {plan.lineage.params.get('authenticator')}; "
                   f"served from {os.path.dirname(plan.lineage.live_links['fullchain'])}/")
        for note in plan.notes:
            out.append(f"  # TODO: {note}")
        body = yaml.safe_dump({plan.site: plan.config()}, sort_keys=False,
                              default_flow_style=False)
        out.extend("  " + line for line in body.rstrip().splitlines())
    return "\n".join(out) + "\n"


def write_config(path: str, text: str, *, force: bool = False, check_only: bool = False
                 ) -> None:
    """Write `text` to `path` (0600: it may later hold secrets). Refuses to replace a file
    unless `force`; with `check_only`, only says (by raising) whether it would refuse."""
    if os.path.lexists(path) and not force:
        raise ConfigError(f"{path} already exists; mamoru does not overwrite a config file "
                          "(give another file, or --force)")
    if check_only:
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    write_file(path, text.encode("utf-8"), mode=0o600)
