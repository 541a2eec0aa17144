"""Seeded generators of the embedded workloads, shared by every peer.

Every peer of a run sees the same operations in the same order, because
each list is built from the same seed. Two sources are available:

synthetic   timelines "tl:NNNNN" with Zipf-skewed popularity (the k-th most
            popular timeline gets weight 1/k**zipf_s) and 128 random bytes
            per payload, so payloads do not compress.
irc         the Ubuntu IRC replay set: one timeline per channel, or per
            reply thread when the message has one, with the real message
            text as payload, replayed in log order (repeated from the start
            when more operations are requested than the file holds).

Workloads built here (sizes are set by the caller):
  appends      single appends, the load phase.
  batches      group sends: one append to the group's store timeline plus
               one to the sync timeline of each of its members, written as
               one atomic batch (1 + 20 entries with the synthetic source).
  pulls        "entries after a checkpoint, up to 100" on random timelines,
               the checkpoint drawn uniformly from 0..last seq.
  newest       "newest 20, reverse" on random timelines.
  mixed        50% newest-20 reads, 30% pulls, 20% single appends.
"""

import gzip
import json
import random
from dataclasses import dataclass, field

import numpy as np

IRC_PATH = "/work/shared/data/irc/ubuntu-irc-train.jsonl.gz"
PAYLOAD_BYTES = 128
PULL_LIMIT = 100
NEWEST_COUNT = 20
GROUP_MEMBERS = 20


@dataclass
class Workload:
    """Operations of one run, each a plain list of tuples or bytes."""

    source: str
    seed: int
    appends: list = field(default_factory=list)  # (timeline_id, payload)
    batches: list = field(default_factory=list)  # [(timeline_id, payload), ...]
    pulls: list = field(default_factory=list)  # (timeline_id, after_seq)
    newest: list = field(default_factory=list)  # timeline_id
    mixed: list = field(default_factory=list)  # ("append", tl, payload) or read
    extra_appends: list = field(default_factory=list)  # latency samples
    payload_bytes: int = 0  # sum of payload lengths in appends
    timeline_bytes: int = 0  # sum of timeline id lengths in appends
    read_timelines: int = 0

    def describe(self):
        """Return the sizes of each list, for the results file."""
        return {
            "source": self.source,
            "seed": self.seed,
            "appends": len(self.appends),
            "batches": len(self.batches),
            "batch_entries": sum(len(b) for b in self.batches),
            "pulls": len(self.pulls),
            "newest": len(self.newest),
            "mixed": len(self.mixed),
            "latency_appends": len(self.extra_appends),
            "payload_bytes": self.payload_bytes,
            "timeline_bytes": self.timeline_bytes,
            "read_timelines": self.read_timelines,
        }


def _zipf_weights(count, exponent):
    weights = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def _random_payloads(rng, count, size=PAYLOAD_BYTES):
    blob = rng.randbytes(count * size)
    return [blob[i * size : (i + 1) * size] for i in range(count)]


def build(sizes, source="synthetic", seed=42, timelines=10_000, zipf_s=1.0):
    """Build a Workload.

    sizes maps appends, batches, pulls, newest, mixed and latency_appends to
    operation counts. Raises FileNotFoundError when source is "irc" and the
    data file is missing.
    """
    if source == "synthetic":
        return _build_synthetic(sizes, seed, timelines, zipf_s)
    if source == "irc":
        return _build_irc(sizes, seed)
    raise ValueError(f"unknown workload source {source!r}; use synthetic or irc")


def _build_synthetic(sizes, seed, timelines, zipf_s):
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    ids = [b"tl:%05d" % i for i in range(timelines)]
    # Popularity rank k maps to a shuffled id, so popular timelines are not
    # neighbours in key order.
    rng.shuffle(ids)
    weights = _zipf_weights(timelines, zipf_s)

    n = sizes["appends"]
    picks = nprng.choice(timelines, size=n, p=weights)
    payloads = _random_payloads(rng, n)
    work = Workload("synthetic", seed)
    work.appends = [(ids[k], p) for k, p in zip(picks.tolist(), payloads)]
    counts = _count_per_timeline(work.appends)
    _add_totals(work)

    extra = sizes["latency_appends"]
    extra_picks = nprng.choice(timelines, size=extra, p=weights).tolist()
    work.extra_appends = list(
        zip((ids[k] for k in extra_picks), _random_payloads(rng, extra))
    )

    groups = max(1, timelines // 20)
    users = [b"u:%05d" % i for i in range(timelines)]
    members = [rng.sample(users, GROUP_MEMBERS) for _ in range(groups)]
    group_picks = nprng.choice(
        groups, size=sizes["batches"], p=_zipf_weights(groups, zipf_s)
    )
    batch_payloads = _random_payloads(rng, sizes["batches"])
    for g, payload in zip(group_picks.tolist(), batch_payloads):
        batch = [(b"g:%05d" % g, payload)]
        batch.extend((user, payload) for user in members[g])
        work.batches.append(batch)

    _add_reads(work, rng, counts, sizes)
    return work


def _count_per_timeline(appends):
    counts = {}
    for timeline_id, _ in appends:
        counts[timeline_id] = counts.get(timeline_id, 0) + 1
    return counts


def _add_totals(work):
    work.payload_bytes = sum(len(p) for _, p in work.appends)
    work.timeline_bytes = sum(len(t) for t, _ in work.appends)


def _add_reads(work, rng, counts, sizes):
    """Add pulls, newest-20 reads and the mixed list over timelines in counts."""
    known = sorted(counts)
    work.read_timelines = len(known)

    def pull():
        timeline_id = rng.choice(known)
        return (timeline_id, rng.randint(0, counts[timeline_id]))

    work.pulls = [pull() for _ in range(sizes["pulls"])]
    work.newest = [rng.choice(known) for _ in range(sizes["newest"])]
    payloads = _random_payloads(rng, sizes["mixed"])
    mixed = []
    for i in range(sizes["mixed"]):
        roll = rng.random()
        if roll < 0.5:
            mixed.append(("newest", rng.choice(known), NEWEST_COUNT))
        elif roll < 0.8:
            mixed.append(("pull",) + pull())
        else:
            mixed.append(("append", rng.choice(known), payloads[i]))
    work.mixed = mixed


def _irc_events(limit):
    events = []
    with gzip.open(IRC_PATH, "rt", encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            if event["kind"] != "message" or not event["text"]:
                continue
            events.append(event)
            if len(events) >= limit:
                break
    return events


def _build_irc(sizes, seed):
    """Replay the IRC log: channels and threads are timelines, senders are users."""
    rng = random.Random(seed)
    events = _irc_events(10**9)
    work = Workload("irc", seed)

    def timeline_of(event):
        if event["thread"]:
            return ("th:" + event["thread"]).encode()
        return ("ch:" + event["channel"]).encode()

    def cycle(count, offset=0):
        for i in range(count):
            yield events[(offset + i) % len(events)]

    work.appends = [
        (timeline_of(e), e["text"].encode()) for e in cycle(sizes["appends"])
    ]
    counts = _count_per_timeline(work.appends)
    _add_totals(work)
    work.extra_appends = [
        (timeline_of(e), e["text"].encode())
        for e in cycle(sizes["latency_appends"], 7919)
    ]

    # A group send goes to the channel's store timeline and to the sync
    # timelines of up to 20 of the channel's most recent other senders.
    recent = {}
    for event in cycle(sizes["batches"]):
        channel = event["channel"]
        senders = recent.setdefault(channel, [])
        payload = event["text"].encode()
        others = [s for s in senders if s != event["sender"]][:GROUP_MEMBERS]
        batch = [(("ch:" + channel).encode(), payload)]
        batch.extend((("u:" + s).encode(), payload) for s in others)
        work.batches.append(batch)
        if event["sender"] in senders:
            senders.remove(event["sender"])
        senders.insert(0, event["sender"])
        del senders[GROUP_MEMBERS + 1 :]

    _add_reads(work, rng, counts, sizes)
    return work
