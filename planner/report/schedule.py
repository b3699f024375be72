"""The pipeline schedule of one training step, simulated op by op for the report's timeline.

Decides the order in which each pipeline stage runs its forward (F) and backward (B) passes
and when each pass starts, given per-stage pass times; does not decide the pass times (the
cost model does) and draws nothing (charts.py does).

Orders:
- 1F1B (PipeDream-Flush; Narayanan et al. 2021, arXiv:2104.04473, Sec. 2.2.1, Fig. 4 top):
  stage s runs min(p-s-1, m) warm-up forwards, then alternates one forward and one backward,
  then drains the remaining backwards.
- Interleaved 1F1B (ibid. Sec. 2.2.2, Fig. 4 bottom), in the order of Megatron-LM's
  `forward_backward_pipelining_with_interleaving` (megatron/schedules.py, 2022): each stage
  holds v model chunks and runs m*v chunk-passes; the k-th forward is on chunk
  (k mod p*v) // p and the k-th backward on chunk v-1 - (k mod p*v) // p; stage s runs
  2*(p-s-1) + (v-1)*p warm-up forwards, or all forwards first when m == p.

Timing: a pass starts when the stage's previous pass has ended and its input is ready. The
forward of (chunk c, micro-batch i) on stage s needs the forward of (c, i) on stage s-1 (or of
(c-1, i) on the last stage when s = 0); the backward needs the backward of (c, i) on stage s+1
(or of (c+1, i) on stage 0 when s = p-1). Point-to-point transfers take no extra time here:
the cost model already counts them inside each stage's time per micro-batch. Megatron's
blocking send/recv pairs can add waits this data-flow simulation does not have.

With equal stages the simulated bubble matches the closed forms the cost model uses:
(p-1)/m of the ideal time for 1F1B and (p-1)/(v*m) for interleaved 1F1B (Sec. 2.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PassKind = Literal["F", "B"]

FORWARD_SHARE = 1 / 3
"""Forward share of one micro-batch's forward+backward time without full recomputation: the
backward pass does twice the forward's matmul FLOPs (Narayanan et al. 2021 Sec. 5.1, the 3x
in Eq. 3's derivation)."""

FORWARD_SHARE_FULL_RECOMPUTE = 1 / 4
"""With full recomputation the backward also reruns the forward (Narayanan et al. 2021
Sec. 5.1, the factor 4 instead of 3 in Eq. 3; Korthikanti et al. 2022 Sec. 5)."""


@dataclass(frozen=True, slots=True)
class PassOp:
    """One forward or backward pass of one model chunk on one micro-batch."""

    stage: int
    kind: PassKind
    microbatch: int
    chunk: int
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Timeline:
    """A simulated step: every pass, the makespan and the idle share."""

    num_stages: int
    num_chunks: int
    num_microbatches: int
    ops: tuple[PassOp, ...]
    makespan_s: float
    ideal_s: float

    @property
    def bubble_s(self) -> float:
        """Makespan minus the busiest stage's work."""
        return self.makespan_s - self.ideal_s

    @property
    def bubble_fraction(self) -> float:
        """Bubble over the busiest stage's work (Narayanan et al.'s bubble time fraction)."""
        return self.bubble_s / self.ideal_s


def forward_share(recompute: str) -> float:
    """Forward share of a stage's time per micro-batch for a plan's recompute mode."""
    return FORWARD_SHARE_FULL_RECOMPUTE if recompute == "full" else FORWARD_SHARE


def stage_order(*, stage: int, num_stages: int, num_microbatches: int,
                num_chunks: int = 1) -> list[tuple[PassKind, int, int]]:
    """The passes stage `stage` runs, in order, as (kind, micro-batch, chunk).

    Args:
        stage: 0-based pipeline stage.
        num_stages: p.
        num_microbatches: m; with num_chunks > 1 it must be a multiple of p (Megatron-LM).
        num_chunks: v, model chunks per stage (1 = plain 1F1B).

    Returns:
        m*v forwards and m*v backwards in execution order.
    """
    p, m, v = num_stages, num_microbatches, num_chunks
    if v == 1:
        warmup = min(p - stage - 1, m)
        fwd = [("F", i, 0) for i in range(m)]
        bwd = [("B", i, 0) for i in range(m)]
    else:
        if m % p:
            raise ValueError(f"interleaved 1F1B needs micro-batches ({m}) divisible by stages ({p})")
        total = m * v
        warmup = total if m == p else min(2 * (p - stage - 1) + (v - 1) * p, total)
        fwd = [("F", _microbatch(k, p, v), (k % (p * v)) // p) for k in range(total)]
        bwd = [("B", _microbatch(k, p, v), v - 1 - (k % (p * v)) // p) for k in range(total)]
    order: list[tuple[PassKind, int, int]] = list(fwd[:warmup])  # type: ignore[arg-type]
    steady = len(fwd) - warmup
    for k in range(steady):
        order.append(fwd[warmup + k])  # type: ignore[arg-type]
        order.append(bwd[k])  # type: ignore[arg-type]
    order.extend(bwd[steady:])  # type: ignore[arg-type]
    return order


def _microbatch(k: int, p: int, v: int) -> int:
    """Micro-batch of the k-th chunk-pass: groups of p micro-batches go through every chunk."""
    return (k // (p * v)) * p + k % p


def simulate(*, forward_s: list[float], backward_s: list[float], num_microbatches: int,
             num_chunks: int = 1) -> Timeline:
    """Start and end of every pass of one step under 1F1B (v = 1) or interleaved 1F1B.

    Args:
        forward_s: forward time of one micro-batch on each stage (all its chunks together).
        backward_s: the same for the backward pass.
        num_microbatches: m.
        num_chunks: v; each chunk pass takes 1/v of the stage's time.

    Returns:
        The timeline; its ideal time is m times the busiest stage's forward + backward.
    """
    p, m, v = len(forward_s), num_microbatches, num_chunks
    if p < 1 or len(backward_s) != p or m < 1 or v < 1:
        raise ValueError("need at least one stage, matching forward/backward lists, m >= 1, v >= 1")
    orders = [stage_order(stage=s, num_stages=p, num_microbatches=m, num_chunks=v)
              for s in range(p)]
    dur = {"F": [f / v for f in forward_s], "B": [b / v for b in backward_s]}
    done: dict[tuple[str, int, int, int], float] = {}
    clock = [0.0] * p
    pos = [0] * p
    ops: list[PassOp] = []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(p):
            while pos[s] < len(orders[s]):
                kind, mb, chunk = orders[s][pos[s]]
                dep = _dependency(kind, s, chunk, p, v)
                ready = 0.0 if dep is None else done.get((kind, *dep, mb), -1.0)
                if ready < 0.0 or (kind == "B" and ("F", s, chunk, mb) not in done):
                    break
                start = max(clock[s], ready)
                end = start + dur[kind][s]
                done[(kind, s, chunk, mb)] = end
                ops.append(PassOp(s, kind, mb, chunk, start, end))
                clock[s], pos[s] = end, pos[s] + 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise AssertionError("pipeline schedule deadlocked (an ordering bug)")
    ops.sort(key=lambda o: (o.stage, o.start_s))
    ideal = m * max(f + b for f, b in zip(forward_s, backward_s))
    return Timeline(num_stages=p, num_chunks=v, num_microbatches=m, ops=tuple(ops),
                    makespan_s=max(clock), ideal_s=ideal)


def _dependency(kind: str, stage: int, chunk: int, p: int, v: int) -> tuple[int, int] | None:
    """(stage, chunk) whose same-kind pass on the same micro-batch must finish first."""
    if kind == "F":
        if stage > 0:
            return stage - 1, chunk
        return (p - 1, chunk - 1) if chunk > 0 else None
    if stage < p - 1:
        return stage + 1, chunk
    return (0, chunk + 1) if chunk < v - 1 else None


def closed_form_bubble_fraction(*, num_stages: int, num_microbatches: int,
                                num_chunks: int = 1) -> float:
    """(p-1)/(v*m): Narayanan et al. 2021 Sec. 2.2.1 (v = 1) and Sec. 2.2.2."""
    return (num_stages - 1) / (num_chunks * num_microbatches)
