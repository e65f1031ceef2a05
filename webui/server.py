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

Settings for ``--share`` (a public ngrok link): the same limits apply to every
client the tunnel forwards; ngrok adds its own connection handling in front.
"""

from __future__ import annotations

import json
import time

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

from .config import WebConfig

MULTIPART_MARGIN = 64 * 1024       # form boundaries and headers around the image part
REQUEST_READ_TIMEOUT_S = 20.0      # a whole request (headers + body) must arrive in this time
IDLE_TIMEOUT_S = 30                # keep-alive connections idle this long are closed
CONNECTION_LIMIT = 1000
CLEANUP_INTERVAL_S = 2


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


class GuardedChannel(HTTPChannel):
    """An HTTP channel that remembers when the request being read began."""

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

    def maintenance(self, now):
        super().maintenance(now)           # idle connections (channel_timeout)
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


def create_server(app, config: WebConfig, host: str = "127.0.0.1", port: int = 5000,
                  threads: int = 8, request_read_timeout: float = REQUEST_READ_TIMEOUT_S):
    """A GuardedServer for ``app`` bound to host:port (port 0: any free port)."""
    server = GuardedServer(app, host=host, port=port, **waitress_options(config, threads))
    server.request_read_timeout = request_read_timeout
    return server
