"""Typed exceptions for the coordinator's gRPC status codes."""
from __future__ import annotations

import grpc


class RmgenError(Exception):
    """A call to the coordinator failed. `code` is the gRPC status code, `details` the
    coordinator's message (it names the file, line or field at fault)."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = ""):
        self.code = code
        self.details = details
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {details}")


class InvalidArgument(RmgenError):
    """The request (a study file, a spec, a page token) is malformed."""


class NotFound(RmgenError):
    """No such study, job or worker (or not one the caller may see)."""


class AlreadyExists(RmgenError):
    pass


class PermissionDenied(RmgenError):
    """The token's role may not do this (an operator action, another user's work)."""


class Unauthenticated(RmgenError):
    """No token, or a token the coordinator does not know."""


class ResourceExhausted(RmgenError):
    """A quota or a size limit: the message says which."""


class FailedPrecondition(RmgenError):
    pass


class Unavailable(RmgenError):
    """The coordinator cannot be reached, or its store is busy: retry later."""


class DeadlineExceeded(RmgenError):
    pass


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(err: grpc.RpcError, method: str = "") -> RmgenError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return _BY_CODE.get(code, RmgenError)(code, details or "", method)
