"""SageMaker HyperPod's cluster and node API, served over the same engine as PCS."""
