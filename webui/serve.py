"""``facesketch serve``: the web app under waitress, optionally shared through ngrok.

- The model loads in the background; the server accepts connections at once
  and /api/health answers 503 until the model is loaded and warm.
- Request bodies stay in memory: waitress keeps bodies up to twice the upload
  limit in RAM (Flask answers those over the limit with a JSON 413) and refuses
  larger ones from their Content-Length alone (waitress's own 413).
- ``--share``: pyngrok is imported only then. The ngrok agent reads the token
  from the environment variable NGROK_AUTHTOKEN itself (inherited by its
  process; we never pass it on a command line, write it to a file, print or
  log it). The tunnel opens in a background thread; when it cannot open (no
  token, no agent installed, no internet) the reason is printed and the local
  server keeps running. Nothing is downloaded at run time: the ngrok agent
  must already be installed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Callable

from .config import WebConfig

log = logging.getLogger("facesketch.webui")

TOKEN_ENV = "NGROK_AUTHTOKEN"
Printer = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


def default_model() -> Path:
    """bundles/default (from the working directory), else the packaged model, else an error."""
    candidates = [Path("bundles") / "default",
                  Path(__file__).resolve().parents[1] / "facesketch" / "models" / "default"]
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(
        "no model given and no default found (looked for "
        + " and ".join(str(c) for c in candidates)
        + "); pass --model BUNDLE (a folder made by `facesketch export`) or a checkpoint folder")


def ngrok_agent_path() -> str | None:
    """Where pyngrok would run the ngrok agent from, if it is installed there."""
    from pyngrok import conf
    path = conf.PyngrokConfig().ngrok_path   # honours PYNGROK_NGROK_PATH (read now)
    return path if os.path.isfile(path) else None


def open_tunnel(port: int, say: Printer = _print) -> str | None:
    """Open an ngrok http tunnel to ``port``; print and return the public URL, or None.

    Never raises for the expected failures (no token, no pyngrok, no agent,
    no network): it says why and returns None, so the local server keeps running.
    """
    if not os.environ.get(TOKEN_ENV):
        say(f"--share: {TOKEN_ENV} is not set, so no public link; serving locally only. "
            f"Set {TOKEN_ENV} in the environment (from https://dashboard.ngrok.com) to share.")
        return None
    try:
        from pyngrok import conf, ngrok
        from pyngrok.exception import PyngrokError
    except ImportError:
        say("--share: pyngrok is not installed (pip install 'facesketch[share]'); "
            "serving locally only.")
        return None
    logging.getLogger("pyngrok").setLevel(logging.WARNING)
    agent = ngrok_agent_path()
    if agent is None:
        say(f"--share: the ngrok agent is not installed at {conf.PyngrokConfig().ngrok_path} "
            "(facesketch never downloads at run time; install it once with "
            "`python -c \"from pyngrok import ngrok; ngrok.install_ngrok()\"` or set "
            "PYNGROK_NGROK_PATH); serving locally only.")
        return None
    try:
        # auth_token stays None: the agent reads NGROK_AUTHTOKEN from its environment.
        tunnel = ngrok.connect(str(port), "http",
                               pyngrok_config=conf.PyngrokConfig(ngrok_path=agent,
                                                                 startup_timeout=20))
    except (PyngrokError, OSError) as exc:
        say(f"--share: the ngrok tunnel could not open ({_redact(str(exc))}); "
            "serving locally only.")
        return None
    url = tunnel.public_url
    say(f"public URL: {url}  (anyone with this link can use the page; Ctrl+C stops both)")
    return url


def _redact(text: str) -> str:
    token = os.environ.get(TOKEN_ENV)
    if token:
        text = text.replace(token, "***")
    return " ".join(text.split())[:400]


def waitress_options(config: WebConfig, threads: int) -> dict:
    body_limit = 2 * config.max_upload_bytes
    return {"threads": threads, "max_request_body_size": body_limit,
            "inbuf_overflow": body_limit + 1, "ident": "facesketch", "clear_untrusted_proxy_headers": True}


def make_server(config: WebConfig, host: str = "127.0.0.1", port: int = 5000, threads: int = 8):
    """(app, waitress server) bound to host:port (port 0 = any free port)."""
    import waitress
    from . import create_app
    app = create_app(config)
    server = waitress.create_server(app, host=host, port=port, **waitress_options(config, threads))
    return app, server


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(config: WebConfig, host: str = "127.0.0.1", port: int = 5000, threads: int = 8,
          share: bool = False, say: Printer = _print) -> int:
    """Run until interrupted. Returns the exit status."""
    if not Path(config.model).exists():
        raise FileNotFoundError(f"model not found: {config.model} (a bundle folder or a checkpoint)")
    app, server = make_server(config, host, port, threads)
    actual = server.effective_port
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    say(f"facesketch: serving {config.model} at http://{shown}:{actual}/  (waitress, {threads} threads)")
    if host in ("0.0.0.0", "", "::"):
        say("  listening on every interface: other machines on the network can reach this page")
    holder = app.extensions["facesketch"]

    def report() -> None:
        if holder.wait():
            say(f"model ready: backend {holder.translator.backend}, "
                f"loaded and warmed in {holder.load_seconds:.1f} s")
        else:
            say(f"model FAILED to load: {holder.error}  (the page will show this; "
                "fix the model path and restart)")

    threading.Thread(target=report, name="facesketch-ready", daemon=True).start()
    if share:
        threading.Thread(target=open_tunnel, args=(actual, say), name="facesketch-share",
                         daemon=True).start()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)   # `kill` stops as cleanly as Ctrl+C
    say("press Ctrl+C to stop")
    try:
        server.run()             # waitress returns from here on Ctrl+C / SIGTERM
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        holder.close()
    say("stopped")
    return 0
