"""The table ``bench perf`` prints: one line per training cell, then the ratios, AdamW, peers and LM."""
from __future__ import annotations

from typing import Any


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["ceiling"]
    lines = [f"device {m['device']}: {m.get('gpu') or m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads",
             "matmul ceiling: " + ", ".join(f"{k} {v['flops_per_s'] / 1e9:,.1f} GFLOP/s (n={v['n']})" for k, v in c.items()),
             "",
             f"{'shape':<10} {'method':<16} {'K':>4} {'params':>7} {'tok/step':>8} {'steps':>5} {'ms/step':>8} "
             f"{'tokens/s':>9} {'GFLOP/s':>8} {'%ceil':>6} {'%exec':>6} {'peak MB':>8} {'fwd%':>5} {'proj%':>5} "
             f"{'opt%':>5} {'cons%':>5}"]
    for r in result["train"]:
        if r.get("status") != "ok":
            lines.append(f"{r['shape']:<10} {r['method']:<16} {r['k']:>4} failed: {r.get('error')}")
            continue
        share = r["phase_share"]
        lines.append(
            f"{r['shape']:<10} {r['method']:<16} {r['k']:>4} {r['n_params'] / 1e6:>6.1f}M {r['tokens_per_step']:>8} "
            f"{r['timed_steps']:>5} {r['step_s'] * 1e3:>8.1f} {r['tokens_per_s']:>9,.0f} "
            f"{_fmt(r.get('achieved_flops_per_s') and r['achieved_flops_per_s'] / 1e9, '8.1f'):>8} "
            f"{_fmt(r.get('ceiling_fraction') and 100 * r['ceiling_fraction'], '6.1f'):>6} "
            f"{_fmt(r.get('executed_ceiling_fraction') and 100 * r['executed_ceiling_fraction'], '6.1f'):>6} "
            f"{_fmt(r['peak_memory_bytes'] and r['peak_memory_bytes'] / 2**20, '8.0f'):>8} "
            f"{100 * share['forward']:>5.0f} {100 * share['project']:>5.1f} {100 * share['optimiser']:>5.0f} "
            f"{100 * share['constrain']:>5.1f}")
    ratios = [r for r in result["step_time_ratios"] if r["method"].startswith("mxd")]
    if ratios:
        lines += ["", "step time over the TC's at the same shape and K (parameter-matched):"]
        lines += [f"  {r['shape']:<10} K={r['k']:<4} {r['method']:<16} {r['step_time_over_tc']:.2f}x "
                  f"(executed FLOPs {_fmt(r.get('executed_flops_over_tc'), '.2f')}x, params {r['params_ratio']:.3f}x)"
                  for r in ratios]
    if result.get("optimiser"):
        names = result["optimiser"][0]["variants"]
        lines += ["", f"AdamW.step alone on the TC's parameters (ms): {' / '.join(names)} "
                      f"(bench.train uses {result['optimiser'][0]['bench.train uses']})"]
        lines += [f"  {o['shape']:<10} {o['n_params'] / 1e6:.1f}M params: "
                  + " / ".join(_fmt(o.get(n) and o[n] * 1e3, ".1f") for n in names)
                  for o in result["optimiser"]]
    peers = result["peers"]
    lines += ["", f"peer comparison: {peers['status']} ({peers['message']})"]
    for p in peers["rows"]:
        if p.get("status") != "ok":
            lines.append(f"  {p['shape']:<10} K={p['k']:<4} {p['peer']}: failed ({p.get('error')})")
            continue
        lines.append(f"  {p['shape']:<10} K={p['k']:<4} {p['peer']}: {p['tokens_per_s']:,.0f} tokens/s; ours tc "
                     f"{_fmt(p.get('tc_speedup'), '.2f')}x, sae {_fmt(p.get('sae_speedup'), '.2f')}x")
    lm = result.get("lm")
    if lm:
        lines += ["", f"LM {lm['model']} ({lm['dtype']}), layer {lm['layer']}, {lm['contexts']} x {lm['context_length']} tokens:",
                  f"  full forward {lm['full_forward_tokens_per_s']:,.0f} tokens/s; collect_mlp_io "
                  f"{lm['collect_mlp_io_tokens_per_s']:,.0f} tokens/s ({lm['collect_speedup']:.2f}x)",
                  f"  CE with prefix replay {lm['ce_with_replay_tokens_per_s']:,.0f} tokens/s, without "
                  f"{lm['ce_without_replay_tokens_per_s']:,.0f} tokens/s ({lm['ce_replay_speedup']:.2f}x); "
                  f"prefix capture {lm['ce_prefix_capture_s']:.2f} s"]
    one_pass = result.get("one_pass")
    if one_pass:
        lines += ["", f"one pass: {len(one_pass['cells'])} cells ({', '.join(one_pass['cells'])}) x "
                      f"{one_pass['tokens_per_cell']:,} tokens: together {one_pass['one_pass_s']:.1f} s, one stream per "
                      f"cell {one_pass['one_stream_per_cell_s']:.1f} s -> {one_pass['speedup']:.2f}x"]
    return "\n".join(lines)
