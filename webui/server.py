"""The waitress server ``facesketch serve`` runs, hardened against slow and hostile clients.

Waitress reads every connection asynchronously on one thread and hands complete
requests to its worker threads, so a slow client costs a socket and a buffer,
not a worker. What it does not bound by itself, this module does:

- **Slow requests** (slowloris: headers or a body trickling in at 1 byte/s).
  Waitress only closes *idle* connections (``channel_timeout``); one that sends a
  byte now and then stays forever, and with the default limit of 100
  connections a hundred of them take the server offline. Here every request must
  arrive whole within ``request_read_timeout`` seconds of its first byte, or its
  connection is closed; the check runs every ``cleanup_interval`` seconds.
- **Connection count**: ``connection_limit`` is raised (an open socket costs a
  few KB here), so slow connections cannot fill it before they are cut off.
- **Bodies**: a body being received is kept in memory only up to
  ``inbuf_overflow`` (1 MiB) and spooled to a temporary file beyond that, so 40
  unfinished 10 MB uploads cost disk, not RAM. Bodies up to twice the upload
  limit are read, so that Flask can answer one a little over the limit with its
  JSON 413 that a browser can read (a server that answers early and closes makes
  the client see a connection reset instead); larger ones are refused from their
  Content-Length (or as soon as a chunked body passes it) before they are read.
- **Waitress's own error answers** (413 body too large, 431 headers too large,
  400 bad request) are JSON like every other API error, with ``nosniff``.

- **Clients that keep costing**: a :class:`ClientMeter` keeps, per client address,
  sums that decay over ``client_window_s``: the requests it had refused (4xx for
  bad, oversized or cross-site uploads, waitress's own 400/413/431 included), all
  its requests, and the CPU seconds its requests took in their worker thread
  beyond ``client_cpu_free_ms`` each (multipart parsing, decoding, PNG encoding;
  the model's engine threads are shared and not counted). A client over
  ``client_refusal_limit`` refusals, ``client_request_limit`` requests or
  ``client_cpu_share`` of one core is *penalized* until its sums decay back under
  the limits: its next
  requests never reach a worker thread or Flask. The waitress loop parks them
  (the connection stops being read: a socket, nothing else) for
  ``client_hold_s`` and then answers a JSON 429 with ``Retry-After`` (the seconds
  left) and closes. Held answers, not fast ones: a client looping without reading
  Retry-After waits a second per try instead of spinning on this CPU. A held
  request counts as one more refusal, so a client that ignores Retry-After stays
  out while it keeps trying; one that stops is served again within seconds.
  Well-behaved clients never see it (a browser page sends a handful of requests,
  almost none refused; a webcam loop at 12 frames/s costs ~0.1 core).

Settings for ``--share`` (a public ngrok link): the same limits apply to every
client the tunnel forwards; ngrok adds its own connection handling in front. The
agent connects from 127.0.0.1, so every tunnelled request arrives from that one
address: ``serve --share`` sets ``client_forwarded_for``, which keys the meter by
the last ``X-Forwarded-For`` entry (the one ngrok appends: the visitor's address)
on connections from loopback only; a client cannot choose it by sending its own
header, which ngrok keeps in front of its entry. Without that setting (the local
default) all tunnelled visitors would count as one client.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import math
import threading
import time

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask

from .config import WebConfig

MULTIPART_MARGIN = 64 * 1024       # form boundaries and headers around the image part
REQUEST_READ_TIMEOUT_S = 20.0      # a whole request (headers + body) must arrive in this time
IDLE_TIMEOUT_S = 30                # keep-alive connections idle this long are closed
CONNECTION_LIMIT = 1000
CLEANUP_INTERVAL_S = 2
# Statuses that count as a refusal: what a client sending bad, oversized, cross-site or
# malformed requests gets (404/405 and 429 itself are not counted here).
REFUSED_STATUSES = frozenset({400, 403, 411, 413, 414, 415, 422, 431})
HELD_PER_CLIENT = 16               # parked connections per client; more are answered at once
METER_MAX_CLIENTS = 50_000         # tracked addresses (pruned when their sums have decayed)


class ClientMeter:
    """Per-client decaying sums: refused requests, all requests, and worker CPU seconds
    beyond ``cpu_free_s`` per request.

    Each sum decays exponentially with time constant ``window_s``, so a steady client is
    measured by its rate (a sum settles at rate x window): over ``refusal_limit``
    refusals, ``request_limit`` requests or ``cpu_share * window_s`` CPU seconds, a
    client is penalized until its sums decay back under the limits. Thread-safe
    (worker threads charge it, the waitress loop asks it). A limit of 0 is off.
    """

    def __init__(self, refusal_limit: int, cpu_share: float, window_s: float,
                 forwarded_for: bool = False, request_limit: int = 0,
                 cpu_free_s: float = 0.0, clock=time.monotonic):
        self.limits = (float(refusal_limit), float(request_limit), cpu_share * window_s)
        self.refusal_limit = refusal_limit
        self.cpu_free_s = cpu_free_s
        self.window_s = window_s
        self.forwarded_for = forwarded_for
        self.clock = clock
        self._sums: dict[str, list[float]] = {}    # key -> [refusals, requests, cpu_s, time]
        self._lock = threading.Lock()
        self.penalized = 0                         # requests answered 429

    @property
    def enabled(self) -> bool:
        return any(limit > 0 for limit in self.limits)

    def key(self, peer: str, forwarded_for: str | None = None) -> str:
        """The client a request is counted against: its peer address, or -- with
        ``forwarded_for`` and a loopback peer (a local proxy such as the ngrok agent) --
        the last X-Forwarded-For entry, the one the proxy itself appended."""
        if self.forwarded_for and forwarded_for:
            try:
                loopback = ipaddress.ip_address(peer).is_loopback
            except ValueError:
                loopback = False
            if loopback:
                last = forwarded_for.rsplit(",", 1)[-1].strip()
                if last:
                    return last[:64]
        return peer

    def _decayed(self, key: str, now: float) -> list[float]:
        s = self._sums.get(key)
        if s is None:
            if len(self._sums) >= METER_MAX_CLIENTS:
                self._prune(now)
            s = self._sums[key] = [0.0, 0.0, 0.0, now]
        elif now > s[3]:
            f = math.exp(-(now - s[3]) / self.window_s)
            s[0] *= f
            s[1] *= f
            s[2] *= f
            s[3] = now
        return s

    def charge(self, key: str, refused: bool = False, cpu_s: float | None = None) -> None:
        """Count one request of ``key``: refused or not; ``cpu_s``: it ran in a worker
        (None: it was answered without one, e.g. held)."""
        if not self.enabled:
            return
        add = (1.0 if refused else 0.0, 0.0 if cpu_s is None else 1.0,
               0.0 if cpu_s is None else max(cpu_s - self.cpu_free_s, 0.0))
        with self._lock:
            s = self._decayed(key, self.clock())
            for i in range(3):
                # capped at twice the limit: a client that stops is served again
                # within window * ln 2
                s[i] = min(s[i] + add[i], 2.0 * max(self.limits[i], 1e-3))

    def penalty(self, key: str) -> float:
        """Seconds until ``key``'s sums decay back under the limits; 0: not penalized."""
        if not self.enabled:
            return 0.0
        with self._lock:
            if key not in self._sums:
                return 0.0
            sums = self._decayed(key, self.clock())[:3]
        left = 0.0
        for value, limit in zip(sums, self.limits):
            if limit > 0 and value > limit:
                left = max(left, self.window_s * math.log(value / limit))
        return left

    def _prune(self, now: float) -> None:
        """Forget clients whose sums have decayed to almost nothing (lock held)."""
        small = [0.05 * max(limit, 1e-3) for limit in self.limits]
        for key in [k for k, s in self._sums.items()
                    if all(s[i] * math.exp(-(now - s[3]) / self.window_s) < small[i]
                           for i in range(3))]:
            del self._sums[key]

    def prune(self) -> None:
        with self._lock:
            self._prune(self.clock())

    def __len__(self) -> int:
        return len(self._sums)


def _client_key(channel, request) -> str | None:
    meter = getattr(channel.server, "meter", None)
    if meter is None or not meter.enabled:
        return None
    peer = channel.addr[0] if isinstance(channel.addr, tuple) else str(channel.addr)
    return meter.key(peer, request.headers.get("X_FORWARDED_FOR"))


def _charge(task, cpu_s: float) -> None:
    """Count a finished task's status and worker CPU against its client."""
    key = _client_key(task.channel, task.request)
    if key is None:
        return
    try:
        status = int(str(task.status)[:3])
    except ValueError:
        status = 0
    task.channel.server.meter.charge(key, refused=status in REFUSED_STATUSES, cpu_s=cpu_s)


class MeteredTask(WSGITask):
    """A WSGI task whose status and worker-thread CPU time are charged to its client."""

    def service(self):
        t0 = time.thread_time()
        try:
            super().service()
        finally:
            _charge(self, time.thread_time() - t0)


def too_many_requests(retry_after: float) -> bytes:
    """A whole HTTP response: JSON 429 with Retry-After, closing the connection."""
    seconds = max(1, math.ceil(retry_after))
    body = json.dumps({"error": "too many refused or costly requests from this address; "
                       f"retry after {seconds} s", "code": "too_many_requests",
                       "status": 429, "retry_after_s": seconds}).encode()
    head = ("HTTP/1.1 429 Too Many Requests\r\nServer: facesketch\r\n"
            "Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
            f"Retry-After: {seconds}\r\nCache-Control: no-store\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


class JSONErrorTask(ErrorTask):
    """Waitress's protocol-level errors as the API's JSON errors."""

    def execute(self):
        e = self.request.error
        body = json.dumps({"error": f"{e.reason}: {e.body}", "code": e.reason.lower().replace(" ", "_"),
                           "status": e.code}).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.extend([("Content-Type", "application/json"),
                                      ("X-Content-Type-Options", "nosniff"),
                                      ("Connection", "close")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)

    def service(self):
        try:
            super().service()
        finally:
            _charge(self, 0.0)


class GuardedChannel(HTTPChannel):
    """An HTTP channel that remembers when the request being read began; its
    requests are metered per client."""

    task_class = MeteredTask
    error_task_class = JSONErrorTask
    request_started: float | None = None

    def received(self, data):
        if data and self.request is None:
            self.request_started = time.monotonic()
        result = super().received(data)
        if self.request is None:          # nothing half-read any more
            self.request_started = None
        return result


class GuardedServer(TcpWSGIServer):
    channel_class = GuardedChannel
    request_read_timeout = REQUEST_READ_TIMEOUT_S
    meter: ClientMeter | None = None
    hold_s = 1.0

    def __init__(self, *args, **kw):
        self._held: collections.deque = collections.deque()   # (release time, channel, key)
        self._held_per_key: collections.Counter = collections.Counter()
        self._held_lock = threading.Lock()
        super().__init__(*args, **kw)

    def add_task(self, channel):
        """A complete request is ready (called with the channel's requests_lock held,
        from the loop or from a worker finishing the one before): a penalized client's
        request is parked instead of reaching a worker thread."""
        key = _client_key(channel, channel.requests[0]) if channel.requests else None
        if key is not None:
            left = self.meter.penalty(key)
            if left > 0:
                self.meter.charge(key, refused=True)
                self.meter.penalized += 1
                with self._held_lock:
                    if self._held_per_key[key] < HELD_PER_CLIENT:
                        self._held_per_key[key] += 1
                        self._held.append((time.monotonic() + self.hold_s, channel, key))
                        return
                self._answer_429(channel, left, requests_locked=True)   # too many parked
                self.pull_trigger()
                return
        super().add_task(channel)

    def _answer_429(self, channel, left: float, requests_locked: bool = False) -> None:
        data = too_many_requests(left)
        with channel.outbuf_lock:
            channel.outbufs[-1].append(data)
            channel.total_outbufs_len += len(data)
        if requests_locked:
            self._drop_requests(channel)
        else:
            with channel.requests_lock:
                self._drop_requests(channel)

    @staticmethod
    def _drop_requests(channel) -> None:
        for request in channel.requests:
            request.close()
        channel.requests = []
        channel.close_when_flushed = True

    def release_held(self, now: float | None = None) -> None:
        """In the loop: answer the parked requests whose hold is over (429, close)."""
        now = time.monotonic() if now is None else now
        while True:
            with self._held_lock:
                if not self._held or self._held[0][0] > now:
                    return
                _, channel, key = self._held.popleft()
                self._held_per_key[key] -= 1
                if self._held_per_key[key] <= 0:
                    del self._held_per_key[key]
            if channel.connected and not channel.will_close:
                self._answer_429(channel, max(self.meter.penalty(key), 1.0))

    def readable(self):
        if self._held:
            self.release_held()
        return super().readable()

    def maintenance(self, now):
        super().maintenance(now)           # idle connections (channel_timeout)
        if self.meter is not None:
            self.meter.prune()
        cutoff = time.monotonic() - self.request_read_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.requests:
                channel.will_close = True  # the loop closes it on its next pass


def waitress_options(config: WebConfig, threads: int) -> dict:
    body_limit = 2 * config.max_upload_bytes + MULTIPART_MARGIN
    return {"threads": threads, "max_request_body_size": body_limit,
            "inbuf_overflow": 1 << 20, "connection_limit": CONNECTION_LIMIT,
            "channel_timeout": IDLE_TIMEOUT_S, "cleanup_interval": CLEANUP_INTERVAL_S,
            "max_request_header_size": 64 * 1024, "ident": "facesketch",
            "clear_untrusted_proxy_headers": True}


def client_meter(config: WebConfig) -> ClientMeter:
    return ClientMeter(config.client_refusal_limit, config.client_cpu_share,
                       config.client_window_s, forwarded_for=config.client_forwarded_for,
                       request_limit=config.client_request_limit,
                       cpu_free_s=config.client_cpu_free_ms / 1000.0)


def create_server(app, config: WebConfig, host: str = "127.0.0.1", port: int = 5000,
                  threads: int = 8, request_read_timeout: float = REQUEST_READ_TIMEOUT_S):
    """A GuardedServer for ``app`` bound to host:port (port 0: any free port)."""
    server = GuardedServer(app, host=host, port=port, **waitress_options(config, threads))
    server.request_read_timeout = request_read_timeout
    server.meter = client_meter(config)
    server.hold_s = config.client_hold_s
    return server
