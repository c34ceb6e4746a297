"""docs/RELIABILITY.md names a test for every row: each named test must exist (so the table cannot
silently point at a renamed or deleted test)."""

from __future__ import annotations

import re

from tests.support.files import REPO


def test_every_test_named_in_reliability_md_exists():
    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    cells = re.findall(r"\| (tests/[^|]+) \|\s*$", text, re.M)
    assert len(cells) >= 20
    missing = []
    for cell in cells:
        current = None
        for part in (p.strip() for p in re.sub(r"\([^)]*\)", "", cell).split(",")):
            if part.startswith("tests/"):
                current, _, name = part.partition("::")
            else:
                name = part.lstrip(":")
            source = (REPO / current).read_text()
            if name and f"def {name.strip()}(" not in source:
                missing.append(f"{current}::{name}")
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"
