"""Lookups in a table's summary without parsing it whole.

A table file's summary body lists (timeline_len: u16 | min_seq: u64 |
max_seq: u64 | count: u64 | timeline_id) per timeline, sorted by
timeline_id (layout in tlsm.sstable). Parsing a summary of 10,000
timelines into a dict takes about 2 ms with the extension (a 2-core AMD
EPYC), which the first read after open would wait for in every table it
consults. SummaryIndex only records where each entry starts, and serves
a table's first 32 lookups by binary search over the raw body. After
that it hashes every timeline id into an open-addressing table (about
0.2 ms for 10,000 ids), and a lookup probes one slot on most calls. The
binary search misses the CPU cache at most of its steps: in a profile of
reads that each consulted six tables of about 10,000 timelines, it took
11% of the time.

The pure-Python implementation below is the reference. tlsm_ext/table_index.pyx
implements the same class in Cython. When the extension is built, this
module rebinds SummaryIndex to the extension's, and the pure class stays
reachable through ``PurePython``.
"""

import types

from . import _impl
from .scan import PurePython as _scan_twins


class SummaryIndex:
    """The timelines of one table's summary body, looked up by timeline_id.

    Raises ValueError(problem, position) for a truncated or overrunning
    body, as tlsm.scan.parse_summary does. Building costs O(timelines);
    get() costs O(1) on average in the extension.
    """

    def __init__(self, body):
        # The twin parses the body into a dict in place of the extension's
        # search and hash table, so the results and errors are the same.
        self._spans = _scan_twins.parse_summary(body)

    def __len__(self):
        return len(self._spans)

    def get(self, timeline_id):
        """Return (min_seq, max_seq, count) of timeline_id (bytes), or None."""
        span = self._spans.get(timeline_id)
        if span is None and not isinstance(timeline_id, bytes):
            raise TypeError(
                f"timeline_id must be bytes, not {type(timeline_id).__name__}"
            )
        return span


PurePython = types.SimpleNamespace(SummaryIndex=SummaryIndex)

_extension = _impl.load_extension("table_index")
if _extension is not None:
    SummaryIndex = _extension.SummaryIndex
    IMPLEMENTATION = "cython"
else:
    IMPLEMENTATION = "python"
