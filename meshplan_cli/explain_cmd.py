"""`meshplan evaluate --explain`: one micro-batch of a training plan, operator by operator
(planner.api.explain), printed under the estimate."""

from __future__ import annotations

from rich.table import Table

from meshplan_cli.common import out
from planner.result import Explanation, OperatorShare


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _row(t: Table, op: OperatorShare) -> None:
    frac = "" if op.fraction_of_peak is None else f"{op.fraction_of_peak:.1%}"
    t.add_row(op.name, op.work, _ms(op.fwd_s), _ms(op.bwd_s),
              f"{op.fwd_flops / 1e12:.3f}" if op.fwd_flops else "", frac)


def _ops_table(title: str) -> Table:
    """An empty operator table: one row per OperatorShare (`_row`)."""
    t = Table(title=title, title_justify="left")
    for name, justify in (("operator", "left"), ("work", "left"), ("fwd ms", "right"),
                          ("bwd ms", "right"), ("fwd TFLOP", "right"), ("of peak", "right")):
        t.add_column(name, justify=justify)     # type: ignore[arg-type]
    return t


def render_explanation(ex: Explanation) -> None:
    """One table per block type (its operators and their totals), then its communication and
    the head and embedding, all for one micro-batch on one device."""
    out.print(f"one micro-batch on one device: {ex.tokens_per_microbatch:,} tokens; "
              f"peak {ex.peak_flops_per_s / 1e12:,.1f} TFLOP/s (large GEMMs reach "
              f"{ex.large_gemm_fraction:.1%}), memory {ex.memory_bandwidth_bytes_per_s / 1e9:,.0f} "
              f"GB/s achievable, kernel floor {ex.kernel_floor_s * 1e6:g} us", markup=False)
    for b in ex.blocks:
        t = _ops_table(f"{b.kind} block ({b.layers} in the model): operators")
        for op in b.operators:
            _row(t, op)
        t.add_row("block", "", _ms(b.fwd_s), _ms(b.bwd_s), f"{b.fwd_flops / 1e12:.3f}", "",
                  style="bold")
        out.print(t)
        comm = [(name, pair) for name, pair in (
            ("tp collectives", b.tp_comm_s),
            ("cp ring exchange the attention does not hide", b.cp_comm_s),
            ("ep dispatch and combine, before the plan's overlap rules", b.ep_comm_s))
            if any(pair)]
        for name, (f, bw) in comm:
            out.print(f"  {name}: {_ms(f)} ms forward, {_ms(bw)} ms backward", markup=False)
    extras = [op for op in (ex.head, ex.embedding) if op is not None]
    if extras:
        t = _ops_table("first and last stage only")
        for op in extras:
            _row(t, op)
        out.print(t)
