"""The README and the docs/ pages hold together: every relative link reaches a file and, for
`#anchor`, a heading of that file (by GitHub's rules), every page is reachable from the README,
and the shell examples marked runnable (a `<!-- runnable -->` line right before a fenced
```bash block; docs/development.md, "Runnable examples") run from the repository's root and
exit 0. Examples that need a running cluster, a database server or minutes are not marked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"(#{1,6}) (.*)")


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks, where links and headings count."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: link text kept, lowercase, punctuation but `-` and `_`
    dropped, spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The ids of a page's headings; a repeated one gets `-1`, `-2`, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.fullmatch(line)
        if match:
            anchor = github_anchor(match.group(2))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def relative_links(page: Path):
    """(line number, target) of the page's links that stay in the repository."""
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):
                yield number, target


def broken_links(page: Path) -> list[str]:
    broken = []
    for number, target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not file.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{where} (no such heading in {file.relative_to(ROOT)})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_a_heading(page):
    assert broken_links(page) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Some `code`, and more!\n\n```bash\n# not a heading\n```\n\n"
        "[ok](#some-code-and-more) [ok](#title) [no](#not-a-heading) [no](gone.md)\n"
        "[web](https://example.org/x.md) `[in code](nowhere.md)`\n"
    )
    assert broken_links(page) == [
        "page.md:9: #not-a-heading (no such heading in page.md)",
        "page.md:9: gone.md (no such file)",
    ]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for _, target in relative_links(ROOT / "README.md")
    }
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def runnable_examples() -> list[tuple[str, str]]:
    """(where, script) of every ```bash block marked runnable, in every page."""
    examples = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            if line.strip() == RUNNABLE:
                assert lines[index + 1] == "```bash", f"{page.name}:{index + 1}: {RUNNABLE}"
                end = lines.index("```", index + 2)
                where = f"{page.relative_to(ROOT)}:{index + 2}"
                examples.append((where, "\n".join(lines[index + 2 : end])))
    return examples


EXAMPLES = runnable_examples()


def test_the_docs_have_runnable_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("script", [s for _, s in EXAMPLES], ids=[w for w, _ in EXAMPLES])
def test_a_runnable_example_exits_0(script):
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
