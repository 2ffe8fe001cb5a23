"""Errors as AWS shapes them: a `__type`, an HTTP status and the error shape's members.

Handlers raise `ApiError` (or one of the helpers below); the server turns it into the JSON body the
service model describes. The model marks only server faults (`"fault": true`); the HTTP status of each
client error is not in botocore's model, so it comes from the table below, which is the one AWS's
Smithy services use (and PCS's API reference lists).
"""

from __future__ import annotations

from typing import Any

HTTP_STATUS = {
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ConflictException": 409,
    "ServiceQuotaExceededException": 402,
    "ThrottlingException": 429,
    "InternalServerException": 500,
}


class ApiError(Exception):
    """An error response: `code` becomes `__type`, `members` the error shape's other members."""

    def __init__(self, code: str, message: str, status: int | None = None, **members: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else HTTP_STATUS.get(code, 400)
        self.members = {k: v for k, v in members.items() if v is not None}

    def body(self) -> dict[str, Any]:
        return {"__type": self.code, "message": self.message, **self.members}


def validation_error(message: str, fields: list[tuple[str, str]] | None = None,
                     reason: str = "fieldValidationFailed") -> ApiError:
    field_list = [{"name": name, "message": msg} for name, msg in fields or []]
    return ApiError("ValidationException", message, reason=reason, fieldList=field_list or None)


def field_error(name: str, message: str) -> ApiError:
    """A ValidationException about one input member, worded as AWS words them."""
    return validation_error(f"1 validation error detected: {message}", [(name, message)])


def not_found(resource_type: str, identifier: str, message: str | None = None) -> ApiError:
    return ApiError("ResourceNotFoundException",
                    message or f"The {resource_type} {identifier!r} does not exist.",
                    resourceId=identifier, resourceType=resource_type)


def conflict(message: str, resource_id: str, resource_type: str) -> ApiError:
    return ApiError("ConflictException", message, resourceId=resource_id, resourceType=resource_type)


def quota_exceeded(message: str, quota_code: str, resource_id: str | None = None,
                   resource_type: str | None = None) -> ApiError:
    return ApiError("ServiceQuotaExceededException", message, serviceCode="pcs", quotaCode=quota_code,
                    resourceId=resource_id, resourceType=resource_type)


def access_denied(message: str) -> ApiError:
    return ApiError("AccessDeniedException", message)


def internal_error() -> ApiError:
    return ApiError("InternalServerException",
                    "The service had an internal error; the request was not applied. Try again, and "
                    "report it with the x-amzn-RequestId if it persists.")
