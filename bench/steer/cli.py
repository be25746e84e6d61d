"""``bench steer RUN --cell METHOD-K --units ... [--judge MODEL]``: flags and the command."""
from __future__ import annotations

import argparse
import sys

from bench.parsing import int_list

_DEFAULTS = {"strength": 100.0, "samples": 10, "new_tokens": 32, "prompt": "Let's talk about ", "temperature": 1.0,
             "top_p": 0.1, "frequency_penalty": 1.0, "seed": 42}


def add_steer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (results/<run>) holding cells.jsonl and checkpoints/")
    parser.add_argument("--cell", required=True, metavar="METHOD-K", help="the cell to steer with, e.g. mxd-32")
    parser.add_argument("--units", type=int_list, required=True, help="comma-separated unit numbers, one run each")
    parser.add_argument("--judge", default=None, metavar="MODEL",
                        help="chat model (local dir or hub id) that rates coherence and fluency 0-1; "
                             "default: the offline proxy, labelled 'proxy'")
    parser.add_argument("--strength", type=float, default=_DEFAULTS["strength"], help="added to the unit's code (100)")
    parser.add_argument("--samples", type=int, default=_DEFAULTS["samples"], help="samples per unit (10)")
    parser.add_argument("--new-tokens", type=int, default=_DEFAULTS["new_tokens"], help="tokens per sample (32)")
    parser.add_argument("--prompt", default=_DEFAULTS["prompt"], help="default: \"Let's talk about \"")
    parser.add_argument("--temperature", type=float, default=_DEFAULTS["temperature"], help="(1.0)")
    parser.add_argument("--top-p", type=float, default=_DEFAULTS["top_p"], help="nucleus mass (0.1)")
    parser.add_argument("--frequency-penalty", type=float, default=_DEFAULTS["frequency_penalty"],
                        help="subtracted from a token's logit per earlier occurrence (1.0)")
    parser.add_argument("--seed", type=int, default=_DEFAULTS["seed"], help="(42)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def run_steer(args: argparse.Namespace) -> int:
    from bench.steer.protocol import steer

    stored = steer(args.run, args.cell, args.units, judge=args.judge, device=args.device, strength=args.strength,
                   n_samples=args.samples, new_tokens=args.new_tokens, prompt=args.prompt,
                   temperature=args.temperature, top_p=args.top_p, frequency_penalty=args.frequency_penalty,
                   seed=args.seed)
    for unit in args.units:
        entry = stored["units"][str(unit)]
        print(f"unit {unit}: perplexity {entry['perplexity']:.1f} (unsteered {entry['baseline']['perplexity']:.1f}), "
              f"coherence {_f(entry['coherence'])} ({entry['coherence_source']}); "
              f"first sample: {entry['samples'][0]!r}")
    print(f"wrote {args.run}/steering/{stored['cell']}.json", file=sys.stderr)
    return 0


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"
