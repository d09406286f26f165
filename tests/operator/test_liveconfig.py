"""Live configuration: peers and AE title changed in the TOML apply to the next association, keep the
file's comments, survive a restart, and a bad change is refused naming the field (real node, DCMTK)."""

from __future__ import annotations

import os
import signal
import tomllib
from pathlib import Path

import pytest

from node.errors import ConfigError, NodeError
from node.liveconfig import ConfigFile
from tests.helpers import NodeProcess, free_port, wait_for
from tests.operator.support import alnnode, audit_messages, echo, event_of

COMMENTED = """# Room 1 node: keep these notes
[node]
ae_title = "ALN_AI"  # the title modalities call
host = "127.0.0.1"
port = {port}

# Ultrasound machines
[[peers]]
ae_title = "US_ROOM1"  # GE Logiq E10, 3rd floor

[storage]
data_dir = "{data}"  # spool and ledger
min_free_mb = 1
"""


def _config(tmp_path: Path) -> tuple[Path, int, Path]:
    port, data = free_port(), tmp_path / "var"
    cfg = tmp_path / "alnnode.toml"
    cfg.write_text(COMMENTED.format(port=port, data=data), encoding="utf-8")
    return cfg, port, data


def test_edits_keep_comments_and_bad_changes_are_refused_naming_the_field(tmp_path: Path) -> None:
    cfg, _port, _data = _config(tmp_path)
    file = ConfigFile(cfg)
    file.add_peer("NEWAE", "10.1.2.3")
    file.put_destination({"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 104})
    file.set_value("model", "threshold", 0.7)
    text = cfg.read_text()
    for comment in ("# Room 1 node: keep these notes", "# the title modalities call", "# Ultrasound machines",
                    "# GE Logiq E10, 3rd floor", "# spool and ledger"):  # fmt: skip
        assert comment in text
    data = tomllib.loads(text)
    assert [p["ae_title"] for p in data["peers"]] == ["US_ROOM1", "NEWAE"]
    assert data["destinations"][0]["port"] == 104 and data["model"]["threshold"] == 0.7

    before = cfg.read_bytes()
    with pytest.raises(ConfigError) as err:
        file.add_peer("A" * 17)
    assert "peers[2].ae_title = 'AAAAAAAAAAAAAAAAA'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        file.set_value("model", "threshold", 1.5)
    assert "model.threshold = 1.5" in str(err.value)
    with pytest.raises(ConfigError) as err:
        file.put_destination({"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 70000})
    assert "destinations[0].port = 70000" in str(err.value)
    with pytest.raises(NodeError, match="peer 'NOSUCH' is not configured"):
        file.remove_peer("NOSUCH")
    assert cfg.read_bytes() == before  # a refused change leaves the file as it was
    assert not list(tmp_path.glob(".alnnode.toml.*.check"))


def test_peer_added_and_removed_apply_to_the_next_association_and_survive_restart(tmp_path: Path) -> None:
    cfg, port, data = _config(tmp_path)
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    try:
        assert echo(port, "NEWAE").returncode != 0  # not a peer yet
        out = alnnode("peers", "add", "NEWAE", "--config", str(cfg))
        assert out.returncode == 0 and "applied to the running node" in out.stdout, out.stdout + out.stderr
        first = echo(port, "NEWAE")  # at once: the CLI returns after the node confirmed the reload
        assert first.returncode == 0, first.stdout + first.stderr
        assert "NEWAE" in alnnode("peers", "list", "--config", str(cfg)).stdout

        bad = alnnode("peers", "add", "BAD\\AE", "--config", str(cfg))
        assert bad.returncode == 2 and "peers[2].ae_title = 'BAD\\\\AE'" in bad.stderr and "Traceback" not in bad.stderr

        # our own AE title, changed in the file and applied with `config reload`
        ConfigFile(cfg).set_value("node", "ae_title", "ALN_ROOM1")
        out = alnnode("config", "reload", "--config", str(cfg))
        assert out.returncode == 0 and "node.ae_title" in out.stdout, out.stdout + out.stderr
        assert echo(port, "NEWAE", called="ALN_ROOM1").returncode == 0
        assert echo(port, "NEWAE", called="ALN_AI").returncode != 0

        # a file broken by hand: the reload is refused naming the key, the node keeps its settings
        good = cfg.read_text()
        cfg.write_text(good.replace("min_free_mb = 1", "min_free_mb = -5"))
        out = alnnode("config", "reload", "--config", str(cfg))
        assert out.returncode == 2 and "storage.min_free_mb = -5" in out.stderr
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGHUP)  # what systemd's ExecReload does
        wait_for(lambda: b"configuration not reloaded" in node.log.read_bytes(), 20, what="the refused reload in the log")
        assert echo(port, "NEWAE", called="ALN_ROOM1").returncode == 0  # still running, settings unchanged
        cfg.write_text(good)

        node.stop()
        node.start()  # the change is in the TOML
        assert echo(port, "NEWAE", called="ALN_ROOM1").returncode == 0
        out = alnnode("peers", "remove", "NEWAE", "--config", str(cfg))
        assert out.returncode == 0, out.stderr
        rejected = echo(port, "NEWAE", called="ALN_ROOM1")
        assert rejected.returncode != 0 and "Calling AE Title Not Recognized" in rejected.stderr + rejected.stdout
    finally:
        node.stop()
    assert "# GE Logiq E10, 3rd floor" in cfg.read_text()
    kinds = [event_of(m) for m in audit_messages(data)]
    # Software Configuration: peers add + remove by the CLI (changed + applied), the AE title (applied)
    assert kinds.count(("110113", "110131")) == 5
