"""The input gate in the worker's stages: a loop that fails it is classified *not assessable*, gets an SR that
says why (no heatmaps), and the ledger keeps the reason for ``alnnode status``; a peer's override lets it in."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest_models import blob_clip, make_tiny_bundle, write_us_loop

from node.config import Settings
from node.ledger import Ledger, NewInstance
from node.outbox import SC_KEY_FILE, SR_FILE
from workers import stages


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tin-tiny")


def _context(tmp: Path, bundle: Path, **model: object) -> stages.WorkerContext:
    (tmp / "out").mkdir(exist_ok=True)
    settings = Settings(
        storage={"data_dir": tmp / "var"},  # type: ignore[arg-type]
        model={"bundle": bundle, "allow_research_models": True, **model},  # type: ignore[arg-type]
        peers=[{"ae_title": "US_ROOM1"}, {"ae_title": "CARDIO", "body_parts": ["HEART"]}],  # type: ignore[list-item]
        destinations=[{"name": "out", "kind": "folder", "path": tmp / "out"}],  # type: ignore[list-item]
    )
    return stages.WorkerContext(settings, device="cpu")


def _spool(ctx: stages.WorkerContext, loop: Path, calling_ae: str) -> str:
    ds = pydicom.dcmread(loop, stop_before_pixels=True)
    ctx.spool.prepare()
    temp = ctx.spool.incoming / "tmp.dcm"
    shutil.copy(loop, temp)
    rel, _ = ctx.spool.commit(temp, str(ds.SOPInstanceUID))
    ctx.ledger.add_instance(NewInstance(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.StudyInstanceUID),
                                        str(ds.SeriesInstanceUID), str(ds.file_meta.TransferSyntaxUID), rel,
                                        loop.stat().st_size, int(ds.NumberOfFrames), calling_ae, None),
                            state="queued")  # fmt: skip
    return str(ds.SOPInstanceUID)


def _loop(path: Path, *, frozen: bool = False, body_part: str | None = None) -> Path:
    clip, _ = blob_clip(np.random.default_rng(7), positive=True)
    if frozen:  # a still image saved as a loop: every frame the same
        clip = clip[:, :1].repeat(1, clip.shape[1], 1, 1)
    write_us_loop(path, clip)
    if body_part:
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = body_part
        ds.save_as(path, enforce_file_format=True)
    return path


def _run(ctx: stages.WorkerContext, uid: str) -> dict:  # type: ignore[type-arg]
    """The three stages as the worker runs them (claim, work, guarded transition), in this process."""
    for stage, after in (("classify", "classified"), ("render", "rendered"), ("dispatch", "dispatched")):
        stages.run(ctx, stage, uid)
        row = ctx.ledger.find(uid)
        assert row is not None and row["state"] == after, row
    row = ctx.ledger.find(uid)
    assert row is not None
    return row


def test_frozen_loop_is_not_assessable_with_an_sr_that_says_why(tmp_path: Path, bundle: Path) -> None:
    ctx = _context(tmp_path, bundle)
    uid = _spool(ctx, _loop(tmp_path / "frozen.dcm", frozen=True), "US_ROOM1")

    row = _run(ctx, uid)

    assert row["state"] == "dispatched" and not row["probability"]
    assert row["reason"].startswith("not assessable: frozen loop (mean change between frames 0.00"), row["reason"]
    assert not (ctx.folder(uid) / SC_KEY_FILE).exists()
    (sent,) = (tmp_path / "out").rglob("*.dcm")  # the SR alone
    sr = pydicom.dcmread(sent)
    assert sr.Modality == "SR" and sr.SOPInstanceUID == pydicom.dcmread(ctx.folder(uid) / SR_FILE).SOPInstanceUID
    ctx.ledger.close()


def test_body_part_rule_and_a_peers_override(tmp_path: Path, bundle: Path) -> None:
    ctx = _context(tmp_path, bundle)
    heart = _loop(tmp_path / "heart.dcm", body_part="HEART")
    uid = _spool(ctx, heart, "US_ROOM1")
    stages.run(ctx, "classify", uid)
    row = ctx.ledger.find(uid)
    assert row is not None and row["reason"] == "not assessable: body part 'HEART' is not one of BREAST, AXILLA"

    other = Ledger(ctx.settings.ledger_url)  # a second job from the peer allowed to send hearts
    ds = pydicom.dcmread(heart)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["aln-node gate test"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "heart2.dcm", enforce_file_format=True)
    uid2 = _spool(ctx, tmp_path / "heart2.dcm", "CARDIO")
    stages.run(ctx, "classify", uid2)
    row2 = other.find(uid2)
    assert row2 is not None and row2["state"] == "classified" and row2["probability"] and not row2["reason"]
    other.close()
    ctx.ledger.close()
