"""The operator commands: status, inspect, show, replay, retry, skip, purge, doctor.

They parse flags, call `relay.admin` (the SQL) or `relay.doctor` (the checklist), and
print. Exit codes, the same for every command:

  0  done / healthy
  1  unhealthy (status thresholds, doctor failures, replayed copies parked or not sent
     in time) or the database / broker could not be used
  2  bad input: malformed duration, timestamp, event id or topic; missing flag
  3  nothing matched: unknown event id, empty selection
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import click

from relay import admin, doctor
from relay.admin import BadInputError, EventRow, Selection
from relay.config import OnSent, Settings
from relay.events import EventState
from relay.options import with_settings
from relay.pgoutput import format_lsn
from relay.progress import Progress

F = TypeVar("F", bound=Callable[..., Any])

#: How often a progress display that is not a terminal prints a line.
#: How often `replay --wait` asks how many copies are still pending.
WAIT_POLL_INTERVAL_S: Final = 0.5
PREVIEW_CHARS: Final = 40


# --- formatting (pure) ------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """A short duration such as ``4s``, ``3m12s``, ``2h05m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:  # noqa: PLR2004
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"  # noqa: PLR2004
    minutes, secs = divmod(whole, 60)
    if minutes < 60:  # noqa: PLR2004
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:  # noqa: PLR2004
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _is_number(cell: str) -> bool:
    return cell.replace(",", "").replace(".", "").lstrip("-").isdigit() or cell == "-"


# Characters a terminal acts on instead of showing: C0 and C1 controls (ESC, CSI, ...),
# DEL, the line and paragraph separators, and the bidirectional overrides and isolates
# that reorder what follows them (Trojan Source). Rows are written by services, never
# trusted: `printable` escapes these before anything from a row reaches the terminal.
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"  # noqa: PLR2004


def printable(text: str, *, keep: str = "") -> str:
    """`text` with every control character escaped as ``\\x1b`` or ``\\u202e``.

    Characters in `keep` (``"\\t"`` in a block of lines) stay as they are.
    """
    return "".join(
        _escaped(c)
        if c not in keep and (unicodedata.category(c) in {"Cc", "Zl", "Zp"} or c in _BIDI_CONTROLS)
        else c
        for c in text
    )


def shorten(text: str, limit: int) -> str:
    """`text` on one line, control characters escaped, cut to `limit` characters."""
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


# --- shared options ---------------------------------------------------------------------


def _options(*options: Callable[[Any], Any]) -> Callable[[F], F]:
    """One decorator for several click options, listed in the order --help shows them."""

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


#: The filters every selecting command has: inspect, replay, retry, skip.
_FILTER_OPTIONS: Final = (
    click.option(
        "--topic", "topics", multiple=True, metavar="TOPIC", help="Only this topic (repeat)."
    ),
    click.option("--key", "keys", multiple=True, metavar="KEY", help="Only this key (repeat)."),
    click.option(
        "--event-id", "event_ids", multiple=True, metavar="UUID", help="Only this event (repeat)."
    ),
)

#: inspect and replay: the filters and a creation time range.
_selection_options = _options(
    *_FILTER_OPTIONS,
    click.option(
        "--since",
        metavar="WHEN",
        help="Created at or after WHEN: an ISO timestamp (UTC if no offset) or a "
        "duration ago (2h).",
    ),
    click.option("--until", metavar="WHEN", help="Created before WHEN (same forms)."),
)


def _selection(
    *,
    topics: tuple[str, ...],
    keys: tuple[str, ...],
    event_ids: tuple[str, ...],
    since: str | None,
    until: str | None,
    state: EventState | None = None,
    after_id: int = 0,
    before_id: int | None = None,
) -> Selection:
    return Selection(
        topics=topics,
        keys=keys,
        event_ids=tuple(admin.parse_event_id(e) for e in event_ids),
        state=state,
        since=admin.parse_time_point(since, "--since") if since else None,
        until=admin.parse_time_point(until, "--until") if until else None,
        after_id=after_id,
        before_id=before_id,
    )


def _require_filter_or_all(
    selection: Selection, *, everything: bool, what: str, by_time: bool = True
) -> None:
    if selection.filtered and everything:
        raise BadInputError(f"--all {what} cannot be combined with filters")
    if not selection.filtered and not everything:
        # Name only the filters this command takes (retry and skip have no time range).
        time_range = " --since/--until," if by_time else ""
        raise BadInputError(
            f"say which events to {what}: --topic, --key, --event-id,{time_range} or --all"
        )


# --- status -----------------------------------------------------------------------------


@click.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--max-lag", metavar="DURATION", help="Unhealthy when the oldest pending event is older."
)
@click.option("--max-parked", type=click.IntRange(min=0), help="Unhealthy with more parked events.")
@click.option(
    "--max-pending", type=click.IntRange(min=0), help="Unhealthy with more pending events."
)
@with_settings
def status_command(
    settings: Settings,
    *,
    as_json: bool,
    max_lag: str | None,
    max_parked: int | None,
    max_pending: int | None,
) -> None:
    """Show pending, parked and recently sent events per topic (and the slot in WAL mode).

    Reads the partial indexes and the newest rows only: cheap on a large outbox, safe to
    run as a probe every few seconds. "sent" counts need --on-sent mark (the default);
    an event sent long after its neighbours (a retried parked event) may be missed.

    \b
    Examples:
      outbox-relay status
      outbox-relay status --json
      outbox-relay status --max-lag 30s --max-parked 0 || page-someone
      outbox-relay status --mode wal --slot-name outbox_relay

    \b
    Exit codes: 0 healthy; 1 a threshold is exceeded, the WAL slot is missing, lost or
    inactive, or the database is unreachable; 2 bad input.
    """
    if settings.on_sent is OnSent.NONE and (max_lag or max_pending is not None):
        raise BadInputError(
            "--max-lag and --max-pending need --on-sent mark or delete: with none, rows "
            "stay pending once published (the slot shows what is left)"
        )
    thresholds = admin.Thresholds(
        max_lag_s=admin.parse_seconds(max_lag, "--max-lag") if max_lag else None,
        max_parked=max_parked,
        max_pending=max_pending,
    )
    with admin.connect(settings) as conn:
        snapshot = admin.status(conn, settings)
    found = admin.problems(snapshot, thresholds)
    if as_json:
        _echo_json(snapshot.as_json() | {"healthy": not found, "problems": found})
    else:
        _print_status(snapshot, found)
    if found:
        sys.exit(1)


def _count(value: int | None, *, complete: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if complete else f">={value:,}"


def _print_status(snapshot: admin.Status, found: list[str]) -> None:
    complete = snapshot.sent_counts_complete
    rows = [
        [
            t.topic,
            f"{t.pending:,}" if snapshot.pending_known else "-",
            format_age(
                (snapshot.now - t.oldest_pending_at).total_seconds()
                if t.oldest_pending_at and snapshot.pending_known
                else None
            ),
            f"{t.parked:,}",
            _count(t.sent_last_minute, complete=complete),
            _count(t.sent_last_hour, complete=complete),
        ]
        for t in snapshot.topics
    ]
    headers = ["topic", "pending", "oldest", "parked", "sent 1m", "sent 1h"]
    if rows:
        click.echo(render_table(headers, rows))
        click.echo()
    pending = (
        f"pending {snapshot.pending:,} (oldest {format_age(snapshot.oldest_pending_age_s)})"
        if snapshot.pending_known
        else "pending - (on_sent none: rows are never marked)"
    )
    click.echo(
        f"{pending}"
        f"  parked {snapshot.parked:,}"
        f"  sent last minute {_count(snapshot.sent_last_minute, complete=complete)}"
        f"  last hour {_count(snapshot.sent_last_hour, complete=complete)}"
    )
    slot = snapshot.slot
    if snapshot.slot_name is not None:
        if slot is None:
            click.echo(f"slot {snapshot.slot_name}: does not exist")
        else:
            keep = (
                "unlimited"
                if snapshot.max_slot_wal_keep_size < 0
                else admin.format_bytes(snapshot.max_slot_wal_keep_size)
            )
            confirmed = slot.confirmed_flush_lsn
            click.echo(
                f"slot {slot.slot_name}: {'active' if slot.active else 'INACTIVE'}"
                f"  confirmed {format_lsn(confirmed) if confirmed is not None else '-'}"
                f"  retained {admin.format_bytes(slot.retained_bytes)}"
                f"  wal_status {slot.wal_status or '-'}"
                f"  safe_wal_size {admin.format_bytes(slot.safe_wal_size)}"
                f"  (max_slot_wal_keep_size {keep})"
            )
    leader = snapshot.leader
    if leader is not None and leader.held:
        click.echo(
            f"leader: pid {leader.pid}  role {leader.role}"
            f"  application {leader.application_name}  epoch {leader.epoch}"
        )
    elif leader is not None:
        click.echo("leader: none (no relay holds the lease)")
    for problem in found:
        click.echo(f"UNHEALTHY: {problem}")
    if not found:
        click.echo("healthy")


# --- inspect and show -------------------------------------------------------------------


@click.command(name="inspect")
@_selection_options
@click.option(
    "--state",
    type=click.Choice([s.value for s in EventState]),
    help="Only events in this state.",
)
@click.option("--after-id", type=click.IntRange(min=0), default=0, help="Page: ids after this.")
@click.option("--before-id", type=click.IntRange(min=1), help="Page: ids before this.")
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="Rows."
)
@click.option("--newest-first", is_flag=True, help="Newest rows first (page with --before-id).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--jsonl", "as_jsonl", is_flag=True, help="Print one JSON object per line.")
@with_settings
def inspect_command(
    settings: Settings,
    *,
    topics: tuple[str, ...],
    keys: tuple[str, ...],
    event_ids: tuple[str, ...],
    since: str | None,
    until: str | None,
    state: str | None,
    after_id: int,
    before_id: int | None,
    limit: int,
    newest_first: bool,
    as_json: bool,
    as_jsonl: bool,
) -> None:
    """List outbox events, oldest first, one page at a time.

    Pages are keyset pages on the id: as fast on page 1000 as on page 1, on any size of
    outbox. The command prints the flag for the next page on stderr.

    \b
    Examples:
      outbox-relay inspect --state parked
      outbox-relay inspect --topic orders --key order-42 --since 2h
      outbox-relay inspect --state pending --limit 500 --after-id 1200345
      outbox-relay inspect --newest-first --limit 10
      outbox-relay inspect --state sent --since 2026-01-31T12:00 --jsonl | jq .payload

    \b
    Exit codes: 0 listed (also an empty page); 1 database error; 2 bad input.
    """
    if as_json and as_jsonl:
        raise BadInputError("choose one of --json and --jsonl")
    selection = _selection(
        topics=topics,
        keys=keys,
        event_ids=event_ids,
        since=since,
        until=until,
        state=EventState(state) if state else None,
        after_id=after_id,
        before_id=before_id,
    )
    with admin.connect(settings) as conn:
        rows = admin.list_events(conn, settings, selection, limit=limit, newest_first=newest_first)
    if as_json:
        _echo_json([row.as_json() for row in rows])
    elif as_jsonl:
        for row in rows:
            click.echo(json.dumps(row.as_json(), default=str))
    elif rows:
        click.echo(render_table(*_event_table(rows)))
    else:
        click.echo(f"no events match {selection.describe()}", err=True)
    if len(rows) == limit:
        flag = f"--before-id {rows[-1].id}" if newest_first else f"--after-id {rows[-1].id}"
        click.echo(f"next page: {flag}", err=True)


def _event_table(rows: Sequence[EventRow]) -> tuple[list[str], list[list[str]]]:
    headers = ["id", "event_id", "topic", "key", "state", "created_at", "att", "note", "payload"]
    table = []
    for row in rows:
        note = row.last_error or row.skip_reason or ""
        table.append(
            [
                str(row.id),
                row.event_id,
                printable(row.topic),
                shorten(row.key or "-", 24),
                row.state,
                admin.time_text(row.created_at, "%Y-%m-%d %H:%M:%S"),
                str(row.attempts),
                shorten(note, 30),
                shorten(_payload_preview(row), PREVIEW_CHARS),
            ]
        )
    return headers, table


def _payload_preview(row: EventRow) -> str:
    if isinstance(row.payload, admin.UnparsedJson):
        return str(row.payload)
    if row.payload is not None:
        return json.dumps(row.payload, separators=(",", ":"), ensure_ascii=False)
    if row.payload_bytes is not None:
        return f"<{len(row.payload_bytes)} bytes>"
    return "-"


@click.command(name="show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def show_command(settings: Settings, *, event_id: str, as_json: bool) -> None:
    """Show one event with its headers and pretty-printed payload.

    EVENT_ID is the event's UUID (the event_id header of its Kafka record), or the row
    id.

    \b
    Examples:
      outbox-relay show 1b4e28ba-2fa1-11d2-883f-0016d3cca427
      outbox-relay show 1200345 --json

    \b
    Exit codes: 0 shown, 1 database error, 2 malformed event id, 3 no such event.
    """
    with admin.connect(settings) as conn:
        row = admin.get_event(conn, settings, event_id)
    if as_json:
        _echo_json(row.as_json())
        return
    fields = [
        ("id", str(row.id)),
        ("event_id", row.event_id),
        ("topic", row.topic),
        ("key", row.key or "-"),
        ("state", row.state),
        ("created_at", admin.time_text(row.created_at)),
        ("sent_at", admin.time_text(row.sent_at) if row.sent_at else "-"),
        ("attempts", str(row.attempts)),
        ("last_error", row.last_error or "-"),
        ("parked_at", admin.time_text(row.parked_at) if row.parked_at else "-"),
        ("skip_reason", row.skip_reason or "-"),
        ("event_type", row.event_type or "-"),
        ("aggregate_type", row.aggregate_type or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {printable(value)}")
    click.echo("headers:")
    click.echo(_indent(_json_text(row.headers)))
    click.echo("payload:")
    click.echo(_indent(_payload_text(row)))


def _indent(text: str) -> str:
    # Split on newlines only (not on the separators splitlines() knows), then escape.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return "\n".join("  " + printable(line, keep="\t") for line in lines)


def _json_text(value: object) -> str:
    """A column's JSON, indented; as PostgreSQL printed it when Python cannot decode it."""
    if isinstance(value, admin.UnparsedJson):
        return str(value)
    return json.dumps(value, indent=2, ensure_ascii=False)


def _payload_text(row: EventRow) -> str:
    if row.payload is not None:
        return _json_text(row.payload)
    if row.payload_bytes is not None:
        try:
            return row.payload_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return f"({len(row.payload_bytes)} bytes, hex) {row.payload_bytes.hex()}"
    return "(none)"


# --- replay -----------------------------------------------------------------------------


@click.command(name="replay")
@_selection_options
@click.option("--from-id", type=click.IntRange(min=1), help="First row id to replay.")
@click.option("--to-id", type=click.IntRange(min=1), help="Last row id to replay.")
@click.option("--all", "everything", is_flag=True, help="Replay every sent event.")
@click.option("--to-topic", metavar="TOPIC", help="Publish the copies here, not to their topic.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed, change nothing.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Events per second.")
@click.option(
    "--chunk-size",
    "chunk_size",
    type=click.IntRange(1, 50_000),
    default=admin.BATCH_SIZE,
    show_default=True,
    help="Copies inserted per transaction.",
)
@click.option("--wait", is_flag=True, help="Follow the relay until every copy is sent.")
@click.option("--wait-timeout", metavar="DURATION", help="With --wait: give up after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@with_settings
def replay_command(
    settings: Settings,
    *,
    topics: tuple[str, ...],
    keys: tuple[str, ...],
    event_ids: tuple[str, ...],
    since: str | None,
    until: str | None,
    from_id: int | None,
    to_id: int | None,
    everything: bool,
    to_topic: str | None,
    dry_run: bool,
    rate: float | None,
    chunk_size: int,
    wait: bool,
    wait_timeout: str | None,
    as_json: bool,
) -> None:
    """Publish already-sent events again, through the running relay.

    Copies of the selected events go into the outbox as new pending rows, in their
    original order, carrying the headers replayed=true and replay_of=<original
    event_id> (and a new event_id). The relay publishes them like any new event: the
    per-key order of everything it publishes holds, and no second producer competes
    with it. --rate paces the inserts; --wait follows the relay until all are sent.
    A relay --topic-template that does not use {topic} routes the copies as it routes
    every event, whatever --to-topic says.

    \b
    Examples:
      outbox-relay replay --topic orders --since 2026-01-31T00:00 --until 2026-02-01 --dry-run
      outbox-relay replay --from-id 1000 --to-id 51000 --rate 2000 --wait
      outbox-relay replay --key order-42 --to-topic orders.replay
      outbox-relay replay --event-id 1b4e28ba-2fa1-11d2-883f-0016d3cca427

    \b
    Exit codes: 0 done; 1 database error, or with --wait copies parked or still
    pending at --wait-timeout; 2 bad input; 3 no sent event matches.
    """
    selection = _selection(
        topics=topics,
        keys=keys,
        event_ids=event_ids,
        since=since,
        until=until,
        after_id=(from_id - 1) if from_id else 0,
        before_id=(to_id + 1) if to_id else None,
    )
    _require_filter_or_all(selection, everything=everything, what="replay")
    if to_topic is not None:
        admin.check_topic_name(to_topic)
    if wait_timeout and not wait:
        raise BadInputError("--wait-timeout needs --wait")
    timeout_s = admin.parse_seconds(wait_timeout, "--wait-timeout") if wait_timeout else None
    if wait and settings.on_sent is OnSent.NONE:
        raise BadInputError("--wait needs --on-sent mark or delete: with none rows never change")
    with admin.connect(settings) as conn:
        plan = admin.plan_replay(conn, settings, selection)
        if dry_run:
            destination = f" to {to_topic}" if to_topic else ""
            _report_dry_run(
                plan.by_topic, f"replay {plan.total:,} events{destination}", as_json=as_json
            )
            return
        progress = Progress()
        result = admin.replay(
            conn,
            plan,
            settings,
            to_topic=to_topic,
            batch_size=chunk_size,
            rate=rate,
            on_progress=lambda done: progress.count(done, plan.total, "replayed"),
        )
        progress.count(result.copied, plan.total, "replayed", final=True)
        outcome: dict[str, Any] = {
            "replayed": result.copied,
            "first_copy_id": result.first_copy_id,
            "last_copy_id": result.last_copy_id,
        }
        if not as_json:
            click.echo(
                f"replayed {result.copied:,} events as new pending rows "
                f"(ids {result.first_copy_id}..{result.last_copy_id}); "
                "the relay publishes them in outbox order"
            )
        if wait:
            pending, parked = _wait_for_copies(conn, settings, result, timeout_s)
            outcome |= {"pending": pending, "parked": parked}
    if as_json:
        _echo_json(outcome)
    if wait:
        _report_wait(outcome, as_json=as_json)


def _report_dry_run(by_topic: dict[str, int], would: str, *, as_json: bool) -> None:
    """What a dry run counted: ``would <would> (dry run, ...)`` and a table per topic."""
    if as_json:
        _echo_json({"dry_run": True, "events": sum(by_topic.values()), "by_topic": by_topic})
        return
    click.echo(f"would {would} (dry run, nothing changed)")
    click.echo(render_table(["topic", "events"], [[t, f"{n:,}"] for t, n in by_topic.items()]))


def _wait_for_copies(
    conn: admin.Connection, settings: Settings, result: admin.ReplayResult, timeout_s: float | None
) -> tuple[int, int]:
    progress = Progress()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        pending, parked = admin.unsent_copies(conn, settings, result)
        done = result.copied - pending - parked
        if pending == 0 or (deadline is not None and time.monotonic() >= deadline):
            progress.count(done, result.copied, "published", final=True)
            return pending, parked
        progress.count(done, result.copied, "published")
        time.sleep(WAIT_POLL_INTERVAL_S)


def _report_wait(outcome: dict[str, Any], *, as_json: bool) -> None:
    pending, parked = outcome["pending"], outcome["parked"]
    if not as_json:
        if pending:
            click.echo(f"{pending:,} copies still pending: is the relay running?", err=True)
        if parked:
            click.echo(
                f"{parked:,} copies were parked: outbox-relay inspect --state parked", err=True
            )
        if not pending and not parked:
            click.echo("every copy was sent")
    if pending or parked:
        sys.exit(1)


# --- retry and skip ---------------------------------------------------------------------


#: retry and skip: the filters (or --all), a dry run, JSON output.
_parked_selection_options = _options(
    *_FILTER_OPTIONS,
    click.option("--all", "everything", is_flag=True, help="Every parked event."),
    click.option("--dry-run", is_flag=True, help="Count what would change, change nothing."),
    click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON."),
)


def _parked_selection(
    topics: tuple[str, ...], keys: tuple[str, ...], event_ids: tuple[str, ...], *, everything: bool
) -> Selection:
    selection = _selection(
        topics=topics,
        keys=keys,
        event_ids=event_ids,
        since=None,
        until=None,
        state=EventState.PARKED,
    )
    _require_filter_or_all(selection, everything=everything, what="change", by_time=False)
    return selection


def _dry_run_parked(settings: Settings, selection: Selection, verb: str, *, as_json: bool) -> None:
    with admin.connect(settings) as conn:
        by_topic = admin.count_selection(conn, settings, selection)
    total = sum(by_topic.values())
    state = selection.state or EventState.PARKED
    if not total:
        raise admin.NothingMatchedError(f"no {state} event matches {selection.describe()}")
    _report_dry_run(by_topic, f"{verb} {total:,} {state} events", as_json=as_json)


@click.command(name="retry")
@_parked_selection_options
@with_settings
def retry_command(
    settings: Settings,
    *,
    topics: tuple[str, ...],
    keys: tuple[str, ...],
    event_ids: tuple[str, ...],
    everything: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Release parked events so the relay publishes them again, in their key order.

    They become pending with their attempts reset and keep their place in the outbox:
    later events of the same key, which waited behind them, still go after them.

    \b
    Examples:
      outbox-relay retry --key order-42
      outbox-relay retry --topic orders --dry-run
      outbox-relay retry --event-id 1b4e28ba-2fa1-11d2-883f-0016d3cca427
      outbox-relay retry --all

    \b
    Exit codes: 0 released; 1 database error; 2 bad input (no filter and no --all);
    3 no parked event matches.
    """
    selection = _parked_selection(topics, keys, event_ids, everything=everything)
    if dry_run:
        _dry_run_parked(settings, selection, "retry", as_json=as_json)
        return
    with admin.connect(settings) as conn:
        released = admin.retry(conn, settings, selection)
    if as_json:
        _echo_json({"released": released})
    else:
        click.echo(f"released {released:,} parked events; the relay publishes them next")


@click.command(name="skip")
@_parked_selection_options
@click.option("--reason", required=True, help="Why; kept in the row's skip_reason.")
@click.option(
    "--state",
    type=click.Choice([EventState.PARKED.value, EventState.PENDING.value]),
    default=EventState.PARKED.value,
    show_default=True,
    help="Skip parked events, or pending ones (by --event-id only: a poison row).",
)
@with_settings
def skip_command(
    settings: Settings,
    *,
    topics: tuple[str, ...],
    keys: tuple[str, ...],
    event_ids: tuple[str, ...],
    everything: bool,
    dry_run: bool,
    as_json: bool,
    reason: str,
    state: str,
) -> None:
    """Give up on parked events: they become 'skipped' and are never published.

    The reason is kept in skip_reason (see `outbox-relay show`). Later events of the
    same key that waited behind them go on. With --state pending, skip pending events
    named by --event-id (a row the relay cannot get past), without SQL; one the relay
    publishes meanwhile may reach Kafka and still be marked skipped.

    \b
    Examples:
      outbox-relay skip --key order-42 --reason "bad payload, INC-123"
      outbox-relay skip --topic legacy.orders --reason "topic retired" --dry-run
      outbox-relay skip --state pending --event-id 1b4e28ba-... --reason "poison, INC-9"

    \b
    Exit codes: 0 skipped; 1 database error; 2 bad input (no filter and no --all, no
    --reason, --state pending without --event-id); 3 no matching event.
    """
    if not reason.strip():
        raise BadInputError("--reason must say why (it is kept with the events)")
    from_state = EventState(state)
    if from_state is EventState.PENDING and (not event_ids or topics or keys or everything):
        raise BadInputError(
            "--state pending skips events named by --event-id only (not --topic, --key, --all)"
        )
    selection = dataclasses.replace(
        _parked_selection(topics, keys, event_ids, everything=everything), state=from_state
    )
    if dry_run:
        _dry_run_parked(settings, selection, "skip", as_json=as_json)
        return
    with admin.connect(settings) as conn:
        skipped = admin.skip(conn, settings, selection, reason=reason, state=from_state)
    if as_json:
        _echo_json({"skipped": skipped, "reason": reason})
    else:
        click.echo(f"skipped {skipped:,} {from_state} events (reason: {reason})")


# --- purge ------------------------------------------------------------------------------


@click.command(name="purge")
@click.option("--older-than", required=True, metavar="DURATION", help="Retention, e.g. 7d, 36h.")
@click.option(
    "--chunk-size",
    "chunk_size",
    type=click.IntRange(1, 100_000),
    default=admin.BATCH_SIZE,
    show_default=True,
    help="Rows deleted per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted, delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@with_settings
def purge_command(
    settings: Settings, *, older_than: str, chunk_size: int, dry_run: bool, as_json: bool
) -> None:
    """Delete sent and skipped events older than a retention.

    Deletes in small batches by id, each its own short transaction; rows another
    session has locked are left for the next run. Pending and parked events are never
    touched, so it is safe beside a running relay (run it from cron).

    \b
    Examples:
      outbox-relay purge --older-than 7d
      outbox-relay purge --older-than 36h --dry-run --json

    \b
    Exit codes: 0 done (also when nothing was old enough); 1 database error;
    2 bad input (malformed duration).
    """
    seconds = admin.parse_seconds(older_than, "--older-than")
    progress = Progress()

    def on_batch(deleted: int) -> None:
        progress.show(f"deleted {deleted:,}")

    with admin.connect(settings) as conn:
        result = admin.purge(
            conn,
            settings,
            older_than=dt.timedelta(seconds=seconds),
            batch_size=chunk_size,
            dry_run=dry_run,
            on_batch=on_batch,
        )
    if not dry_run:
        progress.show(f"deleted {result.events:,}", final=True)
    if as_json:
        _echo_json(
            {
                "dry_run": result.dry_run,
                ("would_delete" if result.dry_run else "deleted"): result.events,
                "cutoff": result.cutoff.isoformat(),
            }
        )
    elif result.dry_run:
        click.echo(
            f"would delete {result.events:,} sent/skipped events created before "
            f"{result.cutoff.isoformat()} (dry run, nothing changed)"
        )
    else:
        click.echo(
            f"deleted {result.events:,} sent/skipped events created before "
            f"{result.cutoff.isoformat()}"
        )


# --- doctor -----------------------------------------------------------------------------


@click.command(name="doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@with_settings
def doctor_command(settings: Settings, *, as_json: bool) -> None:
    """Check everything a deployment needs, each line ok / warn / fail with the fix.

    Database reachable, migrations current, wal_level, replication privilege,
    publication, slot and WAL retention, heartbeat, broker reachable, topics, and the
    relay role's privileges. Checks that only WAL mode needs are skipped in poll mode.
    Run it with the relay's own settings (same URL, same role).

    \b
    Examples:
      outbox-relay doctor --config relay.toml
      outbox-relay doctor --mode wal --database-url postgresql://relay@db/app --json

    \b
    Exit codes: 0 no check failed (warnings allowed); 1 a check failed; 2 bad input.
    """
    checks = doctor.run(settings)
    if as_json:
        _echo_json(
            {
                "ok": not any(c.level is doctor.Level.FAIL for c in checks),
                "checks": [c.as_json() for c in checks],
            }
        )
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            line = f"{check.level.value:<4}  {check.name.ljust(width)}  {check.detail}"
            click.echo(line.rstrip())
            if check.fix and check.level in {doctor.Level.WARN, doctor.Level.FAIL}:
                click.echo(f"{'':4}  {'':{width}}  fix: {check.fix}")
    if any(c.level is doctor.Level.FAIL for c in checks):
        sys.exit(1)


#: The commands `relay.cli` registers on the ``outbox-relay`` group.
COMMANDS: Final = (
    status_command,
    inspect_command,
    show_command,
    replay_command,
    retry_command,
    skip_command,
    purge_command,
    doctor_command,
)
