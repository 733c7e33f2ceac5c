"""Real-data checks on the CIFAR-10 JPEG copy (`make test-slow`); skipped where it is absent."""

import json
import tarfile

import pytest

from tests.conftest import SHARED_DATA

TAR = SHARED_DATA / "cifar10-jpeg75.tar.gz"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TAR.exists(), reason=f"{TAR} is absent")]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10-jpeg75")
    with tarfile.open(TAR) as t:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        t.extractall(root, **kw)
    return root


def test_image_folder_reads_the_copy(cifar_root):
    from backdoor_bench.data.sources import image_folder

    train, test = image_folder(str(cifar_root), 32, name="cifar10-jpeg75")
    assert train.x.shape == (50000, 3, 32, 32) and test.x.shape == (10000, 3, 32, 32)
    assert train.classes[0] == "airplane" and train.y.bincount().tolist() == [5000] * 10
    assert abs(train.mean[0] - 0.4913) < 0.002


def test_badnets_backdoor_on_real_images(run_cli, cifar_root):
    """The documented CPU recipe (about 25 minutes on 2 cores): measured ACC 80.2%, ASR 95.2%.

    Shorter recipes do not make a sound check: on 10k-20k image subsets with 6-8 epochs the
    corner patch is not learned yet (ASR about 10%), and lr 0.05 on a 10k subset diverged."""
    p = run_cli(
        "dataset=cifar10_jpeg75",
        f"dataset.root={cifar_root}",
        "model=preact_resnet18",
        "model.width=16",
        "trainer=cpu",
        "trainer.max_epochs=15",
        "trainer.optimizer.lr=0.05",
        "trainer.progress_bar=false",
        timeout=3600,
    )
    m = json.loads((p.out_dir / "results.json").read_text())["metrics"]
    assert m["asr"] >= 0.9 and m["acc"] >= 0.75, m
