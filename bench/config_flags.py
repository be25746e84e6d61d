"""``bench run``'s settings flags, generated from RunConfig's fields (name, type, help, choices).

Every flag defaults to None, so what the user did not type is filled in by the preset, then the
TOML file, then RunConfig's own default; the help text shows that default.
"""
from __future__ import annotations

import argparse
import dataclasses

from bench.config import RunConfig, flag_name, setting_types
from bench.parsing import int_list, name_list


def _default_text(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        value = field.default
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, with the field's type (lists comma-separated, booleans --x/--no-x)."""
    types = setting_types()
    for field in dataclasses.fields(RunConfig):
        kind, _ = types[field.name]
        text = field.metadata["help"]
        if "default" not in text:
            text += f" (default: {_default_text(field)})"
        options: dict = {"dest": field.name, "default": None, "help": text}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif field.metadata.get("choices"):
            options["choices"] = field.metadata["choices"]
        else:
            options["type"] = {list[int]: int_list, list[str]: name_list}.get(kind, kind)
            options["metavar"] = {list[int]: "K,K", list[str]: "NAME,NAME"}.get(kind, field.name.upper())
        parser.add_argument(flag_name(field.name), **options)
