"""``facesketch serve``: the web app under waitress, optionally shared through ngrok.

- The model loads in the background; the server accepts connections at once
  and /api/health answers 503 until the model is loaded and warm. When no
  backend can load the model, the reason is printed, the server stops and
  ``serve`` returns exit status 1.
- The server is webui.server's GuardedServer: bodies over the upload limit are
  refused from their Content-Length (JSON 413), bodies being received spool to a
  temporary file past 1 MiB, slow clients are cut off after a per-request deadline
  and idle ones after 30 s, and a client address that keeps sending refused or
  costly requests gets held 429s with Retry-After for a few seconds (see that module
  for the settings, which --share keeps; with --share clients are told apart by the
  X-Forwarded-For address the ngrok agent appends).
- ``--share``: pyngrok is imported only then, and nothing is downloaded at run
  time: the ngrok agent must already be installed. How the token reaches the
  agent: it is read from NGROK_AUTHTOKEN and at once removed from this process's
  environment (so neither the agent nor any other child process inherits it),
  then written -- as ``agent.authtoken`` of an ngrok v3 config file -- into a new
  private temporary folder (mode 0700, the file created 0600 by us), which is
  given to the agent with ``--config`` (PyngrokConfig.config_path; its
  auth_token stays None, so pyngrok never puts ``--authtoken`` on a command
  line). The folder is deleted as soon as the tunnel fails to open, else when
  the server stops (or at exit). On POSIX the agent runs through a two-line
  wrapper in that folder that joins its stderr to its stdout, so all of its
  output goes through pyngrok's loggers, where a logging filter replaces the
  token with *** in every record -- as in every message printed here. The
  tunnel opens in a background thread; when it cannot open (no token, no agent
  installed, no internet) the reason is printed and the local server keeps
  running.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import shlex
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from .config import WebConfig

log = logging.getLogger("facesketch.webui")

TOKEN_ENV = "NGROK_AUTHTOKEN"
REDACTED = "***"
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


# ------------------------------------------------------------------ the token
_secrets: set[str] = set()       # tokens seen in this process: scrubbed from all output
_secrets_lock = threading.Lock()


def take_token() -> str | None:
    """The ngrok token from NGROK_AUTHTOKEN, removed from this process's environment
    (so no child process, the ngrok agent included, inherits it)."""
    token = os.environ.pop(TOKEN_ENV, None)
    return token or None


def _scrub(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _redact(text: str) -> str:
    """One line for a message: secrets replaced, whitespace folded, at most 400 chars."""
    return " ".join(_scrub(text).split())[:400]


class _RedactFilter(logging.Filter):
    """Replaces every token with *** in a log record -- message, arguments, traceback --
    before any handler sees it. A logger's filters apply only to the records logged on
    that very logger, so it is added to each logger of the pyngrok hierarchy."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):   # a bad msg % args: keep both parts, scrubbed
            text = f"{record.msg} {record.args!r}"
        record.msg, record.args = _scrub(text), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None           # only the scrubbed text is ever formatted
        if record.exc_text:
            record.exc_text = _scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = _scrub(record.stack_info)
        return True


_REDACT_FILTER = _RedactFilter()
_PYNGROK_LOGGERS = ("pyngrok", "pyngrok.process", "pyngrok.process.ngrok", "pyngrok.ngrok",
                    "pyngrok.installer", "pyngrok.conf", "pyngrok.agent")


def _redact_pyngrok_logs() -> None:
    """Add the redacting filter to every pyngrok logger (those pyngrok's modules made
    on import, and the known names in case a later import makes them)."""
    names = set(_PYNGROK_LOGGERS) | {n for n in logging.root.manager.loggerDict
                                     if n.startswith("pyngrok.")}
    for name in sorted(names):
        logger = logging.getLogger(name)
        if _REDACT_FILTER not in logger.filters:
            logger.addFilter(_REDACT_FILTER)


# ------------------------------------------------------------------ the agent's files
_shares: dict[str, Any] = {}     # private folder -> its PyngrokConfig (None until made)
_shares_lock = threading.Lock()
_atexit_registered = False


def _private_dir() -> str:
    global _atexit_registered
    folder = tempfile.mkdtemp(prefix="facesketch-ngrok-")   # mode 0700
    with _shares_lock:
        _shares[folder] = None
        if not _atexit_registered:
            atexit.register(close_share)
            _atexit_registered = True
    return folder


def _create_private(path: str, text: str, mode: int) -> None:
    """Write a new file that has ``mode`` from its creation (never readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _write_agent_config(folder: str, token: str) -> str:
    """An ngrok v3 agent config holding the token (pyngrok's default config_version is
    "3", whose files put the token under ``agent:``)."""
    import yaml   # a dependency of pyngrok
    path = os.path.join(folder, "ngrok.yml")
    _create_private(path, yaml.safe_dump({"version": "3", "agent": {"authtoken": token}}), 0o600)
    return path


def _agent_wrapper(folder: str, agent: str) -> str:
    """On POSIX, a script that runs ``agent`` with its stderr joined to its stdout, which
    pyngrok reads line by line into its (redacted) loggers; pyngrok itself leaves the
    agent's stderr on ours, unfiltered. Elsewhere the agent itself."""
    if os.name != "posix":
        return agent
    path = os.path.join(folder, "ngrok")
    _create_private(path, f'#!/bin/sh\nexec {shlex.quote(agent)} "$@" 2>&1\n', 0o700)
    return path


def _remove_private(folder: str) -> None:
    with _shares_lock:
        _shares.pop(folder, None)
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not delete the ngrok config folder %s: %s", folder, exc)


def close_share() -> None:
    """Stop the ngrok agents open_tunnel started and delete their private folders (the
    token's config file). Called when the server stops, and at exit."""
    with _shares_lock:
        shares = list(_shares.items())
    for folder, cfg in shares:
        if cfg is not None:
            from pyngrok import ngrok
            from pyngrok.exception import PyngrokError
            try:
                ngrok.kill(pyngrok_config=cfg)
            except (PyngrokError, OSError) as exc:
                log.warning("stopping the ngrok agent: %s", _redact(str(exc)))
        _remove_private(folder)


def open_tunnel(port: int, say: Printer = _print, token: str | None = None) -> str | None:
    """Open an ngrok http tunnel to ``port``; print and return the public URL, or None.

    ``token``: the ngrok authtoken, else NGROK_AUTHTOKEN (removed from the environment
    either way; see the module docstring for how it reaches the agent). Never raises
    for the expected failures (no token, no pyngrok, no agent, no network): it says
    why and returns None, so the local server keeps running.
    """
    env_token = take_token()   # given explicitly or not: never left for a child to inherit
    token = token or env_token
    if not token:
        say(f"--share: {TOKEN_ENV} is not set, so no public link; serving locally only. "
            f"Set {TOKEN_ENV} in the environment (from https://dashboard.ngrok.com) to share.")
        return None
    with _secrets_lock:
        _secrets.add(token)
    try:
        from pyngrok import conf, ngrok
        from pyngrok.exception import PyngrokError
    except ImportError:
        say("--share: pyngrok is not installed (pip install 'facesketch[share]'); "
            "serving locally only.")
        return None
    _redact_pyngrok_logs()
    logging.getLogger("pyngrok").setLevel(logging.WARNING)
    agent = ngrok_agent_path()
    if agent is None:
        say(f"--share: the ngrok agent is not installed at {conf.PyngrokConfig().ngrok_path} "
            "(facesketch never downloads at run time; install it once with "
            "`python -c \"from pyngrok import ngrok; ngrok.install_ngrok()\"` or set "
            "PYNGROK_NGROK_PATH); serving locally only.")
        return None
    folder = _private_dir()
    opened = False
    try:
        cfg = conf.PyngrokConfig(ngrok_path=_agent_wrapper(folder, agent),
                                 config_path=_write_agent_config(folder, token), startup_timeout=20)
        cfg.auth_token = None   # PyngrokConfig reads NGROK_AUTHTOKEN itself: never --authtoken
        with _shares_lock:
            _shares[folder] = cfg
        tunnel = ngrok.connect(str(port), "http", pyngrok_config=cfg)
        opened = True
    except (PyngrokError, OSError) as exc:
        say(f"--share: the ngrok tunnel could not open ({_redact(str(exc))}); "
            "serving locally only.")
        return None
    finally:
        if not opened:
            _remove_private(folder)
    url = tunnel.public_url
    say(f"public URL: {url}  (anyone with this link can use the page; Ctrl+C stops both)")
    return url


def make_server(config: WebConfig, host: str = "127.0.0.1", port: int = 5000, threads: int = 8):
    """(app, waitress server) bound to host:port (port 0 = any free port); the server is
    webui.server's, hardened against slow and hostile clients."""
    from . import create_app
    from .server import create_server
    app = create_app(config)
    return app, create_server(app, config, host, port, threads)


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(server) -> None:
    """Run in waitress's loop thread (through its trigger): close every connection and
    the listening socket, so that ``server.run()`` returns."""
    for channel in list(server.active_channels.values()):
        channel.close()
    server.close()


def serve(config: WebConfig, host: str = "127.0.0.1", port: int = 5000, threads: int = 8,
          share: bool = False, say: Printer = _print) -> int:
    """Run until interrupted (0), or until the model fails to load (1). Returns the exit status."""
    if not Path(config.model).exists():
        raise FileNotFoundError(f"model not found: {config.model} (a bundle folder or a checkpoint)")
    token = take_token() if share else None   # before any thread starts, see open_tunnel
    if share and not config.client_forwarded_for:
        # every tunnelled request comes from the local agent: count clients by the
        # address ngrok appends to X-Forwarded-For (webui.server.ClientMeter.key)
        config = dataclasses.replace(config, client_forwarded_for=True)
    app, server = make_server(config, host, port, threads)
    actual = server.effective_port
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    say(f"facesketch: serving {config.model} at http://{shown}:{actual}/  (waitress, {threads} threads)")
    if host in ("0.0.0.0", "", "::"):
        say("  listening on every interface: other machines on the network can reach this page")
    holder = app.extensions["facesketch"]
    failed = threading.Event()

    def report() -> None:
        if holder.wait():
            say(f"model ready: backend {holder.translator.backend}, "
                f"loaded and warmed in {holder.load_seconds:.1f} s")
        else:
            failed.set()
            say(f"model FAILED to load: {holder.error_detail or holder.error}")
            say("stopping: there is nothing to serve (fix the model and start again)")
            server.trigger.pull_trigger(lambda: _stop(server))   # run in the server's thread

    helpers = [threading.Thread(target=report, name="facesketch-ready", daemon=True)]
    if share:
        helpers.append(threading.Thread(target=open_tunnel, args=(actual, say, token),
                                        name="facesketch-share", daemon=True))
    for t in helpers:
        t.start()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)   # `kill` stops as cleanly as Ctrl+C
    say("press Ctrl+C to stop")
    try:
        server.run()             # waitress returns from here on Ctrl+C / SIGTERM / _stop
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        holder.close()
        # a helper still printing while the interpreter exits aborts it (SIGABRT on the
        # stdout lock): let them finish their message first
        for t in helpers:
            t.join(timeout=30)
        if share:
            close_share()
    say("stopped")
    return 1 if failed.is_set() else 0
