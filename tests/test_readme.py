"""The README's option table lists every choice in conf/, so documentation cannot drift from the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("initializer", "activation", "normalization", "regularizer", "clip", "optimizer", "schedule")


@pytest.mark.parametrize("group", GROUPS)
def test_readme_lists_every_choice_of(group):
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        override = f"{group}=[{path.stem}]" if group == "regularizer" else f"{group}={path.stem}"
        assert override in readme or f"[{path.stem}]" in readme, override


def test_readme_opens_with_make_run_and_make_test():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("make ")]
    assert [line.split()[1] for line in lines[:2]] == ["run", "test"]
