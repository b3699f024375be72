"""How close software gets to the datasheet: achievable fractions per device, as data.

Decides: the fraction of peak a large matrix multiply reaches on each device (measured
"maximum achievable matmul FLOPS", MAMF), how GEMM efficiency falls for small shapes (wave
quantisation over the device's compute units), the achievable fraction of memory bandwidth
and of link bandwidth, and the fixed per-kernel floor. These are properties of a device and
its software stack, one set per device, never per run or per published source.

Does not decide anything about a plan; `compute.py` and `comm.py` apply these numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from planner.hardware import DeviceSpec
from planner.model import DType


# Achievable fraction of a link's per-direction bandwidth for large collectives.
# NCCL all-reduce bus bandwidth reaches ~230 of 300 GB/s on DGX A100 NVSwitch and ~360-370 of
# 450 GB/s on DGX H100 (nccl-tests results published by NVIDIA and cloud providers): 0.78.
# Over InfiniBand, NCCL reaches ~90% of line rate (e.g. ~185 of 200 GB/s per DGX A100 node):
# 0.9. These are the link constants; a device whose own collective library measures otherwise
# on its own fabric says so (DeviceEfficiency.intra_link); latency comes from the cluster spec.
INTRA_NODE_LINK_EFFICIENCY = 0.78
INTER_NODE_LINK_EFFICIENCY = 0.9


@dataclass(frozen=True, slots=True)
class DeviceEfficiency:
    """Achievable fractions for one device (see module docstring for the sources)."""

    matmul: float            # large-GEMM fraction of dense peak in bf16/fp16 (MAMF / peak)
    matmul_fp8: float        # same in fp8
    compute_units: int       # SMs (GPU) or matrix units (TPU) a GEMM's tiles are spread over
    tile: int                # output tile edge of a large GEMM kernel (elements)
    memory: float            # achievable fraction of HBM bandwidth for streaming kernels
    flash_attention: float   # FlashAttention-2/3 fraction of dense peak (fwd+bwd average)
    flash1_attention: float  # FlashAttention-1 / Triton fraction of dense peak
    kernel_floor_s: float    # shortest time any kernel takes (launch + ramp), seconds
    sustained_clock: float = 1.0  # sustained tensor-core clock under the power cap / boost clock
    fp4_over_fp8: float = 0.0     # achievable FP4 GEMM rate / achievable FP8 rate (0: no FP4 units)
    collective_sms: int = 16      # compute units a running NCCL collective occupies (0: none)
    intra_link: float = INTRA_NODE_LINK_EFFICIENCY  # achievable fraction of the node's links
    # Expert GEMMs as one grouped matmul over the experts' rows packed back to back, tiled by
    # this many rows (0: each expert is its own GEMM, tiled by `tile`); `grouped_rows_computed`
    grouped_row_tile: int = 0
    grouped_kernels: int = 1      # grouped matmuls a device runs side by side on its own tokens

    @property
    def overlap_slowdown(self) -> float:
        """Fraction of the compute units an overlapped collective takes from the kernels it
        overlaps: compute that runs beside it goes at 1 - this."""
        return min(1.0, self.collective_sms / self.compute_units)


# Sources:
# - MAMF: S. Bekman, ml-engineering, compute/accelerator/README.md "Maximum Achievable Matmul
#   FLOPS comparison table" (bf16, no sparsity): A100 SXM 267.9/312 = 85.9%, H100 SXM
#   792.1/989 = 80.1%, H100/H200 SXM 794.5/989 = 80.3%, B200 1745/2250 = 77.6%; fp8: H200
#   1453.4/1979 = 73.4%, B200 3432.5/4500 = 76.3% (training/hardware-upgrade guide, same repo).
#   The same table's later revision adds GB200 SXM, measured: bf16 1822.0/2500 = 72.9%, fp8
#   3615.6/5000 = 72.3% (torch 2.10.0.dev20250916+cu130), and H100 SXM fp8 1402.6/1979 = 70.9%
#   (torch 2.7.0+cu126). GB200 used B200's fractions before that (an extrapolation: the same
#   dies at a higher power limit do not reach the same fraction of the higher quoted peak), and
#   H100 fp8 used H200's. The revision also lists A100 SXM bf16 at 271.2/312 = 86.9% with torch
#   2.6; 85.9% (CUDA 12.1) is kept, nearer the 2020-23 software of the A100 validation runs.
# - V100 has no MAMF entry; 0.80 of 125 TFLOP/s (~100 TFLOP/s for large fp16 GEMMs) is the
#   engineering estimate used, in line with cuBLAS fp16 GEMM results of the Volta era.
# - TPU: no public MAMF; 0.85 is an engineering estimate for large XLA matmuls on the MXUs.
# - SM counts: NVIDIA whitepapers (V100 80, A100 108, H100 SXM 132, B200 148 across 2 dies).
#   TPU v3: 2 cores x 2 MXUs = 4; TPU v4: 2 cores x 4 MXUs = 8 (Jouppi et al. 2023 ISCA);
#   TPU v5p: 2 TensorCores x 4 MXUs = 8, v5e: 1 x 4 = 4 (Google Cloud TPU docs, system
#   architecture); v6e: 1 x 2 MXUs of 256x256, so its output tile is 256 (JAX scaling book, TPU
#   chapter: "TPU v6e (Trillium) has a 256x256 MXU, while all previous generations use
#   128x128"). The TPU v5p/v5e/v6e fractions take v3/v4's engineering estimates (no public
#   matmul measurement; MaxText reports 55-71% MFU for whole training steps on v5e/v5p).
#   TPU7x (Ironwood): 2 TensorCores per chip (Google Cloud TPU7x docs); Google publishes no MXU
#   count or size for it, so each TensorCore is taken as v6e's, two 256x256 MXUs: 4 units of
#   256 per chip (an extrapolation: it only sets the wave quantisation of small GEMMs). Its
#   fractions are the other TPUs' engineering estimates, the fp8 one too (no measurement).
# - TPU expert GEMMs: MaxText runs a dropless MoE layer's experts as Megablox grouped matmuls
#   (`megablox` and `sparse_matmul` on by default) over the routed rows sorted by expert, tiled
#   by `tile_batch_seq` = 512 rows (its default, MaxText src/MaxText/configs/types.py
#   MoEKernels; the tpu-recipes set the same 512), and the kernel visits a row tile once for
#   every expert group it holds (JAX's Pallas Megablox gmm, `make_group_metadata`: a grid of
#   tiles_m + num_groups - 1 steps, a boundary tile computed once per group), so each expert
#   costs about one extra tile (`grouped_rows_computed`). The Pallas TPU kernels need TPU v4 or
#   later, so v3 keeps per-expert GEMMs. TPU7x is two JAX devices per chip (tpu7x preset), each
#   running its own grouped matmul over its own tokens: two kernels per chip. The TPU7x recipes
#   run Tokamax's ragged_dot instead (`use_tokamax_gmm=True`), a Pallas kernel with the same
#   group metadata (tokamax/_src/ops/ragged_dot/pallas_mosaic_tpu_kernel.py,
#   `make_group_metadata`), to which MaxText passes no `tile_batch_seq`; the one recipe that
#   states its tiles uses 256 rows (`wi_tile_fwd 256/7168/2048`, DeepSeek-V3 fp8), which is
#   also the MXU's edge: 256 rows for TPU7x.
# - Memory: STREAM-like copies reach ~90% of HBM peak (ml-engineering "memory copy 90.6% of
#   peak" measurement on a Hopper card); elementwise framework kernels do a little worse: 0.85.
# - Flash attention: Dao 2023 (FlashAttention-2, Sec. 4.1, Fig. 4-6, A100, causal, fwd+bwd)
#   measures FlashAttention-2 at ~165-190 TFLOP/s (0.55 of 312) and FlashAttention-1 and its
#   Triton port at ~90-110 TFLOP/s (0.30); Shah et al. 2024 (FlashAttention-3) reaches ~75%
#   of H100 peak forward, less backward: 0.55 (FA2/FA3 mix) on Hopper too.
# - FlashAttention-1 class on Hopper: those kernels (FlashAttention-1 CUDA, the 2022-23 Triton
#   port) are built from Ampere's mma.sync tiles and use neither Hopper's warpgroup MMA nor
#   TMA, so on Hopper they reach what Ampere-style kernels reach there, not their Ampere
#   fraction. Shah et al. 2024 (FlashAttention-3, Sec. 1): FlashAttention-2 "achieves only
#   35% utilization" of H100; FlashAttention-1 runs at 0.30/0.55 of FlashAttention-2's rate
#   (the two A100 fractions above, Dao 2023 Fig. 4-6). So 0.35 x 0.30 / 0.55 = 0.19 on H100
#   and H200 (same SMs). `HOPPER_FLASH1_ATTENTION` below.
#   V100 has no FlashAttention-2 (sm70); its fused kernels (xformers) are taken at 0.45/0.30.
# - Blackwell (B200/GB200), FlashAttention-2/3 class = cuDNN's fused attention, which
#   Megatron-Core/Transformer Engine run there: Zadouri et al. 2026 (FlashAttention-4, arXiv
#   2603.05451) measure their forward at 1613 TFLOP/s (71% of the B200 bf16 peak), 1.3x
#   cuDNN 9.13, so cuDNN's forward reaches about 1613 / 1.3 / 2250 = 0.55; the same paper finds
#   the backward bound by shared-memory traffic, so the forward + backward fraction is taken a
#   little lower, 0.5 (an engineering estimate below the measured forward). The FlashAttention-1
#   class has no Blackwell measurement; no run in the validation data uses it there (0.30 as
#   on A100, unverified).
# - Sustained clock: peak FLOP/s are quoted at the boost clock (A100: 1410 MHz), but under
#   sustained tensor-core load at the 400 W cap the A100 holds ~1305 MHz, the clock NVIDIA
#   uses for A100 HPL Rpeak (G. Lockwood, "Peak FLOPS" notes): 1305/1410 = 0.926. MAMF
#   shapes run for milliseconds and are measured before that throttling settles in. No
#   comparable published figure for the other devices: 1.0 there.
# - Blackwell Ultra: the same table measures B300 SXM at bf16 1769.0/2250 = 78.6% and fp8
#   3353.3/4500 = 74.5% (torch 2.9.1+cu130). GB300 has no MAMF entry; it quotes the same peaks
#   as GB200 (2.5/5 PF) at a higher power limit, so GB200's measured fractions are taken (an
#   extrapolation, as GB200 once took B200's). SMs: "160 Streaming Multiprocessors across two
#   dies" (NVIDIA technical blog, "Inside NVIDIA Blackwell Ultra", 2025; the count of the full
#   implementation: NVIDIA publishes no separate enabled count). Blackwell Ultra doubles the SFU
#   exponential rate for attention (same blog); no fused-attention measurement on it was found,
#   so B200's 0.5 is kept (likely low for the softmax-bound forward).
# - Kernel floor: CUDA kernel launch plus ramp-up is a few microseconds (ml-engineering
#   measurement: "one operation issued from Python 4.2 us", 1.3 us inside a CUDA graph): 4e-6.
# - Collective SMs: NCCL runs each channel of a collective as one CUDA block on one SM, so a
#   collective overlapped with compute takes those SMs from it (NCCL docs, NCCL_MAX_NCHANNELS:
#   "reducing the number of channels also reduces the number of CUDA blocks used for
#   communication, hence the impact on GPU computing resources"; PyTorch's "low-contention
#   collectives" note, pytorch/pytorch PR 130583: NCCL "reserve[s] SM resources based on the
#   most demanding portion of the collective"). NCCL opens 2 channels per network peer by
#   default (NCCL_NCHANNELS_PER_NET_PEER), 16 for the 8 NICs of a DGX node; 16 is taken for
#   every GPU (an engineering estimate: NVLink-only groups may open more). TPUs move
#   collectives with ICI DMA engines, not the matrix units: 0.
# - AMD Instinct (CDNA 3/4). MAMF, same ml-engineering table (bf16, PYTORCH_TUNABLEOP):
#   MI300X 668.4 TFLOP/s (torch 2.5.1, ROCm 6.3), MI325X 784.9 (torch 2.6.0, ROCm 6.2.4,
#   1000 W), MI355X 1565.0 (torch 2.8.0, ROCm 7.0.2). Divided by the peaks of the device files
#   (1307.4, 1307.4, 2516.6): 0.511, 0.600, 0.622. The table has no AMD fp8 entry; the one fp8
#   measurement found is hipBLASLt on Azure ND MI300X v5, 1159.2 TFLOP/s at 8192^3 (Azure
#   AI-benchmarking-guide, Azure_Results/ND_MI300X_v5_results.md): 1159.2 / 2614.9 = 0.443,
#   0.87 of the bf16 fraction. MI325X and MI355X take that same 0.87 of their measured bf16
#   fraction (an extrapolation: the same hipBLASLt kernels, the power limit scaling both).
#   Memory: the same Azure page measures a 4.11 TB/s copy on MI300X, 0.775 of 5.3 TB/s; taken
#   for all three (an extrapolation to HBM3E). FlashAttention-2 on MI300X: 328.6 TFLOP/s at
#   head dim 64, batch 2, sequence 8192 (same Azure page; read as the forward + backward
#   rate), 0.251 of peak at head dim 64, 0.27 at the reference head dim 128 (head_dim_factor
#   on MI300X: 1.07); no measurement for MI325X/MI355X, which take it (likely low for the
#   CDNA 4 kernels). There is no FlashAttention-1 CUDA kernel on ROCm; the Triton class takes
#   the same fraction. Compute units: 304, 304, 256 (ROCm 'GPU specifications' table).
#   Intra-node links: RCCL all-reduce on an 8-GPU MI300X node reaches a bus bandwidth of
#   318.98 GB/s (16 GiB messages; AMD ROCm blog 'RCCL and xGMI on MI300X', RCCL 2.22.3) and
#   316.8 GB/s (8 GB; the Azure page) of the 448 GB/s of seven links: 0.71, taken for the
#   MI325X and MI355X meshes too (AMD's acceptance threshold for both is 304 GB/s, 0.68 of
#   448). Tile 128, kernel floor and RCCL's 16 compute units: the NVIDIA values (engineering
#   estimates; no ROCm figure was sourced).
# - AMD Instinct MI250X, one GCD (CDNA 2; the device is a GCD, as software sees it). MAMF, the
#   same ml-engineering table's first version: "AMD MI250X | 147.0 | 191.5 | 76.7% |
#   1024x19968x14080 | ROCm-6.2 / 1 GCD" (bf16): 0.767, measured with the package's other GCD
#   idle (ml-engineering issue 76, where another user reaches 127 TFLOP/s, 0.66, on one GCD;
#   the table's figure is kept). CDNA 2 has no fp8 units, so its fp8
#   fraction is the bf16 one (fp8 runs at the bf16 rate, with a warning). 110 CUs per GCD
#   (OLCF Frontier user guide). No HBM, RCCL or FlashAttention measurement on MI250X was found:
#   the MI300X's measured fractions above are taken (0.775 of HBM, 0.71 of the links, 0.27 for
#   ROCm's CK FlashAttention-2, which supports MI200 and MI300): an extrapolation to CDNA 2.
FA2_HOPPER_UTILISATION = 0.35
"""FlashAttention-2's fraction of H100 dense peak (Shah et al. 2024, FlashAttention-3, Sec. 1)."""
HOPPER_FLASH1_ATTENTION = FA2_HOPPER_UTILISATION * 0.30 / 0.55
"""FlashAttention-1 class on Hopper: FA2's Hopper utilisation x FA1's rate relative to FA2 on
A100 (0.30 / 0.55, the A100 fractions of Dao 2023): 0.19 (source note above)."""

AMD_FP8_TO_BF16 = (1159.2 / 2614.9) / (668.4 / 1307.4)
"""MI300X's measured fp8 fraction over its measured bf16 fraction (0.87; source note above),
carried to the AMD devices with no fp8 measurement."""

# - Export parts (H800, A800): the same GH100 / GA100 dies at the same clocks and power as the
#   H100 SXM5 and A100 SXM4 80GB, with NVLink cut to 400 GB/s (their datasheets list the same
#   tensor, memory and TDP figures); no MAMF measurement of them was found, so they take the
#   H100 / A100 fractions. The link cut is in their cluster files (hgx-h800, hgx-a800).
# - Blackwell at training shapes. MAMF is the best of a sweep over shapes; on Blackwell the GEMMs
#   a training step runs, through Transformer Engine, reach well below it. TE's GEMM profiling
#   tutorial (NVIDIA/TransformerEngine docs/examples/gemm_profiling/gemm_profiling.rst at
#   8f2e6357, and its later copy docs/features/low_precision_training/gemm_profiling/ at
#   ce616e1f) times the 12 GEMMs of one layer (hidden 4096, FFN 16384, M = 15,872 tokens:
#   QKV 15872x4096x12288, output 15872x4096x4096, MLP up 15872x4096x16384, down
#   15872x16384x4096, each as forward, data- and weight-gradient GEMM) on an "NVIDIA B300 SXM6
#   AC" with pre-quantised inputs (kernel time only), per-layer totals BF16 13.102 / 12.835 ms,
#   MXFP8 7.161 / 7.324 ms, NVFP4 3.764 / 3.754 ms in the two revisions. Over the 1.917e13
#   FLOPs of those GEMMs that is 1.48, 2.65 and 5.10 PFLOP/s: 0.657 of the bf16 peak and 0.588
#   of the fp8 peak, against B300's MAMF 0.786 and 0.745, so 0.836 and 0.790 of MAMF at
#   training shapes (`TRAINING_SHAPE_BF16`, `TRAINING_SHAPE_FP8`). PyTorch's own sweep on a B200
#   (pytorch/ao PR 2427, benchmarks/float8/bench_matmul.py, torch bf16 matmul) agrees: 0.627,
#   0.646 and 0.631 of the bf16 peak at 4096^3, 6144^3 and 8192^3, against 0.776 x 0.836 =
#   0.649 here. Every Blackwell device (B200, GB200, B300, GB300) takes its MAMF times those
#   two factors; Hopper and Ampere keep MAMF (no measurement of the training library's GEMMs
#   at training shapes on H100 SXM or A100 was found).
# - FP4 (NVFP4) GEMMs: the same tutorial's NVFP4 over MXFP8 kernel rate, 5.10 / 2.65 = 1.93
#   (`FP4_OVER_FP8`), is taken on every Blackwell device over its fp8 rate: B200 4.5 PF x
#   0.763 x 0.790 x 1.93 = 5.2 PFLOP/s, where pytorch/ao's sweep measures NVFP4 _scaled_mm on
#   a B200 at 5.50 and 5.37 PFLOP/s (6144^3, 8192^3). Devices without FP4 tensor cores: 0.
_TE_B300_LAYER_FLOPS = 3 * 2 * 15872 * 4096 * (12288 + 4096 + 16384 + 16384)
"""FLOPs of the tutorial's 12 GEMMs of one layer (forward, data and weight gradient)."""
_TE_B300_LAYER_MS = {"bf16": (13.102, 12.835), "mxfp8": (7.161, 7.324), "nvfp4": (3.764, 3.754)}
"""The tutorial's pre-quantised per-layer GEMM totals on B300, ms, in its two revisions."""


def _te_b300_rate(fmt: str) -> float:
    """Mean FLOP/s of the tutorial's per-layer GEMMs on B300 in format `fmt`."""
    times = _TE_B300_LAYER_MS[fmt]
    return sum(_TE_B300_LAYER_FLOPS / (ms * 1e-3) for ms in times) / len(times)


TRAINING_SHAPE_BF16 = (_te_b300_rate("bf16") / 2.25e15) / (1769.0 / 2250)
"""Blackwell: bf16 GEMM rate at training shapes over MAMF (B300: 0.657 / 0.786 = 0.836)."""
TRAINING_SHAPE_FP8 = (_te_b300_rate("mxfp8") / 4.5e15) / (3353.3 / 4500)
"""Blackwell: MXFP8 GEMM rate at training shapes over MAMF (B300: 0.588 / 0.745 = 0.790)."""
FP4_OVER_FP8 = _te_b300_rate("nvfp4") / _te_b300_rate("mxfp8")
"""Blackwell: NVFP4 over MXFP8 GEMM kernel rate at the same shapes (B300: 1.93)."""


def _blackwell(bf16_mamf: float, fp8_mamf: float, sms: int) -> DeviceEfficiency:
    """A Blackwell device's fractions from its MAMF (source notes above)."""
    return DeviceEfficiency(bf16_mamf * TRAINING_SHAPE_BF16, fp8_mamf * TRAINING_SHAPE_FP8, sms,
                            128, 0.85, 0.5, 0.30, 4e-6, fp4_over_fp8=FP4_OVER_FP8)


MEGABLOX_ROW_TILE = 512
"""Rows per tile of MaxText's Megablox grouped matmul (`tile_batch_seq`, default 512: MaxText
src/MaxText/configs/types.py MoEKernels; see the TPU expert GEMM note above)."""
TOKAMAX_ROW_TILE_TPU7X = 256
"""Rows per tile of the TPU7x recipes' Tokamax grouped matmul (the TPU expert GEMM note above)."""

_BY_NAME: dict[str, DeviceEfficiency] = {
    "v100": DeviceEfficiency(0.80, 0.80, 80, 128, 0.85, 0.45, 0.30, 4e-6),
    "a100": DeviceEfficiency(0.859, 0.859, 108, 128, 0.85, 0.55, 0.30, 4e-6, 1305 / 1410),
    "h100": DeviceEfficiency(0.801, 0.709, 132, 128, 0.85, 0.55, HOPPER_FLASH1_ATTENTION, 4e-6),
    "h200": DeviceEfficiency(0.803, 0.734, 132, 128, 0.85, 0.55, HOPPER_FLASH1_ATTENTION, 4e-6),
    # the export parts: H100 / A100 silicon and clocks with less NVLink (source note above)
    "h800": DeviceEfficiency(0.801, 0.709, 132, 128, 0.85, 0.55, HOPPER_FLASH1_ATTENTION, 4e-6),
    "a800": DeviceEfficiency(0.859, 0.859, 108, 128, 0.85, 0.55, 0.30, 4e-6, 1305 / 1410),
    "b200": _blackwell(1745 / 2250, 3432.5 / 4500, 148),
    "gb200": _blackwell(1822.0 / 2500, 3615.6 / 5000, 148),
    "b300": _blackwell(1769.0 / 2250, 3353.3 / 4500, 160),
    "gb300": _blackwell(1822.0 / 2500, 3615.6 / 5000, 160),
    "mi250x": DeviceEfficiency(147.0 / 191.5, 147.0 / 191.5, 110, 128, 0.775, 0.27, 0.27, 4e-6,
                               intra_link=0.71),
    "mi300x": DeviceEfficiency(668.4 / 1307.4, 1159.2 / 2614.9, 304, 128, 0.775, 0.27, 0.27,
                               4e-6, intra_link=0.71),
    "mi325x": DeviceEfficiency(784.9 / 1307.4, 784.9 / 1307.4 * AMD_FP8_TO_BF16, 304, 128,
                               0.775, 0.27, 0.27, 4e-6, intra_link=0.71),
    "mi355x": DeviceEfficiency(1565.0 / 2516.6, 1565.0 / 2516.6 * AMD_FP8_TO_BF16, 256, 128,
                               0.775, 0.27, 0.27, 4e-6, intra_link=0.71),
    "tpu-v3": DeviceEfficiency(0.85, 0.85, 4, 128, 0.85, 0.5, 0.5, 4e-6, collective_sms=0),
    "tpu-v4": DeviceEfficiency(0.85, 0.85, 8, 128, 0.85, 0.5, 0.5, 4e-6, collective_sms=0,
                               grouped_row_tile=MEGABLOX_ROW_TILE),
    "tpu-v5p": DeviceEfficiency(0.85, 0.85, 8, 128, 0.85, 0.5, 0.5, 4e-6, collective_sms=0,
                                grouped_row_tile=MEGABLOX_ROW_TILE),
    "tpu-v5e": DeviceEfficiency(0.85, 0.85, 4, 128, 0.85, 0.5, 0.5, 4e-6, collective_sms=0,
                                grouped_row_tile=MEGABLOX_ROW_TILE),
    "tpu-v6e": DeviceEfficiency(0.85, 0.85, 2, 256, 0.85, 0.5, 0.5, 4e-6, collective_sms=0,
                                grouped_row_tile=MEGABLOX_ROW_TILE),
    "tpu7x": DeviceEfficiency(0.85, 0.85, 4, 256, 0.85, 0.5, 0.5, 4e-6, collective_sms=0,
                              grouped_row_tile=TOKAMAX_ROW_TILE_TPU7X, grouped_kernels=2),
}
_DEFAULT = DeviceEfficiency(0.75, 0.70, 100, 128, 0.8, 0.45, 0.30, 5e-6)
"""Used for a user device whose name matches none above (stated in the estimate's warnings)."""


def precision_warning(device: DeviceSpec, dtype: DType, *, training: bool = True) -> str | None:
    """A warning when the device has no units of the requested precision and the estimate
    runs its math at a fallback rate (DeviceSpec.peak_flops), else None. Serving fp8 there is
    weight-only FP8 (fp8 weights, bf16 math), which is what the estimate then scores; training
    fp8 is not."""
    fallback = device.fallback_dtype(dtype)
    if fallback is None:
        return None
    text = (f"device '{device.name}' has no {dtype.value} tensor-core rate: {dtype.value} math "
            f"is scored at its {fallback.value} rate")
    if dtype.quantised and not training:
        text += f" with {dtype.value} weights (weight-only {dtype.value.upper()})"
    elif dtype == DType.FP4:
        # Transformer Engine's NVFP4BlockScaling runs on Blackwell's FP4 tensor cores only
        text += (", with the casts on top, and Transformer Engine's NVFP4 recipe needs Blackwell "
                 "(B200, GB200, B300, GB300): use --dtype fp8 or bf16 on this device")
    elif dtype == DType.FP8:
        # the casts and fp8 copies are then pure overhead, and the software refuses it:
        # Transformer Engine's FP8 needs compute capability 8.9 (Ada) or 9.0+ (Hopper)
        # (its ROCm build: AMD's CDNA 3, MI300-series, or later: the first with fp8 units)
        needs = ("an AMD MI300-series GPU or later" if device.name.lower().startswith("mi")
                 else "Ada, Hopper or later")
        text += (f", with the fp8 casts on top, and Transformer Engine's FP8 needs {needs}: "
                 "use --dtype bf16 on this device")
    return text


def device_efficiency(device: DeviceSpec) -> tuple[DeviceEfficiency, bool]:
    """The efficiency data for a device, and whether it is the generic default."""
    key = _entry_of(device.name.lower())
    return (_DEFAULT, True) if key is None else (_BY_NAME[key], False)


@functools.cache
def _entry_of(name: str) -> str | None:
    """The `_BY_NAME` key a device name falls under (the longest matching prefix), or None;
    cached, as the cost model asks once per collective."""
    for key in sorted(_BY_NAME, key=len, reverse=True):
        if name.startswith(key) or name.replace("-sxm", "").startswith(key):
            return key
    return None


MAMF_DEPTH = 2048
"""Reduction depth K of the MAMF best shapes (A100 6912x16384x2048, H100 6144x17920x2816)."""
TILE_OVERHEAD_DEPTH = 128
"""Per output tile, filling the multi-stage load pipeline and writing the tile back cost
about as much as 128 elements of K (3-4 stages of 32-deep slices in CUTLASS's Ampere/Hopper
mainloops, plus the epilogue): a GEMM of depth K runs at K / (K + 128) of its asymptote."""


def shape_efficiency(eff: DeviceEfficiency, base: float, m: float, n: float, k: float, *,
                     m_sd: float = 0.0) -> float:
    """Fraction of peak for an m x n x k GEMM whose large-GEMM fraction at the sustained clock
    is `base` (compute.Roofline.efficiency): `base` times the wave quantisation of
    ceil(m/tile)*ceil(n/tile) output tiles over the compute units (a partly filled last wave
    runs as long as a full one), times their tile quantisation (a partly filled tile computes
    as much as a full one, so the m x n outputs cost ceil(m/tile) ceil(n/tile) tile^2 of work:
    `fill`, `tile_fill`: only a dimension longer than one tile), times the depth factor
    relative to the MAMF shape (never above 1: MAMF is the ceiling). Both quantisations:
    NVIDIA, "Matrix Multiplication Background User's Guide" (DU-09799-001, 2023), Sec. 3.1
    (tile) and 3.2 (wave). Dimensions may be fractional (an expert's expected tokens); any
    positive dimension occupies whole tiles.

    `m_sd` > 0 makes the row count random with mean m and that standard deviation (an
    expert's rows under random routing): the row tiles are then their expectation
    E[ceil(X / tile)] (`expected_tiles`), so a mean that happens to be a tile multiple still
    pays the padding the rows' spread brings (about half a tile per GEMM once the spread
    exceeds a tile)."""
    if m <= eff.tile:           # one row tile, and no fill cost (tile_fill)
        row_tiles, rows = float(math.ceil(m / eff.tile)), 1.0
    else:
        row_tiles = expected_tiles(m, m_sd, eff.tile)
        rows = m / (row_tiles * eff.tile)
    tiles = row_tiles * math.ceil(n / eff.tile)
    waves = math.ceil(tiles / eff.compute_units - 1e-9)
    depth = min(1.0, (k / (k + TILE_OVERHEAD_DEPTH))
                / (MAMF_DEPTH / (MAMF_DEPTH + TILE_OVERHEAD_DEPTH)))
    fill = rows * tile_fill(n, eff.tile)
    return base * tiles / (waves * eff.compute_units) * depth * fill


def grouped_rows_computed(mean: float, tile: int, kernels: int = 1) -> float:
    """Rows a grouped matmul computes for one expert's `mean` routed rows, split over `kernels`
    kernels (each over its own tokens, so mean/kernels rows apiece), when the experts' rows
    are packed back to back and the kernel computes a whole `tile`-row tile for every group it
    touches (Megablox: a tile holding two groups' rows is visited twice). A group of n >= 1
    rows starting at a uniformly random offset within a tile touches (n + tile - 1) / tile
    tiles on average: it crosses a boundary at (n - 1)/tile of the offsets more than at the
    rest. Averaged over the count, (mean_i + (tile - 1) P(n_i >= 1)) / tile tiles, with
    P(n_i >= 1) = 1 - exp(-mean_i) (a Poisson count: an empty group costs nothing). Packing
    the groups end to end makes their offsets uniform once the rows' spread passes a tile."""
    if mean <= 0:
        return 0.0
    per = mean / kernels
    return mean + kernels * (tile - 1) * -math.expm1(-per)


@functools.lru_cache(maxsize=65536)
def expected_tiles(mean: float, sd: float, tile: int) -> float:
    """E[ceil(X / tile)] for a row count X of this mean and standard deviation, taken as
    normal (a binomial count of many routed tokens): sum over j >= 0 of P(X > j * tile)
    (the tail-sum formula for the expectation of a nonnegative integer). sd = 0 gives
    ceil(mean / tile) exactly; the normal tail sums are truncated 8 sd from the mean, where
    each term is 1 or 0 to double precision."""
    if mean <= 0:
        return 0.0
    if sd <= 0:
        return float(math.ceil(mean / tile))
    if sd >= 2 * tile and mean >= 8 * sd:
        # X / tile's fractional part is uniform to within exp(-2 pi^2 (sd/tile)^2) < 1e-34
        # (the Fourier series of a normal mod 1), so E[ceil] = mean/tile + 1/2
        return mean / tile + 0.5
    lo = max(0, math.floor((mean - 8 * sd) / tile))
    hi = math.ceil((mean + 8 * sd) / tile)
    # P(X > j tile) = 1 for every j below lo (j = 0 .. lo - 1)
    return lo + sum(0.5 * math.erfc((j * tile - mean) / (sd * math.sqrt(2)))
                    for j in range(lo, hi + 1))


def tile_fill(dim: float, tile: int) -> float:
    """Share of the output tiles along one GEMM dimension that holds real rows: dim over
    ceil(dim / tile) tiles of `tile` (tile quantization, `shape_efficiency`). A dimension of one
    tile or less pays nothing: the libraries choose a smaller tile for it (the guide's Sec. 2.3
    lists cuBLAS tiles down to 64), and a decode step's few rows run as matrix-vector kernels
    (or with the token dimension swapped onto the short side), not as a padded 128-row tile."""
    if dim <= tile:
        return 1.0
    return dim / (math.ceil(dim / tile) * tile)


def matmul_rate(device: DeviceSpec, eff: DeviceEfficiency, dtype: DType) -> tuple[float, float]:
    """(peak FLOP/s, large-GEMM fraction of it) of `dtype` GEMMs on `device`. FP4 on a device
    with FP4 tensor cores runs at its FP8 rate times `fp4_over_fp8` (measured kernel ratio),
    expressed as a fraction of its FP4 peak (a device file with an fp4 peak but no measured
    ratio takes its fp8 fraction); a device without them runs FP4 at the rate of the 16-bit
    dtype it falls back to (DeviceSpec.fallback_dtype), with that dtype's fraction."""
    peak = device.peak_flops(dtype)
    if dtype == DType.FP4:
        has_fp4 = device.fallback_dtype(dtype) is None
        if has_fp4 and eff.fp4_over_fp8 > 0:
            fp8_rate = device.peak_flops(DType.FP8) * eff.matmul_fp8
            return peak, fp8_rate * eff.fp4_over_fp8 / peak
        return peak, eff.matmul_fp8 if has_fp4 else eff.matmul
    return peak, eff.matmul_fp8 if dtype == DType.FP8 else eff.matmul
