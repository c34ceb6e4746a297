"""Hypothesis strategies for hostile and careless values in files haqa reads (targets, recipes, locks)."""

from __future__ import annotations

from hypothesis import strategies as st

HOSTILE_TEXT = ["../../../../x", "/etc/passwd", "[/]", "[bold red]x[/]", "a\nb = 1", "\x7f", "caf\u00e9", "",
                "$(reboot)", "; rm -rf ~", "C:\\x", "x" * 300, "\u202e", "ON", "0", "-1", "inf"]
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=20), st.sampled_from(HOSTILE_TEXT),
    st.lists(st.integers(-5, 5) | st.text(max_size=5), max_size=3),
)
