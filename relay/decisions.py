"""The relay's decisions, as pure functions of plain values.

Backoff, park-or-retry, per-key holding back, partition choice, topic routing and the
shape of a Kafka record are decided here; the async code only awaits and moves data.
Everything takes what it needs (the clock, the random source) as arguments, so it is
unit-tested without sleeping, sockets or servers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from relay.events import (
    Acknowledgement,
    FailedEvent,
    OutboxEvent,
    PublishFailure,
    PublishResult,
)

#: First delay after a failure; doubles per consecutive failure, up to the maximum.
BACKOFF_BASE_S: Final = 0.1
BACKOFF_MAX_S: Final = 10.0
#: Kafka's own rule for topic names (the outbox CHECK enforces it for the row's topic;
#: a topic template can still build an invalid one).
_TOPIC: Final = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def backoff_s(
    failures: int,
    random: Callable[[], float],
    *,
    base_s: float = BACKOFF_BASE_S,
    max_s: float = BACKOFF_MAX_S,
) -> float:
    """Seconds to wait after `failures` consecutive failures (1 for the first).

    Exponential with "equal jitter": half the capped delay, plus a random part of the
    other half, so relays restarted together do not retry in lockstep. `random` returns
    a float in [0, 1) (``random.random`` in production, a constant in tests).
    """
    if failures <= 0:
        return 0.0
    capped = min(max_s, base_s * 2.0 ** min(failures - 1, 32))
    return capped / 2 + random() * capped / 2


class ErrorKind(enum.Enum):
    """How a broker error affects the events it hit."""

    #: Not the event's fault (broker down, leader moving, timeout): retry, never park.
    RETRIABLE = "retriable"
    #: This record can never be written (too large, corrupt): charge it, park it.
    RECORD = "record"
    #: Nothing can be written to this topic (invalid name, not authorised): charge every
    #: event of the topic.
    TOPIC = "topic"


#: aiokafka exception class names that say a record will never be accepted.
_RECORD_ERRORS: Final = frozenset(
    {
        "MessageSizeTooLargeError",
        "RecordTooLargeError",
        "RecordListTooLargeError",
        "CorruptRecordException",
        "InvalidTimestampError",
        "UnsupportedForMessageFormatError",
    }
)
#: aiokafka exception class names that say a topic will never accept records.
_TOPIC_ERRORS: Final = frozenset(
    {"TopicAuthorizationFailedError", "InvalidTopicError", "PolicyViolationError"}
)


def error_kind(error_class_name: str) -> ErrorKind:
    """The kind of a broker error, from its aiokafka exception class name.

    Everything not known to be permanent for an event is retriable: an authentication
    failure or an unknown error is the cluster's problem, and parking every event
    because of it would break more than it protects.
    """
    if error_class_name in _RECORD_ERRORS:
        return ErrorKind.RECORD
    if error_class_name in _TOPIC_ERRORS:
        return ErrorKind.TOPIC
    return ErrorKind.RETRIABLE


#: The error class of events that were not sent because something before them failed.
HELD_BACK: Final = "HeldBack"


def error_class(error: str) -> str:
    """The class of a failure's error text (``"KafkaTimeoutError: ..."``), for metrics.

    Every failure text starts with a short class name and a colon, so a metric label
    stays low-cardinality whatever the message says.
    """
    return error.split(":", 1)[0]


def held_back(key: str) -> PublishFailure:
    """The failure of an event not sent because an earlier event of its key failed."""
    return PublishFailure(
        f"{HELD_BACK}: held back behind a failed event of key {key!r}", retriable=True
    )


def batch_failures(count: int, error: str, kind: ErrorKind) -> list[PublishFailure]:
    """Failures of the `count` records of one Kafka record batch that `error` rejected.

    A record-level error (say, one record too large) fails the whole batch on the broker,
    but only one record is to blame: we charge the first and hold back the others, which
    go again in the next batch. Topic-level errors charge everyone; retriable errors
    charge nobody.
    """
    if kind is ErrorKind.RETRIABLE:
        return [PublishFailure(error, retriable=True)] * count
    if kind is ErrorKind.TOPIC or count == 0:
        return [PublishFailure(error, retriable=False)] * count
    rest = PublishFailure(
        f"{HELD_BACK}: not sent, its batch was rejected ({error})", retriable=True
    )
    return [PublishFailure(error, retriable=False), *[rest] * (count - 1)]


def settle(result: PublishResult, park_after_attempts: int) -> Acknowledgement:
    """Decide what becomes of each event of a published batch.

    Per-key order: once an event of a key failed, no later event of that key in the
    batch may count as sent, whatever its topic, even if Kafka acknowledged it (a
    publisher that sent them in one go cannot take them back): those stay unsettled and
    go again, after the failed one, so the last copy a consumer sees is in order. The
    rule is the key's alone, like the hold behind a parked event: an event refused for
    its topic, once fixed, must not land behind later events of its key. Null keys
    promise no order.

    Retriable failures are not charged; permanent ones count an attempt and are parked
    when the attempts reach `park_after_attempts`.
    """
    sent: list[OutboxEvent] = []
    failed: list[FailedEvent] = []
    unsettled: list[OutboxEvent] = []
    blocked: set[str] = set()
    for event, failure in zip(result.events, result.failures, strict=True):
        key = event.key
        if key is not None and key in blocked:
            unsettled.append(event)
        elif failure is None:
            sent.append(event)
        else:
            if key is not None:
                blocked.add(key)
            if failure.retriable:
                unsettled.append(event)
            else:
                attempts = event.attempts + 1
                failed.append(
                    FailedEvent(event, failure, attempts, park=attempts >= park_after_attempts)
                )
    return Acknowledgement(tuple(sent), tuple(failed), tuple(unsettled))


def progressed(acknowledgement: Acknowledgement) -> bool:
    """True when a batch moved something on: an event sent, or one parked.

    The loop's backoff grows only over batches that did not (the broker is down, every
    event failed): one event retried until parked must not slow the others down.
    """
    return bool(acknowledgement.sent) or any(failed.park for failed in acknowledgement.failed)


class KeyHold:
    """Keys that already failed within one batch: their later events must wait.

    The publisher uses it while building record batches, so that an event rejected
    locally (too large, invalid topic) does not let later events of its key through,
    whatever their topics (the same rule as `settle`'s).
    """

    __slots__ = ("_blocked",)

    def __init__(self) -> None:
        self._blocked: set[str] = set()

    def block(self, event: OutboxEvent) -> None:
        """Hold back the later events of `event`'s key (no effect for a null key)."""
        if event.key is not None:
            self._blocked.add(event.key)

    def holds(self, event: OutboxEvent) -> bool:
        """True when an earlier event of `event`'s key failed, on any topic."""
        return event.key is not None and event.key in self._blocked


# -- topics and record batches the broker refused ------------------------------------------

#: Kafka error codes of a topic in a metadata answer that say it takes no records: it does
#: not exist and was not created (3), its name is invalid (17), the relay may not see it (29).
REFUSED_TOPIC_CODES: Final = frozenset({3, 17, 29})
_UNKNOWN_TOPIC_OR_PARTITION: Final = 3


def refused_topic(
    topic: str, error_code: int, error_class_name: str, *, auto_create: bool
) -> PublishFailure | None:
    """The failure of `topic`'s events when a metadata answer gave it `error_code`, or None.

    None for every code that does not refuse the topic for good (0, or
    ``LEADER_NOT_AVAILABLE`` while a topic is being created): the producer then waits for
    its partitions as usual.
    """
    if error_code not in REFUSED_TOPIC_CODES:
        return None
    if error_code == _UNKNOWN_TOPIC_OR_PARTITION:
        why = (
            "the broker did not create it (auto.create.topics.enable=false?)"
            if auto_create
            else "kafka_auto_create_topics is off"
        )
        reason = f"topic {topic!r} does not exist and {why}"
    else:
        reason = f"the broker refused topic {topic!r} in a metadata answer"
    return PublishFailure(f"{error_class_name}: {reason}", retriable=False)


class RefusedTopics:
    """What metadata answers said of topics: refusals remembered for `ttl_s` seconds.

    While remembered, a topic's events fail at once (charged, parked in the end) instead
    of waiting for the producer's metadata timeout; afterwards the broker is asked again,
    so a topic created meanwhile is used.

    An unknown topic the broker was asked to create is not refused at once: Kafka answers
    ``UNKNOWN_TOPIC_OR_PARTITION`` while its controller creates the topic (KRaft's
    auto-creation is asynchronous, and a topic already being created gets that answer
    too), so for `creation_grace_s` seconds its events are retriable failures, not
    charged. Times are from a monotonic clock the caller passes.
    """

    __slots__ = ("_creating", "_refused", "creation_grace_s", "ttl_s")

    def __init__(self, ttl_s: float, creation_grace_s: float) -> None:
        self.ttl_s = ttl_s
        self.creation_grace_s = creation_grace_s
        #: topic -> (when the refusal expires, the failure of its events)
        self._refused: dict[str, tuple[float, PublishFailure]] = {}
        #: topic -> when it was first answered unknown after asking for its creation
        self._creating: dict[str, float] = {}

    def answered(
        self, topic: str, error_code: int, error_class_name: str, *, auto_create: bool, now: float
    ) -> PublishFailure | None:
        """Take a metadata answer for `topic`: the failure of its events, None if it exists.

        A refusal (not retriable) is remembered; a retriable failure means "being created,
        ask again".
        """
        if error_code not in REFUSED_TOPIC_CODES:
            self._creating.pop(topic, None)
            return None
        if error_code == _UNKNOWN_TOPIC_OR_PARTITION and auto_create:
            since = self._creating.setdefault(topic, now)
            if now - since < self.creation_grace_s:
                return PublishFailure(
                    f"{error_class_name}: topic {topic!r} does not exist yet "
                    "(the broker was asked to create it)",
                    retriable=True,
                )
        self._creating.pop(topic, None)
        failure = refused_topic(topic, error_code, error_class_name, auto_create=auto_create)
        assert failure is not None  # noqa: S101 - every refusing code has a failure
        self._refused[topic] = (now + self.ttl_s, failure)
        return failure

    def refusal(self, topic: str, now: float) -> PublishFailure | None:
        """The remembered failure of `topic`, or None when none is (or it expired)."""
        entry = self._refused.get(topic)
        if entry is None:
            return None
        expires, failure = entry
        if now >= expires:
            del self._refused[topic]
            return None
        return failure


#: aiokafka exception class names of a record batch the broker refused for its size.
_BATCH_SIZE_ERRORS: Final = frozenset({"MessageSizeTooLargeError", "RecordListTooLargeError"})


def split_on_refusal(error_class_name: str, records: int) -> bool:
    """True when a record batch refused with this error is to be split and sent again.

    The broker refuses a whole batch larger than the topic's ``max.message.bytes`` (or its
    segment): no record is to blame until a batch of one record is refused alone.
    """
    return records > 1 and error_class_name in _BATCH_SIZE_ERRORS


def batch_cap_after_refusal(cap: int | None, refused_bytes: int) -> int:
    """A topic's record batch cap after the broker refused a batch of `refused_bytes`.

    Half the refused size, never raised: the topic's limit is below what it refused, and
    batches at most half of it lose little while no batch is refused twice the same way.
    """
    halved = max(1, refused_bytes // 2)
    return halved if cap is None else min(cap, halved)


def halves(indexes: list[int]) -> tuple[list[int], list[int]]:
    """The two halves of a refused batch's records, in order (the first the larger)."""
    middle = (len(indexes) + 1) // 2
    return indexes[:middle], indexes[middle:]


# -- partition choice ---------------------------------------------------------------------

_MURMUR_M: Final = 0x5BD1E995
_MURMUR_SEED: Final = 0x9747B28C
_MASK32: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of `data`, as the Java client computes it (unsigned 32 bit)."""
    length = len(data)
    h = (_MURMUR_SEED ^ length) & _MASK32
    words = length // 4
    for word in struct.unpack_from(f"<{words}I", data):
        k = (word * _MURMUR_M) & _MASK32
        k ^= k >> 24
        k = (k * _MURMUR_M) & _MASK32
        h = ((h * _MURMUR_M) & _MASK32) ^ k
    tail = data[words * 4 :]
    extra = len(tail)
    if extra >= 3:  # noqa: PLR2004 - the tail is up to three bytes
        h ^= tail[2] << 16
    if extra >= 2:  # noqa: PLR2004
        h ^= tail[1] << 8
    if extra >= 1:
        h ^= tail[0]
        h = (h * _MURMUR_M) & _MASK32
    h ^= h >> 13
    h = (h * _MURMUR_M) & _MASK32
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=65536)
def partition_for(key: bytes, partition_count: int) -> int:
    """Kafka's default partition of a keyed record: murmur2, made positive, modulo.

    The same function as the Java client's and aiokafka's default partitioner, so other
    producers of the topic put the same key in the same partition. Cached: outbox keys
    (aggregate ids) repeat, and the hash is the costliest step of building a record.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partition_count


# -- records ------------------------------------------------------------------------------


def valid_topic(name: str) -> bool:
    """True when Kafka accepts `name` as a topic name."""
    return bool(_TOPIC.match(name)) and name not in {".", ".."}


def route_topic(
    template: str, topic: str, event_type: str | None, aggregate_type: str | None
) -> str:
    """The topic an event goes to: the row's, or `template` filled from the row.

    Like Debezium's ``route.by.field``: ``outbox.{aggregate_type}`` sends an ``Order``
    event to ``outbox.Order``. A field that is NULL on the row falls back to the row's
    topic for that event, rather than building a name like ``outbox.``.
    """
    if not template:
        return topic
    if ("{event_type}" in template and event_type is None) or (
        "{aggregate_type}" in template and aggregate_type is None
    ):
        return topic
    return template.format(
        topic=topic, event_type=event_type or "", aggregate_type=aggregate_type or ""
    )


_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER: Final = json.JSONDecoder()


#: Stand-ins for ``\\`` and ``\"`` while `compact_json` splits at quotes: control
#: characters, which ``jsonb`` output never holds raw (it prints them escaped).
_RAW_BACKSLASH: Final = "\x00"
_RAW_QUOTE: Final = "\x01"
#: A JSON string (group 1), or spaces outside strings: for texts that are not ``jsonb``
#: output (`compact_json`'s fallback, which does not rely on the stand-ins).
_SPACES_OUTSIDE_STRINGS: Final = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*")|[ \t\n\r]+', re.DOTALL)


def compact_json(text: str) -> bytes:
    """Compact UTF-8 JSON from PostgreSQL's ``jsonb`` text output, byte for byte.

    ``jsonb`` prints one space after each ``,`` and ``:`` between tokens and no other
    whitespace outside strings, so removing the spaces outside strings is exact: number
    tokens, escapes and key order stay as ``jsonb`` printed them (no parse, which would
    rewrite ``42.50`` as ``42.5``). Without backslashes every ``"`` delimits a string;
    with them, escaped backslashes and quotes are first swapped for control characters,
    which ``jsonb`` never prints raw (it escapes them), and swapped back afterwards.
    """
    if "\\" in text:
        if _RAW_BACKSLASH in text or _RAW_QUOTE in text:  # not jsonb output: scan it
            return _SPACES_OUTSIDE_STRINGS.sub(r"\1", text).encode()
        text = text.replace("\\\\", _RAW_BACKSLASH).replace('\\"', _RAW_QUOTE)
        compact = _compact_unescaped(text)
        return compact.replace(_RAW_QUOTE, '\\"').replace(_RAW_BACKSLASH, "\\\\").encode()
    # The parts outside strings are joined, stripped of spaces and split again in one go
    # each (C loops), instead of one replace per part.
    parts = text.split('"')
    parts[::2] = '"'.join(parts[::2]).replace(" ", "").split('"')
    return '"'.join(parts).encode()


def _compact_unescaped(text: str) -> str:
    """`text` without its spaces outside strings, when every ``"`` delimits a string."""
    # The parts outside strings are joined, stripped of spaces and split again in one go
    # each (C loops), instead of one replace per part.
    parts = text.split('"')
    parts[::2] = '"'.join(parts[::2]).replace(" ", "").split('"')
    return '"'.join(parts)


def compact_json_bytes(raw: bytes) -> bytes:
    """`compact_json` of ``jsonb`` text still in its UTF-8 bytes (as WAL mode reads it).

    Neither ``"``, ``\\`` nor a space occurs inside a multi-byte UTF-8 sequence, so the
    bytes are compacted as they are, without decoding and encoding again.
    """
    if b"\\" in raw:
        if b"\x00" in raw or b"\x01" in raw:  # not jsonb output: scan it
            return compact_json(raw.decode())
        raw = raw.replace(b"\\\\", b"\x00").replace(b'\\"', b"\x01")
        parts = raw.split(b'"')
        parts[::2] = b'"'.join(parts[::2]).replace(b" ", b"").split(b'"')
        return b'"'.join(parts).replace(b"\x01", b'\\"').replace(b"\x00", b"\\\\")
    parts = raw.split(b'"')
    parts[::2] = b'"'.join(parts[::2]).replace(b" ", b"").split(b'"')
    return b'"'.join(parts)


def header_value(value: object) -> bytes:
    """A Kafka header value: bytes as they are, strings as UTF-8, anything else as JSON.

    The row headers of `row_headers` are bytes already; parsed JSON (a table-less
    message's envelope) is encoded here.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return _COMPACT.encode(value).encode()


_JSON_STRING: Final = r'"[^"\\]*(?:\\.[^"\\]*)*"'
#: One member of a JSON object, up to the start of its value: the name (group 1), then a
#: string value (2), a scalar one (3: number, true, false, null) or an opening bracket.
_MEMBER: Final = re.compile(
    rf"[ \t\n\r]*({_JSON_STRING})[ \t\n\r]*:[ \t\n\r]*"
    rf"(?:({_JSON_STRING})|([^ \t\n\r,{{}}\[\]\"]+)|[{{\[])",
    re.DOTALL,
)
#: The start of an object, and its end when it is empty (group 1).
_OPENING: Final = re.compile(r"[ \t\n\r]*\{[ \t\n\r]*(\})?")
#: What follows a member: a comma, or the object's closing brace.
_AFTER_MEMBER: Final = re.compile(r"[ \t\n\r]*([,}])")
#: Strings and brackets, to find where a nested value ends without parsing it.
_NESTING: Final = re.compile(rf"{_JSON_STRING}|[{{}}\[\]]", re.DOTALL)


def _string_text(token: str) -> str:
    """The text of a JSON string token (quotes included)."""
    if "\\" not in token:
        return token[1:-1]
    text: str = json.decoder.scanstring(token, 1)[0]  # type: ignore[attr-defined]
    return text


def _nested_end(text: str, start: int) -> int:
    """Where the array or object opening at `start` ends, by counting its brackets."""
    depth = 0
    for match in _NESTING.finditer(text, start):
        part = match.group()
        if part in {"{", "["}:
            depth += 1
        elif part in {"}", "]"}:
            depth -= 1
            if depth == 0:
                return match.end()
    raise ValueError("unbalanced brackets in a JSON object")


def row_headers(text: str) -> dict[str, bytes]:
    """A row's headers, from the ``jsonb`` text of its ``headers`` object, byte-exact.

    Each value becomes the bytes of its Kafka header: a JSON string its UTF-8 text,
    anything else (number, boolean, array, object) ``jsonb``'s text without the
    insignificant whitespace, tokens unchanged, as `compact_json` does for payloads. A
    null value is left out. No parse of the values: no nesting or number too large for
    Python's JSON decoder, and ``1.50`` stays ``1.50``.

    Raises:
        ValueError: `text` is not a JSON object.

    """
    # The usual headers (trace context, ids) hold strings only, which the C decoder
    # reads exactly and faster than the scan below.
    try:
        parsed = _DECODER.raw_decode(text)[0]
    except (ValueError, RecursionError):
        parsed = None
    if type(parsed) is dict:
        # Only a str has `encode` among the decoder's values (numbers, booleans, None,
        # lists, dicts have none): one pass, no separate check of the types.
        try:
            return {name: value.encode() for name, value in parsed.items()}
        except AttributeError:
            pass
    return _scan_headers(text)


def _member_value(text: str, member: re.Match[str]) -> tuple[bytes | None, int]:
    """The header bytes of an object member `_MEMBER` matched (None for null), and its end."""
    string_token, scalar = member.group(2, 3)
    if string_token is not None:
        return _string_text(string_token).encode(), member.end()
    if scalar is not None:
        return (None if scalar == "null" else scalar.encode()), member.end()
    start = member.end() - 1
    end = _nested_end(text, start)
    return compact_json(text[start:end]), end


def _scan_headers(text: str) -> dict[str, bytes]:
    """`row_headers` by scanning `text`: every value sliced out as ``jsonb`` printed it."""
    headers: dict[str, bytes] = {}
    opening = _OPENING.match(text)
    if opening is None:
        raise ValueError("expected a JSON object")
    if opening.group(1):
        if text[opening.end() :].strip(" \t\n\r"):
            raise ValueError("text after a JSON object")
        return headers
    pos = opening.end()
    while True:
        member = _MEMBER.match(text, pos)
        if member is None:
            raise ValueError(f"not a JSON object member at {pos}")
        value, end = _member_value(text, member)
        if value is not None:
            headers[_string_text(member.group(1))] = value
        after = _AFTER_MEMBER.match(text, end)
        if after is None:
            raise ValueError(f"expected ',' or '}}' at {end} in a JSON object")
        if after.group(1) == "}":
            if text[after.end() :].strip(" \t\n\r"):
                raise ValueError("text after a JSON object")
            return headers
        pos = after.end()


def kafka_headers(
    event_id: str,
    event_type: str | None,
    aggregate_type: str | None,
    own: Mapping[str, object] | None,
) -> tuple[tuple[str, bytes], ...]:
    """The headers of a record: ``event_id``, the type fields when present, the row's own.

    The row's `own` headers (e.g. ``traceparent``; `row_headers` of its ``headers``)
    pass unchanged; they cannot override the relay's ``event_id``, which consumers use
    to drop duplicates.
    """
    headers = [("event_id", event_id.encode())]
    if event_type is not None:
        headers.append(("event_type", event_type.encode()))
    if aggregate_type is not None:
        headers.append(("aggregate_type", aggregate_type.encode()))
    if own:
        for name, value in own.items():
            if name != "event_id" and value is not None:
                headers.append((name, header_value(value)))
    return tuple(headers)


#: The error class of rows parked because they cannot become a Kafka record.
UNREADABLE: Final = "Unreadable"
#: What a row's JSON can hold that Python's decoder refuses: nesting deeper than the
#: interpreter's recursion limit, an integer of more digits than ``int`` converts.
ROW_ERRORS: Final = (RecursionError, ValueError, TypeError, UnicodeError)


@dataclasses.dataclass(frozen=True, slots=True)
class Unreadable:
    """A row that cannot become a record: parked with `reason`, never relayed."""

    id: int
    key: str | None
    attempts: int
    reason: str


def unreadable(id_: int, key: str | None, attempts: int, error: BaseException) -> Unreadable:
    """The `Unreadable` of a row whose conversion raised `error` (one of `ROW_ERRORS`)."""
    if isinstance(error, RecursionError):
        why = "JSON nested too deeply to decode"
    else:
        why = f"{type(error).__name__}: {str(error)[:200]}"
    return Unreadable(id_, key, attempts, f"{UNREADABLE}: cannot build a record ({why})")


def id_array(ids: Iterable[int]) -> str:
    """Row ids as a PostgreSQL array literal (``{1,2,3}``), for a ``bigint[]`` parameter.

    Thousands of ids per statement: joining their text is several times cheaper than
    psycopg adapting a list item by item.
    """
    return "{" + ",".join(map(str, ids)) + "}"


_EVENT_FIELDS: Final = (
    "id", "event_id", "topic", "key", "value", "headers", "created_at", "attempts", "lsn",
)  # fmt: skip
if tuple(field.name for field in dataclasses.fields(OutboxEvent)) != _EVENT_FIELDS:
    raise ImportError("OutboxEvent's fields changed: update relay.decisions.EVENT_SLOTS")
#: Setters of `OutboxEvent`'s slots, in field order. A frozen dataclass's __init__ sets
#: each field through object.__setattr__, twice the cost of the slot descriptor: the
#: sources build one event per relayed row with ``object.__new__`` and these.
EVENT_SLOTS: Final[tuple[Callable[[OutboxEvent, Any], None], ...]] = tuple(
    getattr(OutboxEvent, name).__set__ for name in _EVENT_FIELDS
)


def new_event(  # noqa: PLR0917 - one argument per field, positional for speed
    id_: int,
    event_id: str,
    topic: str,
    key: str | None,
    value: bytes | None,
    headers: tuple[tuple[str, bytes], ...],
    created_at: dt.datetime | None,
    attempts: int,
    lsn: int,
) -> OutboxEvent:
    """``OutboxEvent(...)`` of every field, built through the slots (see `EVENT_SLOTS`)."""
    event: OutboxEvent = object.__new__(OutboxEvent)
    s_id, s_event_id, s_topic, s_key, s_value, s_headers, s_created, s_attempts, s_lsn = EVENT_SLOTS
    s_id(event, id_)
    s_event_id(event, event_id)
    s_topic(event, topic)
    s_key(event, key)
    s_value(event, value)
    s_headers(event, headers)
    s_created(event, created_at)
    s_attempts(event, attempts)
    s_lsn(event, lsn)
    return event


def lock_id_for(schema: str, table: str) -> int:
    """The advisory lock key of an outbox's leadership: stable, derived from its name.

    A signed 64-bit integer, as ``pg_try_advisory_lock(bigint)`` takes.
    """
    digest = hashlib.sha256(f"outbox-relay:{schema}.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
