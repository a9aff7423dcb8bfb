import json

import pytest

from sheesh.guest import protocol


def test_roundtrip_many_frames_in_pieces() -> None:
    msgs = [{"id": i, "op": "ping", "data": "x" * i} for i in range(50)]
    stream = b"".join(protocol.encode(m) for m in msgs)
    dec = protocol.FrameDecoder()
    out = []
    for i in range(0, len(stream), 7):
        out.extend(dec.feed(stream[i : i + 7]))
    assert out == msgs


def test_garbage_before_a_frame_is_skipped() -> None:
    dec = protocol.FrameDecoder()
    frame = protocol.encode({"id": 1, "ok": True})
    assert dec.feed(b"junk\x00\xa5S" + frame[:5]) == []
    assert dec.feed(frame[5:]) == [{"id": 1, "ok": True}]


def test_truncated_frame_after_reset_is_dropped() -> None:
    dec = protocol.FrameDecoder()
    frame = protocol.encode({"id": 2})
    dec.feed(frame[:-3])
    dec.reset()
    assert dec.feed(protocol.encode({"id": 3})) == [{"id": 3}]


def test_invalid_json_payload_is_ignored() -> None:
    bad = protocol.MAGIC + len(b"{nope").to_bytes(4, "big") + b"{nope"
    dec = protocol.FrameDecoder()
    assert dec.feed(bad + protocol.encode({"id": 4})) == [{"id": 4}]


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.encode({"blob": "x" * (protocol.MAX_FRAME + 1)})
    assert json.loads(protocol.encode({"a": 1})[protocol.HEADER_SIZE :]) == {"a": 1}
