"""Static sharding by room: replica i of N owns the rooms whose hash of the name,
modulo N, is i.

The hash is Prometheus's `hashmod` (the last 8 bytes of the name's MD5, big-endian, as
an unsigned integer), not Python's salted `hash`: every replica, the dial-side hook and
a relabelling rule compute the same owner for a room. MD5 is used as a spread, not for
security.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["Shard", "shard_of"]


def shard_of(room: str, shards: int) -> int:
    """Which of `shards` replicas owns `room`."""
    digest = hashlib.md5(room.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % shards


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's place among the replicas: `index` of `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} is not one of 0 to {self.count - 1}")

    def owns(self, room: str) -> bool:
        return self.count == 1 or shard_of(room, self.count) == self.index
