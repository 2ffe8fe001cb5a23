"""The SageMaker operations openpcs serves: HyperPod's cluster and node API, over the same engine as PCS.

botocore's `sagemaker` model (AWS JSON 1.1, target prefix SageMaker, SigV4 signing name sagemaker) parses and
checks every request first; an operation this class has no method for is answered UnknownOperationException.
Each write is one store transaction that records the desired state of the cluster's engine resources (the
cluster, a node group per Compute or Login instance group, a queue per partition: domain.hyperpod) and returns;
the reconciler makes Slurm match, as for PCS. The operations live by what they act on: clusters.py, nodes.py,
events.py.
"""

from __future__ import annotations

from .clusters import ClusterOperations
from .events import EventOperations
from .nodes import NodeOperations


class SageMakerHandlers(ClusterOperations, NodeOperations, EventOperations):
    """Every HyperPod operation openpcs serves."""
