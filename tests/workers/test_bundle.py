"""MONAI bundles: round trip, tamper detection naming the field, weight-derived model UID, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest_models import TINY, make_tiny_bundle, small_tin
from monai.bundle import ConfigParser

from workers.bundle import load_bundle, main, save_bundle, weights_uid
from workers.errors import BundleError


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tin-tiny")


def edit_metadata(src: Path, dst: Path, change: Any) -> Path:
    shutil.copytree(src, dst)
    path = dst / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    return dst


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = small_tin(seed=4)
    out = save_bundle(model, tmp_path / "b", arch="tin", options=dict(TINY), name="tin-demo", synthetic_only=True,
                      training={"epochs": 3, "data_source": "phantoms seed 7"})  # fmt: skip
    loaded = load_bundle(out)
    clip = torch.rand(2, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(clip), model(clip), rtol=0, atol=0)
    assert not loaded.model.training
    assert (loaded.frames, loaded.size) == (8, 64)
    info = loaded.info
    assert (info.name, info.arch, info.version, info.synthetic_only, info.untrained) == (
        "tin-demo",
        "tin",
        "0.1.0",
        True,
        False,
    )
    meta = loaded.metadata
    assert meta["intended_use"] == "research use only, not for diagnostic use"
    assert meta["class_names"] == ["no ALN metastasis", "ALN metastasis"]
    assert meta["data_source"] == "phantoms seed 7" and meta["training"]["epochs"] == 3
    video = meta["network_data_format"]["inputs"]["video"]
    assert (video["frames"], video["spatial_shape"], video["value_range"]) == (8, [64, 64], [0, 1])
    assert info.model_uid.startswith("2.25.") and len(info.model_uid) <= 64
    card = (out / "docs" / "README.md").read_text()
    assert "research use only" in card and "Synthetic data only" in card


def test_inference_config_builds_the_network_with_monai(tiny_bundle: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(tiny_bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(tiny_bundle)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network")  # models/model.ts: no aln-node code in the config
    assert "workers" not in (tiny_bundle / "configs" / "inference.json").read_text()
    clip = torch.rand(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(clip), load_bundle(tiny_bundle).model(clip))


def test_model_uid_follows_the_weights(tmp_path: Path) -> None:
    model = small_tin(seed=5)
    first = save_bundle(model, tmp_path / "a", arch="tin", options=dict(TINY), name="x", synthetic_only=True)
    again = save_bundle(model, tmp_path / "b", arch="tin", options=dict(TINY), name="x", synthetic_only=True)
    uid = load_bundle(first).info.model_uid
    assert load_bundle(again).info.model_uid == uid  # same weights, same UID
    with torch.no_grad():
        model.fc.bias[0] += 1e-3
    changed = save_bundle(
        model, tmp_path / "c", arch="tin", options=dict(TINY), name="x", synthetic_only=True
    )
    assert load_bundle(changed).info.model_uid != uid
    assert weights_uid(model.state_dict()) != load_bundle(changed).info.model_uid  # it covers the flags too (#9)


def test_swapped_weights_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = shutil.copytree(tiny_bundle, tmp_path / "swapped")
    torch.save(small_tin(seed=9).state_dict(), bad / "models" / "model.pt")
    with pytest.raises(BundleError, match="^model_uid"):
        load_bundle(bad)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m["network_data_format"]["inputs"]["video"].update(frames=16), "frames"),
        (
            lambda m: m["network_data_format"]["inputs"]["video"].update(spatial_shape=[224, 224]),
            "spatial_shape",
        ),
        (lambda m: m.update(arch="r3d"), "^arch"),
        (lambda m: m.update(arch="tin3d"), "^arch"),
        (lambda m: m["options"].update(frames=16), "^options"),
        (lambda m: m["options"].update(depth=34), "^arch"),  # other blocks: other keys
        (lambda m: m.pop("intended_use"), "^intended_use"),
        (lambda m: m.update(synthetic_only="no"), "^synthetic_only"),
        (lambda m: m.update(pytorch_version="1.13.1"), "^pytorch_version"),
        (lambda m: m.update(model_uid="1.2.3"), "^model_uid"),
        (lambda m: m.update(version="latest"), "^version"),
    ],
)
def test_tampered_metadata_is_refused_naming_the_field(
    tiny_bundle: Path, tmp_path: Path, change: Any, field: str
) -> None:
    bad = edit_metadata(tiny_bundle, tmp_path / "bad", change)
    with pytest.raises(BundleError, match=field):
        load_bundle(bad)


def test_missing_weights_file_is_named(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = shutil.copytree(tiny_bundle, tmp_path / "noweights")
    (bad / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match="model.pt"):
        load_bundle(bad)


def test_save_refuses_options_that_do_not_rebuild_the_model(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="options"):
        save_bundle(
            small_tin(),
            tmp_path / "b",
            arch="tin",
            options={**TINY, "frames": 16},
            name="x",
            synthetic_only=True,
        )


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_cli_creates_an_untrained_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["create", "--arch", "tin", "--out", str(out), "--option", "depth=18", "--option", "frames=8",
            "--option", "size=64", "--name", "demo", "--torchscript"]  # fmt: skip
    assert main(argv) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    loaded = load_bundle(out)
    assert loaded.info.untrained and loaded.info.synthetic_only and loaded.info.name == "demo"
    assert "UNTRAINED" in (out / "docs" / "README.md").read_text()
    scripted = torch.jit.load(str(out / "models" / "model.ts"))
    clip = torch.rand(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(clip), loaded.model(clip))
    assert main(["verify", str(out)]) == 0
    assert loaded.info.model_uid in capsys.readouterr().out
    assert main(["create", "--arch", "tin", "--out", str(tmp_path / "x"), "--option", "depth=7"]) == 2
    assert "depth" in capsys.readouterr().err


def test_cam_layer_option_is_kept_by_the_bundle_and_bad_names_are_refused(tmp_path: Path) -> None:
    from workers.gradcam import clip_cam, make_explainer
    from workers.models import build

    torch.manual_seed(0)
    model = build("tin", **TINY, cam_layer="layer3").eval()
    assert model.cam_layer == "layer3"
    out = save_bundle(model, tmp_path / "b", arch="tin", options={**TINY, "cam_layer": "layer3"}, name="tin-l3",
                      synthetic_only=True, untrained=True)  # fmt: skip
    loaded = load_bundle(out)
    assert loaded.model.cam_layer == "layer3"
    cam = clip_cam(loaded.model, make_explainer(loaded.model), torch.rand(1, 3, 8, 64, 64), class_idx=1)
    assert cam.shape == (8, 64, 64)
    with pytest.raises(ValueError, match="cam_layer 'fc' is not a stage of tin; expected one of layer1, layer2, layer3, layer4"):
        build("tin", **TINY, cam_layer="fc")
