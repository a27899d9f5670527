"""librdkafka's keyed partitioners: which partition a producer of ours put a record with a given key on.

The tailer writes nothing per event, so `cdcflow trace` finds an event's partition from its key, as the producer
chose it: librdkafka's default `consistent_random` is CRC-32 of the key modulo the partition count (random only
for an empty key, which an event never has: its key is the aggregate id); `murmur2_random` is the Java client's
default (murmur2, sign bit cleared); `fnv1a_random` is FNV-1a 32-bit. The `_random` variants differ from their
plain ones only for empty keys.
"""

from __future__ import annotations

import zlib

#: librdkafka's default `partitioner`.
DEFAULT_PARTITIONER = "consistent_random"


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash as the Java client (and librdkafka) compute it, as an unsigned int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length % 4
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def fnv1a(data: bytes) -> int:
    """FNV-1a, 32 bits."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def partition_for(key: bytes, partitions: int, partitioner: str = DEFAULT_PARTITIONER) -> int | None:
    """The partition librdkafka's `partitioner` puts a record with non-empty `key` on, among `partitions`; None
    for a partitioner that is not keyed (random) or not known here."""
    if partitions <= 0 or not key:
        return None
    if partitioner in ("consistent", "consistent_random"):
        return zlib.crc32(key) % partitions
    if partitioner in ("murmur2", "murmur2_random"):
        return (murmur2(key) & 0x7FFFFFFF) % partitions
    if partitioner in ("fnv1a", "fnv1a_random"):
        return fnv1a(key) % partitions
    return None
