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
