"""Child process for crash tests: appends until killed, reporting each ack.

Usage: python crash_writer.py DATA_DIR SYNC MEMTABLE_BYTES [exit_after [keep-tail]]

Prints "timeline seq" on stdout after each append returns (an
acknowledged write), flushing every line, so the parent learns exactly what
was acknowledged before it sends SIGKILL. With exit_after, it stops after
that many appends with os._exit, leaving the log unflushed and the
database unclosed, as a crash would. Before exiting it cuts the log file
after its last record, so the parent can tear or extend that record at the
end of the file; with keep-tail it leaves the log's preallocated zero tail
in place instead, as SIGKILL does.

Appends with the default options take the fast path of tlsm.writer once a
timeline has been used; the first append to each timeline and every
rotation take the general path. Every 100 appends it prints "F bytes",
the log bytes written by the fast path so far.
"""

import os
import signal
import subprocess
import sys

import tlsm


def kill_after(path, sync, memtable_bytes, lines_wanted):
    """Run this script as a child, SIGKILL it after lines_wanted lines, return them all."""
    child = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            str(path),
            sync,
            str(memtable_bytes),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in child.stdout:
            lines.append(line)
            if len(lines) >= lines_wanted:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    lines.extend(child.stdout.read().splitlines())
    return lines


def main():
    path, sync, memtable_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    exit_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
    keep_tail = len(sys.argv) > 5 and sys.argv[5] == "keep-tail"
    db = tlsm.open(path, sync=sync, memtable_bytes=memtable_bytes)
    out = sys.stdout
    count = 0
    while exit_after is None or count < exit_after:
        timeline = f"t{count % 13}"
        if count % 5 == 4:
            seqs = db.append_batch(
                [
                    (timeline, b"b%d" % count),
                    ("fan", b"f%d" % count),
                    (timeline, b"c%d" % count),
                ]
            )
            out.write(
                f"B {timeline} {seqs[0]} fan {seqs[1]} {timeline} {seqs[2]} {count}\n"
            )
        else:
            seq = db.append(timeline, b"p%d" % count)
            out.write(f"A {timeline} {seq} {count}\n")
        count += 1
        if count % 100 == 0:
            # Bytes the fast path of tlsm.writer has logged, so tests can
            # check that it ran; the ack parsers skip this line.
            out.write(f"F {db._fast.wal_bytes}\n")
        out.flush()
    if not keep_tail:
        os.truncate(db._log.path, db._log.size)
    os._exit(0)


if __name__ == "__main__":
    main()
