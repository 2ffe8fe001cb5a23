"""The EC2 instance types a compute node group may name, with their vCPUs, memory, GPUs and processor
architecture. Pure: no I/O.

The figures are EC2's published specifications, as the instance type pages of the Amazon EC2 User Guide
(https://docs.aws.amazon.com/ec2/latest/instancetypes/) and `aws ec2 describe-instance-types` give them:
vCPUs is VCpuInfo.DefaultVCpus, memory is MemoryInfo.SizeInMiB (EC2's "GiB" times 1024), the GPUs are
GpuInfo's count and model, and the architecture is ProcessorInfo.SupportedArchitectures. The catalog holds
every size, metal included, of the families below; an instance type that is not in it is refused by the API
rather than guessed at, so a family is added here, with its figures checked against EC2's, before node groups
can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ARCHITECTURES = ("x86_64", "arm64")  # EC2's names; arm64 is Graviton


@dataclass(frozen=True)
class InstanceType:
    name: str  # "c6i.xlarge"
    vcpus: int
    memory_mib: int  # EC2's memory in MiB: 8 GiB is 8192
    gpus: int  # 0 if none
    # Lowercase Slurm GRES type ("a10g", "l4", "a100", "h100"). None without GPUs, and for a node_size whose
    # types have different GPU models.
    gpu_type: str | None
    architecture: str  # "x86_64" or "arm64"

    @property
    def gres(self) -> str | None:
        """The node's Slurm GRES: "gpu:a10g:4", "gpu:4" for GPUs of no one model, or None without GPUs."""
        if not self.gpus:
            return None
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}"


# One family per line: its name, its processor architecture, its GPU model as a Slurm GRES type ("-" for none),
# then each size as SIZE=VCPUS/GIB, with /GPUS after the memory in GPU families. An indented line continues the
# family above.
_TABLE = """
c5     x86_64  -     large=2/4 xlarge=4/8 2xlarge=8/16 4xlarge=16/32 9xlarge=36/72 12xlarge=48/96
                     18xlarge=72/144 24xlarge=96/192 metal=96/192
c6i    x86_64  -     large=2/4 xlarge=4/8 2xlarge=8/16 4xlarge=16/32 8xlarge=32/64 12xlarge=48/96
                     16xlarge=64/128 24xlarge=96/192 32xlarge=128/256 metal=128/256
c7i    x86_64  -     large=2/4 xlarge=4/8 2xlarge=8/16 4xlarge=16/32 8xlarge=32/64 12xlarge=48/96
                     16xlarge=64/128 24xlarge=96/192 48xlarge=192/384 metal-24xl=96/192 metal-48xl=192/384
m5     x86_64  -     large=2/8 xlarge=4/16 2xlarge=8/32 4xlarge=16/64 8xlarge=32/128 12xlarge=48/192
                     16xlarge=64/256 24xlarge=96/384 metal=96/384
m6i    x86_64  -     large=2/8 xlarge=4/16 2xlarge=8/32 4xlarge=16/64 8xlarge=32/128 12xlarge=48/192
                     16xlarge=64/256 24xlarge=96/384 32xlarge=128/512 metal=128/512
m7i    x86_64  -     large=2/8 xlarge=4/16 2xlarge=8/32 4xlarge=16/64 8xlarge=32/128 12xlarge=48/192
                     16xlarge=64/256 24xlarge=96/384 48xlarge=192/768 metal-24xl=96/384 metal-48xl=192/768
r5     x86_64  -     large=2/16 xlarge=4/32 2xlarge=8/64 4xlarge=16/128 8xlarge=32/256 12xlarge=48/384
                     16xlarge=64/512 24xlarge=96/768 metal=96/768
r6i    x86_64  -     large=2/16 xlarge=4/32 2xlarge=8/64 4xlarge=16/128 8xlarge=32/256 12xlarge=48/384
                     16xlarge=64/512 24xlarge=96/768 32xlarge=128/1024 metal=128/1024
t3     x86_64  -     nano=2/0.5 micro=2/1 small=2/2 medium=2/4 large=2/8 xlarge=4/16 2xlarge=8/32
hpc6a  x86_64  -     48xlarge=96/384
hpc7a  x86_64  -     12xlarge=24/768 24xlarge=48/768 48xlarge=96/768 96xlarge=192/768
hpc7g  arm64   -     4xlarge=16/128 8xlarge=32/128 16xlarge=64/128
g5     x86_64  a10g  xlarge=4/16/1 2xlarge=8/32/1 4xlarge=16/64/1 8xlarge=32/128/1 12xlarge=48/192/4
                     16xlarge=64/256/1 24xlarge=96/384/4 48xlarge=192/768/8
g6     x86_64  l4    xlarge=4/16/1 2xlarge=8/32/1 4xlarge=16/64/1 8xlarge=32/128/1 12xlarge=48/192/4
                     16xlarge=64/256/1 24xlarge=96/384/4 48xlarge=192/768/8
p4d    x86_64  a100  24xlarge=96/1152/8
p5     x86_64  h100  4xlarge=16/256/1 48xlarge=192/2048/8
"""


def _parse(table: str) -> dict[str, InstanceType]:
    catalog: dict[str, InstanceType] = {}
    family, architecture, gpu_type, sizes = "", "", None, []
    for line in table.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            sizes = line.split()
        else:
            family, architecture, gpu, *sizes = line.split()
            gpu_type = None if gpu == "-" else gpu
            if architecture not in ARCHITECTURES:
                raise ValueError(f"{family}: architecture {architecture!r} is not one of {ARCHITECTURES}")
        for entry in sizes:
            size, _, figures = entry.partition("=")
            vcpus, gib, *gpus = figures.split("/")
            if bool(gpus) != bool(gpu_type):
                raise ValueError(f"{family}.{size}: a GPU count goes with a GPU model, and only with one")
            name = f"{family}.{size}"
            if name in catalog:
                raise ValueError(f"{name} is in the table twice")
            catalog[name] = InstanceType(name, int(vcpus), round(float(gib) * 1024), int(gpus[0]) if gpus else 0,
                                         gpu_type, architecture)
    return catalog


_CATALOG = _parse(_TABLE)
_NAMES = frozenset(_CATALOG)
_FAMILIES = tuple(dict.fromkeys(name.partition(".")[0] for name in _CATALOG))


def lookup(name: str) -> InstanceType | None:
    """The instance type called `name` ("c6i.xlarge"), or None if the catalog does not have it."""
    return _CATALOG.get(name)


def names() -> frozenset[str]:
    return _NAMES


def families() -> tuple[str, ...]:
    """The catalog's families ("c6i", "g5", ...), in the table's order."""
    return _FAMILIES


def sizes(family: str) -> tuple[str, ...]:
    """The sizes the catalog has of `family` ("large", "xlarge", ...), in the table's order; () if none."""
    return tuple(name.partition(".")[2] for name in _CATALOG if name.partition(".")[0] == family)


def node_size(names: Sequence[str]) -> InstanceType:
    """The one Slurm node definition of a node group listing the instance types `names` ("c6i.xlarge", ...).

    The group's nodes share one NodeName line, yet each instance may be any of the types. A node must never
    claim memory or GPUs the instance it lands on may not have: a job sized to the claim would not fit there,
    and a slurmd registering with less than its definition says is drained. So the node has the types' common
    vCPUs, the least memory among them, and GPUs only if every type has some: the least count, typed only if
    every type has the same model ("gpu:2" otherwise, which any GPU satisfies). Its name is the names joined
    by commas. ValueError for no names, a name not in the catalog, or types that differ in vCPUs or
    architecture: those cannot share a node definition, and the API refuses such a node group.
    """
    if not names:
        raise ValueError("a node group lists at least one instance type")
    kinds = []
    for name in names:
        kind = _CATALOG.get(name)
        if kind is None:
            raise ValueError(f"Instance type {name} is not in openpcs's catalog")
        kinds.append(kind)
    if len({(kind.vcpus, kind.architecture) for kind in kinds}) > 1:
        raise ValueError("instance types with different vCPUs or architectures cannot share a node definition: "
                         + ", ".join(f"{kind.name} ({kind.vcpus} vCPUs, {kind.architecture})" for kind in kinds))
    gpus = min(kind.gpus for kind in kinds)
    models = {kind.gpu_type for kind in kinds}
    gpu_type = models.pop() if gpus and len(models) == 1 else None
    return InstanceType(",".join(names), kinds[0].vcpus, min(kind.memory_mib for kind in kinds), gpus, gpu_type,
                        kinds[0].architecture)
