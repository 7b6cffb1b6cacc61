"""Domain and site name validation: what may become an ACME identifier or a path component.

A name is normalised to lower-case A-labels (IDNA 2008 with UTS #46 mapping), so
`クリニック.example` and `xn--...` compare equal, and checked against the DNS rules (RFC 1035
§2.3.4, RFC 5890): labels of 1-63 letters, digits and hyphens, 253 characters in all, a wildcard
only as the whole leftmost label. A label that mixes scripts a browser would flag as spoofing
(Latin with Cyrillic, say) is refused. After this, a name holds only `[a-z0-9.*-]`, so it can
never escape a directory.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

SITE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# A name that is already what normalize_domain returns (lower-case LDH labels, two or more, a
# wildcard only as the whole first label): nearly every name of a config. Names with an
# xn-- label, an all-digit last label or over 253 characters still take the long way.
_NORMAL = re.compile(r"(?:\*\.)?(?:(?!-)[a-z0-9-]{1,63}(?<!-)\.)+(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")

# Script sets a browser shows as Unicode rather than punycode (Chrome's IDN policy, simplified):
# one script, or Latin mixed with the East Asian scripts that are written together.
_ALLOWED_MIXES = (
    {"LATIN", "CJK", "HIRAGANA", "KATAKANA"},
    {"LATIN", "CJK", "BOPOMOFO"},
    {"LATIN", "CJK", "HANGUL"},
)


class NameError_(ValueError):
    """A name is not acceptable; the message says why in plain words."""


def _scripts(label: str) -> set[str]:
    scripts = set()
    for char in label:
        if char.isascii() and not char.isalpha():
            continue  # digits and hyphens belong to every script
        if char in "ーー・":  # prolonged sound mark and middle dot are shared by kana
            scripts.add("KATAKANA")
            continue
        name = unicodedata.name(char, "UNKNOWN")
        first = name.split(" ")[0]
        if first == "FULLWIDTH":
            first = name.split(" ")[1] if " " in name else first
        scripts.add(first)
    return scripts


def _check_mixed_scripts(label: str, original: str) -> None:
    scripts = _scripts(label)
    if len(scripts) <= 1:
        return
    if any(scripts <= allowed for allowed in _ALLOWED_MIXES):
        return
    listed = ", ".join(sorted(s.title() for s in scripts))
    raise NameError_(
        f"{original!r} mixes scripts ({listed}) in one label; browsers show such names as "
        "punycode because they can imitate other names"
    )


def normalize_domain(raw: object) -> str:
    """Return `raw` as a lower-case A-label name, or raise NameError_ saying what is wrong."""
    if not isinstance(raw, str):
        raise NameError_(f"a domain name must be a string, not {type(raw).__name__}")
    if (_NORMAL.match(raw) and len(raw) <= 253 and "xn--" not in raw
            and not raw[raw.rfind(".") + 1:].isdigit()):
        return raw  # already normal: the checks below would return it as it is
    return _normalize(raw)


def _normalize(raw: str) -> str:
    """normalize_domain's checks, one by one (every name that is not already normal)."""
    original = raw
    if raw == "":
        raise NameError_("empty domain name")
    if _CONTROL.search(raw):
        raise NameError_(f"{original!r} contains spaces or control characters")
    # ASCII has no invisible characters beyond the controls and space refused above.
    hidden = [] if raw.isascii() else [
        c for c in raw if unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Zs", "Zl", "Zp")]
    if hidden:  # zero-width joiners, bidi overrides...: a name that looks like another
        raise NameError_(f"{original!r} contains an invisible or formatting character "
                         f"(U+{ord(hidden[0]):04X})")
    if "/" in raw or "\\" in raw or ":" in raw or "@" in raw:
        raise NameError_(f"{original!r} is not a domain name (it looks like a URL or path)")
    name = raw[:-1] if raw.endswith(".") else raw
    # Only digits and dots can be an address here (":" was refused above): most names skip
    # the ValueError that ipaddress raises, twice, for each name that is not one.
    if name.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise NameError_(f"{original!r} is an IP address; only domain names are supported")
    labels = name.split(".")
    if any(label == "" for label in labels):
        raise NameError_(f"{original!r} has an empty label (two dots in a row, or a leading dot)")
    wildcard = labels[0] == "*"
    if "*" in "".join(labels[1:]) or (not wildcard and "*" in labels[0]):
        raise NameError_(
            f"{original!r}: a wildcard may only be the whole leftmost label, as in *.example.com"
        )
    rest = labels[1:] if wildcard else labels
    if len(rest) < 2:
        raise NameError_(f"{original!r} needs at least two labels, as in clinic.example")
    out = []
    import idna  # only for a name that is not already plain ASCII: most configs never need it

    for label in rest:
        if not label.isascii():
            _check_mixed_scripts(label, original)
            try:
                label = idna.encode(label, uts46=True).decode("ascii")
            except idna.IDNAError as error:
                raise NameError_(
                    f"{original!r} is not a valid internationalised name: {error}"
                ) from None
        label = label.lower()
        if len(label) > 63:
            raise NameError_(f"{original!r} has a label of {len(label)} characters (at most 63)")
        if not _LABEL.match(label):
            raise NameError_(
                f"{original!r}: labels hold only letters, digits and hyphens, and do not start "
                "or end with a hyphen"
            )
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError as error:
                raise NameError_(f"{original!r} has an invalid punycode label: {error}") from None
        out.append(label)
    if out[-1].isdigit():
        raise NameError_(f"{original!r}: the last label cannot be all digits")
    result = ".".join((["*"] if wildcard else []) + out)
    if len(result) > 253:
        raise NameError_(f"{original!r} is {len(result)} characters long (at most 253)")
    return result


def check_site_name(raw: object) -> str:
    """Return `raw` if it is a valid site name (it becomes a directory and file name)."""
    if not isinstance(raw, str) or not SITE_NAME.match(raw):
        raise NameError_(
            f"site name {raw!r} must be 1-63 characters of a-z, 0-9 and '-', starting with "
            "a letter or digit"
        )
    return raw
