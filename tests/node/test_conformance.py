"""The conformance statement's tables are the SCP's actual presentation contexts."""

from __future__ import annotations

import re
from pathlib import Path

from node.config import load_config
from node.ledger import Ledger
from node.receive.scp import Receiver
from node.spool import Spool

DOC = Path(__file__).resolve().parents[2] / "conformance" / "ConformanceStatement.md"


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"^#{1,4} ", text[start + len(heading):], re.M)
    return text[start: start + len(heading) + (nxt.start() if nxt else len(text))]


def uids_in(text: str) -> list[str]:
    return re.findall(r"^\|.*\| `([0-9.]+)` \|", text, re.M)


def test_statement_matches_the_ae(tmp_path: Path) -> None:
    settings = load_config(None, storage={"data_dir": str(tmp_path)})
    ae = Receiver(settings, Spool(tmp_path), Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")).build_ae()
    actual: dict[str, set[str]] = {}
    for cx in ae.supported_contexts:
        actual[str(cx.abstract_syntax)] = {str(t) for t in cx.transfer_syntax}

    text = DOC.read_text(encoding="utf-8")
    sop = section(text, "#### 4.2.1")
    ts = section(text, "#### 4.2.2")
    documented_classes = set(uids_in(sop))
    documented_ts = uids_in(ts)
    assert documented_classes == set(actual), "SOP class table differs from the AE"
    storage = {uid for uid in actual if uid != "1.2.840.10008.1.1"}
    for uid in storage:
        assert actual[uid] == set(documented_ts), f"transfer syntaxes of {uid} differ from the table"
    verification_rows = re.findall(r"^\|[^|]*\| `([0-9.]+)` \| yes \|", ts, re.M)
    assert set(verification_rows) == actual["1.2.840.10008.1.1"]
    assert f"{settings.node.max_associations}" in section(text, "#### 4.2.3")


def test_statement_lists_the_objects_the_workers_send() -> None:
    from workers.results.sc import MULTIFRAME_TRUE_COLOR_SC_STORAGE, SC_IMAGE_STORAGE

    sent = set(uids_in(section(DOC.read_text(encoding="utf-8"), "#### 4.2.6")))
    comprehensive_3d_sr = "1.2.840.10008.5.1.4.1.1.88.34"  # highdicom Comprehensive3DSR
    assert sent == {comprehensive_3d_sr, SC_IMAGE_STORAGE, MULTIFRAME_TRUE_COLOR_SC_STORAGE}


def test_statement_lists_the_receive_limits_and_their_defaults() -> None:
    from node.config import NodeSection

    limits = section(DOC.read_text(encoding="utf-8"), "#### 4.2.3")
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([0-9.]+) \|", limits, re.M))
    defaults = NodeSection()
    keys = {
        "association_timeout", "acse_timeout", "dimse_timeout", "network_timeout", "max_associations",
        "max_associations_per_host", "reserved_peer_slots", "max_pdu_size", "max_instance_mb",
        "max_inflated_mb", "max_frames",
    }
    assert set(rows) == keys, "limits table differs from the [node] limit keys"
    for key, documented in rows.items():
        assert float(documented) == float(getattr(defaults, key)), f"{key}: documented {documented}, code {getattr(defaults, key)}"


def test_statement_lists_the_statuses_and_rejections_the_scp_uses() -> None:
    import node.errors as errors
    import node.receive.scp as scp
    from node.receive.guard import ABORT_INVALID_PARAMETER

    text = DOC.read_text(encoding="utf-8")
    statuses = {int(code, 16) for code in re.findall(r"^\| `([0-9A-F]{4})` \|", section(text, "#### 4.2.4"), re.M)}
    used = {getattr(errors, name) for name in dir(errors) if name.startswith("STATUS_")}
    assert statuses == used
    policy = section(text, "#### 4.2.3")
    documented = set(re.findall(r"\| (\d) [a-z-]+ \| (\d) [a-z ()-]+ \| (\d) [A-Za-z-]+ \|$", policy, re.M))
    codes = {tuple(str(v) for v in getattr(scp, name)) for name in dir(scp) if name.startswith("REJECT_")}
    assert documented == codes
    assert f"reason {ABORT_INVALID_PARAMETER} invalid PDU parameter value" in policy
