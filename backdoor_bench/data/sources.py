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


def _decode_files(files, size: int, root) -> torch.Tensor:
    """Image files as uint8 `[N, 3, size, size]`; a file PIL cannot read (truncated, not an
    image) is a ConfigError naming it."""
    from PIL import Image

    out = []
    for f in files:
        try:
            with Image.open(f) as img:
                out.append(_pil_to_uint8([img], size))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ConfigError(f"dataset.root={root}: cannot read image {f} ({e}): replace or remove the file") from None
    return torch.cat(out)


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
        x = _decode_files([f for f, _ in files], image_size, root)
        splits[split] = (x, torch.tensor([c for _, c in files]), classes)
    (xtr, ytr, classes), (xte, yte, classes_te) = splits["train"], splits["test"]
    if classes != classes_te:
        raise ConfigError(f"dataset.root={root}: train and test have different class folders")
    mean, std = channel_stats(xtr, mean, std)
    return ImageSet(xtr, ytr, classes, mean, std, name), ImageSet(xte, yte, classes, mean, std, name)


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def npz(root: str, mean=None, std=None, classes=None, name: str = "npz", num_classes: int | None = None):
    """A `.npz` file with `x_train, y_train, x_test, y_test`: images uint8 (or integers in 0..255)
    as NHWC, NCHW or NHW, labels integers in 0..num_classes-1. Everything is checked before use:
    a float image, a label out of range, a missing array or mismatched shapes stop the run with a
    message naming the file and the array."""
    path = _require_root(root, "an .npz file with x_train, y_train, x_test, y_test")
    arrays = _read_npz(path)
    xtr, xte = _npz_images(arrays["x_train"], "x_train", path), _npz_images(arrays["x_test"], "x_test", path)
    if xtr.shape[1:] != xte.shape[1:]:
        raise ConfigError(
            f"{path}: x_train images are {list(xtr.shape[1:])} but x_test images are {list(xte.shape[1:])} "
            "(channels, height, width): both splits need the same image shape"
        )
    k = int(num_classes) if num_classes is not None else None
    ytr = _npz_labels(arrays["y_train"], "y_train", len(xtr), path, k)
    yte = _npz_labels(arrays["y_test"], "y_test", len(xte), path, k)
    if k is None:
        k = int(max(ytr.max(), yte.max())) + 1
    classes = list(classes) if classes else [str(i) for i in range(k)]
    mean, std = channel_stats(xtr, mean, std)
    return ImageSet(xtr, ytr, classes, mean, std, name), ImageSet(xte, yte, classes, mean, std, name)


def _read_npz(path: Path) -> dict:
    """The four arrays of an .npz file; anything else (a text file, a pickle, a single .npy, a
    truncated archive) is a ConfigError naming the file."""
    import zipfile
    import zlib

    hint = "dataset.root must be a file written by numpy.savez with x_train, y_train, x_test, y_test"
    if path.is_dir():
        raise ConfigError(f"not an npz file: {path} is a folder; {hint}")
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        why = "no numpy archive (text or pickled data)" if "pickle" in str(e) else str(e)
        raise ConfigError(f"not an npz file: {path} ({why}); {hint}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ConfigError(f"not an npz file: {path} (a single .npy array); {hint}")
    with f:
        missing = sorted(set(NPZ_ARRAYS) - set(f.files))
        if missing:
            raise ConfigError(f"{path} lacks arrays {missing} (it has {sorted(f.files)}); {hint}")
        try:
            return {k: f[k] for k in NPZ_ARRAYS}
        except ValueError as e:
            if "pickle" not in str(e):
                raise ConfigError(f"{path}: cannot read its arrays ({e}): write it again with numpy.savez") from None
            raise ConfigError(
                f"{path}: an array holds Python objects, not numbers: store uint8 images, integer labels"
            ) from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ConfigError(
                f"{path}: cannot read its arrays ({e}): the file is truncated or corrupt; write it again with numpy.savez"
            ) from None


def _npz_images(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """`a` as uint8 `[N, C, H, W]`: uint8, or integers in 0..255, as NHWC, NCHW or NHW."""
    if a.ndim not in (3, 4) or len(a) == 0:
        raise ConfigError(
            f"{path}: {key} has shape {list(a.shape)}: images must be a non-empty [N, H, W, C], [N, C, H, W] or [N, H, W] array"
        )
    if a.dtype != np.uint8:
        lo, hi = (a.min().item(), a.max().item()) if a.dtype.kind in "iuf" else (None, None)
        if a.dtype.kind == "f":
            if np.isfinite(a).all() and 0 <= lo and hi <= 1:
                raise ConfigError(
                    f"{path}: {key} is {a.dtype} in [0, 1]: images must be uint8 in 0..255; "
                    f"multiply by 255 and cast to uint8: (x * 255).round().astype(np.uint8)"
                )
            raise ConfigError(
                f"{path}: {key} is {a.dtype} (values {lo}..{hi}): images must be uint8 in 0..255; "
                "scale them to 0..255 and cast: x.round().astype(np.uint8)"
            )
        if a.dtype.kind not in "iu" or lo < 0 or hi > 255:
            what = f"values {lo}..{hi}" if lo is not None else f"dtype {a.dtype}"
            raise ConfigError(f"{path}: {key} holds {what}: images must be uint8 (or integers in 0..255)")
        a = a.astype(np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(a))
    if x.ndim == 3:
        x = x[:, None]
    return x.permute(0, 3, 1, 2).contiguous() if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3) else x


def _npz_labels(a: np.ndarray, key: str, n: int, path: Path, num_classes: int | None) -> torch.Tensor:
    """`a` as int64 `[N]`: integers in 0..num_classes-1, one per image of the split."""
    xkey = "x" + key[1:]
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ConfigError(f"{path}: {key} has shape {list(a.shape)}: labels must be a 1-D array, one per image")
    if len(a) != n:
        raise ConfigError(f"{path}: {xkey} has {n} images but {key} has {len(a)} labels: give one label per image")
    if a.dtype.kind not in "iu":
        raise ConfigError(
            f"{path}: {key} is {a.dtype}: labels must be integers in 0..num_classes-1; cast with .astype(np.int64)"
        )
    top = num_classes - 1 if num_classes is not None else None
    bad = (a < 0) | (a > top) if top is not None else a < 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rng = f"0..{top} (dataset.num_classes={num_classes})" if top is not None else "0 or more"
        raise ConfigError(f"{path}: {key} holds label {a[i].item()} (at index {i}): labels must be integers in {rng}")
    return torch.from_numpy(a.astype(np.int64))
