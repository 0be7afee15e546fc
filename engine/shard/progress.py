"""What a worker has started and answered, in memory it shares with its coordinator.

A worker serves several requests at once and answers them out of order, so when it dies the
coordinator needs to know, per request still unanswered, whether the worker had started it.
The shared file holds two rings of SLOTS request ids: slot ``id % SLOTS`` of the first is set
to ``id`` when the worker starts request ``id``, the same slot of the second once its reply is
sent. A worker has far fewer than SLOTS requests in flight (one per lane, plus requests left
behind by callers that gave up), so a slot is not reused while its request is in flight.

>>> import os
>>> fd = os.memfd_create("doctest"); os.ftruncate(fd, SIZE)
>>> worker, coordinator = Progress(fd), Progress(fd); os.close(fd)
>>> worker.start(5); worker.answer(5); worker.start(SLOTS + 6)
>>> coordinator.answered(5), coordinator.started(6), coordinator.started(SLOTS + 6)
(True, False, True)
>>> worker.close(); coordinator.close()
"""
from __future__ import annotations

import mmap
import struct

#: Requests a worker can have in flight whose state is still readable.
SLOTS = 4096
ID = struct.Struct("<Q")
#: Bytes of the shared file.
SIZE = 2 * SLOTS * ID.size


class Progress:
    """The started and answered request ids of one worker (a view of its shared file)."""

    def __init__(self, fd: int):
        self.map = mmap.mmap(fd, SIZE)

    def start(self, request_id: int) -> None:
        """The worker has started request ``request_id``."""
        ID.pack_into(self.map, (request_id % SLOTS) * ID.size, request_id)

    def answer(self, request_id: int) -> None:
        """The worker has sent its reply to ``request_id``."""
        ID.pack_into(self.map, (SLOTS + request_id % SLOTS) * ID.size, request_id)

    def started(self, request_id: int) -> bool:
        return ID.unpack_from(self.map, (request_id % SLOTS) * ID.size)[0] == request_id

    def answered(self, request_id: int) -> bool:
        return ID.unpack_from(self.map, (SLOTS + request_id % SLOTS) * ID.size)[0] == request_id

    def close(self) -> None:
        self.map.close()
