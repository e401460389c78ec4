"""The README's pass list is the registry's, and every page it or a PASS record links to exists."""

from __future__ import annotations

import pathlib
import re

import pytest

from n6onnx import passes

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_pass_list_is_generated_from_the_registry():
    m = re.search(r"<!-- passes -->\n(.*?)<!-- /passes -->", README, re.S)
    assert m, "README.md lost its <!-- passes --> ... <!-- /passes --> block"
    assert m.group(1) == passes.readme_table(), "README pass list is stale: paste passes.readme_table()"


@pytest.mark.parametrize("kind", list(passes.PASSES))
def test_every_pass_has_its_docs_page(kind):
    page = ROOT / passes.PASSES[kind].docs
    assert page.is_file() and page.read_text().startswith("# "), page


def test_readme_links_exist():
    links = re.findall(r"\]\(((?!https?:)[^)#]+)\)", README)
    assert links
    assert [x for x in links if not (ROOT / x).exists()] == []


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped (hyphens and underscores kept), spaces
    to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    """The guides and their measurements files link into each other by section: a split or a renamed heading must
    not leave a link pointing nowhere."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    anchors = {p: {_slug(h) for h in re.findall(r"^#+\s+(.*)$", p.read_text(), re.M)} for p in pages}
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(((?!https?:)[^)\s]+)\)", page.read_text()):
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in anchors.get(target, set()):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert broken == []
