"""The language mamoru speaks to people: gettext catalogs under `mamoru/locale/`.

`setup(lang)` picks the catalog once per process: `--lang` if given, else the first of
LANGUAGE, LC_ALL, LC_MESSAGES and LANG that names a language (gettext's own order; `C` and
`POSIX` mean English). A language without a catalog, a missing or broken `.mo` file: English,
never a traceback. `_` translates a message id (English text with `{name}` placeholders,
filled with `.format` after translation); `ngettext` picks the plural form; `N_` marks a
string for extraction that is translated later.

The `.po` files live in the repository (src/mamoru/locale/ja/LC_MESSAGES/mamoru.po); the `.mo`
files are compiled when mamoru is built or installed (setup.py's build step, and
scripts/setup.sh for the editable tree), never committed.

Only words for people go through here: event kinds, JSON keys, the JSONL log, metrics and
exit codes stay English always (vendors' tools parse them).

May import: nothing of mamoru's (every part may import it).
"""

from __future__ import annotations

import gettext
import os

DOMAIN = "mamoru"
# A plain string (not pathlib, which `mamoru --help` would otherwise import for this alone).
LOCALE_DIR: str | os.PathLike[str] = os.path.join(os.path.dirname(os.path.realpath(__file__)),
                                                  "locale")

_current: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def translations(lang: str | None = None) -> gettext.NullTranslations:
    """The catalog for `lang` (or the environment's language when None); English when there
    is none or it cannot be read."""
    languages = [lang] if lang else None
    try:
        return gettext.translation(DOMAIN, LOCALE_DIR, languages=languages)
    except Exception:  # a missing or damaged catalog must never stop mamoru
        return gettext.NullTranslations()


def setup(lang: str | None = None) -> str:
    """Choose the process's language; returns its code (`"ja"`, or `"en"` for English)."""
    global _current, _language
    _current = translations(lang)
    _language = _current.info().get("language", "en") or "en"
    return _language


def language() -> str:
    """The code of the language chosen by :func:`setup` (`"en"` before it runs)."""
    return _language


def _(message: str) -> str:
    """`message` in the chosen language (itself in English)."""
    return _current.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The form of a message for the count `n` in the chosen language."""
    return _current.ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark `message` for the catalog without translating it now."""
    return message


# argparse's own words (it asks gettext's default domain, which has no Japanese): mamoru's
# catalog translates them, marked here so the extractor puts them in it. Only the words a
# person meets; argparse's messages about its own misuse stay as they are.
ARGPARSE_WORDS = (
    N_("usage: "),
    N_("positional arguments"),
    N_("options"),
    N_("show this help message and exit"),
    N_("%(prog)s: error: %(message)s\n"),
    N_("argument %(argument_name)s: %(message)s"),
    N_("the following arguments are required: %s"),
    N_("one of the arguments %s is required"),
    N_("unrecognized arguments: %s"),
    N_("not allowed with argument %s"),
    N_("ignored explicit argument %r"),
    N_("expected one argument"),
    N_("expected at most one argument"),
    N_("expected at least one argument"),
    N_("ambiguous option: %(option)s could match %(matches)s"),
    N_("unexpected option string: %s"),
    N_("invalid %(type)s value: %(value)r"),
    N_("invalid choice: %(value)r (choose from %(choices)s)"),
    N_("unknown parser %(parser_name)r (choices: %(choices)s)"),
    N_("can't open '%(filename)s': %(error)s"),
)
ARGPARSE_PLURALS = (ngettext("expected %s argument", "expected %s arguments", 2),)


def route_argparse(module: object) -> None:
    """Make the `argparse` module speak through mamoru's catalog: it looks up its module-level
    `_` and `ngettext` at each call, so pointing them here translates usage, help headings and
    errors in the language :func:`setup` chose (no import, no cost: cli has argparse loaded)."""
    setattr(module, "_", _)  # noqa: B010 - a stdlib module's global, set on purpose
    setattr(module, "ngettext", ngettext)  # noqa: B010
