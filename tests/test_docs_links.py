"""Every relative link in README.md and docs/*.md names a file or folder that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # code blocks and spans: `a[i](x)` there is code, not a link
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//|#)", re.I)  # https:, mailto:, protocol-relative, same-page anchors


def links(text: str) -> list[str]:
    """The targets of inline, image and reference-style links, outside code."""
    return [m.group(1) or m.group(2) for m in LINK.finditer(CODE.sub("", text))]


def test_links_are_found_inline_as_images_and_as_references_but_not_in_code() -> None:
    text = "[a](docs/a.md#x) ![b](b.png \"title\") `[c](c.md)`\n```\n[d](d.md)\n```\n[e]: e.md\n[f](https://x.org)"
    assert links(text) == ["docs/a.md#x", "b.png", "e.md", "https://x.org"]


def test_every_relative_link_resolves() -> None:
    broken = [f"{doc.relative_to(ROOT)}: {target}" for doc in DOCS for target in links(doc.read_text(encoding="utf-8"))
              if not EXTERNAL.match(target) and not (doc.parent / target.split("#", 1)[0]).exists()]
    assert not broken, f"links to files that do not exist: {broken}"
