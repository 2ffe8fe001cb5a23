"""`openpcs events` and `openpcs inject`: what happened to a cluster's nodes, and faults to rehearse with."""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path

import click
import orjson

from .cli_options import data_dir_option, database_option, existing_store, find_cluster, resolve_data_dir
from .domain import ids
from .store import events as event_rows
from .store import resources as rows
from .store.db import Store
from .store.resources import Resource

FOLLOW_POLL_SECONDS = 0.5
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
NODE_FAULTS = ("instance-death", "unresponsive", "unhealthy")


def _node_group(store: Store, cluster: Resource, identifier: str) -> Resource:
    with store.read() as conn:
        found = rows.find(conn, ids.NODE_GROUP, identifier, cluster.id)
    if found is None:
        raise click.ClickException(f"No node group {identifier!r} in cluster {cluster.name}. 'aws pcs "
                                   f"list-compute-node-groups --cluster-identifier {cluster.name}' lists them.")
    return found


def _since(value: str | None) -> float | None:
    """'10m', '2h', '30s', '1d' ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return None
    relative = _RELATIVE.match(value.strip())
    if relative:
        return time.time() - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        when = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("give a time such as 2026-12-02T10:00:00Z, or an age such as 30s, 10m, 2h, 1d",
                                 param_hint="--since") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _show(event: event_rows.Event, groups: dict[str, str], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps({"time": _iso(event.time), "type": event.type, "node": event.node,
                                 "instanceId": event.instance_id, "reason": event.reason,
                                 "nodeGroup": groups.get(event.node_group_id, event.node_group_id),
                                 "nodeGroupId": event.node_group_id, "clusterId": event.cluster_id}).decode())
    else:
        click.echo(f"{_iso(event.time)}  {event.type:<22} {event.node or '-':<16} {event.instance_id or '-':<19} "
                   f"{event.reason}")


@click.command()
@data_dir_option
@database_option
@click.argument("cluster")
@click.option("--node-group", "node_group", default=None, help="Only this node group's events (name or id).")
@click.option("--since", default=None, metavar="WHEN", help="Only events since WHEN: a time (2026-12-02T10:00:00Z) "
                                                            "or an age (30s, 10m, 2h, 1d).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option("--follow", is_flag=True, help="Keep printing events as they happen (Ctrl-C ends).")
def events(data_dir: Path | None, database: str | None, cluster: str, node_group: str | None, since: str | None,
           as_json: bool, follow: bool) -> None:
    """What happened to CLUSTER's nodes and instances, oldest first: launches, registrations, power ups and downs,
    health verdicts, repairs and failures. Answers "why did my node go away?"."""
    directory = resolve_data_dir(data_dir)
    store = existing_store(data_dir, database)
    found = find_cluster(store, directory, cluster)
    group_id = _node_group(store, found, node_group).id if node_group else None
    with store.read() as conn:
        groups = {g.id: g.name for g in rows.children(conn, found.id, ids.NODE_GROUP)}
    after, since_time = 0, _since(since)
    try:
        while True:
            with store.read() as conn:
                batch = event_rows.query(conn, found.id, node_group_id=group_id, since=since_time, after_seq=after)
            for event in batch:
                _show(event, groups, as_json)
                after = event.seq
            if not follow:
                return
            time.sleep(FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        return


@click.command()
@data_dir_option
@database_option
@click.argument("cluster")
@click.argument("fault", nargs=-1, required=True)
@click.option("--node-group", "node_group", default=None, help="The node group whose launches fail (launch-failure).")
@click.option("--times", default=1, show_default=True, type=click.IntRange(1),
              help="How many launches fail (launch-failure).")
def inject(data_dir: Path | None, database: str | None, cluster: str, fault: tuple[str, ...], node_group: str | None,
           times: int) -> None:
    """Inject a fault through the local provider, to test or rehearse failure:

    \b
      openpcs inject CLUSTER NODE instance-death   the node's instance dies (its processes are killed)
      openpcs inject CLUSTER NODE unresponsive     its slurmd stops answering (SIGSTOP)
      openpcs inject CLUSTER NODE unhealthy        it fails its health checks from now on (a node
                                                   without an instance: its next instance does)
      openpcs inject CLUSTER --node-group GROUP launch-failure CODE [--times N]
                                                   the group's next N launches fail with CODE
    """
    from .layout import DataLayout
    from .providers.local import LocalProvider
    from .store import instances as instance_rows

    directory = resolve_data_dir(data_dir)
    store = existing_store(data_dir, database)
    found = find_cluster(store, directory, cluster)
    provider = LocalProvider(DataLayout(directory))
    if node_group is not None:
        if len(fault) != 2 or fault[0] != "launch-failure":
            raise click.UsageError("With --node-group, say: launch-failure CODE (e.g. launch-failure "
                                   "InsufficientInstanceCapacity)")
        group = _node_group(store, found, node_group)
        provider.inject_launch_failures(found.id, group.id, fault[1], times)
        _record(store, found.id, f"the next {times} launch(es) fail with Error Code: {fault[1]}", group.id)
        click.echo(f"The next {times} launch(es) of node group {group.name} fail with {fault[1]}.")
        return
    if len(fault) != 2 or fault[1] not in NODE_FAULTS:
        raise click.UsageError(f"Say: NODE {'|'.join(NODE_FAULTS)}, or --node-group GROUP launch-failure CODE")
    node, kind = fault
    with store.read() as conn:
        instance = next((i for i in instance_rows.of_cluster(conn, found.id) if i.node_name == node), None)
    if instance is None and kind == "unhealthy":
        provider.make_next_unhealthy(found.id, node)
        _record(store, found.id, "the next instance of the node fails its health checks", "", node)
        click.echo(f"The next instance of {node} fails its health checks.")
        return
    if instance is None:
        raise click.ClickException(f"Node {node} of cluster {found.name} has no instance (it is powered down, or "
                                   "no such node): 'openpcs exec CLUSTER -- sinfo -N' lists the nodes.")
    action = {"instance-death": provider.kill, "unresponsive": provider.freeze,
              "unhealthy": provider.make_unhealthy}[kind]
    try:
        action(instance.id)
    except LookupError as exc:
        raise click.ClickException(f"Cannot make {node} {kind}: {exc}.") from None
    _record(store, found.id, kind, instance.node_group_id, node, instance.id)
    click.echo(f"Injected {kind} into {node} ({instance.id}).")


def _record(store: Store, cluster_id: str, what: str, node_group_id: str, node: str = "",
            instance_id: str = "") -> None:
    with store.write() as conn:
        event_rows.record(conn, cluster_id, event_rows.FAULT_INJECTED, f"openpcs inject: {what}",
                          node_group_id=node_group_id, node=node, instance_id=instance_id)
