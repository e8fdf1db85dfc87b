"""The relay loop: fetch, publish, acknowledge, in a pipeline, in order.

It decides nothing itself (see `relay.decisions`) and does no I/O itself: it moves
batches between a `Source` and a `Publisher`, and keeps `Metrics` and `Health` current.
It imports neither psycopg nor aiokafka.

The pipeline, for batches N-1, N, N+1::

    fetch N+1  ─┐
    publish N  ─┼─ run at the same time
    mark N-1   ─┘

The fetch ahead happens while there is a backlog (batch N was full); once caught up,
the next fetch waits for the publish (it would find nothing sooner) and overlaps the
mark only.

Publishing is one batch at a time: batch N+1 goes to Kafka only once every event of
batch N was acknowledged or failed. That is what keeps per-key order simple: when an
event of key K fails in batch N, no later event of K has been sent yet; the fetched
batch N+1 is discarded, the source rewinds, and the retry starts from the failed event.
(Kafka itself takes one produce request per broker connection at a time from aiokafka,
so overlapping two publishes would gain little.) Fetching and marking overlap with it.

Duplicate windows, honestly: an event Kafka acknowledged is published again when its
acknowledgement did not reach the database — the relay was killed or lost its
connection between the broker's ack and the mark (at most the batches in flight: the
one being published and up to `MAX_PENDING_ACKS` being marked), or shutdown timed out,
or leadership moved while a batch was in flight. Every record carries ``event_id``.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import functools
import gc
import operator
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog
from prometheus_client import Histogram

from relay import decisions
from relay.errors import DatabaseError, first_line
from relay.events import Acknowledgement, OutboxEvent, PublishResult
from relay.health import Health
from relay.metrics import Metrics
from relay.publisher import Publisher
from relay.source import Source

log = structlog.get_logger("relay.loop")

#: Batches whose acknowledgement may be under way while the next one is published.
#: Bounds memory and the duplicate window when marking is slower than publishing.
MAX_PENDING_ACKS: Final = 2
#: Allocations between two collections of the youngest GC generation while the loop runs
#: (CPython's default is 700). Relaying allocates several tracked objects per event and
#: keeps thousands of events alive in the queue and in flight, so the default collects
#: every few dozen events and promotes them, and the older generations get scanned again
#: and again: 15-25% of the relay's CPU in a drain. Cycles are still collected.
GC_GEN0_THRESHOLD: Final = 10_000
#: Seconds the loop waits for the acknowledgements under way when it stops (a database
#: that hangs must not hang the shutdown; unacknowledged events simply stay due).
LAST_ACK_TIMEOUT_S: Final = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class LoopConfig:
    """What the loop needs from the settings."""

    batch_size: int = 2000
    poll_interval_s: float = 1.0
    park_after_attempts: int = 5
    backoff_base_s: float = decisions.BACKOFF_BASE_S
    backoff_max_s: float = decisions.BACKOFF_MAX_S


@dataclasses.dataclass(slots=True)
class LoopStats:
    """Running totals, read by the periodic summary."""

    published: int = 0
    failed: int = 0
    parked: int = 0
    batches: int = 0
    consecutive_failures: int = 0
    #: True while the last fetch found nothing due (the outbox is drained).
    idle: bool = False


class _Acknowledger:
    """Runs `Source.acknowledge` in the background, strictly one batch after the other.

    A failed acknowledgement fails every later one (they are skipped: their events stay
    due and are published again after the rewind), and the next `submit` or `drain`
    raises it.
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        self._tasks: collections.deque[asyncio.Task[None]] = collections.deque()
        #: Set when an acknowledgement failed, until `drain` reported it. A fetch ahead
        #: may be waiting for acknowledgements that will now never come.
        self.failed = asyncio.Event()

    async def submit(self, acknowledgement: Acknowledgement) -> None:
        while self._tasks and self._tasks[0].done():
            self._tasks.popleft().result()  # raises the failure of a finished one
        while len(self._tasks) >= MAX_PENDING_ACKS:
            await self._tasks.popleft()
        previous = self._tasks[-1] if self._tasks else None
        self._tasks.append(
            asyncio.create_task(self._acknowledge(previous, acknowledgement), name="acknowledge")
        )

    async def _acknowledge(
        self, previous: asyncio.Task[None] | None, acknowledgement: Acknowledgement
    ) -> None:
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self._source.acknowledge(acknowledgement)
        except Exception:
            self.failed.set()
            raise

    async def drain(self) -> None:
        """Wait for every acknowledgement; raise the first failure."""
        failure: BaseException | None = None
        while self._tasks:
            task = self._tasks.popleft()
            try:
                await task
            except Exception as exc:  # noqa: BLE001 - re-raised below, once
                failure = failure or exc
        self.failed.clear()
        if failure is not None:
            raise failure


class RelayLoop:
    """Moves events from a `Source` to a `Publisher` until told to stop."""

    def __init__(
        self,
        source: Source,
        publisher: Publisher,
        config: LoopConfig,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        random_unit: Callable[[], float] = random.random,
    ) -> None:
        self._source = source
        self._publisher = publisher
        self._config = config
        self._metrics = metrics or Metrics()
        self._health = health or Health()
        self._monotonic = monotonic
        self._random = random_unit
        self._acks = _Acknowledger(source)
        #: The first failure of the last published batch, for the retry log line.
        self._last_failure: str | None = None
        self.stats = LoopStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; then finish the batch in flight and its acknowledgement.

        The caller bounds the shutdown (cancel the task after its timeout): a batch still
        unacknowledged then simply stays due.
        """
        stopping = asyncio.create_task(stop.wait(), name="stop-waiter")
        prefetch: asyncio.Task[Sequence[OutboxEvent]] | None = None
        gc_thresholds = gc.get_threshold()
        gc.set_threshold(max(GC_GEN0_THRESHOLD, gc_thresholds[0]), *gc_thresholds[1:])
        self._health.loop_started(self._monotonic())
        try:
            while not stop.is_set():
                try:
                    batch = await self._fetched(prefetch or self._fetch())
                except DatabaseError as exc:
                    self._turned()
                    await self._recover("fetch", exc, stopping)
                    continue
                finally:
                    prefetch = None
                self._turned()
                self._health.database_answered(None)
                if not batch:
                    await self._idle(stopping)
                    continue
                if len(batch) == self._config.batch_size:
                    # A backlog: fetch the next batch while this one is published. (A
                    # short batch means caught up: a fetch now would find nothing yet.)
                    prefetch = self._fetch()
                acknowledgement = await self._publish(batch)
                if acknowledgement is None or not acknowledgement.complete:
                    if prefetch is not None:
                        await _cancel(prefetch)
                    prefetch = None
                    await self._retry_after(acknowledgement, stopping)
        finally:
            self._health.loop_ended()
            gc.set_threshold(*gc_thresholds)
            stopping.cancel()
            if prefetch is not None:
                await _cancel(prefetch)
            try:
                await asyncio.wait_for(self._acks.drain(), LAST_ACK_TIMEOUT_S)
            except DatabaseError as exc:
                log.warning("last acknowledgement failed", error=str(exc))
            except TimeoutError:
                log.warning("last acknowledgement timed out; its events stay pending")

    def _turned(self) -> None:
        """A fetch ended: the loop is not wedged; what the source says of its connections."""
        self._health.loop_turned(self._monotonic(), self._source.connection_problems())

    def _fetch(self) -> asyncio.Task[Sequence[OutboxEvent]]:
        return asyncio.create_task(self._source.fetch(self._config.batch_size), name="fetch")

    async def _fetched(
        self, fetching: asyncio.Task[Sequence[OutboxEvent]]
    ) -> Sequence[OutboxEvent]:
        """The result of a fetch; `DatabaseError` if an acknowledgement failed first.

        A fetch may wait for the acknowledgements under way (a new scan with many rows
        in flight); after a failed one the later ones are skipped, so it would wait
        forever: it is cancelled instead, and the loop recovers.
        """
        failed = asyncio.create_task(self._acks.failed.wait(), name="ack-failed")
        try:
            await asyncio.wait({fetching, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            if not fetching.done():
                await _cancel(fetching)
        if fetching.cancelled():
            raise DatabaseError("an acknowledgement failed while fetching")
        return fetching.result()

    async def _publish(self, batch: Sequence[OutboxEvent]) -> Acknowledgement | None:
        """Publish one batch and hand its acknowledgement on; None when that failed."""
        self.stats.idle = False
        started = self._monotonic()
        result = await self._publisher.publish(batch)
        self._count_errors(result)
        acknowledgement = decisions.settle(result, self._config.park_after_attempts)
        self._observe(batch, acknowledgement, self._monotonic() - started)
        try:
            await self._acks.submit(acknowledgement)
        except DatabaseError as exc:
            log.warning("acknowledgement failed", error=str(exc))
            self._health.database_answered(first_line(exc))
            return None
        return acknowledgement

    async def _retry_after(
        self, acknowledgement: Acknowledgement | None, stopping: asyncio.Task[bool]
    ) -> None:
        """After an incomplete batch (None: its acknowledgement failed): back off, rewind."""
        if acknowledgement is not None and decisions.progressed(acknowledgement):
            # Other events went through: wait the shortest backoff, not a growing one, or
            # one event retried until parked would slow every topic down to a batch per
            # `backoff_max_s`.
            self.stats.consecutive_failures = 0
        await self._recover("publish", None, stopping)

    def _count_errors(self, result: PublishResult) -> None:
        """Count what Kafka did not acknowledge, by error class (not what was held back)."""
        self._last_failure = None
        errors: collections.Counter[tuple[str, str]] = collections.Counter()
        for event, failure in zip(result.events, result.failures, strict=True):
            if failure is None:
                continue
            self._last_failure = self._last_failure or failure.error
            kind = decisions.error_class(failure.error)
            if kind != decisions.HELD_BACK:
                errors[event.topic, kind] += 1
        for (topic, kind), count in errors.items():
            self._metrics.publish_errors.labels(topic=topic, error=kind).inc(count)

    def _observe(
        self, batch: Sequence[OutboxEvent], acknowledgement: Acknowledgement, publish_s: float
    ) -> None:
        metrics, stats = self._metrics, self.stats
        stats.batches += 1
        stats.published += len(acknowledgement.sent)
        metrics.batch_size.observe(len(batch))
        sent = acknowledgement.sent
        now = time.time()
        _observe_many(
            metrics.commit_to_ack,
            [now - event.created_at.timestamp() for event in sent if event.created_at is not None],
        )
        per_topic = collections.Counter(map(_topic_of, sent))
        for topic, count in per_topic.items():
            metrics.events_published.labels(topic=topic).inc(count)
        for failed in acknowledgement.failed:
            stats.failed += 1
            if failed.park:
                stats.parked += 1
                metrics.events_parked.labels(topic=failed.event.topic).inc()
                log.error(
                    "event parked",
                    event_id=failed.event.event_id,
                    id=failed.event.id,
                    topic=failed.event.topic,
                    key=failed.event.key,
                    attempts=failed.attempts,
                    error=failed.failure.error,
                )
            else:
                log.warning(
                    "event rejected by kafka",
                    event_id=failed.event.event_id,
                    id=failed.event.id,
                    topic=failed.event.topic,
                    key=failed.event.key,
                    attempts=failed.attempts,
                    error=failed.failure.error,
                )
        if acknowledgement.sent:
            self._health.broker_answered(None)
        elif acknowledgement.unsettled and not acknowledgement.failed:
            # Nothing acknowledged, nothing rejected: every event met a retriable error
            # (connection lost, timeout). /readyz says so until a batch gets through.
            self._health.broker_answered(self._last_failure or "")
        if acknowledgement.complete:
            stats.consecutive_failures = 0
            self._health.progressed(self._monotonic())
            metrics.last_progress.set(time.time())
        log.debug(
            "batch published",
            events=len(batch),
            first_id=batch[0].id,
            last_id=batch[-1].id,
            sent=len(acknowledgement.sent),
            failed=len(acknowledgement.failed),
            unsettled=len(acknowledgement.unsettled),
            publish_ms=round(publish_s * 1000, 1),
        )

    async def _idle(self, stopping: asyncio.Task[bool]) -> None:
        self.stats.idle = True
        self._health.progressed(self._monotonic())
        self._metrics.last_progress.set(time.time())
        waiting = asyncio.create_task(
            self._source.wait(self._config.poll_interval_s), name="wait-for-events"
        )
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
        await _discard(waiting)

    async def _recover(
        self, what: str, error: BaseException | None, stopping: asyncio.Task[bool]
    ) -> None:
        """After a failure: settle what is under way, rewind, back off."""
        stats = self.stats
        stats.consecutive_failures += 1
        delay = decisions.backoff_s(
            stats.consecutive_failures,
            self._random,
            base_s=self._config.backoff_base_s,
            max_s=self._config.backoff_max_s,
        )
        try:
            await self._acks.drain()
        except DatabaseError as exc:
            error = error or exc
        if isinstance(error, DatabaseError):
            self._health.database_answered(first_line(error))
        if error is not None:
            log.warning(
                "relay step failed, retrying",
                step=what,
                error=first_line(error),
                failures=stats.consecutive_failures,
                retry_in_s=round(delay, 2),
            )
        else:
            log.warning(
                "batch not fully acknowledged, retrying from the oldest unsent event",
                error=self._last_failure,
                failures=stats.consecutive_failures,
                retry_in_s=round(delay, 2),
            )
        try:
            await self._source.rewind()
        except DatabaseError as exc:
            log.warning("rewind failed", error=first_line(exc))
        await asyncio.wait({stopping}, timeout=delay)


_topic_of: Final = operator.attrgetter("topic")


def _observe_many(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe`` of every value, with one increment per bucket per call.

    A batch holds thousands of events: one `observe` each (a lock, a loop over the
    buckets) cost more than building their records. The counts go to prometheus_client's
    own bucket values; a client without them gets one `observe` per value.
    """
    bounds: Sequence[float] | None = getattr(histogram, "_upper_bounds", None)
    buckets: Sequence[Any] | None = getattr(histogram, "_buckets", None)
    total: Any = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    # bisect_left: the first bound >= value, as `observe` picks (value <= bound).
    counts = collections.Counter(map(functools.partial(bisect.bisect_left, bounds), values))
    total.inc(sum(values))
    for index, count in counts.items():
        buckets[index].inc(count)


async def _cancel(task: asyncio.Task[Sequence[OutboxEvent]]) -> None:
    """Cancel a fetch ahead whose result no longer matters, and wait for it to end."""
    task.cancel()
    await _discard(task)


async def _discard(task: asyncio.Task[object] | asyncio.Task[Sequence[OutboxEvent]]) -> None:
    """Wait for a task whose result no longer matters (a fetch ahead, a wait)."""
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    except Exception as exc:  # noqa: BLE001 - the result is discarded; so is its failure
        log.debug("discarded task failed", task=task.get_name(), error=first_line(exc))
