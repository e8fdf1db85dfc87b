"""The relay daemon, wired from the settings (``outbox-relay run`` starts it).

Settings → a source (poll or WAL) and a Kafka publisher → the relay loop, under the
outbox's advisory-lock leadership, with metrics, health, logs and signal handling
around it. Nothing here decides anything; it connects the parts and bounds the shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import random
import signal
import time
from typing import Any, Final, Protocol, runtime_checkable

import psycopg
import structlog

from relay import config, connection, decisions, slot
from relay.config import Mode, OnSent, Settings
from relay.errors import (
    BrokerCapabilityError,
    BrokerError,
    ConfigError,
    DatabaseError,
    PermanentDatabaseError,
)
from relay.health import Health, broker_probe_due, wedged_after_s
from relay.kafka import KafkaPublisher
from relay.leadership import Leadership
from relay.loop import LoopConfig, RelayLoop
from relay.metrics import Metrics
from relay.poll import PollSource
from relay.publisher import Publisher
from relay.source import Backlog, Source
from relay.sql import query

log = structlog.get_logger("relay.run")

#: Seconds between the info-level summaries (events/s, lag of the oldest unsent event).
SUMMARY_INTERVAL_S: Final = 10.0
#: Seconds between refreshes of the backlog gauges (pending, parked, oldest unsent age).
BACKLOG_INTERVAL_S: Final = 5.0
#: While idle, the backlog query runs only every this many turns (once a minute).
IDLE_BACKLOG_EVERY: Final = 12
#: Seconds to wait before starting over when the source cannot start.
RESTART_DELAY_S: Final = 2.0
#: Seconds between the probes that keep /readyz true while nothing is published.
PROBE_INTERVAL_S: Final = 5.0
#: A broker that has not answered after this long gets a log line (start waits 30 s).
SLOW_BROKER_LOG_S: Final = 10.0
#: The longest wait between attempts to reach PostgreSQL or Kafka at start.
MAX_RETRY_DELAY_S: Final = 30.0


@runtime_checkable
class Probed(Protocol):
    """A publisher that can prove the broker answers without publishing (KafkaPublisher)."""

    async def probe(self) -> None:
        """Raise `relay.errors.BrokerError` when no broker answers."""


def make_source(settings: Settings, metrics: Metrics) -> Source:
    """The source for ``--mode``: the outbox table (poll) or the replication slot (wal)."""
    if settings.mode is Mode.WAL:
        # WAL mode hook: relay.wal provides a `Source` over the replication slot.
        try:
            from relay.wal import WalSource
        except ImportError:
            raise ConfigError("invalid mode: wal mode is not available in this build") from None
        source: Source = WalSource(settings, metrics=metrics)
        return source
    return PollSource(settings, metrics=metrics)


def loop_config(settings: Settings) -> LoopConfig:
    """The relay loop's part of the settings."""
    return LoopConfig(
        batch_size=settings.batch_size,
        poll_interval_s=settings.poll_interval,
        park_after_attempts=settings.park_after_attempts,
    )


class Relay:
    """One relay process: stands by, leads, relays, and stops when told to."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        if not settings.database_url:
            raise ConfigError("no database URL: set --database-url or RELAY_DATABASE_URL")
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.publisher = publisher or KafkaPublisher(settings)
        lock_id = settings.lock_id or decisions.lock_id_for(settings.schema, settings.table)
        self.leadership = Leadership(
            settings.conninfo, lock_id, schema=settings.schema, table=settings.table
        )
        self.loop: RelayLoop | None = None
        self._oldest_unsent_age_s = 0.0
        #: True once a leadership session of this process streamed from the slot.
        self._streamed_from_slot = False

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; return within about ``shutdown_timeout`` after it.

        Raises `ConfigError` (before leading, in every role) when the database can
        never serve these settings: no outbox table, WAL mode not set up.
        """
        summary = asyncio.create_task(self._summarise(stop), name="summary")
        # In the background: a broker that does not answer must not delay a standby's
        # readiness to lead, nor a shutdown (the first publish connects anyway).
        connecting = asyncio.create_task(self._connect_publisher(), name="kafka-connect")
        standby = asyncio.create_task(self._watch_standby_backlog(stop), name="standby-backlog")
        probing = asyncio.create_task(self._probe(connecting), name="probes")
        try:
            if not await self._check_database(stop):
                return
            while await self.leadership.acquire(stop):
                self._set_leader(leader=True)
                try:
                    await self._lead(stop)
                finally:
                    self._set_leader(leader=False)
                    await self.leadership.release()
        finally:
            for task in (summary, connecting, standby, probing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.publisher.stop()
            log.info("relay stopped")

    async def _check_database(self, stop: asyncio.Event) -> bool:
        """Wait (with backoff) until PostgreSQL answers, then run the fatal start checks.

        Every role runs them, so a standby with settings that can never work exits now
        instead of when it becomes the leader. False when `stop` came first.
        """
        for failures in itertools.count(1):
            try:
                conn = await connection.connect(self.settings.conninfo, "start checks")
            except DatabaseError as exc:
                self._database_failed(exc)
                delay = decisions.backoff_s(failures, random.random, max_s=MAX_RETRY_DELAY_S)
                level = log.error if isinstance(exc, PermanentDatabaseError) else log.warning
                level("cannot connect to PostgreSQL; will keep trying", error=str(exc),
                      retry_in_s=round(delay, 2))  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return False
                continue
            try:
                await start_checks(conn, self.settings)
            except ConfigError:
                raise
            except DatabaseError as exc:  # the server went away between the two steps
                self._database_failed(exc)
                log.warning("start checks failed; will retry", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RESTART_DELAY_S)
                if stop.is_set():
                    return False
                continue
            finally:
                await conn.close()
            self.health.database_error = ""
            return True
        return False  # pragma: no cover - the loop above only ends by returning

    def _database_failed(self, exc: DatabaseError) -> None:
        self.health.database_answered(str(exc))

    async def _connect_publisher(self) -> None:
        """Connect to Kafka, retrying with backoff until it works (then /readyz knows).

        A broker that lacks what the settings need (the idempotent producer) gets one
        error line; the retries after it log at debug level only.
        """
        told: str | None = None
        for failures in itertools.count(1):
            try:
                await self._start_publisher()
            except Exception as exc:  # noqa: BLE001 - any failure: try again later
                delay = decisions.backoff_s(failures, random.random, max_s=MAX_RETRY_DELAY_S)
                self.health.broker_answered(str(exc))
                if isinstance(exc, BrokerCapabilityError):
                    if told != str(exc):
                        log.error(str(exc))  # noqa: TRY400 - one line, no traceback
                    else:
                        log.debug("kafka still refuses", error=str(exc), retry_in_s=delay)
                    told = str(exc)
                else:
                    log.warning(
                        "kafka unreachable; will keep trying",
                        error=str(exc),
                        retry_in_s=round(delay, 2),
                    )
                await asyncio.sleep(delay)
            else:
                self.health.broker_answered(None)
                return

    async def _start_publisher(self) -> None:
        """`Publisher.start`, with a log line when the broker is slow to answer."""
        starting = asyncio.ensure_future(self.publisher.start())
        try:
            done, _ = await asyncio.wait({starting}, timeout=SLOW_BROKER_LOG_S)
            if not done:
                log.warning(
                    "kafka has not answered yet; still waiting",
                    bootstrap_servers=self.settings.bootstrap_servers,
                    waited_s=SLOW_BROKER_LOG_S,
                )
            await starting
        finally:
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting

    async def _probe(self, connecting: asyncio.Task[None]) -> None:
        """Keep /readyz true when the relay loop says nothing: standing by, or idle.

        A standby is as healthy as its lock connection; the broker gets a metadata
        request whenever the loop is not publishing (the loop's results say more then).
        """
        while True:
            self.health.lock_connection_observed(
                connected=self.leadership.connected, problem=self.leadership.problem or ""
            )
            await self._probe_broker(connecting)
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _probe_broker(self, connecting: asyncio.Task[None]) -> None:
        due = broker_probe_due(
            publisher_started=connecting.done(),
            leader=self.health.leader,
            loop_idle=self.loop is None or self.loop.stats.idle,
        )
        if not due or not isinstance(self.publisher, Probed):
            return
        try:
            await self.publisher.probe()
        except BrokerError as exc:
            if self.health.broker_answered(str(exc)):
                log.warning("kafka probe failed", error=str(exc))
        else:
            if self.health.broker_answered(None):
                log.info("kafka answers again", servers=self.settings.bootstrap_servers)

    def _set_leader(self, *, leader: bool) -> None:
        self.health.set_leader(leader=leader, now_s=time.monotonic())
        self.metrics.is_leader.set(1 if leader else 0)

    async def _lead(self, stop: asyncio.Event) -> None:
        """Relay while this process holds leadership and `stop` is not set."""
        source = make_source(self.settings, self.metrics)
        try:
            await self._check_slot_kept()
            await source.start()
        except DatabaseError as exc:
            level = log.error if isinstance(exc, PermanentDatabaseError) else log.warning
            level("source cannot start; retrying", error=str(exc))
            self._database_failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RESTART_DELAY_S)
            return
        self._streamed_from_slot = self.settings.mode is Mode.WAL
        self.health.database_answered(None)
        loop_stop = asyncio.Event()
        self.loop = RelayLoop(
            source,
            self.publisher,
            loop_config(self.settings),
            metrics=self.metrics,
            health=self.health,
        )
        relaying = asyncio.create_task(self.loop.run(loop_stop), name="relay-loop")
        backlog = asyncio.create_task(self._watch_backlog(source), name="backlog")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        lost = asyncio.create_task(self.leadership.lost.wait(), name="leadership-lost")
        try:
            await asyncio.wait({relaying, stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
            loop_stop.set()
            if relaying.done():
                relaying.result()  # a bug in the loop: let it surface
            else:
                log.info(
                    "stopping: finishing the batch in flight",
                    reason="signal" if stop.is_set() else "leadership lost",
                    timeout_s=self.settings.shutdown_timeout,
                )
                done, _ = await asyncio.wait({relaying}, timeout=self.settings.shutdown_timeout)
                if not done:
                    log.warning("shutdown timeout: the batch in flight stays pending")
                    relaying.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await relaying
        finally:
            for task in (backlog, stopping, lost, relaying):
                task.cancel()
            await asyncio.gather(backlog, stopping, lost, relaying, return_exceptions=True)
            await source.stop()

    async def _check_slot_kept(self) -> None:
        """With ``--on-sent none``, stop when the slot this process streamed from is gone.

        Only the slot knows what was sent then. Each leadership session builds a fresh
        source, which would take a missing slot for a first start and create one,
        silently skipping what was written since the old one went (the source itself
        stops on a slot lost under it; this covers a slot lost between two sessions).
        A slot gone while no relay process ran cannot be told from a first start.

        Raises:
            SlotLostError: the slot no longer exists.
            DatabaseError: the check could not run (the caller retries).

        """
        settings = self.settings
        if not self._streamed_from_slot or settings.on_sent is not OnSent.NONE:
            return
        conn = await connection.connect(settings.conninfo, "slot check")
        try:
            status = await slot.fetch_slot_status(conn, settings.slot_name)
        except psycopg.Error as exc:
            raise connection.translate(exc, "slot check failed") from None
        finally:
            await conn.close()
        if status is None:
            from relay.wal import SlotLostError

            raise SlotLostError(
                f"replication slot {settings.slot_name} disappeared and --on-sent none "
                "keeps no record of what was sent: events may be missing"
            )

    async def _watch_backlog(self, source: Source) -> None:
        """Keep the backlog gauges and the health's pending count current.

        While the loop finds nothing due, nothing is pending (parked rows aside) and the
        query mostly skipped: an idle outbox costs the relay one fetch per poll interval
        (plus this query once a minute, for the parked count).
        """
        for turn in itertools.count():
            idle = self.loop is not None and self.loop.stats.idle
            if idle and turn % IDLE_BACKLOG_EVERY != 0:
                self._backlog_seen(Backlog(pending_events=0))
            else:
                try:
                    self._backlog_seen(await source.backlog())
                except DatabaseError as exc:
                    log.debug("backlog query failed", error=str(exc))
            await asyncio.sleep(BACKLOG_INTERVAL_S)

    async def _watch_standby_backlog(self, stop: asyncio.Event) -> None:
        """While standing by, keep the backlog gauges current from the outbox table.

        So ``outbox_relay_oldest_unsent_age_seconds`` alerts even when no relay leads.
        With ``--on-sent none`` rows stay pending: the table says nothing then.
        """
        if self.settings.on_sent is OnSent.NONE:
            return
        source = PollSource(self.settings)
        try:
            while not stop.is_set():
                if not self.health.leader:
                    try:
                        self._backlog_seen(await source.backlog())
                    except DatabaseError as exc:
                        log.debug("standby backlog query failed", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), BACKLOG_INTERVAL_S)
        finally:
            await source.stop()

    def _backlog_seen(self, backlog: Backlog) -> None:
        if backlog.pending_events is not None:
            self.metrics.pending_events.set(backlog.pending_events)
            self.health.pending_events = backlog.pending_events
        if backlog.parked_events is not None:
            self.metrics.parked_events.set(backlog.parked_events)
        age = 0.0
        if backlog.oldest_unsent_at is not None:
            age = (dt.datetime.now(dt.UTC) - backlog.oldest_unsent_at).total_seconds()
        self._oldest_unsent_age_s = max(age, 0.0)
        self.metrics.oldest_unsent_age.set(self._oldest_unsent_age_s)

    async def _summarise(self, stop: asyncio.Event) -> None:
        """Log events/s and the lag of the oldest unsent event every `SUMMARY_INTERVAL_S`."""
        last_published, last_time = 0, time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(SUMMARY_INTERVAL_S)
            now = time.monotonic()
            stats = self.loop.stats if self.loop is not None else None
            published = stats.published if stats is not None else 0
            if published < last_published:  # a new loop after a leadership change
                last_published = 0
            log.info(
                "relay summary",
                leader=self.health.leader,
                events_per_s=round((published - last_published) / (now - last_time), 1),
                published=published,
                failed=stats.failed if stats is not None else 0,
                parked=stats.parked if stats is not None else 0,
                pending=self.health.pending_events,
                oldest_unsent_age_s=round(self._oldest_unsent_age_s, 3),
            )
            last_published, last_time = published, now


async def start_checks(conn: psycopg.AsyncConnection[Any], settings: Settings) -> None:
    """Refuse, with a `ConfigError`, a database that can never serve `settings`.

    The same checks in both modes (the outbox table exists; in WAL mode, what
    `relay.slot.check_and_prepare` checks), in a transaction rolled back: the
    publication it would create is left to the leader.
    """
    names = slot.names(settings)
    try:
        async with conn.transaction(force_rollback=True):
            if settings.mode is Mode.WAL:
                await slot.check_and_prepare(conn, settings)
                status = await slot.fetch_slot_status(conn, settings.slot_name)
                if status is not None:
                    slot.check_slot(status)
            else:
                await conn.execute(query("poll", "check", names))
    except psycopg.errors.UndefinedTable:
        raise ConfigError(
            f"table {settings.schema}.{settings.table} does not exist: run outbox-relay migrate"
        ) from None
    except psycopg.Error as exc:
        raise connection.translate(exc, "start checks failed") from None


async def serve(settings: Settings) -> None:
    """Run the relay until SIGTERM or SIGINT, with the HTTP endpoints when configured."""
    for name in config.service_links(os.environ):
        log.debug("ignoring a Kubernetes service link variable", name=name)
    metrics = Metrics()
    health = Health(wedged_after_s=wedged_after_s(settings.kafka_request_timeout_ms / 1000))
    relay = Relay(settings, metrics=metrics, health=health)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # --- HTTP endpoints (/healthz, /readyz, /metrics), relay/http.py -------------------
    server = None
    if settings.http_port > 0:
        from relay import http

        server = await http.serve(settings.http_port, metrics, health, host=settings.http_host)
    # ----------------------------------------------------------------------------------
    log.info(
        "relay starting",
        mode=settings.mode.value,
        outbox=f"{settings.schema}.{settings.table}",
        bootstrap_servers=settings.bootstrap_servers,
        lock_id=relay.leadership.lock_id,
    )
    try:
        await relay.run(stop)
    finally:
        if server is not None:
            await http.close(server)
