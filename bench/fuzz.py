"""Fuzz run of the receive path: the CI generators (tests/hostile/hostile_cases.py), for longer.

Starts one `alnnode serve` at the shipped [node] defaults, sends ``--cases`` seeded hostile cases
(about 77 % mutated real objects as C-STOREs, 23 % raw PDUs), then checks the same invariants as the
CI suite: node up, every request answered or closed within the timeouts, incoming/ empty, every
acknowledged instance in the ledger, no association left open, RSS bound. Prints the outcome counts
and the time per hostile case against a reference run of unmodified stores in the same process.

    .venv/bin/python bench/fuzz.py --cases 20000 [--seed 1]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.ledger import Ledger  # noqa: E402
from node.spool import Spool  # noqa: E402
from tests.helpers import NodeProcess, free_port  # noqa: E402
from tests.hostile.conftest import default_config  # noqa: E402
from tests.hostile.hostile_cases import ObjectCase, Runner, cases, load_sources, rss_kb  # noqa: E402
from tests.hostile.hostile_cases import _encode as encode  # noqa: E402


def reference(runner: Runner, alive: Callable[[], bool], n: int) -> float:
    """Seconds per unmodified store of the same sources (the reference of the ratio)."""
    sources = load_sources()
    batch = []
    for i in range(n):
        src = sources[i % len(sources)]
        ds = copy.deepcopy(src.dataset)
        ds.SOPInstanceUID = f"2.25.{10**30 + i}"
        batch.append(ObjectCase(-1 - i, "reference", encode(ds, src.syntax), str(ds.SOPClassUID), src.syntax, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    t0 = time.perf_counter()
    runner.run_objects(iter(batch), alive)
    return (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, help="keep the node's data dir and log here (default: a temp dir)")
    args = ap.parse_args()
    n_pdus = max(args.cases * 23 // 100, 1)
    n_objects = args.cases - n_pdus
    with tempfile.TemporaryDirectory(prefix="alnnode-fuzz-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        port, data = free_port(), work / "var"
        node = NodeProcess(default_config(work / "alnnode.toml", port, data), port, work / "node.log").start()
        assert node.proc is not None
        pid = node.proc.pid

        def alive() -> bool:
            return node.proc is not None and node.proc.poll() is None

        peak = [rss_kb(pid)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                if alive():
                    peak.append(rss_kb(pid))

        threading.Thread(target=sample, daemon=True).start()
        try:
            ref_runner = Runner(port)
            per_reference = reference(ref_runner, alive, 100)
            objects, pdus = cases(args.seed, n_objects, n_pdus)
            runner = Runner(port)
            t0 = time.perf_counter()
            step = max(len(pdus) // 4, 1)
            for i in range(0, len(pdus), step):  # PDU cases interleaved with the object cases
                runner.run_pdus(pdus[i : i + step], alive)
                runner.run_objects(itertools.islice(objects, n_objects // 4 + 1), alive)
            runner.run_objects(objects, alive)
            elapsed = time.perf_counter() - t0
            done.set()
            ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
            problems = runner.check(lambda uid: ledger.find(uid) is not None)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (list(Spool(data).incoming.iterdir()) or "open" in ledger.association_summary()):
                time.sleep(0.5)
            if list(Spool(data).incoming.iterdir()):
                problems.append("incoming/ not empty 60 s after the run")
            if "open" in ledger.association_summary():
                problems.append("association rows left open")
            if not alive():
                problems.append("node died")
            log = node.log.read_text(errors="replace")
            errors = log.count("handler error") + log.count("housekeeping failed")
            if errors:
                problems.append(f"{errors} handler error(s) logged")
        finally:
            done.set()
            node.stop()
    total = len(runner.outcomes)
    per_case = elapsed / max(total, 1)
    print(f"seed {args.seed}: {total} cases ({n_objects} objects, {n_pdus} PDUs) in {elapsed:.0f} s")
    for key, count in sorted(runner.summary().items()):
        print(f"  {key:40s} {count}")
    print(f"acknowledged {len(runner.acknowledged)}, all in the ledger: {not any('ledger' in p for p in problems)}")
    print(f"peak RSS {max(peak) // 1024} MB; {per_case * 1000:.0f} ms per hostile case, "
          f"ratio to an unmodified store {per_case / per_reference:.2f}")
    print(f"violations: {len(problems)}")
    for p in problems[:20]:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
