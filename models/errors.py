"""The error family every plane maps in one place (HTTP status, GraphQL code, gRPC status)."""

from __future__ import annotations

from typing import Any

# Characters of a client's value an error repeats at most (a 422's `input`, a name quoted in a
# message): enough to recognise it, without sending a large body back.
ECHO_MAX = 200
TRUNCATED = "…(truncated)"


def shown(text: str) -> str:
    """`text` as an error repeats it: cut after ECHO_MAX characters."""
    return text if len(text) <= ECHO_MAX else text[:ECHO_MAX] + TRUNCATED


class WorkflowError(Exception):
    """Base of the errors we raise on purpose; anything else is unexpected and gets masked.

    Each subclass names what it maps to on every plane, so that the mapping lives here alone.
    """

    http_status = 400
    graphql_code = "BAD_REQUEST"
    grpc_code = "FAILED_PRECONDITION"  # a name of grpc.StatusCode

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def extensions(self) -> dict[str, Any]:
        """What graphql-core copies into the GraphQL error's `extensions`."""
        return {"code": self.graphql_code}


class NotFound(WorkflowError):
    """The object named by the request does not exist (or no longer does)."""

    http_status = 404
    graphql_code = "NOT_FOUND"
    grpc_code = "NOT_FOUND"


class Invalid(WorkflowError):
    """The request is malformed. `errors` has pydantic-style entries naming each bad field."""

    http_status = 422
    graphql_code = "BAD_USER_INPUT"
    grpc_code = "INVALID_ARGUMENT"

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [{"loc": [], "msg": message, "type": "value_error"}]


class Conflict(WorkflowError):
    """The request contradicts the current state."""

    http_status = 409
    graphql_code = "CONFLICT"
    grpc_code = "FAILED_PRECONDITION"


class Unavailable(WorkflowError):
    """A service this one depends on does not answer; trying again later may work."""

    http_status = 503
    graphql_code = "SERVICE_UNAVAILABLE"
    grpc_code = "UNAVAILABLE"


WORKFLOW_NOT_FOUND = "Workflow not found"
TASK_NOT_FOUND = "Task not found in this workflow"


class TooManyRequests(WorkflowError):
    """The caller started executions faster than its rate allows; trying again later works."""

    http_status = 429
    graphql_code = "RATE_LIMITED"
    grpc_code = "RESOURCE_EXHAUSTED"
