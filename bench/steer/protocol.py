"""``bench steer``: the reference steering protocol on a trained cell, scored offline (or by a judge).

For each unit: splice the layer in with that unit's code raised by ``strength`` at every
position, sample ``n_samples`` continuations of the prompt, score fluency as the CLEAN model's
perplexity of them and concept coherence by a judge (``--judge``) or the firing proxy
(``scoring``). One unsteered baseline (layer spliced, strength 0, same seed) is scored the same
way, so every number has its reference. Saved to ``RUN/steering/<method>-<k>.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.activations import collect_mlp_io
from bench.cell_scores import weights_digest
from bench.inspect.cells import LoadedCell, check_units, load_cell
from bench.inspect.dashboard import separator_id
from bench.inspect.decode import unit_output_sums
from bench.inspect.lens import top_tokens
from bench.results import RunStore, atomic_write_text
from bench.splice import spliced
from bench.steer.hook import SteeredLayer
from bench.steer.sampling import continuation_nll, sample
from bench.steer.scoring import Judge, coherence_proxy, firing_fraction, token_share


class SteeringError(ValueError):
    pass


@dataclass(frozen=True)
class SteeringSettings:
    """The reference protocol's defaults."""

    strength: float = 100.0
    n_samples: int = 10
    new_tokens: int = 32
    prompt: str = "Let's talk about "
    temperature: float = 1.0
    top_p: float = 0.1
    frequency_penalty: float = 1.0
    seed: int = 42

    def check(self) -> "SteeringSettings":
        if not math.isfinite(self.strength):
            raise SteeringError(f"--strength must be a finite number, got {self.strength}")
        if self.n_samples < 1 or self.new_tokens < 1:
            raise SteeringError(f"--samples and --new-tokens must be >= 1, got {self.n_samples}, {self.new_tokens}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1 or not self.frequency_penalty >= 0:
            raise SteeringError(f"need temperature > 0, 0 < top-p <= 1, frequency penalty >= 0; got "
                                f"{self.temperature}, {self.top_p}, {self.frequency_penalty}")
        return self


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """The document separator (as every training row starts with one) followed by the prompt's tokens."""
    return torch.tensor([separator_id(tokenizer)] + tokenizer(prompt, add_special_tokens=False)["input_ids"])


def _scored_samples(cell: LoadedCell, replacement, settings: SteeringSettings, prompt: torch.Tensor,
                    judge: Judge | None) -> tuple[torch.Tensor, dict]:
    """Sample with ``replacement`` spliced in; score the samples with the clean model (and the judge)."""
    model, tokenizer = cell.lm.model, cell.lm.tokenizer
    with spliced(model, cell.layer_index, replacement):
        sequences = sample(model, prompt, settings.n_samples, settings.new_tokens, settings.temperature,
                           settings.top_p, settings.frequency_penalty, settings.seed)
    nll = continuation_nll(model, sequences, len(prompt))  # clean model: no splice
    texts = [tokenizer.decode(s[len(prompt):], skip_special_tokens=True) for s in sequences]
    result = {"samples": texts, "perplexity": math.exp(float(nll.mean())),
              "sample_perplexities": [math.exp(v) for v in nll.tolist()]}
    if judge is not None:
        result["judge"] = judge.score(texts)
    return sequences, result


@torch.no_grad()
def steering_direction(cell: LoadedCell, unit: int, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """What steering added per unit of code, averaged over the generated positions: [1, d]."""
    x, y = collect_mlp_io(cell.lm.model, cell.layer_index, sequences)
    source = (y if cell.layer.input_site == "mlp_output" else x).reshape(*sequences.shape, -1)
    source = source[:, prompt_length:].reshape(-1, source.shape[-1]).to(cell.device)
    ones = torch.ones(len(source), 1, device=cell.device)
    return unit_output_sums(cell.layer, source, [unit], ones).cpu() / len(source)


def steer_cell(cell: LoadedCell, units: list[int], settings: SteeringSettings, judge: Judge | None = None) -> dict:
    """Baseline plus one steered entry per unit, each with samples and scores."""
    prompt = prompt_ids(cell.lm.tokenizer, settings.prompt)
    base_sequences, baseline = _scored_samples(cell, cell.layer, settings, prompt, judge)
    entries = {}
    for unit in units:
        steered = SteeredLayer(cell.layer, unit, settings.strength)
        sequences, entry = _scored_samples(cell, steered, settings, prompt, judge)
        fraction = firing_fraction(cell.lm.model, cell.layer_index, cell.layer, unit, sequences, len(prompt))
        base_fraction = firing_fraction(cell.lm.model, cell.layer_index, cell.layer, unit, base_sequences, len(prompt))
        direction = steering_direction(cell, unit, sequences, len(prompt))
        promoted = top_tokens(cell.lm.model, cell.lm.tokenizer, direction)[0]
        proxy = coherence_proxy(fraction, base_fraction)
        entry.update({
            "coherence": entry["judge"]["coherence"] if judge else proxy,
            "coherence_source": f"judge:{judge.name}" if judge else "proxy",
            "coherence_proxy": proxy,
            "firing_fraction": fraction,
            "baseline_firing_fraction": base_fraction,
            "promoted_tokens": [t for t, _ in promoted.promoted],
            "promoted_token_share": token_share(sequences, len(prompt), promoted.promoted_ids),
            "baseline_promoted_token_share": token_share(base_sequences, len(prompt), promoted.promoted_ids),
            "settings": dataclasses.asdict(settings),
            "baseline": baseline,
        })
        entries[str(unit)] = entry
    return entries


def steer(run_dir: str | Path, cell: str, units: list[int], judge: str | None = None, device: str = "auto",
          **settings) -> dict:
    """Run the protocol for ``units`` of ``cell``; merge the entries into ``RUN/steering/<cell>.json``
    (atomically; earlier units' entries are kept) and return the whole file's content."""
    try:
        checked = SteeringSettings(**settings).check()
    except TypeError as error:
        raise SteeringError(f"unknown steering setting: {error}") from None
    if not units:
        raise SteeringError("--units needs at least one unit number")
    loaded = load_cell(Path(run_dir), cell, device)
    units = check_units(units, loaded.layer.n_units)
    rater = Judge(judge, str(loaded.device)) if judge else None
    entries = steer_cell(loaded, units, checked, rater)
    path = Path(run_dir) / "steering" / f"{loaded.label}.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    digest = weights_digest(Path(run_dir), loaded.row["checkpoint"])
    kept = stored.get("units", {}) if stored.get("weights_sha256") in (None, digest) else {}  # not a retrained cell's
    stored = {"cell": loaded.label, "model": loaded.row["model"], "layer": loaded.layer_index,
              "checkpoint": loaded.row["checkpoint"], "weights_sha256": digest, "units": {**kept, **entries}}
    atomic_write_text(path, json.dumps(stored, indent=1) + "\n")
    runs = RunStore(Path(run_dir))
    runs.write_summary(runs.rows())  # summary.csv shows the cell's steering scores (bench.cell_scores)
    return stored
