"""Asynchronous transitions and restarts: what is caught mid-way finishes after the server comes back.

A server started with --no-reconcile answers the API but moves nothing on (as an API-only replica would),
which holds resources in CREATING/UPDATING/DELETING long enough to check PCS's rules deterministically.
"""

from __future__ import annotations

import pytest
from conftest import (
    OpenPcs,
    create_cluster,
    create_node_group,
    create_queue,
    error_of,
    node_group_params,
    unique,
    wait_for,
    wait_gone,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, postgres_url_factory):
    return postgres_url_factory() if request.param == "postgresql" else None


def test_rules_while_in_transition_and_recovery_after_restart(tmp_path, store_url):
    data = tmp_path / "data"
    server = OpenPcs(data, store_url).start()
    try:
        pcs = server.client()
        cluster = create_cluster(pcs)
        group = create_node_group(pcs, cluster["id"], min_count=1)
    finally:
        server.stop()

    # An API-only server: every write is recorded and acknowledged, nothing moves on.
    frozen = OpenPcs(data, store_url, "--no-reconcile").start()
    try:
        pcs = frozen.client()
        pending = pcs.create_compute_node_group(**node_group_params(cluster["id"], name="pending"))
        assert pending["computeNodeGroup"]["status"] == "CREATING"
        pending_id = pending["computeNodeGroup"]["id"]
        # A cluster updates only while all of its node groups and queues are ACTIVE.
        with pytest.raises(pcs.exceptions.ConflictException) as child_busy:
            pcs.update_cluster(clusterIdentifier=cluster["id"], slurmConfiguration={"scaleDownIdleTimeInSeconds": 60})
        assert error_of(child_busy)["resourceId"] == pending_id
        assert error_of(child_busy)["resourceType"] == "computeNodeGroup"
        # A node group updates only when ACTIVE.
        with pytest.raises(pcs.exceptions.ConflictException) as creating:
            pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=pending_id,
                                          scalingConfiguration={"minInstanceCount": 0, "maxInstanceCount": 2})
        assert error_of(creating)["resourceId"] == pending_id
        # Deleting twice: the second is refused while the first is under way.
        pcs.delete_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])
        with pytest.raises(pcs.exceptions.ConflictException):
            pcs.delete_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])
        assert pcs.get_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"]
                                          )["computeNodeGroup"]["status"] == "DELETING"
        # A queue cannot use a node group that is being deleted.
        with pytest.raises(pcs.exceptions.ValidationException):
            create_queue(pcs, cluster["id"], [group["id"]], wait=False)
        queue = create_queue(pcs, cluster["id"], [pending_id], wait=False)
        assert queue["status"] == "CREATING"
        other = create_cluster(pcs, wait=False)
        assert other["status"] == "CREATING"
    finally:
        frozen.kill9()  # an abrupt stop: nothing acknowledged may be lost

    # Back with reconcilers: every resource caught mid-way finishes its transition.
    server = OpenPcs(data, store_url).start()
    try:
        pcs = server.client()
        wait_for(lambda: pcs.get_cluster(clusterIdentifier=other["id"]), "cluster", ("ACTIVE",))
        wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                    computeNodeGroupIdentifier=pending_id),
                 "computeNodeGroup", ("ACTIVE",))
        wait_for(lambda: pcs.get_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"]),
                 "queue", ("ACTIVE",))
        wait_gone(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                     computeNodeGroupIdentifier=group["id"]),
                  pcs.exceptions.ResourceNotFoundException)
        # Its instances went with it.
        assert not any((data / "instances").iterdir())
    finally:
        server.stop()


def test_update_in_progress_refuses_another_and_finishes_after_kill9(tmp_path):
    data = tmp_path / "data"
    server = OpenPcs(data).start()
    try:
        cluster = create_cluster(server.client())
    finally:
        server.stop()
    frozen = OpenPcs(data, None, "--no-reconcile").start()
    try:
        pcs = frozen.client()
        updating = pcs.update_cluster(clusterIdentifier=cluster["id"],
                                      slurmConfiguration={"scaleDownIdleTimeInSeconds": 60})["cluster"]
        assert updating["status"] == "UPDATING"
        with pytest.raises(pcs.exceptions.ConflictException) as busy:
            pcs.update_cluster(clusterIdentifier=cluster["id"], slurmConfiguration={"scaleDownIdleTimeInSeconds": 90})
        assert error_of(busy)["resourceId"] == cluster["id"]
        # Children wait for a cluster that is still coming up; they can be created meanwhile.
        fresh = create_cluster(pcs, name=unique(), wait=False)
        group = create_node_group(pcs, fresh["id"], wait=False)
        assert group["status"] == "CREATING"
    finally:
        frozen.kill9()
    server = OpenPcs(data).start()
    try:
        pcs = server.client()
        updated = wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", ("ACTIVE",))
        assert updated["slurmConfiguration"]["scaleDownIdleTimeInSeconds"] == 60
        wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=fresh["id"],
                                                    computeNodeGroupIdentifier=group["id"]),
                 "computeNodeGroup", ("ACTIVE",))
    finally:
        server.stop()
