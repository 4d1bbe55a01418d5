"""The documentation holds to the repo: the option table lists every choice in conf/, README opens with the two
commands of a fresh machine, and every relative link of README and docs/ reaches a file (and a heading)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ROOT / "docs" / "options.md"  # the "Every option" table
GROUPS = ("initializer", "activation", "normalization", "regularizer", "clip", "optimizer", "schedule")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target): targets here have no spaces


@pytest.mark.parametrize("group", GROUPS)
def test_readme_lists_every_choice_of(group):
    table = OPTIONS.read_text()
    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        override = f"{group}=[{path.stem}]" if group == "regularizer" else f"{group}={path.stem}"
        assert override in table or f"[{path.stem}]" in table, override


def test_readme_opens_with_make_run_and_make_test():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("make ")]
    assert [line.split()[1] for line in lines[:2]] == ["run", "test"]


def _outside_code(text: str) -> str:
    """A page without its fenced blocks and inline code, where a `](...)` is no link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in _outside_code(page.read_text()).splitlines()
            if re.match(r"#{1,6} ", line)}


def test_anchor_is_githubs_id_of_the_heading():
    assert _anchor("Speed (`make bench`)") == "speed-make-bench"
    assert _anchor("Reusing what was learned: transfer and pretraining") == \
        "reusing-what-was-learned-transfer-and-pretraining"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file(page):
    links = LINK.findall(_outside_code(page.read_text()))
    assert links or page.name == "book.md"
    for link in links:
        if re.match(r"[a-z]+:", link):  # http(s), mailto: not ours to check
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_file(), f"{page.name}: {link}"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page.name}: {link}: no such heading in {target.name}"


def test_every_docs_page_is_linked_from_readme():
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in readme, page.name
