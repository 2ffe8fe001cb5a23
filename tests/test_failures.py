"""Failures are visible: a resource the runtime cannot bring up ends *_FAILED with errorInfo saying why."""

from __future__ import annotations

import shutil

import pytest
from conftest import OpenPcs, create_cluster, create_node_group, error_of, node_group_params, wait_for, wait_gone
from pgserver import PostgresServer


@pytest.fixture
def server(tmp_path):
    server = OpenPcs(tmp_path / "data").start()
    yield server
    server.stop()


def test_cluster_that_cannot_start_fails_with_error_info(server):
    pcs = server.client()
    blocker = server.data_dir / "clusters"
    shutil.rmtree(blocker, ignore_errors=True)
    blocker.write_text("not a directory")  # the cluster's files cannot be written
    cluster = create_cluster(pcs, wait=False)
    failed = wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", ("CREATE_FAILED",))
    assert failed["errorInfo"][0]["code"] == "InternalError"
    assert "clusters" in failed["errorInfo"][0]["message"]
    # A failed cluster takes no children, and can be deleted.
    with pytest.raises(pcs.exceptions.ConflictException) as closed:
        pcs.create_compute_node_group(**node_group_params(cluster["id"]))
    assert error_of(closed)["resourceId"] == cluster["id"]
    blocker.unlink()
    pcs.delete_cluster(clusterIdentifier=cluster["id"])
    wait_gone(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), pcs.exceptions.ResourceNotFoundException)


def test_node_group_that_cannot_launch_fails_and_recovers_by_update(server):
    pcs = server.client()
    cluster = create_cluster(pcs)
    group = create_node_group(pcs, cluster["id"], min_count=0)
    (server.data_dir / "instances").write_text("not a directory")  # instances cannot get bootstrap data
    pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"],
                                  scalingConfiguration={"minInstanceCount": 1, "maxInstanceCount": 4})
    failed = wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                         computeNodeGroupIdentifier=group["id"]),
                      "computeNodeGroup", ("UPDATE_FAILED",))
    assert "bootstrap" in failed["errorInfo"][0]["message"]
    # The failed attempt left no instance behind: nothing half-written.
    retry = create_node_group(pcs, cluster["id"], min_count=1, wait=False)
    wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                computeNodeGroupIdentifier=retry["id"]),
             "computeNodeGroup", ("CREATE_FAILED",))
    # Once the cause is fixed, an update of the failed group brings it to ACTIVE and clears errorInfo.
    (server.data_dir / "instances").unlink()
    pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"],
                                  scalingConfiguration={"minInstanceCount": 1, "maxInstanceCount": 4})
    active = wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                         computeNodeGroupIdentifier=group["id"]),
                      "computeNodeGroup", ("ACTIVE",))
    assert "errorInfo" not in active
    assert len(list((server.data_dir / "instances").iterdir())) == 1
    # A cluster cannot update while a child is failed.
    with pytest.raises(pcs.exceptions.ConflictException) as blocked:
        pcs.update_cluster(clusterIdentifier=cluster["id"], slurmConfiguration={"scaleDownIdleTimeInSeconds": 60})
    assert error_of(blocked)["resourceId"] == retry["id"]


def test_a_store_outage_is_an_internal_server_error_that_reveals_nothing(tmp_path):
    with PostgresServer() as postgres:  # its own PostgreSQL: this test stops it
        database = postgres.create_database("outage")
        server = OpenPcs(tmp_path / "data", None, env={"OPENPCS_DATABASE": database}).start()
        try:
            pcs = server.client()
            create_cluster(pcs, "before-the-outage", wait=False)
            postgres.stop()
            with pytest.raises(pcs.exceptions.InternalServerException) as refused:
                pcs.list_clusters()
            response = refused.value.response
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 500
            assert response["Error"]["Message"].startswith("The service had an internal error; the request was "
                                                           "not applied.")
            body = str(response)
            assert "Traceback" not in body and "psycopg" not in body and database not in body
            request_id = response["ResponseMetadata"]["RequestId"]
            assert f"internal error in ListClusters (request {request_id})" in server.log()  # the operator's view
        finally:
            server.stop()
