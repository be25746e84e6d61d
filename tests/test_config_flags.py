"""`bench run`'s flags are generated from RunConfig: checked both ways, with types and defaults."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from bench.cli import RUN_ONLY_FLAGS, build_parser
from bench.config import SMOKE_METHOD_LR, RunConfig, flag_name, sweep_configs
from bench.validation import UsageError, validate

SAMPLE_TEXT = {int: "7", float: "0.5", str: "text", list[int]: "3,5", list[str]: "a,b"}


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def _run_flags(argv: list[str], keep_preset: bool = False) -> dict:
    args = build_parser().parse_args(["run", *argv])
    return {k: v for k, v in vars(args).items() if k not in RUN_ONLY_FLAGS or (keep_preset and k == "preset")}


def test_every_setting_has_a_flag_and_every_flag_a_setting() -> None:
    dests = {a.dest for a in _run_parser()._actions if a.option_strings and a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    not_settings = {"config", "executor", "address", "gpus_per_task", "figures", "figures_dir", "seeds"}
    assert fields - dests == set(), "settings without a flag"
    assert dests - fields - not_settings == set(), "flags without a setting"


def test_no_flag_given_means_every_field_default() -> None:
    """Every field at its default, except what the smoke preset sets (its tuned learning rates)."""
    (cfg,) = sweep_configs([{}], None, _run_flags([]))
    assert cfg == RunConfig(method_lr=SMOKE_METHOD_LR)


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(RunConfig)], ids=lambda f: f.name)
def test_each_flag_parses_to_its_fields_type(field: dataclasses.Field) -> None:
    from bench.config import setting_types

    kind, _ = setting_types()[field.name]
    if kind is bool:
        assert _run_flags([flag_name(field.name)])[field.name] is True
        assert _run_flags([f"--no-{flag_name(field.name)[2:]}"])[field.name] is False
        return
    choices = field.metadata.get("choices")
    text = choices[-1] if choices else SAMPLE_TEXT[kind]
    value = _run_flags([flag_name(field.name), text], keep_preset=True)[field.name]
    expected = {int: 7, float: 0.5, list[int]: [3, 5], list[str]: ["a", "b"]}.get(kind, text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("settings, message", [
    ({"lr": float("nan")}, "--lr must be a finite number > 0, got nan"),
    ({"lr": float("inf")}, "--lr must be a finite number > 0, got inf"),
    ({"checkpoint_minutes": float("nan")}, "--checkpoint-minutes must be a finite number >= 0"),
    ({"memory_budget_gb": -1.0}, "--memory-budget-gb must be a finite number > 0, got -1.0"),
    ({"ks": []}, "--k needs at least one K value"),
    ({"methods": []}, "--methods needs at least one method name"),
    ({"ks": [16, 16]}, "--k lists 16 more than once"),
    ({"lm_batch_size": 0}, "--lm-batch-size must be a positive integer, got 0"),
    ({"buffer_tokens": "big"}, "--buffer-tokens must be int, got 'big'"),
    ({"compile": "yes"}, "--compile must be true or false, got 'yes'"),
    ({"dtype": "fp8"}, "--dtype must be one of auto, fp32"),
    ({"train_tokens": True}, "--tokens must be int, got True"),
])
def test_validation_names_the_flag_and_value(settings: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("+", r"\+")):
        validate(dataclasses.replace(RunConfig(), **settings))
