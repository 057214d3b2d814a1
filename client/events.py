"""Streamed answers arrive as JSON objects back to back (TorchServe's chunked HTTP, or one or more per
gRPC message); :class:`JsonStream` splits them, whatever the chunk boundaries."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from typing import Any


class JsonStream:
    """Feed text or bytes as it arrives; get every complete JSON value seen so far."""

    def __init__(self) -> None:
        self._decoder = json.JSONDecoder()
        # bytes are decoded here: a chunk may end inside a multi-byte character
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""

    def feed(self, chunk: bytes | str) -> Iterator[Any]:
        self._pending += chunk if isinstance(chunk, str) else self._text.decode(chunk)
        while self._pending.strip():
            text = self._pending.lstrip()
            try:
                value, end = self._decoder.raw_decode(text)
            except ValueError:  # an incomplete value: wait for the next chunk
                self._pending = text
                return
            self._pending = text[end:]
            yield value

    def rest(self) -> str:
        """Text left over that is not (yet) a complete value."""
        return self._pending.strip()


def json_values(chunks: Iterable[bytes | str]) -> list[Any]:
    """Every JSON value in a whole stream; raises ValueError if it ends inside one."""
    stream = JsonStream()
    values = [value for chunk in chunks for value in stream.feed(chunk)]
    if stream.rest():
        raise ValueError(f"the stream ends inside a JSON value: {stream.rest()[:80]!r}")
    return values
