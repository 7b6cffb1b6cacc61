"""Mixed content: resources an HTTPS page loads over ``http://`` (finding ``mixed-content``).

The page is read with :mod:`html.parser`, the way a browser resolves each reference (``<base
href>``, srcset candidates, text-only elements); active content (scripts, styles, frames,
forms) is a problem, passive media a warning, and ``upgrade-insecure-requests`` softens both.
"""

from __future__ import annotations

import html.parser
import re
import urllib.parse
from dataclasses import dataclass

from mamoru.check.fetch import PAGE_SIZE_CAP, REDIRECTS, Response
from mamoru.check.report import Finding
from mamoru.i18n import N_, _, ngettext

MAX_LISTED = 10
"""Offending URLs listed per kind in mixed-content details."""


@dataclass(frozen=True)
class InsecureReference:
    """One ``http://`` resource reference found in a page.

    ``active`` is True for content that can change the page (scripts, stylesheets, frames,
    plugins, form targets), which browsers block or flag as dangerous; False for passive media
    (images, audio, video), which browsers load with a warning or upgrade.
    """

    url: str
    tag: str
    attribute: str
    active: bool
    line: int


@dataclass(frozen=True)
class MixedContentScan:
    """What :func:`scan_mixed_content` found in one HTML document."""

    references: tuple[InsecureReference, ...]
    upgrade_insecure_requests: bool = False

    @property
    def active(self) -> list[InsecureReference]:
        return [r for r in self.references if r.active]

    @property
    def passive(self) -> list[InsecureReference]:
        return [r for r in self.references if not r.active]


_ACTIVE_LINK_RELS = frozenset({"stylesheet", "preload", "modulepreload", "prefetch"})
_PASSIVE_LINK_RELS = frozenset(
    {"icon", "apple-touch-icon", "apple-touch-icon-precomposed", "mask-icon"}
)
# (tag, attribute) -> active?
_URL_ATTRS: dict[tuple[str, str], bool] = {
    ("script", "src"): True,
    ("iframe", "src"): True,
    ("frame", "src"): True,
    ("object", "data"): True,
    ("embed", "src"): True,
    ("form", "action"): True,
    ("button", "formaction"): True,
    ("input", "formaction"): True,
    ("img", "src"): False,
    ("img", "srcset"): False,
    ("source", "src"): False,
    ("source", "srcset"): False,
    ("audio", "src"): False,
    ("video", "src"): False,
    ("video", "poster"): False,
    ("track", "src"): False,
}


# Elements whose content a browser treats as text, not markup (or, for noscript with scripting
# on, never renders). html.parser only knows this for script and style, so markup inside these
# is skipped here.
_TEXT_ELEMENTS = frozenset({"textarea", "title", "xmp", "noscript", "noembed", "noframes"})


class _MixedContentParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base_href: str | None = None
        self.upgrade = False
        # (url as written, tag, attribute, active, line); resolved once <base> is known.
        self.raw: list[tuple[str, str, str, bool, int]] = []
        self._inside_text: str | None = None

    def handle_endtag(self, tag: str) -> None:
        if tag == self._inside_text:
            self._inside_text = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._inside_text is not None:
            return
        if tag in _TEXT_ELEMENTS:
            self._inside_text = tag
            return
        values = {name.lower(): (value or "") for name, value in attrs}
        line = self.getpos()[0]
        if tag == "base" and self.base_href is None and "href" in values:
            # Only the first <base href> counts, and it applies to the whole document.
            self.base_href = values["href"].strip()
            return
        if tag == "meta":
            if values.get(
                "http-equiv", ""
            ).strip().lower() == "content-security-policy" and csp_upgrades(
                values.get("content", "")
            ):
                self.upgrade = True
            return
        if tag == "link":
            self._link(values, line)
            return
        if tag == "input" and values.get("type", "").strip().lower() == "image":
            self._add(values.get("src"), tag, "src", False, line)
        for (t, attr), active in _URL_ATTRS.items():
            if t != tag or attr not in values:
                continue
            if attr == "srcset":
                for url in _srcset_urls(values[attr]):
                    self._add(url, tag, attr, active, line)
            else:
                self._add(values[attr], tag, attr, active, line)

    def _link(self, values: dict[str, str], line: int) -> None:
        rels = set(values.get("rel", "").lower().split())
        if rels & _ACTIVE_LINK_RELS:
            # A preload of an image or font is passive; of a script or style, active.
            as_ = values.get("as", "").strip().lower()
            active = "stylesheet" in rels or as_ in ("", "script", "style", "worker", "document")
            self._add(values.get("href"), "link", "href", active, line)
            if "imagesrcset" in values:
                for url in _srcset_urls(values["imagesrcset"]):
                    self._add(url, "link", "imagesrcset", False, line)
        elif rels & _PASSIVE_LINK_RELS or "shortcut" in rels:
            self._add(values.get("href"), "link", "href", False, line)

    def _add(self, url: str | None, tag: str, attr: str, active: bool, line: int) -> None:
        if url is None:
            return
        # Browsers strip leading/trailing ASCII whitespace from URL attributes.
        url = url.strip(" \t\n\r\f")
        if url:
            self.raw.append((url, tag, attr, active, line))


def csp_upgrades(policy: str) -> bool:
    """Whether a Content-Security-Policy asks for upgrade-insecure-requests."""
    return any(
        d.strip().lower().split(" ")[0] == "upgrade-insecure-requests"
        for d in policy.split(";")
        if d.strip()
    )


def _srcset_urls(value: str) -> list[str]:
    """The URLs of a srcset attribute, following the HTML spec's candidate parsing."""
    urls: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and (value[i].isspace() or value[i] == ","):
            i += 1
        start = i
        while i < n and not value[i].isspace():
            i += 1
        url = value[start:i]
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            depth = 0
            while i < n:
                char = value[i]
                if char == "(":
                    depth += 1
                elif char == ")":
                    depth = max(depth - 1, 0)
                elif char == "," and depth == 0:
                    break
                i += 1
        if url:
            urls.append(url)
    return urls


def scan_mixed_content(document: str, page_url: str) -> MixedContentScan:
    """Find resource references in ``document`` that a browser would fetch over ``http://``.

    Relative URLs are resolved against the first ``<base href>`` (itself resolved against
    ``page_url``) or ``page_url``, so a ``<base href="http://...">`` makes relative references
    insecure too. Looks at script src, link rel=stylesheet/preload/icon href, img and source
    src/srcset, iframe/frame src, audio/video/track src, video poster, object data, embed src,
    form action and formaction, input type=image src. Plain links (``<a href>``) are
    navigation, not mixed content, and are ignored; so are inline CSS ``url(...)`` values.
    Each URL is reported once per (kind, tag, attribute), in document order. The scan notes
    ``<meta http-equiv="Content-Security-Policy" content="upgrade-insecure-requests">``.
    """
    parser = _MixedContentParser()
    parser.feed(document)
    parser.close()
    base = page_url
    if parser.base_href:
        base = urllib.parse.urljoin(page_url, parser.base_href)
    seen: set[tuple[str, str, str, bool]] = set()
    found: list[InsecureReference] = []
    for raw, tag, attr, active, line in parser.raw:
        try:
            url = urllib.parse.urljoin(base, raw)
        except ValueError:
            continue
        if urllib.parse.urlsplit(url).scheme.lower() != "http":
            continue
        key = (url, tag, attr, active)
        if key in seen:
            continue
        seen.add(key)
        found.append(InsecureReference(url, tag, attr, active, line))
    return MixedContentScan(tuple(found), parser.upgrade)


def mixed_content_finding(
    scan: MixedContentScan,
    *,
    truncated: bool = False,
    header_upgrade: bool = False,
    page_url: str = "",
) -> Finding:
    """The ``mixed-content`` finding for a scan.

    Active insecure content is a problem, passive only a warning. When the page asks browsers
    to upgrade insecure requests (CSP ``upgrade-insecure-requests`` in a header,
    ``header_upgrade``, or a meta tag), browsers fetch those URLs over https instead, so any
    references found are only a warning (they break if the other server has no https).
    """
    upgrade = header_upgrade or scan.upgrade_insecure_requests
    active = scan.active
    passive = scan.passive
    details: dict[str, object] = {
        "page": page_url,
        "active_count": len(active),
        "passive_count": len(passive),
        "active": [_ref_detail(r) for r in active[:MAX_LISTED]],
        "passive": [_ref_detail(r) for r in passive[:MAX_LISTED]],
        "upgrade_insecure_requests": upgrade,
        "truncated": truncated,
    }
    note = (_(" (only the first {mb} MB were read)").format(mb=PAGE_SIZE_CAP // (1024 * 1024))
            if truncated else "")
    if not active and not passive:
        return Finding(
            "mixed-content",
            "ok",
            _("The page loads nothing over insecure http://{note} (what its scripts add "
              "after loading is seen only by mamoru check --browser).").format(note=note),
            details=details,
        )
    examples = ", ".join(r.url for r in (active or passive)[:3])
    fix = _(
        "Change these addresses to https:// (or to relative addresses) in the page or its "
        "theme/template; if the other server has no https, host the file on the clinic's "
        "own site."
    )
    if upgrade:
        return Finding(
            "mixed-content",
            "warning",
            ngettext("The page refers to {n} http:// address (e.g. {examples}); browsers "
                     "upgrade it to https because of upgrade-insecure-requests, and it breaks "
                     "if that server has no https{note}.",
                     "The page refers to {n} http:// addresses (e.g. {examples}); browsers "
                     "upgrade them to https because of upgrade-insecure-requests, and they "
                     "break if that server has no https{note}.",
                     len(active) + len(passive)).format(n=len(active) + len(passive),
                                                        examples=examples, note=note),
            fix,
            details,
        )
    # Active content but forms is blocked; a form is sent after a warning, so the words
    # differ; both are problems (a blocked script breaks the page, a form leaks what is sent).
    forms = [r for r in active if r.tag in _FORM_TAGS]
    loads = [r for r in active if r.tag not in _FORM_TAGS]
    said: list[str] = []
    if loads:
        kinds = sorted({_KIND_WORDS.get(r.tag, r.tag) for r in loads})
        shown = ", ".join(r.url for r in loads[:3])
        said.append(_("The page loads {kinds} over insecure http:// (e.g. {urls}); browsers "
                      "block them, so that part of the page does not work").format(
                          kinds=_(" and ").join(_(k) for k in kinds), urls=shown))
    if forms:
        shown = ", ".join(r.url for r in forms[:3])
        said.append(_("A form sends to insecure http:// ({urls}); browsers keep the lock but "
                      "warn at Send (\"The information you're about to submit is not "
                      "secure\", with \"Send anyway\"), and what is sent travels "
                      "unencrypted").format(urls=shown))
    if passive:
        shown = ", ".join(r.url for r in passive[:3])
        said.append(ngettext(
            "The page shows {n} image or media file from http:// (e.g. {urls}); browsers "
            "keep the lock and fetch it over https:// instead, and where that server has no "
            "https the image is broken",
            "The page shows {n} images or media files from http:// (e.g. {urls}); browsers "
            "keep the lock and fetch them over https:// instead, and where that server has "
            "no https the image is broken", len(passive)).format(n=len(passive), urls=shown))
    return Finding(
        "mixed-content",
        "problem" if active else "warning",
        _(". ").join(said) + note + _("."),
        fix,
        details,
    )


_FORM_TAGS = frozenset({"form", "button", "input"})

_KIND_WORDS = {
    "script": N_("scripts"),
    "link": N_("stylesheets"),
    "iframe": N_("frames"),
    "frame": N_("frames"),
    "object": N_("plugins"),
    "embed": N_("plugins"),
    "form": N_("form submissions"),
    "button": N_("form submissions"),
    "input": N_("form submissions"),
}


def _ref_detail(ref: InsecureReference) -> dict[str, object]:
    return {"url": ref.url, "tag": ref.tag, "attribute": ref.attribute, "line": ref.line}


def is_html(content_type: str | None, body: bytes) -> bool:
    """Whether an answer is an HTML page (its Content-Type, else how the body starts)."""
    if content_type:
        media = content_type.split(";")[0].strip().lower()
        return media in ("text/html", "application/xhtml+xml")
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def decode_page(body: bytes, content_type: str | None) -> str:
    """The page as text, in the charset of its Content-Type (UTF-8 otherwise)."""
    charset = "utf-8"
    if content_type:
        match = re.search(r"charset=\"?([\w.:-]+)", content_type, re.IGNORECASE)
        if match:
            charset = match.group(1)
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def page_finding(response: Response, url: str) -> Finding:
    """The ``mixed-content`` finding for the page a check ended on (``response``, from
    ``url``): nothing to scan in a redirect without a target or an answer that is not HTML;
    otherwise the scan of the page, with the CSP header's upgrade-insecure-requests."""
    if response.status in REDIRECTS:
        return Finding(
            "mixed-content",
            "ok",
            "The page is a redirect without a target; nothing to scan.",
            details={"page": url, "scanned": False},
        )
    if not is_html(response.header("Content-Type"), response.body):
        return Finding(
            "mixed-content",
            "ok",
            "The page is not HTML; nothing to scan for mixed content.",
            details={
                "page": url,
                "scanned": False,
                "content_type": response.header("Content-Type"),
            },
        )
    text = decode_page(response.body, response.header("Content-Type"))
    header_upgrade = any(csp_upgrades(v) for v in response.header_all("Content-Security-Policy"))
    return mixed_content_finding(
        scan_mixed_content(text, url),
        truncated=response.truncated,
        header_upgrade=header_upgrade,
        page_url=url,
    )
