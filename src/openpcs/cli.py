"""The `openpcs` command: serve the API, print client settings, manage access keys."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from . import __version__
from .api.credentials import PROFILE, create_key, list_keys, revoke_key
from .app import (
    DEFAULT_DRAIN_TIMEOUT_SECONDS,
    DEFAULT_MAX_CLUSTERS,
    DEFAULT_REGION,
    DEFAULT_WORKERS,
    PROTECTED_MODE_COOLDOWN_SECONDS,
    Service,
    identity,
)
from .cli_nodes import events, inject
from .cli_options import data_dir_option, database_option, existing_store, resolve_data_dir
from .cli_slurm import exec_, token


@click.group()
@click.version_option(__version__, prog_name="openpcs")
def main() -> None:
    """openpcs: the AWS Parallel Computing Service API, self-hosted."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 picks a free one (see server.json).")
@data_dir_option
@database_option
@click.option("--region", default=None, help=f"Region in ARNs, fixed at first start [default: {DEFAULT_REGION}].")
@click.option("--max-clusters", default=DEFAULT_MAX_CLUSTERS, show_default=True, type=click.IntRange(1),
              help="How many clusters this service allows (PCS's default quota is 5).")
@click.option("--reconcile/--no-reconcile", default=True, show_default=True,
              help="Run the reconcilers. Turn off for an API-only server beside another one that runs them "
                   "on the same --database.")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, type=click.IntRange(1),
              help="API worker processes; each serves about one core's worth of requests.")
@click.option("--drain-timeout", default=DEFAULT_DRAIN_TIMEOUT_SECONDS, show_default=True,
              type=click.FloatRange(0), metavar="SECONDS",
              help="How long running jobs may take to end on nodes being taken away (a deleted node group, a "
                   "lower minInstanceCount) before they are cancelled.")
@click.option("--protected-mode-cooldown", default=PROTECTED_MODE_COOLDOWN_SECONDS, show_default=True,
              type=click.FloatRange(0), metavar="SECONDS",
              help="How long a node group that stopped launching after repeated launch failures (protected mode) "
                   "waits before it tries again by itself; an UpdateComputeNodeGroup clears it at once.")
@click.option("--slurm-version-map", "version_map", multiple=True, metavar="REQUESTED=INSTALLED",
              help="Run clusters that ask for Slurm REQUESTED (e.g. 25.05) on the installed INSTALLED build (e.g. "
                   "24.11). Repeatable. Shown in the log and by 'openpcs version'; without it, versions with no "
                   "build are refused.")
@click.option("--accounting-database", default=None, metavar="URL", envvar="OPENPCS_ACCOUNTING_DATABASE",
              help="Keep clusters' job accounting on this MySQL or MariaDB server, mysql://ADMIN:PASSWORD@HOST[:PORT] "
                   "(ADMIN creates a database and a user per cluster) [default: $OPENPCS_ACCOUNTING_DATABASE, else a "
                   "MariaDB server openpcs runs in the data dir]. Prefer the variable: any user can read a command "
                   "line.")
@click.option("--object-store-url", default=None, metavar="URL", envvar="OPENPCS_OBJECT_STORE_URL",
              help="Read s3:// scripts (HyperPod's lifecycle scripts) from the S3-compatible object store at this "
                   "endpoint, with credentials from AWS's usual chain (environment, ~/.aws, AWS_PROFILE) [default: "
                   "$OPENPCS_OBJECT_STORE_URL, else DATA/buckets/BUCKET/KEY].")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(host: str, port: int, data_dir: Path | None, database: str | None, region: str | None,
          max_clusters: int, reconcile: bool, workers: int, drain_timeout: float, protected_mode_cooldown: float,
          version_map: tuple[str, ...], accounting_database: str | None, object_store_url: str | None,
          log_level: str) -> None:
    """Run the API and the reconcilers in the foreground."""
    import logging

    from .api.http import bind
    from .api.server import configure_logging
    from .slurm.builds import catalog
    from .supervisor import WorkerFailed, Workers

    configure_logging(log_level)
    try:
        slurm = catalog(version_map)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--slurm-version-map") from None
    _log_slurm_builds(logging.getLogger("openpcs.serve"), slurm)
    if accounting_database:
        from .control.accounting import parse_server_url

        try:
            parse_server_url(accounting_database)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--accounting-database") from None
    directory = resolve_data_dir(data_dir)
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    service = Service(directory, database, region, url, slurm, drain_timeout, protected_mode_cooldown,
                      accounting_database, object_store_url)
    (directory / "server.json").write_text(json.dumps({"url": url, "region": service.identity.region,
                                                       "pid": os.getpid(), "slurm": slurm.describe()}) + "\n")
    if reconcile:
        service.start()
    click.echo(f"openpcs {__version__} serving PCS on {url} with {workers} API worker(s) (data dir {directory}, "
               f"region {service.identity.region}); client settings: eval \"$(openpcs env --data-dir {directory})\"",
               err=True)
    config = {"data_dir": str(directory), "database": database, "max_clusters": max_clusters,
              "log_level": log_level, "scheduler_versions": slurm.releases()}
    try:
        Workers(workers, sock, config, on_write=service.reconciler.wake if reconcile else None).run()
    except WorkerFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        service.stop()


def _log_slurm_builds(log, slurm) -> None:
    if not slurm.builds:
        log.warning("no Slurm build is installed: every CreateCluster will be refused. Run scripts/build-slurm.sh.")
    for release, build in slurm.describe().items():
        if "mappedTo" in build:
            log.warning("clusters asking for Slurm %s run Slurm %s (%s), as --slurm-version-map says", release,
                        build["version"], build["prefix"])
        else:
            log.info("Slurm %s: %s", build["version"], build["prefix"])


@main.command()
@data_dir_option
def env(data_dir: Path | None) -> None:
    """Print shell exports that point AWS clients (CLI, boto3) at this openpcs."""
    directory = resolve_data_dir(data_dir)
    try:
        server = json.loads((directory / "server.json").read_text())
    except FileNotFoundError:
        raise click.ClickException(f"No openpcs has run with data dir {directory}. Start it with "
                                   f"'openpcs serve --data-dir {directory}' first.") from None
    exports = {
        "AWS_SHARED_CREDENTIALS_FILE": str(directory / "credentials"),
        "AWS_PROFILE": PROFILE,
        "AWS_DEFAULT_REGION": server["region"],
        "AWS_REGION": server["region"],
        # the services openpcs serves, and only those
        "AWS_ENDPOINT_URL_PCS": server["url"],
        "AWS_ENDPOINT_URL_SAGEMAKER": server["url"],
    }
    for name, value in exports.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@main.group()
def credentials() -> None:
    """Manage the access keys the service accepts."""


@credentials.command("create")
@data_dir_option
@database_option
@click.option("--description", default="", help="What the key is for.")
def credentials_create(data_dir: Path | None, database: str | None, description: str) -> None:
    """Create an access key; prints it once, as a credentials-file profile."""
    store = existing_store(data_dir, database)
    key = create_key(store, description)
    region = identity(store, None).region
    click.echo(f"[{PROFILE}-{key.access_key_id.lower()}]\naws_access_key_id = {key.access_key_id}\n"
               f"aws_secret_access_key = {key.secret_access_key}\nregion = {region}")


@credentials.command("list")
@data_dir_option
@database_option
def credentials_list(data_dir: Path | None, database: str | None) -> None:
    """List access keys (never their secrets)."""
    for key in list_keys(existing_store(data_dir, database)):
        state = "revoked" if key.revoked_at else "active"
        scope = f"\tmay only call {key.scope}" if key.scope else ""
        click.echo(f"{key.access_key_id}\t{state}\t{key.description}{scope}")


@credentials.command("revoke")
@data_dir_option
@database_option
@click.argument("access_key_id")
def credentials_revoke(data_dir: Path | None, database: str | None, access_key_id: str) -> None:
    """Revoke an access key: requests signed with it are refused within a second."""
    if not revoke_key(existing_store(data_dir, database), access_key_id):
        click.echo(f"No active access key {access_key_id}; see 'openpcs credentials list'.", err=True)
        sys.exit(1)
    click.echo(f"Revoked {access_key_id}.")


@main.command()
@data_dir_option
def version(data_dir: Path | None) -> None:
    """The versions of openpcs, of the Slurm builds it runs, and any version mapping of the server in the data
    dir (its last start)."""
    from .slurm.builds import installed

    click.echo(f"openpcs {__version__}")
    builds = installed()
    if not builds:
        click.echo("Slurm: no build installed (scripts/build-slurm.sh installs 24.11)")
    for build in builds:
        click.echo(f"Slurm {build.version}: {build.prefix} (runs clusters of version {build.release})")
    try:
        served = json.loads((resolve_data_dir(data_dir) / "server.json").read_text()).get("slurm", {})
    except FileNotFoundError:
        served = {}
    for release, build in served.items():
        if "mappedTo" in build:
            click.echo(f"Slurm {release} is mapped to Slurm {build['version']}: clusters that ask for {release} "
                       f"run {build['version']} (serve --slurm-version-map)")
    releases = sorted(served) if served else sorted({b.release for b in builds})
    click.echo(f"scheduler versions the API accepts: {', '.join(releases) or 'none'}")

main.add_command(events)
main.add_command(inject)
main.add_command(exec_)
main.add_command(token)
