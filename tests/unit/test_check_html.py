"""The mixed-content scanner on its own: HTML in, insecure references out (no network)."""

from __future__ import annotations

import pytest

from mamoru.check.mixed_content import (
    MAX_LISTED,
    InsecureReference,
    MixedContentScan,
    mixed_content_finding,
    scan_mixed_content,
)

PAGE = "https://clinic.test/about/team.html"


def urls(document: str, page: str = PAGE) -> list[tuple[str, bool]]:
    """(url, active) for every insecure reference, in document order."""
    return [(r.url, r.active) for r in scan_mixed_content(document, page).references]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ('<script src="http://cdn.example/a.js"></script>', [("http://cdn.example/a.js", True)]),
        (
            '<link rel="stylesheet" href="http://cdn.example/a.css">',
            [("http://cdn.example/a.css", True)],
        ),
        (
            '<link rel="alternate stylesheet" href="http://cdn.example/b.css">',
            [("http://cdn.example/b.css", True)],
        ),
        (
            '<link rel="icon" href="http://cdn.example/favicon.ico">',
            [("http://cdn.example/favicon.ico", False)],
        ),
        (
            '<link rel="shortcut icon" href="http://cdn.example/f.ico">',
            [("http://cdn.example/f.ico", False)],
        ),
        (
            '<link rel="preload" as="image" href="http://cdn.example/hero.jpg">',
            [("http://cdn.example/hero.jpg", False)],
        ),
        (
            '<link rel="preload" as="script" href="http://cdn.example/x.js">',
            [("http://cdn.example/x.js", True)],
        ),
        ('<img src="http://cdn.example/a.png">', [("http://cdn.example/a.png", False)]),
        (
            '<iframe src="http://maps.example/embed"></iframe>',
            [("http://maps.example/embed", True)],
        ),
        ('<frame src="http://old.example/f.html">', [("http://old.example/f.html", True)]),
        (
            '<audio src="http://media.example/a.mp3"></audio>',
            [("http://media.example/a.mp3", False)],
        ),
        (
            '<video src="http://media.example/v.mp4" poster="http://media.example/p.jpg">'
            '<track src="http://media.example/sub.vtt"></video>',
            [
                ("http://media.example/v.mp4", False),
                ("http://media.example/p.jpg", False),
                ("http://media.example/sub.vtt", False),
            ],
        ),
        (
            '<video><source src="http://media.example/v.webm"></video>',
            [("http://media.example/v.webm", False)],
        ),
        (
            '<object data="http://plugins.example/x.swf"></object>',
            [("http://plugins.example/x.swf", True)],
        ),
        ('<embed src="http://plugins.example/y.swf">', [("http://plugins.example/y.swf", True)]),
        ('<form action="http://clinic.test/book"></form>', [("http://clinic.test/book", True)]),
        (
            '<form><button formaction="http://clinic.test/send">Go</button></form>',
            [("http://clinic.test/send", True)],
        ),
        (
            '<input type="image" src="http://cdn.example/go.png">',
            [("http://cdn.example/go.png", False)],
        ),
    ],
)
def test_each_kind_of_reference(document: str, expected: list[tuple[str, bool]]) -> None:
    assert urls(document) == expected


@pytest.mark.parametrize(
    "document",
    [
        '<script src="https://cdn.example/a.js"></script>',
        '<script src="/js/a.js"></script>',
        '<script src="a.js"></script>',
        '<script src="//cdn.example/a.js"></script>',  # protocol-relative: https here
        '<img src="data:image/png;base64,AAAA">',
        '<a href="http://partner.example/">a plain link is navigation, not mixed content</a>',
        '<link rel="canonical" href="http://clinic.test/">',
        '<form action=""></form>',
        '<img src="">',
        '<!-- <script src="http://commented.example/a.js"></script> -->',
        # Tags inside script text are not parsed as tags (no regex matching of HTML here).
        "<script>var s = '<img src=\"http://inline.example/x.png\">';</script>",
        '<textarea><img src="http://not-a-tag.example/x.png"></textarea>',
        '<title><script src="http://not-a-tag.example/x.js"></script></title>',
        '<noscript><img src="http://tracker.example/pixel.gif"></noscript>',
    ],
)
def test_secure_or_irrelevant_references_are_ignored(document: str) -> None:
    assert urls(document) == []


def test_scanning_resumes_after_a_text_element() -> None:
    document = (
        '<noscript><img src="http://a.example/1.gif"></noscript><img src="http://a.example/2.gif">'
    )
    assert urls(document) == [("http://a.example/2.gif", False)]


def test_tag_and_attribute_names_are_case_insensitive() -> None:
    assert urls('<SCRIPT SRC="HTTP://CDN.example/A.js"></SCRIPT>') == [
        ("HTTP://CDN.example/A.js", True)
    ]


def test_whitespace_around_urls_is_ignored() -> None:
    assert urls('<img src="  \n http://cdn.example/a.png \t">') == [
        ("http://cdn.example/a.png", False)
    ]


def test_character_references_are_decoded() -> None:
    assert urls('<script src="http&#58;//cdn.example/a.js?x=1&amp;y=2"></script>') == [
        ("http://cdn.example/a.js?x=1&y=2", True)
    ]


def test_unquoted_attributes() -> None:
    assert urls("<img src=http://cdn.example/a.png alt=x>") == [("http://cdn.example/a.png", False)]


def test_insecure_base_makes_relative_references_insecure() -> None:
    document = (
        '<head><base href="http://clinic.test/"><script src="js/app.js"></script>'
        '</head><body><img src="//cdn.example/i.png"><form action="/book"></form>'
    )
    assert urls(document) == [
        ("http://clinic.test/js/app.js", True),
        # A protocol-relative URL takes the base's scheme, so it is insecure too.
        ("http://cdn.example/i.png", False),
        ("http://clinic.test/book", True),
    ]


def test_only_the_first_base_counts_and_applies_to_earlier_elements() -> None:
    document = (
        '<script src="a.js"></script><base href="http://one.example/">'
        '<base href="https://two.example/">'
    )
    assert urls(document) == [("http://one.example/a.js", True)]


def test_relative_base_is_resolved_against_the_page() -> None:
    assert urls('<base href="/static/"><img src="a.png">') == []


@pytest.mark.parametrize(
    ("srcset", "expected"),
    [
        (
            "http://cdn.example/a.jpg 1x, http://cdn.example/b.jpg 2x",
            ["http://cdn.example/a.jpg", "http://cdn.example/b.jpg"],
        ),
        ("/a.jpg 480w, http://cdn.example/b.jpg 800w", ["http://cdn.example/b.jpg"]),
        ("http://cdn.example/a,b.jpg 1x", ["http://cdn.example/a,b.jpg"]),  # comma in a URL
        (
            "http://cdn.example/a.jpg,http://cdn.example/b.jpg",
            # Without whitespace the comma belongs to the first URL: one candidate, per the spec.
            ["http://cdn.example/a.jpg,http://cdn.example/b.jpg"],
        ),
        ("http://cdn.example/a.jpg, https://cdn.example/b.jpg 2x", ["http://cdn.example/a.jpg"]),
        ("  ,, http://cdn.example/a.jpg  ", ["http://cdn.example/a.jpg"]),
    ],
)
def test_srcset_candidates(srcset: str, expected: list[str]) -> None:
    found = [r.url for r in scan_mixed_content(f'<img srcset="{srcset}">', PAGE).references]
    assert found == expected


def test_picture_source_srcset() -> None:
    document = (
        '<picture><source srcset="http://cdn.example/a.webp" type="image/webp">'
        '<img src="/a.jpg"></picture>'
    )
    assert urls(document) == [("http://cdn.example/a.webp", False)]


def test_duplicates_are_reported_once_with_the_first_line() -> None:
    document = (
        '<img src="http://cdn.example/a.png">\n'
        '<img src="http://cdn.example/a.png">\n'
        '<script src="http://cdn.example/a.png"></script>'
    )
    refs = scan_mixed_content(document, PAGE).references
    assert [(r.tag, r.line) for r in refs] == [("img", 1), ("script", 3)]
    assert refs[0] == InsecureReference("http://cdn.example/a.png", "img", "src", False, 1)


def test_upgrade_insecure_requests_meta_is_noticed() -> None:
    document = (
        '<meta http-equiv="Content-Security-Policy" '
        'content="default-src https:; upgrade-insecure-requests">'
        '<script src="http://cdn.example/a.js"></script>'
    )
    scan = scan_mixed_content(document, PAGE)
    assert scan.upgrade_insecure_requests
    assert len(scan.active) == 1


def test_malformed_html_does_not_raise() -> None:
    document = (
        '<html><body><img src="http://cdn.example/a.png"<div><script src=http://x.example'
        "/a.js<<<>>></p></body><</html><!-- unterminated"
    )
    scan = scan_mixed_content(document, PAGE)
    assert any(r.url.startswith("http://cdn.example/a.png") for r in scan.references)


# --------------------------------------------------------------------------------------------
# From a scan to a finding
# --------------------------------------------------------------------------------------------


def _scan(*refs: tuple[str, bool], upgrade: bool = False) -> MixedContentScan:
    return MixedContentScan(
        tuple(
            InsecureReference(url, "script" if active else "img", "src", active, 1)
            for url, active in refs
        ),
        upgrade,
    )


def test_finding_ok_when_nothing_insecure() -> None:
    finding = mixed_content_finding(_scan(), page_url=PAGE)
    assert (finding.check, finding.status, finding.fix) == ("mixed-content", "ok", "")
    assert finding.details["page"] == PAGE


def test_finding_active_is_a_problem() -> None:
    finding = mixed_content_finding(
        _scan(("http://a.example/x.js", True), ("http://a.example/x.png", False))
    )
    assert finding.status == "problem"
    assert "scripts" in finding.message
    assert finding.details["active_count"] == 1
    assert finding.details["passive_count"] == 1
    assert finding.fix


def test_finding_passive_only_is_a_warning() -> None:
    finding = mixed_content_finding(_scan(("http://a.example/x.png", False)))
    assert finding.status == "warning"
    assert "image" in finding.message


@pytest.mark.parametrize("via_header", [True, False])
def test_finding_with_upgrade_insecure_requests_is_a_warning(via_header: bool) -> None:
    scan = _scan(("http://a.example/x.js", True), upgrade=not via_header)
    finding = mixed_content_finding(scan, header_upgrade=via_header)
    assert finding.status == "warning"
    assert "upgrade-insecure-requests" in finding.message
    assert finding.details["upgrade_insecure_requests"] is True


def test_finding_lists_at_most_max_listed_urls() -> None:
    scan = _scan(*[(f"http://a.example/{i}.js", True) for i in range(MAX_LISTED + 5)])
    finding = mixed_content_finding(scan)
    listed = finding.details["active"]
    assert isinstance(listed, list)
    assert len(listed) == MAX_LISTED
    assert finding.details["active_count"] == MAX_LISTED + 5


def test_finding_mentions_truncation() -> None:
    finding = mixed_content_finding(_scan(), truncated=True)
    assert finding.details["truncated"] is True
    assert "2 MB" in finding.message
