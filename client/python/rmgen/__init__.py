"""rmgen: the Python client of the rmgen coordinator (`Client`), typed errors
(`rmgen.errors`), reports with figures (`python -m rmgen.report`) and the hub's Parquet
files in (`python -m rmgen.data export`)."""
from .client import Client, Logs, Update, per_seed_frame  # noqa: F401
from .errors import (  # noqa: F401
    AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound,
    PermissionDenied, ResourceExhausted, RmgenError, Unauthenticated, Unavailable)

__version__ = "0.1.0"
