"""The Slurm builds on this host, and which one runs a cluster that asked for a scheduler version.

A build is a prefix holding sbin/slurmctld, sbin/slurmd and bin/ with the client commands:
scripts/build-slurm.sh makes them under $OPENPCS_SLURM_ROOT (default /opt/openpcs/slurm), one directory a
version; a distribution that packages a wanted release (Debian 13 has 24.11) puts one in /usr. Every daemon
and command of a cluster comes from its build, by absolute path, whatever Slurm is on PATH.

A cluster runs exactly the release (major.minor, as the PCS API names versions) it asked for. An operator
may map a release that has no build to one that has (`serve --slurm-version-map 25.05=24.11`); the
substitution is then shown wherever versions are (the log, `openpcs version`, server.json), never hidden.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "/opt/openpcs/slurm"
SYSTEM_PREFIX = Path("/usr")


def build_root() -> Path:
    return Path(os.environ.get("OPENPCS_SLURM_ROOT") or DEFAULT_ROOT)


@dataclass(frozen=True)
class SlurmBuild:
    version: str   # what its slurmctld -V says, e.g. "24.11.5"
    prefix: Path

    @property
    def release(self) -> str:
        """The version as PCS names it: "24.11"."""
        return ".".join(self.version.split(".")[:2])

    @property
    def bin_dir(self) -> Path:
        return self.prefix / "bin"

    def binary(self, name: str) -> str:
        """The absolute path of one of its programs (daemons in sbin, commands in bin)."""
        for directory in ("sbin", "bin"):
            path = self.prefix / directory / name
            if path.exists():
                return str(path)
        raise FileNotFoundError(f"Slurm {self.version} in {self.prefix} has no {name}")

    def as_dict(self) -> dict[str, str]:
        return {"version": self.version, "prefix": str(self.prefix)}


class VersionUnavailable(Exception):
    pass


def _version_of(slurmctld: Path) -> str | None:
    try:
        done = subprocess.run([str(slurmctld), "-V"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    words = done.stdout.split()
    return words[-1] if done.returncode == 0 and words else None


@functools.cache
def installed(root: Path | None = None) -> tuple[SlurmBuild, ...]:
    """Every build found, newest release first; at most one a release (the newest of each)."""
    prefixes = sorted((root or build_root()).glob("*/sbin/slurmctld")) + [SYSTEM_PREFIX / "sbin" / "slurmctld"]
    found: dict[str, SlurmBuild] = {}
    for slurmctld in prefixes:
        version = _version_of(slurmctld) if slurmctld.exists() else None
        if version is None or not (slurmctld.parent.parent / "bin" / "scontrol").exists():
            continue
        build = SlurmBuild(version, slurmctld.parent.parent)
        best = found.get(build.release)
        if best is None or _numbers(version) > _numbers(best.version):
            found[build.release] = build
    return tuple(sorted(found.values(), key=lambda b: _numbers(b.version), reverse=True))


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


@dataclass(frozen=True)
class Catalog:
    """The releases this server runs: the builds it has, plus the operator's mappings onto them."""
    builds: tuple[SlurmBuild, ...]
    mapping: Mapping[str, str]   # requested release -> release of an installed build

    def for_release(self, release: str) -> SlurmBuild:
        target = self.mapping.get(release, release)
        for build in self.builds:
            if build.release == target:
                return build
        raise VersionUnavailable(f"Slurm {release} is not available on this server; it runs "
                                 f"{', '.join(self.releases()) or 'no Slurm build'}. Run scripts/build-slurm.sh to "
                                 "install Slurm 24.11, or start openpcs serve with --slurm-version-map to run "
                                 "another version on an installed build.")

    def releases(self) -> list[str]:
        """The scheduler versions the API accepts."""
        return sorted({b.release for b in self.builds} | set(self.mapping), key=_numbers)

    def describe(self) -> dict[str, dict[str, str]]:
        """release -> its build (and the release it is mapped to, if substituted): for server.json."""
        out = {}
        for release in self.releases():
            build = self.for_release(release)
            out[release] = {**build.as_dict(), **({"mappedTo": build.release} if release != build.release else {})}
        return out


def catalog(mapping: Iterable[str] = ()) -> Catalog:
    """The builds on this host with the operator's `REQUESTED=INSTALLED` mappings; ValueError for a mapping
    onto a release that has no build."""
    builds = installed()
    parsed: dict[str, str] = {}
    for item in mapping:
        requested, _, target = item.partition("=")
        if not requested or not target:
            raise ValueError(f"a version mapping is REQUESTED=INSTALLED, such as 25.05=24.11; got {item!r}")
        if not any(b.release == target for b in builds):
            raise ValueError(f"cannot map Slurm {requested} to {target}: no {target} build is installed "
                             f"(installed: {', '.join(b.version for b in builds) or 'none'})")
        parsed[requested] = target
    return Catalog(builds, parsed)
