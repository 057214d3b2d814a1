"""Python client for image-interpreter (REST; tokens from TorchServe's key_file.json)."""
from .auth import KeyFile, is_token_refusal
from .rest import ApiError, Client, encode_image

__all__ = ["ApiError", "Client", "KeyFile", "encode_image", "is_token_refusal"]
