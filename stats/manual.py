"""The README and its docs/ pages as one page, for the cluster's `/readme`.

The README is a door and the reference lives in docs/ (README "Contents"), but a cluster
serves no repository: the status page's links (`/readme#trust-and-quality`) and anyone's
bookmarks name a section by its anchor alone. So `/readme` shows the README followed by every
docs/ page it links to, in the order it links them, with the links between them turned into
anchors of this one page.
"""

from __future__ import annotations

import re
from pathlib import Path

# A link to a page of the manual: README.md or a docs/ page, from either place, maybe #anchor.
_PAGE_LINK = re.compile(r"\]\((?:\.\./|docs/)?([\w-]+)\.md(?:#([\w-]+))?\)")


def _slug(text: str) -> str:
    """The id Python-Markdown's `toc` gives a heading (its default slugify)."""
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _title_anchor(text: str) -> str:
    return _slug(text.splitlines()[0].lstrip("# "))


def manual_markdown(base_dir: Path) -> str:
    """README.md, then the docs/ pages it links to, as one Markdown text."""
    readme = (base_dir / "README.md").read_text(encoding="utf-8")
    pages = {name: base_dir / "docs" / f"{name}.md" for name, _ in _PAGE_LINK.findall(readme)}
    texts = {"README": readme} | {
        name: path.read_text(encoding="utf-8") for name, path in pages.items() if path.exists()
    }
    titles = {name: _title_anchor(text) for name, text in texts.items()}

    def to_anchor(match: re.Match) -> str:
        name, anchor = match.groups()
        if name not in titles:
            return match.group(0)
        return f"](#{anchor or titles[name]})"

    return "\n\n".join(_PAGE_LINK.sub(to_anchor, text) for text in texts.values())
