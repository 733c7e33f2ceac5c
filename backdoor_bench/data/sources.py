"""Dataset sources. Each returns `(train, test)` ImageSets of uint8 images.

Sources that need files take `root`; a missing root stops the run with a message naming
`dataset.root`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backdoor_bench.data.imageset import ImageSet
from backdoor_bench.errors import ConfigError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def channel_stats(x: torch.Tensor, mean=None, std=None) -> tuple[tuple, tuple]:
    """Per-channel mean and std of uint8 images in [0, 1] units, unless given."""
    f = x.float() / 255
    mean = tuple(mean) if mean is not None else tuple(f.mean(dim=(0, 2, 3)).tolist())
    std = tuple(std) if std is not None else tuple(f.std(dim=(0, 2, 3)).tolist())
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ConfigError(f"dataset.source.mean/std need {x.shape[1]} values (one per channel)")
    return mean, std


def digits(image_size: int = 16, test_fraction: float = 0.2, split_seed: int = 0):
    """scikit-learn's handwritten digits (1,797 real 8x8 scans, 17 grey levels), shipped inside
    scikit-learn: no network. Upscaled bilinearly to `image_size` and stored as uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N,1,8,8] in [0,1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(test_fraction * len(y)))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    classes = [str(i) for i in range(10)]
    mean, std = (x.float().mean().item() / 255,), (x.float().std().item() / 255,)
    make = lambda i: ImageSet(x[i], y[i], classes, mean, std, "digits")  # noqa: E731
    return make(train_idx), make(test_idx)


def _require_root(root: str | None, what: str) -> Path:
    if not root:
        raise ConfigError(f"dataset.root is not set: point it at the folder that holds {what}")
    path = Path(root).expanduser()
    if not path.exists():
        raise ConfigError(f"dataset.root={root} does not exist: point it at the folder that holds {what}")
    return path


def _pil_to_uint8(images, size: int | None = None) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in images:
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).contiguous()


def _torchvision(cls_name: str, root: str, download: bool, what: str, **split_kw):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    Path(root).expanduser().mkdir(parents=True, exist_ok=True) if download else _require_root(root, what)
    try:
        return [cls(root=str(Path(root).expanduser()), download=download, **kw) for kw in split_kw.values()]
    except (RuntimeError, OSError) as e:  # not found, or the download failed (offline)
        hint = "" if download else " (dataset.download=false)"
        raise ConfigError(
            f"could not load {cls_name} from dataset.root={root}{hint}: {e}. Set dataset.root to a folder "
            f"that holds {what}, or run once with network access and dataset.download=true"
        ) from None


def cifar10(root: str = "data", download: bool = True):
    """CIFAR-10 through torchvision (downloads when online)."""
    return _cifar("CIFAR10", root, download, "cifar-10-batches-py")


def cifar100(root: str = "data", download: bool = True):
    """CIFAR-100 through torchvision (downloads when online)."""
    return _cifar("CIFAR100", root, download, "cifar-100-python", CIFAR100_MEAN, CIFAR100_STD)


def _cifar(cls_name, root, download, what, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    tr, te = _torchvision(cls_name, root, download, what, train={"train": True}, test={"train": False})
    make = lambda d, name: ImageSet(  # noqa: E731
        torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(),
        torch.tensor(d.targets),
        list(d.classes),
        mean,
        std,
        name,
    )
    return make(tr, cls_name.lower()), make(te, cls_name.lower())


def gtsrb(root: str = "data", download: bool = True, image_size: int = 32):
    """GTSRB through torchvision, resized to `image_size` (BackdoorBench: 32, identity normalisation)."""
    tr, te = _torchvision("GTSRB", root, download, "gtsrb", train={"split": "train"}, test={"split": "test"})

    def make(d):
        x = _pil_to_uint8((d[i][0] for i in range(len(d))), image_size)
        y = torch.tensor([t for _, t in d._samples])
        return ImageSet(x, y, [str(i) for i in range(43)], (0.0,) * 3, (1.0,) * 3, "gtsrb")

    return make(tr), make(te)


def image_folder(root: str, image_size: int = 32, mean=None, std=None, name: str = "image_folder"):
    """Any `root/train/<class>/*` + `root/test/<class>/*` tree, decoded once and resized to `image_size`.
    Normalisation stats are computed on the training images unless given."""
    from PIL import Image

    path = _require_root(root, "train/<class>/* and test/<class>/*")
    splits = {}
    for split in ("train", "test"):
        d = path / split
        if not d.is_dir():
            raise ConfigError(f"dataset.root={root} has no '{split}' folder: expected {split}/<class>/<images>")
        classes = sorted(p.name for p in d.iterdir() if p.is_dir())
        files = [(f, c) for c, cls in enumerate(classes) for f in sorted((d / cls).iterdir()) if f.is_file()]
        if not files:
            raise ConfigError(f"dataset.root={root}: no images under {split}/<class>/")
        x = _pil_to_uint8((Image.open(f) for f, _ in files), image_size)
        splits[split] = (x, torch.tensor([c for _, c in files]), classes)
    (xtr, ytr, classes), (xte, yte, classes_te) = splits["train"], splits["test"]
    if classes != classes_te:
        raise ConfigError(f"dataset.root={root}: train and test have different class folders")
    mean, std = channel_stats(xtr, mean, std)
    return ImageSet(xtr, ytr, classes, mean, std, name), ImageSet(xte, yte, classes, mean, std, name)


def npz(root: str, mean=None, std=None, classes=None, name: str = "npz"):
    """A `.npz` file with `x_train, y_train, x_test, y_test`; images uint8 as NHWC or NCHW."""
    path = _require_root(root, "an .npz file with x_train, y_train, x_test, y_test")
    with np.load(path) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ConfigError(f"dataset.root={root} lacks arrays {sorted(missing)}")
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}

    def images(a):
        a = torch.from_numpy(np.asarray(a, dtype=np.uint8))
        if a.ndim == 3:
            a = a[:, None]
        return a.permute(0, 3, 1, 2).contiguous() if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3) else a

    xtr, xte = images(arrays["x_train"]), images(arrays["x_test"])
    ytr, yte = torch.from_numpy(arrays["y_train"]).long(), torch.from_numpy(arrays["y_test"]).long()
    classes = list(classes) if classes else [str(i) for i in range(int(max(ytr.max(), yte.max())) + 1)]
    mean, std = channel_stats(xtr, mean, std)
    return ImageSet(xtr, ytr, classes, mean, std, name), ImageSet(xte, yte, classes, mean, std, name)
