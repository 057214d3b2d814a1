"""What every handler shares: request parsing, image codecs, errors, settings, device choice, the batch loop."""

from handlers.settings import HandlerSettings, ImageLimits, Settings, SettingsError, load_settings

from .base import BATCH_SIZE_HEADER, Batch, BatchHandler, Result, ServerError
from .errors import InputError, LimitError, error_body
from .images import crop, decode_image, decode_png, encode_png
from .payload import (
    check_number,
    check_str,
    get_bool,
    get_boxes,
    get_float,
    get_int,
    get_points,
    get_str,
    get_str_list,
    read_payload,
    reject_unknown,
    require,
)
from .runtime import handler_config, model_dir, select_device, select_dtype, weights_dir

__all__ = [
    "BATCH_SIZE_HEADER",
    "Batch",
    "BatchHandler",
    "HandlerSettings",
    "ImageLimits",
    "InputError",
    "LimitError",
    "Result",
    "ServerError",
    "Settings",
    "SettingsError",
    "check_number",
    "check_str",
    "crop",
    "decode_image",
    "decode_png",
    "encode_png",
    "error_body",
    "get_bool",
    "get_boxes",
    "get_float",
    "get_int",
    "get_points",
    "get_str",
    "get_str_list",
    "handler_config",
    "load_settings",
    "model_dir",
    "read_payload",
    "reject_unknown",
    "require",
    "select_device",
    "select_dtype",
    "weights_dir",
]
