"""The CI fuzz suite: over a thousand seeded hostile cases against one node at the shipped defaults.

For every case: the node stays up, answers (or closes the connection) within its timeouts; at the
end nothing is left in incoming/, every acknowledged instance is in the ledger, no association
row stays open, no handler error was logged, and the node's RSS stayed under a bound.
A longer run of the same generators: ``bench/fuzz.py --cases 50000``.
"""

from __future__ import annotations

import threading

from tests.helpers import wait_for
from tests.hostile.conftest import DefaultNode
from tests.hostile.hostile_cases import Runner, cases, rss_kb

SEED = 20261201
N_OBJECTS, N_PDUS = 1000, 300
RSS_BOUND_KB = 400 * 1024


def test_fuzz_receive_path(default_node: DefaultNode) -> None:
    objects, pdus = cases(SEED, N_OBJECTS, N_PDUS)
    runner = Runner(default_node.port)
    peak = [rss_kb(default_node.pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            if default_node.alive():
                peak.append(rss_kb(default_node.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        half = len(pdus) // 2
        runner.run_pdus(pdus[:half], default_node.alive)
        runner.run_objects(objects, default_node.alive)
        runner.run_pdus(pdus[half:], default_node.alive)
    finally:
        done.set()
        sampler.join()
    print(dict(sorted(runner.summary().items())))
    assert default_node.alive()
    ledger = default_node.ledger()
    problems = runner.check(lambda uid: ledger.find(uid) is not None)
    assert not problems, "\n".join(problems[:20])
    assert len(runner.outcomes) == N_OBJECTS + N_PDUS >= 1000
    wait_for(lambda: default_node.incoming() == [], 60, what="incoming/ to be empty")
    wait_for(lambda: "open" not in ledger.association_summary(), 15, what="association rows to be closed")
    log = default_node.proc.log.read_text(errors="replace")
    assert "handler error" not in log and "housekeeping failed" not in log
    assert max(peak) < RSS_BOUND_KB, f"node RSS reached {max(peak) // 1024} MB"
    # no thread leak: what is left after the run is the node's own threads and the idle pool
    wait_for(lambda: rss_kb(default_node.pid, "Threads") < 30, 30, what="node threads to settle")
