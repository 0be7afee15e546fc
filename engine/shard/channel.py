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

import select
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


class FrameChannel:
    """Frames over one end of a connected stream socket (blocking sends, buffered reads)."""

    def __init__(self, sock: socket.socket, shield_sends: bool = False):
        self.sock = sock
        self.shield_sends = shield_sends  # large frames from the main thread go out through a helper thread
        self.buffer = bytearray()
        self.start = 0  # where the unread bytes begin in ``buffer``
        self.closed = False
        self.writer: tuple[threading.Thread, threading.Event] | None = None  # a helper writing a large frame
        self.poller: select.poll | None = None  # made on the first wait (see _wait_readable)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    def send(self, frame: bytes) -> None:
        """Send one frame (blocks until the kernel has taken all of it).

        With ``shield_sends``, a large frame sent from the main thread is written by a helper
        thread while the main thread waits: Python runs signal handlers in the main thread
        only, so an interrupt (Ctrl-C) raised while the frame goes out cannot leave half of it
        in the socket, which would corrupt the stream for good; the helper finishes the frame,
        and the next send on this channel waits for it. (The wait is on an Event, not on
        ``Thread.join``: a join interrupted by a signal handler's exception marks the thread as
        stopped while it still runs in CPython 3.11, so the next send would not wait for it.)
        """
        if self.closed:
            raise OSError("channel is closed")
        if self.writer is not None:
            self._wait_writer(*self.writer)
            self.writer = None
        header = LENGTH.pack(len(frame))
        if len(frame) <= COALESCE:
            self.sock.sendall(header + frame)
        elif self.shield_sends and threading.current_thread() is threading.main_thread():
            failure: list[OSError] = []
            done = threading.Event()
            thread = threading.Thread(target=self._write, args=(header, frame, failure, done),
                                      name="segengine-frame-writer", daemon=True)
            self.writer = (thread, done)
            thread.start()
            done.wait()  # an interrupt raised here leaves the writer running
            self.writer = None
            if failure:
                raise failure[0]
        else:
            self._write(header, frame)

    @staticmethod
    def _wait_writer(thread: threading.Thread, done: threading.Event) -> None:
        """Wait until a helper's frame is out (or the helper never started: an interrupt in ``start``)."""
        while not done.wait(0.5):
            if thread.ident is None:
                return

    def _write(self, header: bytes, frame: bytes, failure: list[OSError] | None = None,
               done: threading.Event | None = None) -> None:
        """Send a large frame in two writes (from a helper thread: errors go to ``failure``, then ``done`` is set)."""
        try:
            self.sock.sendall(header)
            self.sock.sendall(frame)
        except OSError as error:
            if failure is None:
                raise
            failure.append(error)
        finally:
            if done is not None:
                done.set()

    def _wait_readable(self) -> None:
        """Sleep until the socket has something to read (or is closed).

        Not in a blocking ``recv``: that sleeper is also woken each time the other end reads
        what this end sent (the kernel signals "writable" on the same wait queue), which for a
        coordinator waiting on a worker that has just picked up its request meant a useless
        switch to the coordinator and back on the worker's CPU. ``poll`` for POLLIN is woken by
        incoming data only.
        """
        if self.poller is None:
            self.poller = select.poll()
            self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.poll()

    def recv(self) -> bytes:
        """The next frame, waiting for it (EOFError once the other end has closed)."""
        if not self.buffer:
            frame = self._read_single(wait=True)
            if frame is not None:
                return frame
        while True:
            frame = self.take()
            if frame is not None:
                return frame
            self.fill()

    def drain(self) -> list[bytes]:
        """The whole frames that can be read now, without waiting (EOFError once the other end has closed)."""
        if not self.buffer:
            frame = self._read_single(wait=False)
            if frame is not None:
                return [frame]
        else:
            self.fill(wait=False)
        frames = []
        frame = self.take()
        while frame is not None:
            frames.append(frame)
            frame = self.take()
        return frames

    def _read_single(self, wait: bool) -> bytes | None:
        """One read into the empty buffer: the frame if the read brought exactly one whole frame
        (the usual case for small frames: no buffering at all); else None, with what was read
        (if anything) in the buffer."""
        if self.closed:
            raise OSError("channel is closed")
        if wait:
            self._wait_readable()
        try:
            chunk = self.sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        if not chunk:
            raise EOFError
        if len(chunk) >= LENGTH.size and LENGTH.unpack_from(chunk)[0] == len(chunk) - LENGTH.size:
            return chunk[LENGTH.size:]
        self.buffer += chunk
        return None

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
        while True:
            if wait:
                self._wait_readable()  # returns at once if something is there
            try:
                chunk = self.sock.recv(want, socket.MSG_DONTWAIT)
                break
            except BlockingIOError:
                if not wait:
                    return False
        if not chunk:
            raise EOFError
        self.buffer += chunk
        return True
