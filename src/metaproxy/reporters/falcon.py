# -*- test-case-name: metaproxy.test.test_reporters -*-
"""
The Open-Falcon reporter: pushes every metric to a falcon-agent as JSON.

Each push POSTs a JSON list of
C{{"endpoint","metric","timestamp","step","value","counterType","tags"}}
items (at most C{batch} per request) to the agent's C{/v1/push}. Counters
go as C{COUNTER} (falcon turns them into rates), gauges as C{GAUGE},
histograms as C{_count}/C{_sum} counters plus the mean of the last step
(C{_avg}). Tags are the constant labels and the series' labels, C{k=v}
joined with commas.

For dashboards built on the Go meta-proxy, three metrics keep the Go
proxy's item names (L{GO_NAMES}): C{metaproxy_client_connections} is
pushed as C{client_connection_count}, C{metaproxy_zk_requests} as
C{zk_request_count} and C{metaproxy_client_queries} as
C{client_query_config_count}. They are also pushed the way goperfcounter
pushed them: metric C{count} (tag C{name=client_connection_count}), and
C{rate} (per second over the last step) plus C{sum} for
C{name=zk_request_count} and C{name=client_query_config_count}, all
C{GAUGE}, summed over tables.

Uses Twisted's own HTTP client (L{Agent} with a persistent pool, a small
body collector instead of C{readBody}, and a timeout): no extra
dependency. A slow or dead agent never blocks the proxy: a push that is
still running when the next is due makes that one be skipped, and every
push gives up after C{timeout} seconds.
"""

import json
import socket

import attrs
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from metaproxy.ops.metrics import SnapshotWindow

log = Logger()

#: metaproxy's metric name -> the Go meta-proxy's falcon item name.
GO_NAMES = {
    "metaproxy_client_connections": "client_connection_count",
    "metaproxy_zk_requests": "zk_request_count",
    "metaproxy_client_queries": "client_query_config_count",
}
_GO_GAUGES = ("client_connection_count",)
_GO_METERS = ("zk_request_count", "client_query_config_count")
_MAX_BODY = 65536


class _QuietPool(HTTPConnectionPool):
    """
    A connection pool whose connections log no C{Starting factory <repr>}
    line at info level (Twisted's client factory is noisy by default).
    """

    _factory = type("_QuietHTTP11ClientFactory", (HTTPConnectionPool._factory,), {"noisy": False})


@implementer(IBodyProducer)
class _Body:
    """Writes one byte string as a request body."""

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _BodyCollector(protocol.Protocol):
    """
    Collects a response body (at most 64 KiB) into a Deferred. Used
    instead of C{readBody}, which warns on every call in Twisted 26;
    cancelling the Deferred drops the connection.
    """

    def __init__(self):
        self._chunks = []
        self._size = 0
        self.done = defer.Deferred(self._cancel)

    def _cancel(self, _):
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data):
        if self._size < _MAX_BODY:
            self._chunks.append(data)
            self._size += len(data)

    def connectionLost(self, reason):
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def _tag(text):
    # falcon splits tags on "," and "=" (meta address lists hold commas)
    return str(text).replace(",", ";").replace("=", ":")


def tags_string(labels):
    """
    @param labels: a mapping of label name -> value.
    @return: falcon's C{"k=v,k2=v2"} form, sorted by name; commas and
        equal signs inside names or values become C{;} and C{:}.
    """
    return ",".join(f"{_tag(k)}={_tag(v)}" for k, v in sorted(labels.items()))


def falcon_payload(snapshot, endpoint, step, timestamp):
    """
    @param snapshot: L{metaproxy.ops.metrics.Metrics.snapshot} output.
    @return: the list of falcon items: one per sample, labels as C{tags};
        the names in L{GO_NAMES} are pushed under the Go proxy's names.
    """
    timestamp = int(timestamp)
    return [
        {
            "endpoint": endpoint,
            "metric": GO_NAMES.get(name, name),
            "timestamp": timestamp,
            "step": step,
            "value": value,
            "counterType": counter_type,
            "tags": tags_string(labels),
        }
        for name, labels, value, counter_type in snapshot
    ]


@attrs.define(eq=False)
class _GoCompat:
    """Derives the goperfcounter-style items of the Go proxy's three metrics."""

    const_labels: dict
    _last: dict = attrs.field(factory=dict)

    def items(self, snapshot, now):
        totals = {}
        for name, _, value, _ in snapshot:
            name = GO_NAMES.get(name, name)
            if name in _GO_GAUGES or name in _GO_METERS:
                totals[name] = totals.get(name, 0.0) + value
        out = []
        for name, value in sorted(totals.items()):
            labels = dict(self.const_labels, name=name)
            if name in _GO_GAUGES:
                out.append(("count", labels, value, "GAUGE"))
                continue
            last = self._last.get(name)
            self._last[name] = (value, now)
            rate = 0.0
            if last is not None and now > last[1]:
                rate = max(0.0, (value - last[0]) / (now - last[1]))
            out.append(("rate", labels, rate, "GAUGE"))
            out.append(("sum", labels, value, "GAUGE"))
        return out


@attrs.define(eq=False)
class FalconPusher:
    """
    Pushes L{metaproxy.ops.metrics.Metrics} to a falcon-agent, one push at a
    time.

    @ivar metrics: the L{metaproxy.ops.metrics.Metrics} to push.
    @ivar url: the agent's push URL (C{http://}).
    @ivar endpoint: the falcon endpoint; empty means this host's name.
    @ivar step: seconds between pushes (sent with every item).
    @ivar timeout: seconds one push (all its requests) may take.
    @ivar reactor: provides C{IReactorTime} and C{IReactorTCP}.
    @ivar agent: an L{IAgent}; a persistent-pool L{Agent} by default.
    @ivar batch: at most this many items per request.
    @ivar go_compat: also push the Go proxy's goperfcounter-style items.
    @ivar counts: pushes by result: C{ok} (every request got a 2xx),
        C{failed} (refused, error status, or timed out), C{skipped} (the
        previous push still ran); also exported as
        C{metaproxy_falcon_pushes_total{result=...}}.
    """

    metrics: object
    url: object
    endpoint: str
    step: int
    timeout: float
    reactor: object
    agent: object = None
    batch: int = 200
    go_compat: bool = True
    counts: dict = attrs.field(init=False, factory=lambda: {"ok": 0, "failed": 0, "skipped": 0})
    _pool: object = attrs.field(init=False, default=None)
    _running: object = attrs.field(init=False, default=None)
    _failing: bool = attrs.field(init=False, default=False)
    _window: SnapshotWindow = attrs.field(init=False, factory=SnapshotWindow)
    _go: _GoCompat = attrs.field(init=False, default=None)

    def __attrs_post_init__(self):
        if isinstance(self.url, str):
            self.url = self.url.encode("ascii")
        if not self.endpoint:
            self.endpoint = socket.gethostname()
        if self.agent is None:
            self._pool = _QuietPool(self.reactor, persistent=True)
            self._pool.maxPersistentPerHost = 1
            self.agent = Agent(self.reactor, connectTimeout=self.timeout, pool=self._pool)
        self._go = _GoCompat(dict(self.metrics.const_labels))
        self.metrics.watch_counts(
            "metaproxy_falcon_pushes", "Pushes to the falcon-agent, by result.", "result", lambda: self.counts
        )

    def items(self):
        """@return: the falcon items of the metrics as they are now."""
        now = self.reactor.seconds()
        snapshot = self.metrics.snapshot(self._window)
        if self.go_compat:
            snapshot = snapshot + self._go.items(snapshot, now)
        return falcon_payload(snapshot, self.endpoint, self.step, now)

    def push(self):
        """
        Send the metrics now, unless the previous push is still running.

        @return: a L{Deferred} that fires with L{None} (never fails) when
            this push is over: delivered, refused, or given up after
            C{timeout} seconds. Never wait on it from a timer: the next
            push does not need this one to finish.
        """
        if self._running is not None:
            self.counts["skipped"] += 1
            log.warn("falcon push skipped: the previous one is still running")
            return defer.succeed(None)
        try:
            items = self.items()
        except Exception:
            self.counts["failed"] += 1
            log.failure("could not read the metrics for falcon")
            return defer.succeed(None)
        d = defer.Deferred.fromCoroutine(self._send(items))
        d.addTimeout(self.timeout, self.reactor)
        d.addCallbacks(self._ok, self._failed)
        self._running = d
        d.addBoth(self._idle)
        return d

    def cancel(self):
        """Give up the push in flight, if any."""
        if self._running is not None:
            self._running.cancel()

    def close(self):
        """
        Give up the push in flight and close the pooled connection.

        @return: a L{Deferred} that fires when the connection is closed.
        """
        self.cancel()
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return defer.succeed(None)

    async def _send(self, items):
        headers = Headers({b"content-type": [b"application/json"]})
        for start in range(0, max(len(items), 1), self.batch):
            body = json.dumps(items[start:start + self.batch], separators=(",", ":")).encode()
            response = await self.agent.request(b"POST", self.url, headers, _Body(body))
            collector = _BodyCollector()
            response.deliverBody(collector)
            answer = await collector.done
            if not 200 <= response.code < 300:
                raise _Refused(response.code, answer[:200])

    def _ok(self, _):
        self.counts["ok"] += 1
        if self._failing:
            self._failing = False
            log.info("falcon pushes to {url} work again", url=self.url.decode())

    def _failed(self, failure):
        self.counts["failed"] += 1
        if failure.check(defer.TimeoutError, defer.CancelledError):
            why = f"no answer within {self.timeout} s"
        else:
            why = failure.getErrorMessage()
        if not self._failing:
            self._failing = True
            log.warn("falcon push to {url} failed: {why} (logged again when pushes work)",
                     url=self.url.decode(), why=why)
        else:
            log.debug("falcon push to {url} failed: {why}", url=self.url.decode(), why=why)

    def _idle(self, _):
        self._running = None


class _Refused(Exception):
    """The agent answered with a non-2xx status."""

    def __str__(self):
        code, body = self.args
        return f"the agent answered {code}: {body!r}"


@attrs.define(eq=False, slots=False)
class FalconService(Service):
    """
    Pushes every C{pusher.step} seconds while running, on the injected
    clock; the first push is one step after start.

    @ivar pusher: the L{FalconPusher}.
    @ivar clock: the C{IReactorTime} the pushes are timed with.
    """

    pusher: FalconPusher
    clock: object
    _loop: object = attrs.field(init=False, default=None)

    def startService(self):
        """Start the periodic pushes."""
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.pusher.step, now=False)

    def stopService(self):
        """
        Stop pushing, give up a push in flight and close the connection.

        @return: a L{Deferred} that fires once closed.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.pusher.close()

    def _tick(self):
        # Nothing is returned: LoopingCall must never wait on the agent.
        try:
            self.pusher.push()
        except Exception:
            log.failure("falcon push could not start")


def make_service(metrics, metric_config, reactor):
    """
    @param metric_config: the config's C{metric:} section; C{.falcon} has
        C{url}, C{endpoint} (C{""} = host name), C{step} and C{timeout}.
    @return: a L{FalconService} pushing every C{falcon.step} seconds.
    """
    falcon = metric_config.falcon
    pusher = FalconPusher(metrics, falcon.url, falcon.endpoint, falcon.step, falcon.timeout, reactor)
    return FalconService(pusher, reactor)
