"""Alert notifications, grouped and timed like Alertmanager's.

The engine calls ``update`` whenever an alert fires or resolves, or is
acknowledged, silenced or unsilenced. Alerts are grouped by the
``group_by`` labels, so a whole environment of dead agents makes one message.
``process`` (every second) decides which groups are due:

- a new group waits ``group_wait`` to collect the rest of a burst;
- a change (an alert newly firing, a notified alert resolved) goes out no
  sooner than ``group_interval`` after the group's last notification;
- an unchanged group with unacknowledged firing alerts repeats after
  ``repeat_interval``.

Each due receiver gets a snapshot of the alerts it accepts, put on that
receiver's own bounded queue; one task per receiver delivers and retries, so
a slow endpoint delays nothing but itself.

Whether an alert's current state has been told is kept on the alert itself
(``notified_at``/``notified_state``, persisted by the engine), which is what
lets a restarted gateway carry on without notifying everything again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from clawtrace.alerts.model import Alert, fingerprint
from clawtrace.alerts.receivers import AlertSnapshot, DeliveryError, Notification, Receiver
from clawtrace.alerts.settings import AlertSettings

log = logging.getLogger("clawtrace.alerts.notify")

GroupKey = tuple[tuple[str, str], ...]
# (rule, agent): an alert's identity for as long as it lives; its fingerprint
# changes with the agent's labels when a resolved alert fires again.
AlertKey = tuple[str, str]
PROCESS_INTERVAL_SECONDS = 1.0
QUEUE_SIZE = 1000


@dataclass(slots=True)
class ReceiverStats:
    # Notifications delivered, and sends that failed (each retry counts).
    sent: int = 0
    failed_attempts: int = 0
    # Notifications pushed out of a full queue.
    dropped: int = 0
    # Notifications waiting (not counting the one being sent).
    queued: int = 0


@dataclass(slots=True, eq=False)
class _Group:
    key: GroupKey
    labels: dict[str, str]
    created_at: float
    alerts: dict[AlertKey, Alert] = field(default_factory=dict)
    # The last notification to any receiver (the group_interval clock).
    last_flush: float | None = None
    # Something happened since the group was last looked at.
    dirty: bool = False
    # Per receiver, its last notification of this group (the repeat clock).
    sent_at: dict[str, float] = field(default_factory=dict)


def alert_labels(alert: Alert) -> dict[str, str]:
    """The alert's labels, or the ones the engine would have given it if it left them empty."""
    if alert.labels:
        return alert.labels
    return {"alertname": alert.rule, "env": alert.env, "agent": alert.agent, "severity": alert.severity}


def _fingerprint(alert: Alert) -> str:
    return alert.fingerprint or fingerprint(alert_labels(alert))


def group_key(labels: dict[str, str], group_by: Sequence[str]) -> GroupKey:
    """The group an alert belongs to; "..." groups by every label, as in Alertmanager.

    Empty and missing labels are left out, as Alertmanager treats them alike.
    """
    names = sorted(labels) if "..." in group_by else group_by
    return tuple((name, labels[name]) for name in names if labels.get(name))


def snapshot(alert: Alert, now: float) -> AlertSnapshot:
    firing = alert.state == "firing"
    starts = alert.fired_at if alert.fired_at is not None else alert.active_since
    return AlertSnapshot(
        status="firing" if firing else "resolved",
        labels=dict(alert_labels(alert)),
        annotations=dict(alert.annotations),
        starts_at=now if starts is None else starts,
        ends_at=None if firing else (alert.resolved_at if alert.resolved_at is not None else now),
        agent=alert.agent,
        env=alert.env,
        severity=alert.severity,
        fingerprint=_fingerprint(alert),
        acknowledged_by=alert.acknowledged_by,
    )


class _Outbox:
    """One receiver's queue and the task that empties it."""

    def __init__(
        self,
        receiver: Receiver,
        *,
        size: int,
        retry_initial_seconds: float,
        retry_max_seconds: float,
        max_attempts: int,
    ) -> None:
        self.receiver = receiver
        self.stats = ReceiverStats()
        self.size = size
        self.retry_initial_seconds = retry_initial_seconds
        self.retry_max_seconds = retry_max_seconds
        self.max_attempts = max_attempts
        self.queue: deque[Notification] = deque()
        self.task: asyncio.Task[None] | None = None
        self.sending = False
        self._wake = asyncio.Event()
        # Set while nothing is queued or being sent.
        self.idle = asyncio.Event()
        self.idle.set()

    def put(self, notification: Notification) -> None:
        if len(self.queue) >= self.size:
            # The oldest is the most likely to be stale by the time it would be sent.
            old = self.queue.popleft()
            self.stats.dropped += 1
            log.warning(
                "alert receiver %s: queue full (%d), dropped a %s notification for %s",
                self.receiver.name,
                self.size,
                old.status,
                dict(old.group_labels),
            )
        self.queue.append(notification)
        self.stats.queued = len(self.queue)
        self.idle.clear()
        self._wake.set()

    def start(self) -> None:
        if self.task is None or self.task.done():
            name = f"clawtrace-alert-receiver-{self.receiver.name}"
            self.task = asyncio.create_task(self._run(), name=name)

    async def _run(self) -> None:
        while True:
            if not self.queue:
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            notification = self.queue.popleft()
            self.stats.queued = len(self.queue)
            self.sending = True
            try:
                await self._deliver(notification)
            finally:
                self.sending = False

    async def _deliver(self, notification: Notification) -> None:
        name = self.receiver.name
        what = f"{notification.status} notification for {dict(notification.group_labels)}"
        delay = self.retry_initial_seconds
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self.receiver.send(notification)
            except DeliveryError as exc:
                self.stats.failed_attempts += 1
                if not exc.retry:
                    log.error("alert receiver %s refused the %s: %s", name, what, exc)
                    return
                if attempt == self.max_attempts:
                    log.error(
                        "alert receiver %s: gave up on the %s after %d attempts: %s", name, what, attempt, exc
                    )
                    return
                log.warning(
                    "alert receiver %s: attempt %d at the %s failed, retrying in %g s: %s",
                    name,
                    attempt,
                    what,
                    delay,
                    exc,
                )
            except Exception:
                # A bug in a receiver will not go away by retrying; lose this message, keep the worker.
                self.stats.failed_attempts += 1
                log.exception("alert receiver %s failed on the %s", name, what)
                return
            else:
                self.stats.sent += 1
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_seconds)


class Notifier:
    """Groups alerts, decides when each group is due, and delivers to every receiver.

    Owns the receivers it is given: ``close`` closes them.
    """

    def __init__(
        self,
        receivers: Sequence[Receiver],
        settings: AlertSettings,
        *,
        clock: Callable[[], float] = time.time,
        external_url: str = "",
        on_sent: Callable[[list[Alert]], None] | None = None,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
        max_attempts: int = 10,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        names = [r.name for r in receivers]
        if len(set(names)) != len(names):
            raise ValueError(f"alert receiver names must be unique, got {names}")
        self.receivers = list(receivers)
        self.settings = settings
        self.external_url = external_url.rstrip("/")
        self._clock = clock
        self.on_sent = on_sent
        self._groups: dict[GroupKey, _Group] = {}
        # Which group each tracked alert is in.
        self._where: dict[AlertKey, GroupKey] = {}
        self._outboxes = {
            r.name: _Outbox(
                r,
                size=queue_size,
                retry_initial_seconds=retry_initial_seconds,
                retry_max_seconds=retry_max_seconds,
                max_attempts=max_attempts,
            )
            for r in receivers
        }
        self.stats: dict[str, ReceiverStats] = {name: box.stats for name, box in self._outboxes.items()}
        self._process_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- what the engine calls ------------------------------------------------

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Take the alerts loaded from the store at startup.

        Alerts whose state was already notified join their groups silently and
        their repeat clock runs on from ``notified_at``; alerts that fired unseen
        or resolved after a firing notification are changes like any other.
        """
        now = self._clock()
        for alert in alerts:
            try:
                self._restore_one(alert, now)
            except Exception:
                log.exception("alert notifier: could not restore %s/%s", alert.rule, alert.agent)

    def update(self, alert: Alert) -> None:
        """Note that ``alert`` changed. Never blocks and never raises."""
        try:
            self._track(alert, self._clock())
        except Exception:
            log.exception("alert notifier: could not take an update of %s/%s", alert.rule, alert.agent)

    def forget(self, keys: Iterable[AlertKey]) -> None:
        """Stop tracking these alerts without notifying anything about them: another process
        (the worker that took their agents' shard over) carries them on from the store."""
        for key in keys:
            where = self._where.pop(key, None)
            group = None if where is None else self._groups.get(where)
            if group is not None:
                group.alerts.pop(key, None)

    def process(self, now: float | None = None) -> None:
        """Hand every due group's notifications to delivery. Never blocks and never raises."""
        try:
            at = self._clock() if now is None else now
            for key, group in list(self._groups.items()):
                try:
                    self._maybe_flush(group, at)
                except Exception:
                    log.exception("alert notifier: could not process group %s", group.labels)
                if not group.alerts:
                    del self._groups[key]
        except Exception:
            log.exception("alert notifier: process failed")

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Start the once-a-second process loop and one delivery task per receiver."""
        if self._closed:
            raise RuntimeError("the notifier is closed")
        for box in self._outboxes.values():
            box.start()
        if self._process_task is None:
            self._process_task = asyncio.create_task(self._process_loop(), name="clawtrace-alert-notifier")

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (a deadline for all queues)
        """Wait until every queue is empty and nothing is being sent; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                for box in self._outboxes.values():
                    await box.idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the engine's API)
        """Process once more, deliver what is queued within ``timeout``, then stop."""
        if self._closed:
            return
        self._closed = True
        if self._process_task is not None:
            self._process_task.cancel()
            await asyncio.gather(self._process_task, return_exceptions=True)
            self._process_task = None
        self.process()
        # Delivery runs even if start() never did, so that nothing decided is silently lost.
        for box in self._outboxes.values():
            box.start()
        if not await self.drain(timeout):
            for box in self._outboxes.values():
                if not box.idle.is_set():
                    log.warning(
                        "alert receiver %s: %d notification(s) not delivered within %g s of shutdown",
                        box.receiver.name,
                        len(box.queue) + box.sending,
                        timeout,
                    )
        tasks = [box.task for box in self._outboxes.values() if box.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for box in self._outboxes.values():
            box.task = None
            try:
                await box.receiver.aclose()
            except Exception:
                log.exception("alert receiver %s: close failed", box.receiver.name)

    async def _process_loop(self) -> None:
        while True:
            self.process()
            await asyncio.sleep(PROCESS_INTERVAL_SECONDS)

    # -- grouping -----------------------------------------------------------------

    def _group_for(self, alert: Alert, now: float) -> _Group:
        ident = alert.key
        key = group_key(alert_labels(alert), self.settings.group_by)
        old = self._where.get(ident)
        if old is not None and old != key and (previous := self._groups.get(old)) is not None:
            # Its grouping labels changed: it belongs elsewhere now.
            previous.alerts.pop(ident, None)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key=key, labels=dict(key), created_at=now)
        group.alerts[ident] = alert
        self._where[ident] = key
        return group

    def _track(self, alert: Alert, now: float) -> None:
        tracked = alert.key in self._where
        if (
            not tracked
            and alert.state != "firing"
            and alert.notified_state != "firing"
            and alert.fired_at is None
        ):
            # No receiver was ever told it fired, so there is nothing to say about it now.
            return
        self._group_for(alert, now).dirty = True

    def _restore_one(self, alert: Alert, now: float) -> None:
        firing = alert.state == "firing"
        told_firing = alert.notified_state == "firing"
        if not firing and not told_firing:
            return
        group = self._group_for(alert, now)
        if not (firing and told_firing and alert.notified_at is not None):
            group.dirty = True
        if alert.notified_at is not None:
            group.last_flush = max(group.last_flush or alert.notified_at, alert.notified_at)
            for receiver in self.receivers:
                if receiver.accepts(alert):
                    last = group.sent_at.get(receiver.name, alert.notified_at)
                    group.sent_at[receiver.name] = max(last, alert.notified_at)

    # -- timing ---------------------------------------------------------------------

    def _maybe_flush(self, group: _Group, now: float) -> None:
        s = self.settings
        # A restored group also waits out group_wait, so the burst after a restart is collected too.
        due = group.created_at + s.group_wait_seconds
        if group.last_flush is not None:
            due = max(due, group.last_flush + s.group_interval_seconds)
        if now < due:
            return
        repeat_due = any(now >= t + s.repeat_interval_seconds for t in group.sent_at.values())
        if group.dirty or repeat_due:
            self._flush(group, now)

    def _flush(self, group: _Group, now: float) -> None:
        group.dirty = False
        included: dict[AlertKey, Alert] = {}
        for receiver in self.receivers:
            alerts = self._due_for(receiver, group, now)
            if not alerts:
                continue
            self._outboxes[receiver.name].put(self._notification(receiver, group, alerts, now))
            group.sent_at[receiver.name] = now
            for alert in alerts:
                included[alert.key] = alert
        if included:
            group.last_flush = now
            for alert in included.values():
                alert.notified_at = now
                alert.notified_state = alert.state
        # Alerts no longer firing were just reported, or no receiver needs to hear of them.
        for ident, alert in list(group.alerts.items()):
            if alert.state != "firing":
                del group.alerts[ident]
                if self._where.get(ident) == group.key:
                    del self._where[ident]
        if included and self.on_sent is not None:
            try:
                self.on_sent(list(included.values()))
            except Exception:
                log.exception("alert notifier: on_sent failed")

    def _due_for(self, receiver: Receiver, group: _Group, now: float) -> list[Alert]:
        """The alerts of ``group`` to send ``receiver`` now: [] unless something changed for it
        or its repeat is due."""
        firing: list[Alert] = []
        resolved: list[Alert] = []
        changed = False
        unacknowledged = False
        for alert in group.alerts.values():
            # An inhibited alert that was sent firing is still sent resolved.
            inhibited = alert.inhibited_by is not None and alert.state == "firing"
            if alert.silenced_by is not None or inhibited or not receiver.accepts(alert):
                continue
            if alert.state == "firing":
                firing.append(alert)
                changed = changed or alert.notified_state != "firing"
                unacknowledged = unacknowledged or alert.acknowledged_by is None
            elif alert.notified_state in ("firing", None) and receiver.send_resolved:
                # Resolved before anyone heard it fire (its remediation worked within
                # group_wait): still said once, so nobody misses that it happened.
                resolved.append(alert)
                changed = True
        last = group.sent_at.get(receiver.name)
        repeat = unacknowledged and (last is None or now >= last + self.settings.repeat_interval_seconds)
        return firing + resolved if changed or repeat else []

    def _notification(
        self, receiver: Receiver, group: _Group, alerts: list[Alert], now: float
    ) -> Notification:
        snapshots = tuple(snapshot(alert, now) for alert in alerts)
        return Notification(
            receiver=receiver.name,
            group_labels=dict(group.labels),
            status="firing" if any(a.status == "firing" for a in snapshots) else "resolved",
            alerts=snapshots,
            external_url=self.external_url,
            created_at=now,
        )
