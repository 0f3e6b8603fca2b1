# -*- test-case-name: metaproxy.test.test_reporters -*-
"""
The Open-Falcon reporter: pushes every metric to a falcon-agent as JSON.

Uses Twisted's own HTTP client (L{Agent} with a persistent pool, a small
body collector instead of C{readBody}, and a timeout), so no extra
dependency. A slow or dead agent never blocks the proxy: a push that is
still running when the next is due makes that one be skipped.
"""

import json
import socket

from twisted.application.internet import TimerService
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

log = Logger()


@implementer(IBodyProducer)
class _Body:
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


class _Collector(protocol.Protocol):
    """Collects a response body (C{readBody} warns on every call in Twisted 26)."""

    def __init__(self, done):
        self._done = done
        self._chunks = []

    def dataReceived(self, data):
        if sum(map(len, self._chunks)) < 65536:
            self._chunks.append(data)

    def connectionLost(self, reason):
        self._done.callback(b"".join(self._chunks))


def falcon_payload(snapshot, endpoint, step, timestamp):
    """
    @param snapshot: L{metaproxy.metrics.Metrics.snapshot} output.
    @return: the list of falcon items: one per sample, labels as C{tags}
        (C{"k=v,k2=v2"}, sorted).
    """
    items = []
    for name, labels, value, counter_type in snapshot:
        items.append(
            {
                "endpoint": endpoint,
                "metric": name,
                "timestamp": int(timestamp),
                "step": step,
                "value": value,
                "counterType": counter_type,
                "tags": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            }
        )
    return items


class FalconPusher:
    """
    Pushes a L{metaproxy.metrics.Metrics} snapshot to a falcon-agent.

    @ivar pushed: pushes the agent accepted (2xx).
    @ivar failed: pushes that failed or timed out.
    @ivar skipped: pushes skipped because the previous one still ran.
    """

    def __init__(self, metrics, url, endpoint, step, timeout, reactor, agent=None):
        self.metrics = metrics
        self.url = url.encode() if isinstance(url, str) else url
        self.endpoint = endpoint or socket.gethostname()
        self.step = step
        self.timeout = timeout
        self.reactor = reactor
        if agent is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 1
            agent = Agent(reactor, connectTimeout=timeout, pool=pool)
        self.agent = agent
        self.pushed = self.failed = self.skipped = 0
        self._running = None

    def push(self):
        """
        Send one snapshot now, unless the previous push is still running.

        @return: a L{Deferred} that fires (never fails) when this push is
            done; it is never what a L{TimerService} waits on, so a stuck
            agent cannot stall the timer.
        """
        if self._running is not None:
            self.skipped += 1
            log.warn("falcon push skipped: the previous one is still running")
            return defer.succeed(None)
        payload = falcon_payload(self.metrics.snapshot(), self.endpoint, self.step, self.reactor.seconds())
        body = json.dumps(payload).encode()
        d = self.agent.request(
            b"POST", self.url, Headers({b"content-type": [b"application/json"]}), _Body(body)
        )
        d.addCallback(self._read)
        d.addTimeout(self.timeout, self.reactor)
        d.addCallbacks(self._ok, self._failed)
        self._running = d
        d.addBoth(self._done)
        return d

    def _read(self, response):
        done = defer.Deferred()
        response.deliverBody(_Collector(done))
        done.addCallback(lambda body: (response.code, body))
        return done

    def _ok(self, result):
        code, body = result
        if 200 <= code < 300:
            self.pushed += 1
        else:
            self.failed += 1
            log.warn("falcon agent answered {code}: {body}", code=code, body=body[:200])

    def _failed(self, failure):
        self.failed += 1
        log.warn("falcon push to {url} failed: {why}", url=self.url.decode(), why=failure.getErrorMessage())

    def _done(self, _):
        self._running = None


def make_service(metrics, metric_config, reactor):
    """
    @return: a L{TimerService} pushing every C{metric_config.falcon.step}
        seconds.
    """
    falcon = metric_config.falcon
    pusher = FalconPusher(metrics, falcon.url, falcon.endpoint, falcon.step, falcon.timeout, reactor)

    def tick():
        pusher.push()  # not returned: TimerService must not wait on the agent

    service = TimerService(falcon.step, tick)
    service.clock = reactor
    service.pusher = pusher
    return service
