"""Request rows -> payloads: what every handler's parse starts from (found by the fuzzer: a body of
spaces was read as an image and refused as `image: is not a PNG or JPEG image`)."""

import pytest

from handlers.common import InputError, read_payload


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\t ", bytearray(b"  ")])
def test_an_empty_or_blank_raw_body_is_refused_naming_the_body(body):
    with pytest.raises(InputError, match=r"^body: request body is empty"):
        read_payload({"body": body})


def test_a_raw_image_body_becomes_the_image_field_and_json_bytes_are_parsed():
    assert read_payload({"body": b"\x89PNG..."}) == {"image": b"\x89PNG..."}
    assert read_payload({"body": b'  {"texts": ["a"]}'}) == {"texts": ["a"]}
