"""Bloom filter over the timeline keys of one table file.

Opening a database reads only each table's footer, tombstones and bloom
filter. A read of a timeline consults the filter of a table whose index
and summary are not loaded yet, and skips the table when the filter rules
the timeline out, so cold tables cost neither I/O nor memory.

Layout (on disk, frozen):

    bloom body := probes: u8 | bit array (8 * length bits, bit i of the
                  array is bit i % 8 of byte i // 8)

A key sets or tests bits (h1 + i * h2) mod m for i in 0..probes-1, where
h1 and h2 are the low and high 32 bits of the key's 8-byte BLAKE2b digest
(little-endian), h2 forced odd. With 10 bits per key and 7 probes the
false-positive rate is about 1% (the standard estimate
(1 - e^(-k n / m))^k gives 0.8%).
"""

from hashlib import blake2b

import numpy as np

BITS_PER_KEY = 10
PROBES = 7
_MIN_BITS = 64


def _hashes(key):
    digest = int.from_bytes(blake2b(key, digest_size=8).digest(), "little")
    return digest & 0xFFFFFFFF, (digest >> 32) | 1


def build(keys, bits_per_key=BITS_PER_KEY, probes=PROBES):
    """Return the bloom body for an iterable of keys (bytes).

    Costs one BLAKE2b digest per key in Python and the probes in numpy.
    """
    digests = b"".join([blake2b(key, digest_size=8).digest() for key in keys])
    count = len(digests) // 8
    bits = max(_MIN_BITS, count * bits_per_key)
    bits = (bits + 7) // 8 * 8
    bitmap = np.zeros(bits, dtype=np.bool_)
    if count:
        # Each digest is h1 then h2, as two little-endian u32 halves.
        halves = np.frombuffer(digests, dtype="<u4").reshape(count, 2)
        h1 = halves[:, :1].astype(np.uint64)
        h2 = halves[:, 1:].astype(np.uint64) | np.uint64(1)
        steps = np.arange(probes, dtype=np.uint64)
        bitmap[((h1 + steps * h2) % np.uint64(bits)).ravel()] = True
    # Bit j of the filter is bit j % 8 of byte j // 8.
    array = np.packbits(bitmap, bitorder="little")
    return bytes([probes]) + array.tobytes()


class BloomFilter:
    """A loaded bloom body; may_contain(key) is False only for absent keys."""

    __slots__ = ("_bits", "_size", "_probes")

    def __init__(self, body):
        if len(body) < 2 or not 1 <= body[0] <= 30:
            raise ValueError(f"malformed bloom filter of {len(body)} bytes")
        self._probes = body[0]
        self._bits = bytes(body[1:])
        self._size = len(self._bits) * 8

    def may_contain(self, key):
        h1, h2 = _hashes(key)
        bits, size = self._bits, self._size
        for i in range(self._probes):
            position = (h1 + i * h2) % size
            if not bits[position >> 3] & (1 << (position & 7)):
                return False
        return True
