"""What the hardware is: `DeviceSpec`, `LinkSpec`, `ClusterSpec`.

Decides: the datasheet numbers a cost model may use, with their scope (per device, per
direction) in every field name or description. Does not decide how well software reaches
them; achievable fractions are the cost model's data (`cost_models/efficiency.py`).
The number of nodes is not part of a cluster: each command chooses it (`--gpus`/`--nodes`).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from planner.errors import SpecError
from planner.model import DType, Spec


MAX_DEVICES = 10_000_000
"""The most devices a command takes (`--gpus`, `--nodes` x node size, and min-devices' scan).
A tool limit, not hardware: 100x the ~100,000-device scale the search is measured at
(benchmarks/results/search_scaling.md: 98,304 H100 in seconds). Far above it, searches that
grow with the device count (min-devices' node-by-node scan, capacity's walk along a family)
run for hours instead of answering."""


class Topology(StrEnum):
    """How the devices a link joins are wired."""

    SWITCHED = "switched"   # full bisection through a switch (NVSwitch, fat-tree InfiniBand)
    RING = "ring"
    TORUS_2D = "torus2d"
    TORUS_3D = "torus3d"
    FULL_MESH = "full_mesh"  # a direct link between every pair (AMD Infinity Fabric, 8-GPU OAM)


class DeviceSpec(Spec):
    """One accelerator, as its datasheet states it (dense math, no sparsity)."""

    name: str = Field(description="preset name (the file stem)")
    description: str = Field("", description="one line: what this device is")
    source: str = Field("", description="datasheet or paper the numbers come from")
    peak_flops_per_s: dict[DType, PositiveFloat] = Field(
        description="dense peak FLOP/s per math dtype (no structured sparsity)"
    )
    memory_bytes: PositiveInt = Field(description="device memory capacity in bytes")
    memory_bandwidth_bytes_per_s: PositiveFloat = Field(description="device memory bandwidth")
    onchip_cache_bytes: PositiveInt | None = Field(
        None, description="last-level on-chip cache (GPU L2, TPU CMEM/VMEM) in bytes; optional "
        "(leave it out when no source gives it: `meshplan cache-fit` then asks for it)"
    )
    onchip_cache_bandwidth_bytes_per_s: PositiveFloat | None = Field(
        None, description="peak read bandwidth of that cache, whole chip, in bytes/s; optional "
        "(leave it out when no source gives it: `meshplan cache-fit` then asks for it)"
    )
    power_w: PositiveFloat | None = Field(
        None, description="board power (TDP) in watts; optional (leave it out when the vendor "
        "publishes none, as Google does for TPU v5p/v5e/v6e); only shown, never used in a score")

    def peak_flops(self, dtype: DType) -> float:
        """Peak FLOP/s for `dtype`; fp8 falls back to bf16 and tf32 to fp32 where the device
        has no such unit (e.g. V100 has no bf16/tf32: fp16 tensor cores serve bf16 requests)."""
        rate = dtype if dtype in self.peak_flops_per_s else self.fallback_dtype(dtype)
        if rate is not None:
            return self.peak_flops_per_s[rate]
        raise SpecError(
            f"device '{self.name}' lists no peak FLOP/s for {dtype.value} or a fallback; "
            f"add peak_flops_per_s.{dtype.value} to its file"
        )

    def fallback_dtype(self, dtype: DType) -> DType | None:
        """The dtype whose peak `peak_flops(dtype)` takes when the device lists none for
        `dtype` (fp8 on an A100: bf16), or None when it has its own."""
        if dtype in self.peak_flops_per_s:
            return None
        return next((d for d in _FALLBACK.get(dtype, ()) if d in self.peak_flops_per_s), None)


_FALLBACK: dict[DType, tuple[DType, ...]] = {
    DType.FP4: (DType.BF16, DType.FP16),
    DType.FP8: (DType.BF16, DType.FP16),
    DType.BF16: (DType.FP16,),
    DType.FP16: (DType.BF16,),
    DType.TF32: (DType.FP32,),
}


class LinkSpec(Spec):
    """A class of links between devices (NVLink/NVSwitch, InfiniBand, TPU ICI)."""

    name: str = Field(description="what the link is, e.g. 'NVLink4 via NVSwitch'")
    bandwidth_bytes_per_s: PositiveFloat = Field(
        description="bandwidth per device, per direction, in bytes/s; on a full_mesh, per "
        "link (to one peer), per direction"
    )
    latency_s: float = Field(ge=0, description="one-message start-up latency in seconds")
    topology: Topology = Field(Topology.SWITCHED, description="how the link's devices are wired")
    torus_dims: tuple[PositiveInt, ...] | None = Field(
        None, description="torus shape in devices (e.g. [16, 16, 16]); only for torus topologies"
    )
    pair_bandwidth_bytes_per_s: PositiveFloat | None = Field(
        None, description="per-direction bytes/s between the two dies of one package, devices "
        "2i and 2i+1 of a node (the two GCDs of an AMD MI250X), where that is faster than "
        "`bandwidth_bytes_per_s`; a group of exactly such a pair uses it, every other group the "
        "link's own figure; optional (no such pairs)")

    @model_validator(mode="after")
    def _torus(self) -> LinkSpec:
        want = {Topology.TORUS_2D: 2, Topology.TORUS_3D: 3}.get(self.topology)
        if want is not None and self.torus_dims is not None and len(self.torus_dims) != want:
            raise SpecError(
                f"link '{self.name}': a {self.topology.value} needs {want} torus_dims, "
                f"got {len(self.torus_dims)}"
            )
        return self

    @model_validator(mode="after")
    def _pair(self) -> LinkSpec:
        pair = self.pair_bandwidth_bytes_per_s
        if pair is not None and pair < self.bandwidth_bytes_per_s:
            raise SpecError(
                f"link '{self.name}': pair_bandwidth_bytes_per_s ({pair:g}) is below "
                f"bandwidth_bytes_per_s ({self.bandwidth_bytes_per_s:g}); it is the faster "
                "in-package link: leave it out where a package has no faster link")
        return self

    def group_bandwidth(self, members: int, *, pair: bool = False) -> float:
        """Per-direction bytes/s one device can drive toward the other `members - 1` members
        of its group over this link class. Through a switch (and over a ring or torus, whose
        figure is already the device's total) that is the device's whole bandwidth, whatever
        the group; on a full mesh each peer has its own link and a group uses only the links
        among its members, so members - 1 of them: an 8-GPU AMD Instinct platform gives a pair
        of GPUs one 64 GB/s Infinity Fabric link and all eight GPUs 7 x 64 = 448 GB/s each
        (AMD ROCm blog, "RCCL and xGMI on MI300X": "Aggregated unidirectional bandwidth per
        GPU 448 GB/s (7x64 GB/s)"). A package of two dies (`pair_bandwidth_bytes_per_s`) gives
        a group that is exactly its two devices (`pair`) the in-package link instead."""
        if pair and members == 2 and self.pair_bandwidth_bytes_per_s is not None:
            # `pair`: the group is devices 2i and 2i+1, the two dies of one package
            return self.pair_bandwidth_bytes_per_s
        if self.topology == Topology.FULL_MESH:
            return self.bandwidth_bytes_per_s * max(1, members - 1)
        return self.bandwidth_bytes_per_s


class ClusterSpec(Spec):
    """A kind of cluster: one device type, nodes of a fixed size, two link classes.

    A "node" is the fast domain: devices joined by `intra_node` (a DGX box, an NVL72 rack, or a
    TPU pod slice on one ICI torus). Nodes are joined by `inter_node`.
    """

    name: str = Field(description="preset name (the file stem)")
    description: str = Field("", description="one line: what this cluster is")
    source: str = Field("", description="where the system numbers come from")
    device: DeviceSpec = Field(description="the accelerator (a device preset name in files)")
    devices_per_node: PositiveInt = Field(description="devices in one fast (intra-node) domain")
    intra_node: LinkSpec = Field(description="links among the devices of one node")
    inter_node: LinkSpec = Field(description="links between nodes, per device")
    max_nodes: PositiveInt | None = Field(None, description="largest buildable system, if any")
    host_bandwidth_bytes_per_s: PositiveFloat | None = Field(
        None, description=("per-direction bytes/s between one device and its host's memory "
                           "(PCIe, NVLink-C2C): what activation offloading (plan key offload) "
                           "moves over; optional (leave it out when no source gives it: plans "
                           "with offload are then refused)"))
    allocation_devices: PositiveInt | None = Field(
        None, description=("smallest group of devices a job can be given when it is smaller than "
                           "the fast domain allows (e.g. a 4-GPU compute tray of an NVL72 rack); "
                           "default: a whole node"))

    @model_validator(mode="after")
    def _allocation(self) -> ClusterSpec:
        a = self.allocation_devices
        if a is not None and (a > self.devices_per_node or self.devices_per_node % a):
            raise SpecError(f"cluster '{self.name}': allocation_devices={a} must divide "
                            f"devices_per_node={self.devices_per_node}")
        return self

    @property
    def allocation_unit(self) -> int:
        """Devices per allocatable unit (a node unless `allocation_devices` says otherwise)."""
        return self.allocation_devices or self.devices_per_node

    def job_view(self, devices: int) -> ClusterSpec:
        """The cluster as a job of `devices` sees it: when the job is not a whole number of
        fast domains (only possible with `allocation_devices`), it is spread evenly over the
        fewest domains, whole allocation units in each (256 GPUs on NVL72 racks: 4 racks of 64,
        as NVIDIA's GB200 benchmarks run), so its fast domain is that share; a job smaller than
        one domain lives inside one, so every group of it is intra-node. Otherwise self."""
        if devices == self.devices_per_node:
            return self
        if devices < self.devices_per_node:   # a job inside one domain: all of it is fast
            return self.model_copy(update={"devices_per_node": devices})
        share = self._domain_share(devices)
        if share is None:
            # start from whole allocation units around the request: a count that is not one
            # never becomes one by adding units (12 GPUs on 8-GPU nodes stays 4 mod 8)
            unit = self.allocation_unit
            lo, hi = devices // unit * unit, -(-devices // unit) * unit
            while lo > unit and self._domain_share(lo) is None:
                lo -= unit
            while self._domain_share(hi) is None:
                hi += unit
            raise SpecError(
                f"{devices} devices do not spread evenly over the fewest "
                f"{self.devices_per_node}-device domains of '{self.name}' in whole {unit}-device "
                f"units; use {lo} or {hi}")
        return self if share == self.devices_per_node else self.model_copy(
            update={"devices_per_node": share})

    def _domain_share(self, devices: int) -> int | None:
        """Devices per fast domain of a job of `devices`, or None when it cannot be even."""
        per = self.devices_per_node
        if devices <= per or devices % per == 0:
            return per if devices % per == 0 else devices
        domains = -(-devices // per)
        share, rest = divmod(devices, domains)
        return None if rest or share % self.allocation_unit else share

    def check_devices(self, n: int, *, label: str | None = None) -> None:
        """Raise SpecError when a job of `n` devices cannot be allocated: more than one unit
        but not a whole number of allocation units, or not spread evenly over the fewest fast
        domains (`job_view`). `label` names the count in the message (default "N GPUs")."""
        unit = self.allocation_unit
        if n > unit and n % unit:
            lo = n // unit * unit
            what = "nodes" if unit == self.devices_per_node else "allocation units"
            raise SpecError(
                f"{label or f'{n} GPUs'} is not a whole number of {unit}-device {what} "
                f"of '{self.name}'; use {lo} or {lo + unit}"
            )
        self.job_view(n)

    def devices_for(self, *, gpus: int | None = None, nodes: int | None = None) -> int:
        """Device count for a command's `--gpus N` or `--nodes N` (exactly one of them)."""
        if (gpus is None) == (nodes is None):
            raise SpecError("give exactly one of --gpus N or --nodes N")
        if nodes is not None:
            if nodes < 1:
                raise SpecError(f"--nodes must be at least 1, got {nodes}")
            n = nodes * self.devices_per_node
        else:
            assert gpus is not None
            if gpus < 1:
                raise SpecError(f"--gpus must be at least 1, got {gpus}")
            n = gpus
        if n > MAX_DEVICES:
            asked = f"--nodes {nodes} ({n:,} devices)" if nodes is not None else f"--gpus {n:,}"
            raise SpecError(f"{asked} is more than the {MAX_DEVICES:,} devices meshplan plans "
                            "for; use fewer")
        if gpus is not None:
            self.check_devices(n, label=f"--gpus {n}")
        if self.max_nodes is not None and n > self.max_nodes * self.devices_per_node:
            raise SpecError(
                f"'{self.name}' has at most {self.max_nodes * self.devices_per_node} devices; "
                f"asked for {n}"
            )
        return n
