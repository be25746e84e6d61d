"""Comma-separated flag values (``--methods tc,mxd``, ``--k 16,64``), parsed one way for every command."""
from __future__ import annotations

import argparse
from typing import Callable, TypeVar

Number = TypeVar("Number", int, float)


def _numbers(text: str, kind: Callable[[str], Number], noun: str) -> list[Number]:
    """Comma-separated ``kind`` values; empty items dropped; a bad or empty list is an argparse error."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {noun}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one {noun}")
    return values


def int_list(text: str) -> list[int]:
    """``"16,64"`` -> ``[16, 64]``; an argparse type, so a bad value is a one-line usage error."""
    return _numbers(text, int, "integer")


def name_list(text: str) -> list[str]:
    """``"tc, mxd"`` -> ``["tc", "mxd"]``; empty items are dropped, an empty list is refused."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def float_list(text: str) -> list[float]:
    """``"1e-4,3e-4"`` -> ``[0.0001, 0.0003]``."""
    return _numbers(text, float, "number")
