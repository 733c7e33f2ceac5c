"""The trigger-file assets: fetch (from a local file: no test downloads), hash checks, the manifest,
resolving `asset:NAME` in a config, and the attacks that read the files."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from backdoor_bench import assets
from backdoor_bench.attacks.badnets import BadNets
from backdoor_bench.attacks.blend_signal import BlendSignal
from backdoor_bench.errors import ConfigError


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registry of one pinned and one unpinned asset served from local files."""
    src = tmp_path / "src"
    src.mkdir()
    mask = np.zeros((4, 4), dtype=np.float64)
    mask[:, 2:] = 250.4
    np.save(src / "mask.npy", mask)
    digest = hashlib.sha256((src / "mask.npy").read_bytes()).hexdigest()
    reg = {
        "mask": assets.Asset((src / "mask.npy").as_uri(), "mask.npy", "test", sha256=digest),
        "loose": assets.Asset((src / "mask.npy").as_uri(), "loose.npy", "test"),
    }
    monkeypatch.setattr(assets, "REGISTRY", reg)
    return digest


def test_fetch_checks_the_hash_and_records_it(tmp_path, registry):
    folder = tmp_path / "assets"
    assert assets.locate("mask", folder) is None
    path = assets.fetch("mask", folder)
    assert (
        assets.locate("mask", folder) == path
        and json.loads((folder / "manifest.json").read_text())["mask"]["sha256"] == registry
    )
    with pytest.raises(ConfigError, match="--sha256 loose=<hex>"):
        assets.fetch("loose", folder)  # unpinned: the user gives the hash
    with pytest.raises(ConfigError, match="not kept"):
        assets.fetch("loose", folder, sha256="0" * 64)
    assert not (folder / "loose.npy").exists()
    assets.fetch("loose", folder, sha256=registry)
    assert assets.locate("loose", folder) is not None  # the user's hash, from the manifest
    (folder / "loose.npy").write_bytes(b"edited")
    assert assets.locate("loose", folder) is None  # no longer matches: not used
    assert assets.main(["list", "--dir", str(folder)]) == 0
    assert assets.main(["fetch", "nosuch", "--dir", str(folder)]) == 2


def test_config_references_resolve_stop_or_fall_back(tmp_path, registry):
    cfg = {"_target_": "x", "pattern_path": "asset:mask", "alpha": 0.2}
    with pytest.raises(ConfigError, match="python -m backdoor_bench.assets fetch mask"):
        assets.resolve_attack_config(cfg, {"dir": str(tmp_path)})
    out, used = assets.resolve_attack_config(cfg, {"dir": str(tmp_path), "stand_ins": True})
    assert out.pattern_path is None and used == {"pattern_path": {"asset": "mask", "path": "stand-in"}}
    path = assets.fetch("mask", tmp_path)
    out, used = assets.resolve_attack_config(cfg, {"dir": str(tmp_path)})
    assert out.pattern_path == str(path) and out.alpha == 0.2
    with pytest.raises(ConfigError, match="assets.stand_ins"):
        assets.resolve_attack_config(cfg, {"dir": str(tmp_path), "stand_ins": "maybe"})


def test_blend_signal_reads_the_real_mask_array(tmp_path, registry):
    path = assets.fetch("mask", tmp_path)
    a = BlendSignal(name="blend_signal", alpha=0.2, pattern_path=str(path))
    assert a.pattern((1, 4, 4))[0, 0].tolist() == [0, 0, 250, 250]  # rounded to levels
    assert a.pattern((3, 8, 8))[2, 7].tolist() == [0] * 4 + [250] * 4  # nearest-neighbour resize
    x = torch.full((1, 1, 4, 4), 100, dtype=torch.uint8)
    assert a.apply(x)[0, 0, 0].tolist() == [80, 80, 130, 130]
    assert "pattern_sha256" in a.poison_spec({"pattern_path": str(path)})


def test_badnets_trigger_image_replaces_its_nonzero_pixels(tmp_path):
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[2:, 2:] = [200, 0, 50]  # DBD's cifar_1.png: black but for the patch; a zero channel keeps the image
    Image.fromarray(img).save(tmp_path / "t.png")
    a = BadNets(name="badnets", pattern_path=str(tmp_path / "t.png"))
    out = a.apply(torch.full((1, 3, 4, 4), 9, dtype=torch.uint8))[0]
    assert out[:, 3, 3].tolist() == [200, 9, 50] and (out[:, :2] == 9).all()
    plain = BadNets(name="badnets")
    assert plain.poison_spec({"size": 3, "pattern_path": None}) == {"size": 3}  # the older cache key
    with pytest.raises(ConfigError, match="attack.pattern_path"):
        BadNets(name="badnets", pattern_path=str(tmp_path / "none.png"))
