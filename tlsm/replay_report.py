"""The end of a replay, as a mixin of its runner: history checks and the report.

After the sends and the final catch-up, every conversation's history is
read back newest first, a page at a time, and compared with the input.
The summary prints throughput, send and delivery latency percentiles, and
the write and read cost of the write and read fan-out paths from the
server's IM.STATS counters before and after the run.
"""

import asyncio

from .replay_check import format_name, format_payload, percentile_ms

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_ERROR = 2

# Connections used by the final catch-up. Each drains one device at a time.
DRAIN_CONNECTIONS = 16


class ReportMixin:
    """History checks and the summary of tlsm.replay's runner."""

    async def _verify_histories(self, connection):
        plan = self.plan
        for c, conversation in enumerate(self.conversation_ids):
            sends = plan.conversation_sends[c]
            history = await self._read_history(connection, conversation, len(sends))
            if not self._history_matches(c, history):
                return

    async def _read_history(self, connection, conversation, expected):
        """Return the whole history of a conversation, oldest first.

        Reads newest first in pages of --count, and stops one page after the
        expected length so that extra entries are seen without reading an
        unbounded history.
        """
        count = self.args.count
        entries = []
        page = await connection.call(b"IM.HISTORY", conversation, b"COUNT", count)
        while page:
            entries.extend(page)
            if len(entries) > expected:
                break
            before = int(page[-1][0])
            page = await connection.call(
                b"IM.HISTORY", conversation, b"BEFORE", before, b"COUNT", count
            )
        entries.reverse()
        return entries

    def _history_matches(self, c, history):
        plan = self.plan
        checker = self.checker
        sends = plan.conversation_sends[c]
        name = self.conversation_ids[c].decode()
        for position, entry in enumerate(history):
            if position >= len(sends):
                checker.fail(
                    f"history of {name} has more than the {len(sends)} messages "
                    f"sent; entry {position} is store seq {int(entry[0])}"
                )
                return False
            s = sends[position]
            expected = (
                checker.store_seqs[s],
                self.user_ids[plan.send_sender[s]],
                plan.payloads[plan.send_message[s]],
            )
            got = (int(entry[0]), entry[1], entry[2])
            if got != expected:
                checker.fail(
                    f"history of {name}, entry {position}: got store seq {got[0]}, "
                    f"sender {format_name(got[1])}, payload "
                    f"{format_payload(got[2])}; expected store seq {expected[0]}, "
                    f"sender {format_name(expected[1])}, payload "
                    f"{format_payload(expected[2])}"
                )
                return False
        if len(history) < len(sends):
            checker.fail(
                f"history of {name} has {len(history)} messages, expected "
                f"{len(sends)}; the first missing is "
                f"{checker.describe_send(sends[len(history)])}"
            )
            return False
        return True

    async def _update_progress(self, progress):
        while True:
            self._show_progress(progress)
            await asyncio.sleep(0.5)

    def _show_progress(self, progress):
        progress.n = self.replied
        progress.set_postfix(entries=self.checker.entries_received, refresh=False)
        progress.refresh()

    def _print_summary(self, send_seconds, total_seconds):
        plan = self.plan
        checker = self.checker
        conversations = sum(1 for sends in plan.conversation_sends if len(sends))
        threads = sum(
            1
            for c, sends in enumerate(plan.conversation_sends)
            if len(sends) and not plan.conversation_is_channel[c]
        )
        devices = len(plan.members) * self.args.devices_per_member
        received = checker.entries_received
        send_rate = plan.send_count / max(send_seconds, 1e-9)
        delivery_rate = received / max(total_seconds, 1e-9)
        send_latency = self.send_latencies
        delivery_latency = checker.delivery_latencies
        lines = [f"prefix: {self.prefix}"]
        lines.append(
            f"input: {plan.events} events, {plan.message_count} messages, "
            f"{plan.system_lines} system lines skipped"
        )
        lines.append(
            f"conversations: {conversations} ({threads} threads), "
            f"members: {len(plan.members)} "
            f"({plan.membership_count} joins), devices: {devices}"
        )
        lines.append(
            f"sent: {plan.send_count} sends in {send_seconds:.2f} s "
            f"({send_rate:,.0f} sends/s, {self.retries} retried with the same "
            f"client message id), send latency "
            f"p50 {percentile_ms(send_latency, 50):.2f} ms, "
            f"p99 {percentile_ms(send_latency, 99):.2f} ms"
        )
        lines.append(
            f"delivered: {received} entries in {total_seconds:.2f} s "
            f"({delivery_rate:,.0f} entries/s, {checker.entries_online} online, "
            f"{checker.entries_caught_up} caught up), delivery latency "
            f"p50 {percentile_ms(delivery_latency, 50):.2f} ms, "
            f"p99 {percentile_ms(delivery_latency, 99):.2f} ms "
            f"over {len(delivery_latency)} entries"
        )
        lines.extend(self._cost_lines())
        lines.append(
            f"connections: {self.pool.opened} for online devices, "
            f"{DRAIN_CONNECTIONS} for the final catch-up"
        )
        if self.args.no_verify:
            lines.append("verify: skipped (--no-verify)")
        elif checker.failures:
            lines.append(
                f"verify: FAILED, mismatches: {len(checker.failures)}; "
                f"first: {checker.failures[0]}"
            )
        else:
            lines.append(
                f"verify: OK, {conversations} histories and {devices} devices "
                f"({plan.expected_entries() * self.args.devices_per_member} "
                f"entries) match the input"
            )
        print("\n".join(lines))

    def _cost_lines(self):
        """Return the write and read cost of both fan-out paths from IM.STATS."""
        before, after = self.stats_before, self.stats_after

        def delta(name):
            return after.get(name, 0) - before.get(name, 0)

        def per(numerator, denominator):
            if not denominator:
                return "no"
            return f"{numerator / denominator:.2f}"

        write_delivered = delta("delivered_write_fanout")
        read_delivered = delta("delivered_read_fanout")
        write_reads = delta("sync_entries_read") + delta(
            "store_entries_read_write_fanout"
        )
        written = (
            f"written: {delta('store_entries_written')} store entries "
            f"({delta('store_bytes_written'):,} bytes), "
            f"{delta('sync_entries_written')} sync references "
            f"({delta('sync_bytes_written'):,} bytes), "
            f"{delta('markers_written')} fan-out markers"
        )
        write_path = (
            f"write fan-out path: {write_delivered} delivered, "
            f"{per(write_reads, write_delivered)} entries read per message "
            f"({delta('sync_entries_read')} sync, "
            f"{delta('store_entries_read_write_fanout')} store)"
        )
        read_path = (
            f"read fan-out path: {read_delivered} delivered, "
            f"{per(delta('store_entries_read_read_fanout'), read_delivered)} "
            "entries read per message (store entries only)"
        )
        return [written, write_path, read_path]

    def _exit_status(self):
        if self.checker.failures and not self.args.no_verify:
            return EXIT_MISMATCH
        return EXIT_OK
