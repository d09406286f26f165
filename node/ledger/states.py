"""Job states and the one table of allowed transitions (shared/DESIGN.md, "Job states").

::

    received -> queued -> classified -> rendered -> dispatched
    skipped (not routed to a model, with the reason)     failed (stage, reason)

Every state write is a compare-and-set against the states a writer expects (``Ledger.transition``),
so a duplicate or late task (a redelivered message, a reaper's spare copy) finds the job already
moved on and changes nothing.
"""

from __future__ import annotations

STATES = ("received", "queued", "classified", "rendered", "dispatched", "skipped", "failed")
FINISHED_STATES = frozenset({"dispatched", "skipped", "failed"})

# (from, to) pairs a writer may make; anything else is a programming error.
TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        # publisher (node): routed to the model, or not
        ("received", "queued"),
        ("received", "skipped"),
        # classify (gpu worker); it accepts `received` too: its task may overtake the publisher's write
        ("received", "classified"),
        ("queued", "classified"),
        ("received", "failed"),
        ("queued", "skipped"),
        ("queued", "failed"),
        # render (io worker)
        ("classified", "rendered"),
        ("classified", "queued"),  # the prediction file is gone: classify again
        ("classified", "failed"),
        # dispatch (io worker)
        ("rendered", "dispatched"),
        ("rendered", "failed"),
        # operator: `alnnode retry`
        ("failed", "queued"),
        ("failed", "rendered"),
        ("dispatched", "rendered"),
    }
)

# The stage that moves a job on from each waiting state, and the Celery queue it runs on.
STAGE_OF = {"received": "classify", "queued": "classify", "classified": "render", "rendered": "dispatch"}
WAITING_STATES = tuple(STAGE_OF)
EXPECTED = {  # states in which a stage may start (claim) its job
    "classify": ("received", "queued"),
    "render": ("classified",),
    "dispatch": ("rendered",),
}
QUEUE_OF_STAGE = {"classify": "gpu", "render": "io", "dispatch": "io"}


def check_transition(source: str, target: str) -> None:
    if target not in STATES:
        raise ValueError(f"unknown job state {target!r} (expected one of {', '.join(STATES)})")
    if (source, target) not in TRANSITIONS:
        raise ValueError(f"job state change {source} -> {target} is not allowed")
