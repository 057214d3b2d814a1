"""What every handler shares: request parsing, image codecs, errors, device choice, the batch loop."""
from .base import BATCH_SIZE_HEADER, BatchHandler, Result, ServerError
from .errors import InputError, LimitError, error_body
from .images import ImageLimits, crop, decode_image, decode_png, encode_png
from .payload import (check_number, check_str, get_bool, get_boxes, get_float, get_int, get_points,
                      get_str, get_str_list, read_payload, reject_unknown, require)
from .runtime import handler_config, select_device, select_dtype, weights_dir

__all__ = [
    "BATCH_SIZE_HEADER", "BatchHandler", "ImageLimits", "InputError", "LimitError", "Result", "ServerError",
    "check_number", "check_str", "crop", "decode_image", "decode_png", "encode_png", "error_body",
    "get_bool", "get_boxes", "get_float", "get_int", "get_points", "get_str", "get_str_list",
    "handler_config", "read_payload", "reject_unknown", "require", "select_device", "select_dtype",
    "weights_dir",
]
