"""Values a page keeps in its session while what they were computed from stays the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

T = TypeVar("T")


def remembered(name: str, key: tuple, compute: Callable[[], T], keep: object = None) -> T:
    """compute()'s value, kept in the session while `key` stays the same: a page reruns on every click, and
    what it shows should not be recomputed each time. `keep` holds the objects whose id() is in `key`, so
    that no new object can take one of those ids while the entry lives."""
    memo = st.session_state.setdefault("remembered", {})
    if name in memo and memo[name][0] == key:
        return memo[name][1]
    value = compute()
    memo[name] = (key, value, keep)
    return value
