"""Length-prefixed frames over a connected stream socket, with buffered reads.

Each frame is an 8-byte little-endian length followed by that many bytes. Reads are buffered:
one ``recv`` usually brings a whole small frame (and any frames behind it), where
multiprocessing's ``Connection`` makes two system calls per frame (the length, then the body).
A coordinator and its worker each hold one end of a socket pair.

>>> import socket
>>> a, b = socket.socketpair()
>>> left, right = FrameChannel(a), FrameChannel(b)
>>> left.send(b"one"); left.send(b"two")
>>> right.recv(), right.buffered(), right.recv()
(b'one', True, b'two')
>>> left.close(); right.recv()
Traceback (most recent call last):
EOFError
>>> right.close()
"""
from __future__ import annotations

import signal
import socket
import struct
import threading

LENGTH = struct.Struct("<Q")
#: Bytes asked of the kernel per read; the rest of a larger frame is asked for in pieces of up to
#: MAX_READ once its length is known.
READ_SIZE = 256 * 1024
MAX_READ = 8 * 1024 * 1024
#: Frames up to this size are sent with their length in one system call.
COALESCE = 64 * 1024
_ALL_SIGNALS = signal.valid_signals()


class FrameChannel:
    """Frames over one end of a connected stream socket (blocking sends, buffered reads)."""

    def __init__(self, sock: socket.socket, defer_signals: bool = False):
        self.sock = sock
        self.defer_signals = defer_signals
        self.buffer = bytearray()
        self.start = 0  # where the unread bytes begin in ``buffer``
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    def send(self, frame: bytes) -> None:
        """Send one frame (blocks until the kernel has taken all of it).

        With ``defer_signals``, a frame sent from the main thread is never left half-sent by an
        interrupt: signals are held back while it is written (a signal handler raising
        KeyboardInterrupt in the middle of ``sendall`` would leave part of the frame in the
        socket and corrupt the stream for good) and handled as soon as the frame is out.
        """
        if self.closed:
            raise OSError("channel is closed")
        header = LENGTH.pack(len(frame))
        deferred = self.defer_signals and threading.current_thread() is threading.main_thread()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS) if deferred else None
        try:
            if len(frame) <= COALESCE:
                self.sock.sendall(header + frame)
            else:
                self.sock.sendall(header)
                self.sock.sendall(frame)
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def recv(self) -> bytes:
        """The next frame, waiting for it (EOFError once the other end has closed)."""
        while True:
            frame = self.take()
            if frame is not None:
                return frame
            self.fill()

    def buffered(self) -> bool:
        """Whether a whole frame is already read and waiting."""
        unread = len(self.buffer) - self.start
        return unread >= LENGTH.size and unread - LENGTH.size >= LENGTH.unpack_from(self.buffer, self.start)[0]

    def take(self) -> bytes | None:
        """The next frame if it is whole in the buffer, else None."""
        if not self.buffered():
            return None
        (size,) = LENGTH.unpack_from(self.buffer, self.start)
        begin = self.start + LENGTH.size
        with memoryview(self.buffer) as view:
            frame = bytes(view[begin:begin + size])
        self.start = begin + size
        if self.start == len(self.buffer):
            self.buffer.clear()
            self.start = 0
        return frame

    def fill(self, wait: bool = True) -> bool:
        """Read what the socket has (waiting for something if ``wait``); False if nothing was there.

        Raises EOFError once the other end has closed, OSError if this end is closed.
        """
        if self.closed:
            raise OSError("channel is closed")
        if self.start:
            del self.buffer[:self.start]
            self.start = 0
        want = READ_SIZE
        if len(self.buffer) >= LENGTH.size:  # a large frame: read the rest of it at once
            missing = LENGTH.size + LENGTH.unpack_from(self.buffer)[0] - len(self.buffer)
            want = min(max(want, missing), MAX_READ)
        try:
            chunk = self.sock.recv(want, 0 if wait else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not chunk:
            raise EOFError
        self.buffer += chunk
        return True
