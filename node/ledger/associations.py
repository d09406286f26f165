"""Associations: one row per DICOM association, accepted or rejected, with its counters."""

from __future__ import annotations

from sqlalchemy import Engine, func, insert, select, update

from node.ledger.schema import AE_MAX, HOST_MAX, associations, now


class AssociationsMixin:
    engine: Engine

    def open_association(self, calling_ae: str, called_ae: str, host: str, port: int) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(
                insert(associations).values(
                    calling_ae=calling_ae[:AE_MAX], called_ae=called_ae[:AE_MAX], peer_host=host[:HOST_MAX],
                    peer_port=port, started_at=now(), instances=0, failures=0, bytes=0, outcome="open",
                )
            )  # fmt: skip
            key = res.inserted_primary_key
            assert key is not None
            return int(key[0])

    def count_store(self, association_id: int, size: int, ok: bool) -> None:
        """Count one C-STORE on the association (atomic: counters are updated in SQL)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(associations)
                .where(associations.c.id == association_id)
                .values(
                    instances=associations.c.instances + (1 if ok else 0),
                    failures=associations.c.failures + (0 if ok else 1),
                    bytes=associations.c.bytes + size,
                )
            )

    def close_association(self, association_id: int, outcome: str, reason: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(associations)
                .where(associations.c.id == association_id, associations.c.outcome == "open")
                .values(ended_at=now(), outcome=outcome, reason=reason)
            )

    def close_open_associations(self) -> int:
        """Mark associations left open by a crash as ``interrupted``; returns how many."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(associations)
                .where(associations.c.outcome == "open")
                .values(ended_at=now(), outcome="interrupted", reason="node stopped during the association")
            )
            return int(res.rowcount or 0)

    def record_rejected(self, calling_ae: str, called_ae: str, host: str, port: int, reason: str) -> None:
        t = now()
        with self.engine.begin() as conn:
            conn.execute(
                insert(associations).values(
                    calling_ae=calling_ae[:AE_MAX], called_ae=called_ae[:AE_MAX], peer_host=host[:HOST_MAX],
                    peer_port=port, started_at=t, ended_at=t, instances=0, failures=0, bytes=0,
                    outcome="rejected", reason=reason,
                )
            )  # fmt: skip

    def association_summary(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(associations.c.outcome, func.count()).group_by(associations.c.outcome))
            return {r[0]: int(r[1]) for r in rows}

