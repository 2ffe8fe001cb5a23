"""botocore's service models: the specification every request and response is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import botocore.session
from botocore.model import OperationModel, ServiceModel


@dataclass(frozen=True)
class Service:
    """One AWS JSON service as its model states it: the target prefix, JSON version and operations."""

    model: ServiceModel

    @property
    def target_prefix(self) -> str:
        return self.model.metadata["targetPrefix"]

    @property
    def content_type(self) -> str:
        return f"application/x-amz-json-{self.model.metadata['jsonVersion']}"

    @property
    def signing_name(self) -> str:
        return self.model.metadata.get("signingName", self.model.endpoint_prefix)

    def operation(self, name: str) -> OperationModel | None:
        if name not in self._operation_names():
            return None
        return self.model.operation_model(name)

    @cache  # noqa: B019 - one Service per model for the life of the process
    def _operation_names(self) -> frozenset[str]:
        return frozenset(self.model.operation_names)


@cache
def load_service(name: str) -> Service:
    return Service(botocore.session.get_session().get_service_model(name))
