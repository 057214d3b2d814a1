"""Python client for image-interpreter: REST (:class:`Client`) or gRPC (:class:`GrpcClient`).

Both have the same endpoint methods (generate, concepts, segment, depth, pose, pipeline, ...) from
:class:`BaseClient`, and read their tokens from TorchServe's key_file.json. ``GrpcClient`` is
imported on first use: it needs the generated stubs (``make setup``), which REST users and the
pipeline's workers do not.
"""

from .auth import KeyFile, is_grpc_token_refusal, is_token_refusal
from .rest import ApiError, BaseClient, Client, encode_image

__all__ = [
    "ApiError",
    "BaseClient",
    "Client",
    "GrpcClient",
    "KeyFile",
    "encode_image",
    "is_grpc_token_refusal",
    "is_token_refusal",
]


def __getattr__(name: str):
    if name == "GrpcClient":
        from .grpc_client import GrpcClient

        return GrpcClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
