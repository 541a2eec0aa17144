# The order of stored keys (timeline_id, seq): timeline ids byte by byte, a
# shorter id before any longer one that starts with it, then seqs.

from libc.stdint cimport uint64_t
from libc.string cimport memcmp


cdef inline int compare_keys(const void* timeline_a, Py_ssize_t length_a,
                             uint64_t seq_a, const void* timeline_b,
                             Py_ssize_t length_b, uint64_t seq_b) noexcept nogil:
    """Return <0, 0 or >0 as key a sorts before, equal to or after key b."""
    cdef int result = memcmp(timeline_a, timeline_b,
                             length_a if length_a < length_b else length_b)
    if result != 0:
        return result
    if length_a != length_b:
        return -1 if length_a < length_b else 1
    if seq_a != seq_b:
        return -1 if seq_a < seq_b else 1
    return 0
