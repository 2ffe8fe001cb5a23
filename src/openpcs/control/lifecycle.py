"""Lifecycle scripts a node group's instances run when they are created (HyperPod's LifeCycleConfig OnCreate).

Before instances launch, the group's script source (an s3:// or https:// "directory", read by openpcs.objects)
is copied under the cluster's directory, one version per content, so an instance still running an older copy
keeps it whole; the instance's bootstrap data names the copy and the script, which the node agent runs before
slurmd starts (openpcs.scripts). A source that cannot be read fails the launch with what is missing.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..layout import DataLayout
from ..objects import ObjectReader, ObjectUnavailable
from ..providers.base import ProviderError
from ..store.resources import Resource


class LifecycleScripts:
    def __init__(self, layout: DataLayout, reader: ObjectReader) -> None:
        self.layout, self.reader = layout, reader

    def prepare(self, cluster: Resource, group: Resource) -> dict[str, Any] | None:
        """What the group's new instances run on creation ({"directory", "onCreate"}), or None."""
        on_create = group.spec.get("onCreate")
        if not on_create:
            return None
        base = self.layout.lifecycle_dir(cluster.id, group.name)
        base.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=base))
        try:
            self.reader.copy_tree(on_create["source"], scratch, [on_create["script"]])
            version = base / _digest(scratch)
            if version.exists():
                shutil.rmtree(scratch)
            else:
                scratch.rename(version)
        except ObjectUnavailable as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ProviderError("LifecycleScriptUnavailable",
                                f"the OnCreate script of {group.name} could not be read: {exc}") from None
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ProviderError("InternalError", f"could not copy {group.name}'s lifecycle scripts: "
                                                 f"{exc.strerror or exc} ({exc.filename})") from None
        return {"directory": str(version), "onCreate": on_create["script"]}


def _digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
