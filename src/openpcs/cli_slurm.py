"""`openpcs exec` and `openpcs token`: Slurm's own commands and REST tokens against a cluster's Slurm."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .cli_options import data_dir_option, database_option, existing_store, find_cluster, resolve_data_dir
from .domain import ids
from .store import resources as rows
from .store.resources import Resource

# Slurm's own default for `scontrol token`.
DEFAULT_TOKEN_LIFESPAN_SECONDS = 1800


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@data_dir_option
@database_option
@click.option("--node", default=None, metavar="NODE",
              help="Run it on this login node of a HyperPod cluster, with the configuration its sackd fetched.")
@click.argument("cluster")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(data_dir: Path | None, database: str | None, node: str | None, cluster: str,
          command: tuple[str, ...]) -> None:
    """Run a Slurm command against CLUSTER (its name or id): openpcs exec demo -- sinfo. With --node, on that
    login node of a HyperPod cluster."""
    command = command[1:] if command[0] == "--" else command  # `--` is optional; click keeps it here
    if not command:
        raise click.UsageError("Name a Slurm command to run, e.g. openpcs exec demo -- sinfo")
    found, controller, build = _cluster_slurm(data_dir, database, cluster)
    conf = str(controller.conf) if node is None else _login_node_conf(data_dir, database, found, node)
    # The cluster's own build first on PATH, so a script or tool run here calls its sbatch, whatever else is installed.
    path = f"{Path(build['prefix']) / 'bin'}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
    try:
        os.execvpe(command[0], list(command), {**os.environ, "SLURM_CONF": conf, "PATH": path})
    except FileNotFoundError:
        raise click.ClickException(f"{command[0]}: command not found. Slurm's client commands (sbatch, srun, squeue, "
                                   f"sinfo, scontrol, scancel) are in {build['prefix']}/bin.") from None


@click.command()
@data_dir_option
@database_option
@click.argument("cluster")
@click.option("--user", default=None, help="Whom the token speaks for [default: the user running this command].")
@click.option("--lifespan", default=DEFAULT_TOKEN_LIFESPAN_SECONDS, show_default=True, type=click.IntRange(1),
              metavar="SECONDS", help="How long the token is valid.")
def token(data_dir: Path | None, database: str | None, cluster: str, user: str | None, lifespan: int) -> None:
    """Print a JSON Web Token for CLUSTER's Slurm REST API (slurmRest mode STANDARD). Send it as the header
    X-SLURM-USER-TOKEN, with X-SLURM-USER-NAME: USER."""
    import getpass
    import subprocess

    found, controller, build = _cluster_slurm(data_dir, database, cluster)
    if found.spec["slurmConfiguration"]["slurmRest"]["mode"] != "STANDARD":
        raise click.ClickException(f"Cluster {found.name} has no Slurm REST API: turn it on with 'aws pcs "
                                   f"update-cluster --cluster-identifier {found.name} --slurm-configuration "
                                   "slurmRest={mode=STANDARD}'.")
    done = subprocess.run([str(Path(build["prefix"]) / "bin" / "scontrol"), "token",
                           f"username={user or getpass.getuser()}", f"lifespan={lifespan}"],
                          capture_output=True, text=True, env={**os.environ, "SLURM_CONF": str(controller.conf)})
    if done.returncode != 0 or not done.stdout.startswith("SLURM_JWT="):
        raise click.ClickException(f"Slurm made no token: {(done.stderr or done.stdout).strip()}")
    click.echo(done.stdout.strip().removeprefix("SLURM_JWT="))


def _login_node_conf(data_dir: Path | None, database: str | None, cluster: Resource, node: str) -> str:
    """The configuration a login node's sackd fetched from the cluster's slurmctld (control.login_nodes)."""
    from .control.login_nodes import is_login
    from .layout import DataLayout
    from .store import instances as instance_rows

    with existing_store(data_dir, database).read() as conn:
        groups = {g.id: g for g in rows.children(conn, cluster.id, ids.NODE_GROUP)}
        instances = instance_rows.of_cluster(conn, cluster.id)
    logins = {i.node_name: i for i in instances if i.node_group_id in groups and is_login(groups[i.node_group_id])}
    if node not in logins:
        raise click.ClickException(f"Cluster {cluster.name} has no login node {node}. Its login nodes: "
                                   f"{', '.join(sorted(logins)) or 'none (give it a Login instance group)'}.")
    conf = DataLayout(resolve_data_dir(data_dir)).instance_dir(logins[node].id) / "slurm-conf" / "conf" / "slurm.conf"
    if not conf.exists():
        raise click.ClickException(f"Login node {node} has not fetched the cluster's configuration yet; try again "
                                   "once it is Running.")
    return str(conf)


def _cluster_slurm(data_dir: Path | None, database: str | None, cluster: str):
    """(cluster, its SlurmController, the build it runs) for a command against its Slurm."""
    from .layout import DataLayout
    from .slurm.controller import SlurmController

    directory = resolve_data_dir(data_dir)
    found = find_cluster(existing_store(data_dir, database), directory, cluster)
    controller = SlurmController(DataLayout(directory), found.id, None)
    build = controller.recorded_build()
    if build is None or not controller.conf.exists():
        raise click.ClickException(f"Cluster {found.name} ({found.id}) is {found.status} and has no running Slurm yet.")
    return found, controller, build
