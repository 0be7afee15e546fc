"""FrameChannel over real socket pairs: whole frames back, however the bytes arrive."""
from __future__ import annotations

import socket
import threading

import pytest

from engine.shard.channel import LENGTH, READ_SIZE, FrameChannel


@pytest.fixture()
def pair():
    a, b = socket.socketpair()
    left, right = FrameChannel(a), FrameChannel(b)
    yield left, right
    left.close()
    right.close()


def test_one_frame_per_read_comes_back_without_buffering(pair) -> None:
    left, right = pair
    left.send(b"alpha")
    assert right.recv() == b"alpha"
    assert right.buffer == bytearray()


def test_frames_that_arrive_together_come_back_in_order(pair) -> None:
    left, right = pair
    for word in (b"one", b"two", b"three"):
        left.send(word)
    assert right.recv() == b"one"
    assert right.drain() == [b"two", b"three"]
    assert right.drain() == []


def test_drain_returns_nothing_when_nothing_was_sent(pair) -> None:
    _, right = pair
    assert right.drain() == []


def test_a_frame_split_across_reads_is_put_together(pair) -> None:
    left, right = pair
    frame = b"x" * 100
    raw = LENGTH.pack(len(frame)) + frame
    left.sock.sendall(raw[:5])
    assert right.drain() == []  # not even the length yet
    left.sock.sendall(raw[5:60])
    assert right.drain() == []
    left.sock.sendall(raw[60:])
    assert right.drain() == [frame]


def test_a_frame_larger_than_one_read_comes_back_whole(pair) -> None:
    left, right = pair
    frame = bytes(range(256)) * (3 * READ_SIZE // 256 + 7)
    sender = threading.Thread(target=left.send, args=(frame,))
    sender.start()
    assert right.recv() == frame
    sender.join()


def test_eof_is_raised_once_the_other_end_closes(pair) -> None:
    left, right = pair
    left.send(b"last")
    left.close()
    assert right.recv() == b"last"
    with pytest.raises(EOFError):
        right.recv()
    with pytest.raises(EOFError):
        right.drain()
