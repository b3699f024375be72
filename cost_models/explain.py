"""Operator by operator: what one micro-batch of a training plan costs one device.

Decides nothing of its own. It lists the shares the cost model already adds up:
- each block type's operators (`compute.block_ops`: GEMMs, attention core, memory-bound
  kernels), which sum exactly to the block's forward and backward seconds and FLOPs;
- the block's communication per pass (`training.block_comm`), before the plan's overlap
  rules (combined 1F1B, DualPipe) decide what of it is exposed;
- the LM head with its loss, and the embedding.
The stage tables multiply these by the blocks of each stage and the micro-batches of the step
(see `training.py`); `meshplan evaluate --explain` prints them.
"""

from __future__ import annotations

from cost_models.compute import Op, block_ops, embedding_compute, head_compute
from cost_models.training import block_comm, make_context
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import Plan
from planner.result import BlockExplanation, Explanation, OperatorShare
from planner.workload import TrainingWorkload


def _share(op: Op) -> OperatorShare:
    return OperatorShare(name=op.name, work=op.work, fwd_s=op.fwd_s, bwd_s=op.bwd_s,
                         fwd_flops=op.fwd_flops, bwd_flops=op.bwd_flops,
                         fraction_of_peak=op.fraction)


def explain_training(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
                     plan: Plan) -> Explanation:
    """The operators of one micro-batch of an (already validated) training plan."""
    ctx, _ = make_context(model, cluster, workload, plan)
    roof, sh = ctx.roof, ctx.shard
    mask = model.moe_layer_mask
    blocks = []
    for moe in sorted(set(mask)):
        bc, ops = block_ops(model, roof, sh, moe=moe)
        tpf, tpb, cpf, cpb, epf, epb = block_comm(ctx, moe, bc)
        blocks.append(BlockExplanation(
            kind="moe" if moe else "dense", layers=sum(1 for x in mask if x == moe),
            operators=[_share(op) for op in ops], fwd_s=bc.fwd_s, bwd_s=bc.bwd_s,
            fwd_flops=bc.fwd_flops, bwd_flops=bc.bwd_flops, tp_comm_s=(tpf, tpb),
            cp_comm_s=(cpf, cpb), ep_comm_s=(epf, epb)))
    head = embedding = None
    if model.vocab_size:
        hf, hb, hflops = head_compute(model, roof, sh)
        # the head's backward is its two GEMMs (input and weight gradients) of the forward's
        # FLOPs each, plus the loss kernel (compute.head_compute)
        head = OperatorShare(name="LM head and loss", work=f"{sh.tokens:g} x "
                             f"{model.vocab_size / sh.tp:g} x {model.hidden_size:g}",
                             fwd_s=hf, bwd_s=hb, fwd_flops=hflops, bwd_flops=2 * hflops,
                             fraction_of_peak=None)
        ef, eb = embedding_compute(model, roof, sh)
        embedding = OperatorShare(name="embedding lookup", work=f"{sh.tokens:g} rows",
                                  fwd_s=ef, bwd_s=eb, fwd_flops=0.0, bwd_flops=0.0,
                                  fraction_of_peak=None)
    return Explanation(plan=plan.to_string(), tokens_per_microbatch=sh.tokens,
                       peak_flops_per_s=roof.peak, large_gemm_fraction=roof.large_gemm_fraction,
                       memory_bandwidth_bytes_per_s=roof.bw,
                       kernel_floor_s=roof.eff.kernel_floor_s, blocks=blocks, head=head,
                       embedding=embedding)
