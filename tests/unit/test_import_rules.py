"""The rules of the house (docs/ARCHITECTURE.md): which part of mamoru may import which.

Every import in src/mamoru is read with ast, including those inside functions (mamoru imports
lazily to keep commands light, and a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mamoru"

# part -> parts of mamoru it must never import ("*" = the whole package but itself and `allow`).
FORBIDDEN: dict[str, set[str]] = {
    "clock": {"*"},
    "netaddr": {"*"},
    "errors": {"*"},
    "i18n": {"*"},  # every part may import it, so it imports nothing of mamoru's
    "tlstrust": {"*"},  # the verifying TLS contexts of protocol, check and alerts
    "config": {"protocol", "challenges", "storage", "renewal", "install", "check", "observe",
               "service", "issuance", "pipeline", "app", "cli", "fleet"},
    "storage": {"protocol", "challenges", "renewal", "install", "check", "observe", "service",
                "issuance", "pipeline", "app", "cli", "fleet"},
    "renewal": {"protocol", "challenges", "install", "check", "observe", "service", "issuance",
                "pipeline", "app", "cli", "fleet"},
    "challenges": {"protocol", "renewal", "install", "check", "observe", "service", "issuance",
                   "pipeline", "app", "cli", "fleet"},
    "protocol": {"renewal", "install", "check", "observe", "service", "issuance", "pipeline",
                 "app", "cli", "fleet"},
    "install": {"protocol", "challenges", "renewal", "service", "issuance", "pipeline", "app",
                "cli", "fleet"},
    "check": {"protocol", "challenges", "renewal", "install", "service", "issuance", "pipeline",
              "app", "cli", "fleet"},
    "observe": {"protocol", "challenges", "install", "check", "service", "issuance",
                "pipeline", "app", "cli", "fleet"},
    "issuance": {"install", "check", "renewal", "service", "pipeline", "app", "cli", "fleet"},
    "app": {"install", "check", "service", "pipeline", "cli", "fleet"},
    "pipeline": {"service", "cli", "fleet"},
    "service": {"cli", "fleet"},
    # The vendor's side: it reuses config, observe (events, alert channels) and errors, and
    # nothing of the clinic's renewal machinery; nothing but cli imports it.
    "fleet": {"protocol", "challenges", "storage", "renewal", "install", "check", "service",
              "issuance", "pipeline", "app", "cli"},
    "migrate": {"install", "renewal", "service", "observe", "check", "issuance", "pipeline",
                "app", "cli", "fleet"},
    # mamoru init runs before anything is configured: it reads the machine, then the config
    # loader checks what it wrote (src/mamoru/setup/__init__.py).
    "setup": {"protocol", "challenges", "storage", "renewal", "install", "check", "observe",
              "service", "issuance", "pipeline", "app", "cli", "fleet"},
}
# What a "*" part may still import.
ALLOW_ALWAYS: set[str] = set()
# Third-party packages only one part may import.
ONLY_IN = {"acme": "protocol", "josepy": "protocol", "apscheduler": "service",
           "configobj": "migrate", "starlette": "fleet", "uvicorn": "fleet", "psycopg": "fleet",
           "psycopg_pool": "fleet", "jinja2": "fleet"}


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def part_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if rel.parts else ""


def imported(path: Path) -> set[str]:
    """Every absolute module name `path` imports (top-level or in a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "mamoru":
                names.update(f"mamoru.{alias.name}" for alias in node.names)
    return names


def test_the_source_tree_is_read() -> None:
    found = {part_of(path) for path in modules()}
    assert {"config", "protocol", "challenges", "storage", "renewal", "install", "check",
            "observe", "service", "pipeline", "cli"} <= found


def violations(part: str, names: set[str]) -> list[str]:
    forbidden = FORBIDDEN.get(part, set())
    wrong = []
    for name in sorted(names):
        top, _, rest = name.partition(".")
        if top in ONLY_IN and ONLY_IN[top] != part:
            wrong.append(f"{name} (only {ONLY_IN[top]}/ may import {top})")
        if top != "mamoru" or not rest:
            continue
        target = rest.split(".")[0]
        if target in ("__init__", "py"):
            continue
        if target == part:
            continue
        if "*" in forbidden and target not in ALLOW_ALWAYS:
            wrong.append(f"{name} ({part} imports nothing of mamoru's)")
        elif target in forbidden:
            wrong.append(f"{name} ({part} must not import {target})")
    return wrong


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_rules_of_the_house(path: Path) -> None:
    wrong = violations(part_of(path), imported(path))
    assert not wrong, f"{path.relative_to(SRC)}: " + "; ".join(wrong)


def test_the_rules_catch_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself can fail: a renewal module importing protocol is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mamoru.protocol.session import AcmeSession\n"
                   "import acme.jws\nfrom mamoru import cli\n")
    wrong = violations("renewal", imported(bad))
    assert any("must not import protocol" in w for w in wrong)
    assert any("only protocol/ may import acme" in w for w in wrong)
    assert any("must not import cli" in w for w in wrong)
    assert violations("clock", {"mamoru.errors"}) and not violations("pipeline", {"mamoru.app"})
