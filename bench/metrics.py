"""Every metric a result row can hold, declared once: what it is called, how it is printed, which way
is better, and where it is shown. Rows, the printed table, summary.csv, REPORT.md, the figures and
W&B all read this table, so adding a metric means adding its spec here and the code that computes it.

``shown`` names the places: ``table`` (what ``bench run`` prints), ``report`` (REPORT.md's per-cell
table), ``summary`` (summary.csv), ``wandb`` (logged per cell) and ``figure`` (a "<metric> vs K"
figure of its own, drawn by ``bench plot``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TABLE, REPORT, SUMMARY, WANDB, FIGURE = "table", "report", "summary", "wandb", "figure"
MISSING = "—"


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the row's key
    label: str  # report column and figure axis
    short: str  # printed-table column
    fmt: str  # format spec of the value (and of its stderr, without a sign)
    higher_is_better: bool | None = None  # None: not a quality (a size, a time)
    unit: str = ""
    stderr: str | None = None  # row key of the value's standard error
    shown: frozenset[str] = frozenset()
    description: str = ""
    axis: str = ""  # figure axis label, when it should say more than label and unit
    count: str | None = None  # row key of the count a fraction is of, shown as "count (fraction)"

    def format(self, row: dict) -> str:
        """The value as a table shows it, ``± stderr`` appended where the row has one."""
        value = row.get(self.name)
        if _missing(value):
            return MISSING
        text = format(value, self.fmt)
        if self.count and not _missing(row.get(self.count)):
            text = f"{int(row[self.count]):,} ({text})"
        err = row.get(self.stderr) if self.stderr else None
        return text if _missing(err) else f"{text} ± {format(err, self.fmt.lstrip('+'))}"

    @property
    def header(self) -> str:
        """A report column's header: the label, with "(± stderr)" where a stderr is shown."""
        return f"{self.label} (± stderr)" if self.stderr else self.label

    @property
    def axis_label(self) -> str:
        return self.axis or (f"{self.label} ({self.unit})" if self.unit else self.label)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _s(*places: str) -> frozenset[str]:
    return frozenset(places)


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("ce_clean", "clean CE", "clean CE", ".4f", False, "nats/token", shown=_s(SUMMARY),
               description="next-token CE of the unmodified model on the CE tokens"),
    MetricSpec("ce_spliced", "CE", "CE", ".4f", False, "nats/token", shown=_s(TABLE, REPORT, SUMMARY),
               description="next-token CE with the layer spliced in place of the MLP"),
    MetricSpec("delta_ce", "ΔCE", "dCE", "+.4f", False, "nats/token", stderr="delta_ce_stderr",
               shown=_s(TABLE, REPORT, SUMMARY, WANDB),
               description="spliced minus clean CE; stderr paired over CE sequences, clustered by source document"),
    MetricSpec("ce_zero", "zero-ablated CE", "zero CE", ".4f", False, "nats/token", shown=_s(SUMMARY),
               description="next-token CE with the MLP's output set to zero"),
    MetricSpec("kl", "KL(clean‖spliced)", "KL", ".4f", False, "nats/token", stderr="kl_stderr",
               shown=_s(TABLE, REPORT, SUMMARY, WANDB, FIGURE),
               description="mean over CE tokens of KL(P_clean || P_spliced) of the next-token distribution, "
                           "fp32 log-softmax; stderr over CE sequences, clustered by source document"),
    MetricSpec("ce_recovered", "CE recovered", "recov", ".3f", True, shown=_s(TABLE, REPORT, SUMMARY),
               description="(CE_zero - CE_spliced) / (CE_zero - CE_clean)"),
    MetricSpec("nmse", "NMSE", "NMSE", "#.3g", False, shown=_s(TABLE, REPORT, SUMMARY, WANDB, FIGURE),
               description="sum ||y_hat - y||^2 / sum ||y - mean y||^2 on held-out tokens",
               axis="NMSE (held-out tokens)"),
    MetricSpec("fve", "variance explained", "FVE", ".3f", True, shown=_s(REPORT, SUMMARY),
               description="fraction of the MLP output's variance explained, 1 - NMSE"),
    MetricSpec("cosine", "cosine similarity", "cos", ".3f", True, shown=_s(REPORT, SUMMARY),
               description="mean over held-out tokens of cos(y_hat, y)"),
    MetricSpec("l0", "L0", "L0", ".1f", None, "active units per token", shown=_s(TABLE, REPORT, SUMMARY, WANDB),
               description="mean number of non-zero codes per token"),
    MetricSpec("dead_fraction", "dead units", "dead", ".1%", False, count="dead_units",
               shown=_s(TABLE, REPORT, SUMMARY),
               description="fraction of units never active on the held-out tokens"),
    MetricSpec("never_selected_fraction", "never selected in training", "never", ".1%", False, count="never_selected",
               shown=_s(TABLE, REPORT, SUMMARY),
               description="fraction of units no training token selected (index among its TopK codes, value non-zero)"),
    MetricSpec("final_aux_loss", "AuxK term", "auxK", "#.3g", None, shown=_s(SUMMARY),
               description="the AuxK term on the last training batch (only with --aux-k-coef > 0)"),
    MetricSpec("n_params", "params", "params", ",.0f", None, shown=_s(TABLE, REPORT, SUMMARY),
               description="trainable parameters of the sparse layer"),
    MetricSpec("n_units", "units", "units", ",.0f", None, shown=_s(SUMMARY),
               description="units the TopK selects from (latents or experts)"),
    # Measured after training by `bench probe` / `bench steer` and joined to rows when read
    # (bench.cell_scores); REPORT.md's probing and steering sections and their figures show them.
    MetricSpec("probing.mean.f1_k1", "probing F1, k=1", "F1@1", ".3f", True, stderr="probing.mean.f1_k1_stderr",
               description="class-mean test F1 of the 1-sparse probe, averaged over the probing datasets"),
    MetricSpec("probing.mean.f1_k5", "probing F1, k=5", "F1@5", ".3f", True, stderr="probing.mean.f1_k5_stderr",
               description="class-mean test F1 of the 5-sparse probe, averaged over the probing datasets"),
    MetricSpec("steering.perplexity", "steered perplexity", "ppl", ".1f", False,
               stderr="steering.perplexity_stderr", axis="perplexity of steered samples (clean model)",
               description="clean-model perplexity of the steered samples, mean over the steered units"),
    MetricSpec("steering.coherence_proxy", "coherence (proxy)", "coh*", ".3f", True,
               stderr="steering.coherence_proxy_stderr", axis="coherence PROXY: extra firing of the unit on its text",
               description="offline proxy, not a judge: clip((g - g0) / (1 - g0), 0, 1), mean over steered units"),
    MetricSpec("steering.coherence_judge", "coherence (judge)", "coh", ".3f", True,
               description="an LLM judge's 0-1 coherence of the steered samples, mean over steered units"),
)

# The buckets of a row's ``selection_frequency_histogram`` (counted by ``bench.unit_usage``), declared
# here so the report can name them without importing torch. Selection frequency f = selections /
# training tokens: f = 0, then one bucket per decade: f < 1e-8, [1e-8, 1e-7), ..., [1e-2, 1e-1), [1e-1, 1].
HISTOGRAM_BUCKETS: tuple[str, ...] = ("never", "<1e-8", *(f"1e{e}..1e{e + 1}" for e in range(-8, -1)), "1e-1..1")


def metric(name: str) -> MetricSpec:
    for spec in METRICS:
        if spec.name == name:
            return spec
    raise KeyError(f"no metric {name!r}; known: {', '.join(m.name for m in METRICS)}")


def shown_in(place: str) -> list[MetricSpec]:
    """The metrics shown in ``place``, in the table's order."""
    return [spec for spec in METRICS if place in spec.shown]


def numeric_columns() -> list[str]:
    """Row keys holding numbers: every metric and its stderr."""
    return [name for spec in METRICS for name in (spec.name, spec.stderr, spec.count) if name]
