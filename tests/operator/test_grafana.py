"""deploy/grafana: the dashboard parses and queries only metrics the node exports."""

from __future__ import annotations

import json
import re

from node.metrics import _m
from tests.helpers import ROOT


def test_dashboard_uses_exported_metrics() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "alnnode-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", n) for e in exprs for n in re.findall(r"alnnode_[a-z_]+", e)}
    exported = {re.sub(r"_total$", "", m._name) for m in vars(_m()).values()} | {"alnnode_jobs"}
    assert used and used <= exported, used - exported
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
