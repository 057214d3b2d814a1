"""The client's stream splitter: JSON objects back to back, whatever the chunk boundaries."""

import json

import pytest

from client.events import JsonStream, json_values

EVENTS = [{"step": 1, "steps": 2}, {"stage": "caption", "result": {"text": "ünïcode ✓"}}, {"images": ["x" * 50]}]
WIRE = "".join(json.dumps(event, ensure_ascii=False) for event in EVENTS).encode()


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(WIRE)])
def test_events_split_at_any_byte_come_out_whole(size):
    # a 1-byte chunking also cuts the multi-byte UTF-8 characters in half
    chunks = [WIRE[i : i + size] for i in range(0, len(WIRE), size)]
    assert json_values(chunks) == EVENTS


def test_an_incomplete_event_waits_for_the_next_chunk():
    stream = JsonStream()
    assert list(stream.feed('{"a": 1}{"b": ')) == [{"a": 1}]
    assert stream.rest() == '{"b":'
    assert list(stream.feed("2}")) == [{"b": 2}]


def test_a_stream_that_ends_inside_an_event_is_an_error():
    with pytest.raises(ValueError, match="ends inside a JSON value"):
        json_values(['{"a": 1}{"b"'])
