"""The members of today's PCS model that openpcs gives meaning to, checked in the running Slurm: a node
group's own idle time, its gres.conf records, and a node group without a launch template. Real daemons."""

from __future__ import annotations

import re

from conftest import node_group_params, wait_for
from test_slurm import cluster_with_nodes, openpcs_exec


def partition(server, cluster: str, name: str) -> str:
    return openpcs_exec(server, cluster, "scontrol", "-o", "show", "partition", name, check=False).stdout


def test_a_node_groups_own_idle_time_is_its_nodes_suspend_time(server):
    pcs = server.client()
    cluster, group, _ = cluster_with_nodes(pcs, nodes=1, max_nodes=3,
                                           slurmConfiguration={"scaleDownIdleTimeInSeconds": 90})
    own = partition(server, cluster["id"], f"openpcs_idle_{group['name']}")
    assert re.search(r"\bSuspendTime=90\b", own) and f"Nodes={group['name']}-[1-3]" in own
    assert "State=INACTIVE" in own and "Hidden=YES" in own  # it takes no jobs
    # -1 removes the override: the cluster's idle time applies again.
    pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"],
                                  slurmConfiguration={"scaleDownIdleTimeInSeconds": -1})
    wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                computeNodeGroupIdentifier=group["id"]), "computeNodeGroup",
             ("ACTIVE",), timeout=60)
    assert "not found" in partition(server, cluster["id"], f"openpcs_idle_{group['name']}")


def test_gres_custom_settings_are_gres_conf_records_of_the_groups_nodes(server):
    pcs = server.client()
    cluster, group, queue = cluster_with_nodes(
        pcs, nodes=1, max_nodes=1, instanceConfigs=[{"instanceType": "g5.2xlarge"}],
        slurmConfiguration={"gresCustomSettings": [{"Name": "gpu", "Cores": "0-3"}]})
    node = f"{group['name']}-1"
    gres_conf = (server.data_dir / "clusters" / cluster["id"] / "etc" / "gres.conf").read_text()
    assert re.search(rf"^NodeName={node} Name=gpu Type=a10g File=\S+/gpu0 Cores=0-3$", gres_conf, re.M), gres_conf
    # Slurm took it: the node is up with its GPU, and a job gets it.
    out = openpcs_exec(server, cluster["id"], "srun", "-p", queue["name"], "--gres=gpu:1", "bash", "-c",
                       "echo $CUDA_VISIBLE_DEVICES").stdout.strip()
    assert out == "0"


def test_a_managed_node_group_needs_no_launch_template(server):
    pcs = server.client()
    cluster, _, _ = cluster_with_nodes(pcs, nodes=0, max_nodes=1, queue=False)
    params = node_group_params(cluster["id"], min_count=1, max_count=1, launchTemplateMode="MANAGED",
                               amiId="ami-0123456789abcdef0", securityGroupIds=["sg-0123456789abcdef0"])
    del params["customLaunchTemplate"]
    group = pcs.create_compute_node_group(**params)["computeNodeGroup"]
    active = wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                         computeNodeGroupIdentifier=group["id"]),
                      "computeNodeGroup", ("ACTIVE",), timeout=60)
    assert active["launchTemplateMode"] == "MANAGED" and "customLaunchTemplate" not in active
    states = openpcs_exec(server, cluster["id"], "scontrol", "-o", "show", "node", f"{group['name']}-1").stdout
    assert "State=IDLE " in states
