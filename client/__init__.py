"""clstream's client side: a typed library over the gRPC stubs (`client.api`), the replay job that
plays a dataset back as a live stream (`client.replay`), its report and figures, and the
`clstream-client` command (stream, predict, status, demo)."""
from .api import Client, RetryPolicy, Schema, ServiceError

__all__ = ["Client", "RetryPolicy", "Schema", "ServiceError"]
