"""A cluster's slurmrestd: the Slurm REST API, authenticated with JSON Web Tokens.

slurmctld signs and checks the tokens with the cluster's JWT key (slurm.conf `AuthAltTypes=auth/jwt`,
`AuthAltParameters=jwt_key=...`; the key is 32 random bytes in a 0600 file); slurmrestd passes each
request's token on (`-a rest_auth/jwt`, `SLURM_JWT=daemon`). slurmrestd refuses to run as root, so it drops
to `nobody` once it has opened its socket, and only then reads the configuration (measured: "cannot stat file
.../slurm.conf: Permission denied" on the cluster's own, which sits in a 0700 directory). So it reads a copy
that anyone may read (DataLayout.readable_conf_dir; slurm.conf names paths, never secrets), made when it
starts: it needs only the cluster's name, its controller, authentication and accounting settings, and a
change of those restarts it. It listens on 127.0.0.1 at the cluster's slurmrestd port; the slurmdbd
endpoints are served too when the cluster has accounting.

It runs in the foreground of its own session, recorded by PID like slurmctld; a change of what it should
serve (accounting turned on or off) restarts it.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import secrets
import urllib.error
import urllib.request

from .. import processes
from ..files import write_private
from ..layout import DataLayout
from ..readiness import wait_ready
from .builds import SlurmBuild
from .config import RENDERED_FILES

log = logging.getLogger("openpcs.slurm")

STOP_TIMEOUT_SECONDS = 10.0
JWT_KEY_BYTES = 32
# The OpenAPI versions of Slurm 24.11's data parsers: every one is served.
OPENAPI_VERSIONS = ("v0.0.40", "v0.0.41", "v0.0.42")


def ensure_jwt_key(layout: DataLayout, cluster_id: str) -> str:
    """The cluster's JWT key file, made the first time."""
    path = layout.jwt_key(cluster_id)
    if not path.exists():
        write_private(path, secrets.token_bytes(JWT_KEY_BYTES))
    return str(path)


def answers(port: int) -> bool:
    """slurmrestd itself answers at the port (401 to a request without a token), not merely something that
    accepts connections there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi/v3", timeout=0.5):
            return True
    except urllib.error.HTTPError as error:
        return error.code == 401
    except OSError:
        return False


def _unprivileged() -> list[str]:
    """-u/-g for a server run as root: slurmrestd will not serve as root."""
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam("nobody")
    return ["-u", user.pw_name, "-g", grp.getgrgid(user.pw_gid).gr_name]


class SlurmRestd:
    def __init__(self, layout: DataLayout, cluster_id: str, build: SlurmBuild | None) -> None:
        """`build` may be None only to stop the daemon."""
        self.cluster_id, self.build = cluster_id, build
        self.slurm_conf = layout.slurm_conf(cluster_id)
        self.readable_conf = layout.readable_conf_dir(cluster_id) / "slurm.conf"
        self.record = layout.run_dir(cluster_id) / "slurmrestd.json"
        self.log_dir = layout.log_dir(cluster_id)

    def argv(self, port: int, accounting: bool) -> list[str]:
        assert self.build is not None
        plugins = "openapi/slurmctld,openapi/slurmdbd" if accounting else "openapi/slurmctld"
        return [self.build.binary("slurmrestd"), "-f", str(self.readable_conf), "-a", "rest_auth/jwt", "-s", plugins,
                *_unprivileged(), f"127.0.0.1:{port}"]

    def ensure_running(self, port: int, accounting: bool) -> None:
        """slurmrestd serving what the cluster has: started, adopted, or restarted if that changed."""
        argv = self.argv(port, accounting)
        daemon = processes.adopt(self.record)
        if daemon is not None and processes.recorded_argv(self.record) == argv:
            return
        if daemon is not None:
            log.info("cluster %s: restarting slurmrestd (slurmdbd endpoints %s)", self.cluster_id,
                     "on" if accounting else "off")
            processes.stop(self.record, STOP_TIMEOUT_SECONDS)
        self._copy_config()
        out = self.log_dir / "slurmrestd.log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        offset = out.stat().st_size if out.exists() else 0
        env = {**os.environ, "SLURM_CONF": str(self.readable_conf), "SLURM_JWT": "daemon"}
        daemon = processes.spawn(argv, self.record, out, env=env, cwd=self.log_dir,
                                 autogroup_nice=processes.SERVICE_AUTOGROUP_NICE)
        wait_ready("slurmrestd", daemon, lambda: answers(port), [out], offset)

    def _copy_config(self) -> None:
        self.readable_conf.parent.mkdir(parents=True, exist_ok=True)
        self.readable_conf.parent.chmod(0o755)
        for name in RENDERED_FILES:
            source = self.slurm_conf.with_name(name)
            if source.exists():
                target = self.readable_conf.with_name(name)
                scratch = target.with_name(f".{name}.tmp")
                scratch.write_bytes(source.read_bytes())
                scratch.chmod(0o644)
                scratch.replace(target)

    def alive(self) -> bool:
        return processes.adopt(self.record) is not None

    def stop(self) -> None:
        processes.stop(self.record, STOP_TIMEOUT_SECONDS)
