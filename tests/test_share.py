"""--share: the ngrok token never reaches a command line, an environment, a print or a log.

A stand-in ngrok agent (a small executable script) takes the real agent's place
(PYNGROK_NGROK_PATH, as for any installed agent). It records what it was given --
its argv, its environment and the config file named on its argv -- and then
behaves like a leaky agent that fails to authenticate: it prints the token in a
log line on stdout and in a line on stderr, and exits non-zero, so pyngrok reports
a failure and open_tunnel goes down its error path.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pyngrok")
yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
TOKEN = "2fAkEtOkEn-facesketch-share-test-5c0ffee"

AGENT = '''#!{python}
import json, os, stat, sys
record = {{"argv": sys.argv, "env": dict(os.environ), "config": None}}
token = os.environ.get("NGROK_AUTHTOKEN", "")
if "--config" in sys.argv:
    path = sys.argv[sys.argv.index("--config") + 1]
    with open(path) as fh:
        text = fh.read()
    record["config"] = {{"path": path, "text": text,
                        "mode": stat.S_IMODE(os.stat(path).st_mode),
                        "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)}}
    for line in text.splitlines():
        if "authtoken:" in line:
            token = line.split("authtoken:", 1)[1].strip().strip("'\\"")
with open({out!r}, "w") as fh:
    json.dump(record, fh)
# a leaky agent: the token in its log (stdout, read by pyngrok) and on stderr
print('t=2024-01-01T00:00:00+0000 lvl=eror msg="failed to reconnect session" '
      'err="authentication failed: Your authtoken: ' + token + '"', flush=True)
print("ERROR: authentication failed, authtoken " + token, file=sys.stderr, flush=True)
sys.exit(1)
'''


def _stand_in_agent(tmp_path: Path) -> tuple[Path, Path]:
    """(the agent script, the JSON file it writes)."""
    out = tmp_path / "agent-record.json"
    agent = tmp_path / "bin" / "ngrok"
    agent.parent.mkdir()
    agent.write_text(AGENT.format(python=sys.executable, out=str(out)))
    agent.chmod(0o755)
    return agent, out


def _assert_token_kept_from_agent(rec: dict) -> None:
    assert all(TOKEN not in arg for arg in rec["argv"]), rec["argv"]
    assert "--authtoken" not in rec["argv"]
    assert "NGROK_AUTHTOKEN" not in rec["env"]
    assert all(TOKEN not in v for v in rec["env"].values())
    cfg = rec["config"]
    assert cfg is not None, "no --config on the agent's command line"
    assert yaml.safe_load(cfg["text"]) == {"version": "3", "agent": {"authtoken": TOKEN}}
    assert cfg["mode"] == 0o600, oct(cfg["mode"])
    assert cfg["dir_mode"] == 0o700, oct(cfg["dir_mode"])


def test_token_goes_to_the_agent_only_through_a_private_config_file(tmp_path, monkeypatch,
                                                                    capfd, caplog):
    from webui.serve import open_tunnel
    agent, record = _stand_in_agent(tmp_path)
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(agent))
    said: list[str] = []
    with caplog.at_level(logging.DEBUG):
        url = open_tunnel(0, say=said.append)

    assert url is None
    rec = json.loads(record.read_text())
    _assert_token_kept_from_agent(rec)
    assert not os.path.exists(rec["config"]["path"])          # deleted once the tunnel failed
    assert not os.path.exists(os.path.dirname(rec["config"]["path"]))
    assert "NGROK_AUTHTOKEN" not in os.environ                 # taken out of our environment

    # the failure is reported, with the agent's leak redacted
    assert len(said) == 1 and "tunnel could not open" in said[0], said
    assert "serving locally only" in said[0]
    assert "Your authtoken: ***" in said[0], said
    out, err = capfd.readouterr()                              # fd level: the agent's too
    records = [r for r in caplog.records if r.name.startswith("pyngrok")]
    assert any("Your authtoken: ***" in r.getMessage() for r in records), caplog.text
    for text in [out, err, caplog.text, *said, *(r.getMessage() for r in caplog.records)]:
        assert TOKEN not in text


def test_redaction_covers_arguments_and_tracebacks(tmp_path, monkeypatch, caplog):
    """Records logged with %-arguments or an exception on any pyngrok logger."""
    from webui.serve import open_tunnel
    agent, _ = _stand_in_agent(tmp_path)
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(agent))
    open_tunnel(0, say=lambda msg: None, token=TOKEN)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("pyngrok.process").warning("agent said %s", f"token={TOKEN}")
        try:
            raise RuntimeError(f"bad token {TOKEN}")
        except RuntimeError:
            logging.getLogger("pyngrok.ngrok").exception("failed")
    assert "agent said token=***" in caplog.text
    assert "RuntimeError: bad token ***" in caplog.text
    assert TOKEN not in caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_share_keeps_the_token_off_the_agent_and_the_console(tiny_bundle, tmp_path):
    """`facesketch serve --share` end to end, with the stand-in agent."""
    agent, record = _stand_in_agent(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("NGROK_AUTHTOKEN", "PYNGROK_NGROK_PATH")}
    env.update(NGROK_AUTHTOKEN=TOKEN, PYNGROK_NGROK_PATH=str(agent), HOME=str(tmp_path),
               FACESKETCH_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    logfile = tmp_path / "serve.log"
    with open(logfile, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model",
                                 str(tiny_bundle), "--port", str(_free_port()), "--backend", "onnx",
                                 "--share"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            deadline = time.time() + 120
            while "tunnel could not open" not in logfile.read_text() and time.time() < deadline:
                assert proc.poll() is None, logfile.read_text()
                time.sleep(0.2)
            assert proc.poll() is None                      # the local server keeps running
            proc.terminate()
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    text = logfile.read_text()
    assert "tunnel could not open" in text and "Your authtoken: ***" in text, text
    assert TOKEN not in text
    rec = json.loads(record.read_text())
    _assert_token_kept_from_agent(rec)
    assert not os.path.exists(os.path.dirname(rec["config"]["path"]))
