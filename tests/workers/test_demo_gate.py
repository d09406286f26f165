"""The input gate with the demo's trained bundle: a cardiac echo is out of distribution, new phantoms are not."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest_results import dsr2html_text, save

from tests.demo_model import demo_bundle, held_out_phantoms
from tests.helpers import us_file
from workers.bundle import load_bundle
from workers.gate import GateRules
from workers.inference import predict
from workers.results import build_sr

pytestmark = pytest.mark.timeout(1800)  # the first run trains the demo bundle (about 5 min on 2 cores)


@pytest.fixture(scope="module")
def bundle() -> Path:
    return demo_bundle()


def test_demo_bundle_holds_calibration_and_ood_statistics(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    assert loaded.calibration is not None and 0.0 < loaded.calibration.threshold < 1.0
    assert loaded.ood is not None and loaded.ood.threshold > 0 and loaded.ood.percentile == 99.0
    assert loaded.info.operating_point == loaded.calibration.threshold


def test_real_cardiac_echo_is_not_assessable_and_held_out_phantoms_pass(bundle: Path, tmp_path: Path) -> None:
    echo = predict(bundle, us_file("color3d_jpeg_baseline.dcm"), device="cpu", gate=GateRules(), explain=False)

    assert echo.not_assessable is not None and echo.not_assessable.startswith("out of distribution"), echo
    assert echo.ood_score is not None and echo.ood_threshold is not None and echo.ood_score > echo.ood_threshold
    assert f"{echo.ood_score:.1f}" in echo.not_assessable

    phantoms = held_out_phantoms(tmp_path / "held-out")
    results = [predict(bundle, path, device="cpu", gate=GateRules(), explain=False) for path, _ in phantoms]
    gated = [r.not_assessable for r in results if not r.assessable]
    assert len(gated) <= 1, gated  # the 99th-percentile threshold lets in-distribution loops through


def test_sr_of_the_gated_echo_says_not_assessable_with_the_score(bundle: Path, tmp_path: Path) -> None:
    import pydicom

    path = us_file("color3d_jpeg_baseline.dcm")
    echo = predict(bundle, path, device="cpu", gate=GateRules(), explain=False)
    sr = build_sr(echo, pydicom.dcmread(path, stop_before_pixels=True), threshold=0.5)

    text = dsr2html_text(save(sr, tmp_path / "sr.dcm"))
    assert "Not assessable: out of distribution" in text
    assert "Probability of cancer" not in text and "Present" not in text
    assert f"{round(echo.ood_score, 3):g}" in text.replace(" {Mahalanobis}", "")  # type: ignore[arg-type]
    assert "AI: not assessable (out of distribution)" in text
