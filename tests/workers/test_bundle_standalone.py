"""A trained bundle stands alone: MONAI's own CLI verifies its metadata against the schema copy in the repo and
runs ``configs/inference.json`` on a phantom loop in a process that cannot import aln-node, giving the
probability ``workers.inference.predict`` gives; ``models/model.ts`` equals the eager network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from workers.bundle import load_bundle
from workers.inference import predict
from workers.research.phantom import generate
from workers.research.train import train_cv

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workers" / "schemas" / "monai_bundle_meta_schema.json"
# -S: no site module, so no .pth file runs (an editable aln-node install is one); site-packages is added by hand
LAUNCH = """import importlib.util, runpy, sys
sys.path.append(sys.argv.pop(1))
assert importlib.util.find_spec("node") is None and importlib.util.find_spec("workers") is None, "aln-node importable"
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(best bundle of a 2-fold, 1-epoch TIN run on 6 phantom loops, a 40-frame phantom loop)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("standalone")
    generate(root / "ph", 6, seed=31, frames=40, size=(96, 128))
    summary = train_cv(root / "ph" / "manifest.csv", "tin", root / "run", folds=2, epochs=1, batch=2, frames=4,
                       size=32, options={"depth": 18}, progress=False, device="cpu")  # fmt: skip
    return Path(summary.best_bundle), root / "ph" / "dicom" / "s31-case0000.dcm"


def _monai_bundle(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    site = sysconfig.get_paths()["purelib"]
    return subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCH, site, *args], cwd=bundle, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_isolated_process_cannot_import_aln_node(trained: tuple[Path, Path]) -> None:
    bundle, _ = trained
    probe = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; sys.path.append(sys.argv[1]); import node",
                            sysconfig.get_paths()["purelib"]], cwd=bundle, capture_output=True, text=True)  # fmt: skip
    assert probe.returncode != 0 and "No module named 'node'" in probe.stderr


def test_monai_verify_metadata_passes_with_the_schema_copy(trained: tuple[Path, Path]) -> None:
    bundle, _ = trained
    out = _monai_bundle(bundle, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "metadata is verified with no error" in out.stdout + out.stderr


def test_monai_bundle_run_matches_predict(trained: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, loop = trained
    result = tmp_path / "prediction.json"
    out = _monai_bundle(bundle, "run", "--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json",
                        "--dataset_file", str(loop), "--output_file", str(result))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(result.read_text())
    want = predict(bundle, loop, device="cpu")
    assert len(got["clip_probabilities"]) == 3  # 40 frames, T = 4: three evaluation clips averaged
    assert got["probability_aln_metastasis"] == pytest.approx(want.probability, abs=1e-4)
    assert got["model_uid"] == want.model.model_uid and "not for diagnostic use" in got["intended_use"]


def test_torchscript_equals_the_eager_model(trained: tuple[Path, Path]) -> None:
    bundle, _ = trained
    loaded = load_bundle(bundle)
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    x = torch.rand(2, 3, loaded.frames, loaded.size, loaded.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(scripted(x), loaded.model(x), atol=1e-5, rtol=0)
    card = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run" in card and "research use only" in card.lower()
