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

DualPipe (DeepSeek-V3 report Sec. 3.2.1; `dualpipe_order`, `simulate_dualpipe`): each rank
runs DualPipe's own order of forward, backward, weight-gradient and paired forward-and-backward
chunks of the two directions. With equal stages and chunk times in the ratio F:B:W = 1:2:1 the
simulated bubble equals the report's Table 2, (p/2-1)(F&B + B - 3W); at other ratios the two
differ (tests/report/test_schedule.py measures by how much).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PassKind = Literal["F", "B", "W"]

FORWARD_SHARE = 1 / 3
"""Forward share of one micro-batch's forward+backward time without full recomputation: the
backward pass does twice the forward's matmul FLOPs (Narayanan et al. 2021 Sec. 5.1, the 3x
in Eq. 3's derivation)."""

FORWARD_SHARE_FULL_RECOMPUTE = 1 / 4
"""With full recomputation the backward also reruns the forward (Narayanan et al. 2021
Sec. 5.1, the factor 4 instead of 3 in Eq. 3; Korthikanti et al. 2022 Sec. 5)."""


@dataclass(frozen=True, slots=True)
class PassOp:
    """One forward or backward pass of one model chunk on one micro-batch (under DualPipe
    `stage` is the rank, `chunk` the direction, and W a weight-gradient pass run apart)."""

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
    dualpipe: bool = False

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


DualOp = tuple[str, ...]
"""One entry of a DualPipe rank's order: ("F", phase), ("B", phase, "zb" or ""), ("W",),
("FB", forward phase, backward phase) for a forward and a backward chunk run together, or
("FBs", ...) for the two run back to back with both results sent after the backward."""


def dualpipe_order(*, rank: int, num_ranks: int, num_microbatches: int) -> list[DualOp]:
    """The chunks one rank runs in one DualPipe step, in order, as DualPipe's reference
    implementation orders them (github.com/deepseek-ai/DualPipe, dualpipe.py `step`, its
    eight steps; DeepSeek-V3 report Fig. 5). Phase 0 is the direction that enters at this
    rank's end of the pipeline's first half (ranks below p/2: from rank 0; the others: from
    rank p-1), phase 1 the other. A "zb" backward computes the input gradient only and leaves
    its weight gradient for a later W (zero-bubble splitting, Qi et al. 2024).

    Args:
        rank: 0-based pipeline rank r.
        num_ranks: p, even.
        num_microbatches: m, even and at least 2p (DualPipe's own checks).
    """
    p, m = num_ranks, num_microbatches
    if p % 2 or m % 2 or m < 2 * p:
        raise ValueError(f"DualPipe needs an even rank count ({p}) and an even micro-batch "
                         f"count of at least 2 x ranks ({m})")
    half, chunks = p // 2, m // 2
    h = min(rank, p - 1 - rank)
    middle = rank in (half - 1, half)
    out: list[DualOp] = [("F", "0")] * ((half - h - 1) * 2)               # 1: nF0
    out += [("F", "0"), ("F", "1")] * (h + 1)                              # 2: nF0F1
    out += [("B", "1", "zb"), ("W",), ("F", "1")] * (half - h - 1)         # 3: nB1W1F1
    for i in range(chunks - p + h + 1):                                   # 4: nF0B1F1B0
        # the middle ranks run their first pair back to back, not overlapped, and send both
        # results after the backward ("FBs")
        out.append(("FBs", "0", "1") if i == 0 and middle else ("FB", "0", "1"))
        out.append(("FB", "1", "0"))
    out += [("B", "1", ""), ("FB", "1", "0")] * (half - h - 1)            # 5: nB1F1B0
    zb = False
    for i in range(h + 1):                                                # 6: nB1B0
        if i == (h + 1) // 2 and h % 2 == 1:
            zb = True
        out.append(("B", "1", "zb" if zb else ""))
        if i == (h + 1) // 2 and h % 2 == 0:
            zb = True
        out.append(("B", "0", "zb" if zb else ""))
    out += [("W",), ("B", "0", "zb")] * (half - h - 1)                    # 7: nWB0
    out += [("W",)] * (h + 1)                                             # 8: nW
    return out


def simulate_dualpipe(*, forward_s: list[float], backward_s: list[float],
                      weight_s: list[float], num_microbatches: int) -> Timeline:
    """Start and end of every chunk of one DualPipe step (dualpipe_order).

    Args:
        forward_s, backward_s, weight_s: per pipeline stage, one micro-batch's forward, full
            backward and weight-gradient (part of the backward) seconds. Rank r runs stage r
            of the direction that starts at rank 0 and stage p-1-r of the other.
        num_microbatches: m, split evenly between the two directions.

    A chunk starts when the rank is free and its input has arrived: a forward needs the same
    micro-batch's forward on the previous rank of its direction, a backward the next rank's
    backward (or, on the direction's last stage, its own forward); a paired F&B waits for
    both and takes the sum of the two (the pair overlaps communication, not computation);
    transfers take no time, as in `simulate`. Returns the timeline; its ideal time is the
    busiest rank's work, m/2 x (F + B) of each of its two stages.
    """
    p, m = len(forward_s), num_microbatches
    if len(backward_s) != p or len(weight_s) != p:
        raise ValueError("need matching forward/backward/weight lists")
    orders = [dualpipe_order(rank=r, num_ranks=p, num_microbatches=m) for r in range(p)]

    def direction(r: int, phase: str) -> int:
        return int(phase) ^ (1 if r >= p // 2 else 0)

    def stage(r: int, d: int) -> int:
        return r if d == 0 else p - 1 - r

    done: dict[tuple[str, int, int, int], float] = {}
    issued: list[dict[tuple[str, int], int]] = [{} for _ in range(p)]
    pending_w: list[list[tuple[int, int]]] = [[] for _ in range(p)]
    clock, pos, ops = [0.0] * p, [0] * p, []
    remaining = sum(len(o) for o in orders)

    def ready(r: int, kind: str, d: int) -> tuple[int, float]:
        mb = issued[r].get((kind, d), 0)
        s = stage(r, d)
        if kind == "F":
            return mb, 0.0 if s == 0 else done.get(("F", d, r - 1 if d == 0 else r + 1, mb), -1.0)
        if s == p - 1:
            return mb, done.get(("F", d, r, mb), -1.0)
        return mb, done.get(("B", d, r + 1 if d == 0 else r - 1, mb), -1.0)

    def run(r: int, kind: str, d: int, mb: int, start: float, dur: float) -> float:
        end = start + dur
        if kind != "W":
            done[(kind, d, r, mb)] = end
            issued[r][(kind, d)] = mb + 1
        ops.append(PassOp(r, kind, mb, d, start, end))  # type: ignore[arg-type]
        return end

    while remaining:
        progressed = False
        for r in range(p):
            while pos[r] < len(orders[r]):
                op = orders[r][pos[r]]
                if op[0] == "W":
                    d, mb = pending_w[r].pop(0)
                    clock[r] = run(r, "W", d, mb, clock[r], weight_s[stage(r, d)])
                elif op[0] in ("F", "B"):
                    d = direction(r, op[1])
                    mb, at = ready(r, op[0], d)
                    if at < 0.0:
                        break
                    dur = forward_s[stage(r, d)] if op[0] == "F" else backward_s[stage(r, d)]
                    if op[0] == "B" and op[2] == "zb":
                        dur -= weight_s[stage(r, d)]
                        pending_w[r].append((d, mb))
                    clock[r] = run(r, op[0], d, mb, max(clock[r], at), dur)
                else:
                    df, db = direction(r, op[1]), direction(r, op[2])
                    mf, af = ready(r, "F", df)
                    mbk, ab = ready(r, "B", db)
                    if af < 0.0 or ab < 0.0:
                        break
                    start = max(clock[r], af, ab)
                    if op[0] == "FBs":      # the forward may start before the backward's input
                        start = max(clock[r], af)
                    fend = max(start + forward_s[stage(r, df)], ab if op[0] == "FBs" else 0.0)
                    end = fend + backward_s[stage(r, db)]
                    run(r, "F", df, mf, start, forward_s[stage(r, df)])
                    run(r, "B", db, mbk, end - backward_s[stage(r, db)], backward_s[stage(r, db)])
                    done[("F", df, r, mf)] = done[("B", db, r, mbk)] = end   # sent after the pair
                    clock[r] = end
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise AssertionError("DualPipe schedule deadlocked (an ordering bug)")
    ops.sort(key=lambda o: (o.stage, o.start_s))
    ideal = max(m / 2 * (forward_s[r] + backward_s[r] + forward_s[p - 1 - r] + backward_s[p - 1 - r])
                for r in range(p))
    return Timeline(num_stages=p, num_chunks=2, num_microbatches=m, ops=tuple(ops),
                    makespan_s=max(clock), ideal_s=ideal, dualpipe=True)


def closed_form_bubble_fraction(*, num_stages: int, num_microbatches: int,
                                num_chunks: int = 1) -> float:
    """(p-1)/(v*m): Narayanan et al. 2021 Sec. 2.2.1 (v = 1) and Sec. 2.2.2."""
    return (num_stages - 1) / (num_chunks * num_microbatches)
