"""The SageMaker operations openpcs serves: HyperPod's cluster and node API (issue 11).

The front door is in place: botocore's `sagemaker` model (AWS JSON 1.1, target prefix SageMaker, SigV4
signing name sagemaker) parses and checks every request, and an operation this class has no method for is
answered with UnknownOperationException (HTTP 400), the error an AWS JSON service gives for an operation it
does not serve, never a 500. The HyperPod operations (CreateCluster, BatchAddClusterNodes and their kin)
become methods here as they are built.
"""

from __future__ import annotations


class SageMakerHandlers:
    """No SageMaker operation is served yet."""
