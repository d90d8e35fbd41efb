"""Every relative link in README.md, CHANGELOG.md and docs/**/*.md points to a file or folder that exists.

Docs that link to a moved or removed file send a user nowhere; this catches it on the text alone (no network: links
with a scheme such as ``https:`` or ``mailto:`` and pure ``#anchor`` links are not checked).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or the closing parenthesis
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target (reference-style definitions)
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The hand-written and generated markdown a user reads: README.md, CHANGELOG.md and everything under docs/."""
    files = [root / name for name in ("README.md", "CHANGELOG.md") if (root / name).is_file()]
    return files + sorted((root / "docs").rglob("*.md"))


def relative_links(text: str) -> list[str]:
    """The relative link targets of a markdown text, without their ``#anchor`` or ``?query``.

    Code blocks and inline code are skipped: a path quoted as code is an example, not a link.
    """
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    paths = []
    for target in targets:
        if SCHEME.match(target) or target.startswith("#"):
            continue
        path = re.split(r"[#?]", target, maxsplit=1)[0]
        if path:
            paths.append(path)
    return paths


def broken_links(path: Path) -> list[str]:
    """The relative links of one markdown file whose target does not exist (resolved from the file's folder)."""
    return [
        target
        for target in relative_links(path.read_text(encoding="utf-8"))
        if not (path.parent / target).exists()
    ]


def test_link_parser_finds_inline_reference_and_image_links_outside_code():
    text = (
        "See [a](docs/a.md#part), ![fig](figures/f.png \"title\") and [web](https://example.org).\n"
        "[ref]: ../b.md\n"
        "`[not](code.md)`\n"
        "```\n[also not](block.md)\n```\n"
        "[anchor](#here)\n"
    )
    assert relative_links(text) == ["docs/a.md", "figures/f.png", "../b.md"]


def test_broken_link_is_reported(tmp_path):
    (tmp_path / "exists.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text("[ok](exists.md) [gone](missing/benchmarks.md)")
    assert broken_links(page) == ["missing/benchmarks.md"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == [], f"{path.relative_to(ROOT)} links to missing files"
