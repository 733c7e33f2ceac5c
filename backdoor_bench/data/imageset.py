"""`ImageSet`: a whole dataset as a uint8 tensor, and the config-driven loader."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from backdoor_bench.errors import ConfigError, instantiate_checked


@dataclass
class ImageSet:
    """Images `x` (uint8 `[N, C, H, W]`) with labels `y` (int64 `[N]`)."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    name: str = "data"

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise TypeError(f"ImageSet.x must be uint8 [N,C,H,W], got {self.x.dtype} {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")
        self.y = self.y.long()

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.x[index], self.y[index], self.classes, self.mean, self.std, self.name)

    def replace(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> ImageSet:
        return ImageSet(
            self.x if x is None else x, self.y if y is None else y, self.classes, self.mean, self.std, self.name
        )

    def fingerprint(self) -> str:
        """A short hash of pixels and labels: identifies the exact data a result came from."""
        h = hashlib.sha256()
        h.update(self.x.contiguous().numpy().tobytes())
        h.update(self.y.numpy().tobytes())
        return h.hexdigest()[:16]

    def to_payload(self) -> dict:
        return {
            "x": self.x,
            "y": self.y,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "name": self.name,
        }

    @classmethod
    def from_payload(cls, d: dict) -> ImageSet:
        return cls(d["x"], d["y"], list(d["classes"]), tuple(d["mean"]), tuple(d["std"]), d["name"])


def random_subset(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    """A fixed random subset of `n` samples (the tiny trainer's shrink); `None` keeps all."""
    if n is None or n >= len(data):
        return data
    g = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=g)[:n].sort().values)


def source_content(root) -> str | None:
    """A hash of the files under `root` (relative path, size, modification time), or of the file
    `root`: a cached decoding is reused only while the files it came from are unchanged."""
    if root is None:
        return None
    path = Path(str(root))
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_dataset(cfg, cached=None) -> tuple[ImageSet, ImageSet]:
    """Instantiate `cfg.source` (a loader function) and return (train, test).

    Decoding a folder of images is slow, so loaders that declare `cacheable: true` store the
    decoded tensors through `cached(build, content)` (the runner's artifact cache), keyed by the
    source config and `content`, the hash of the source's files.
    """

    def build():
        train, test = instantiate_checked("dataset", cfg.source)
        return {"train": train.to_payload(), "test": test.to_payload()}

    if cached is not None and cfg.get("cacheable", False):
        payload = cached(build, source_content(cfg.source.get("root")))
    else:
        payload = build()
    train, test = ImageSet.from_payload(payload["train"]), ImageSet.from_payload(payload["test"])
    expected = (cfg.channels, cfg.image_size, cfg.image_size)
    for split, data in (("training", train), ("test", test)):
        if data.shape != expected:
            raise ConfigError(
                f"dataset.{cfg.name}: {split} images are {data.shape} but the config declares channels={cfg.channels}, "
                f"image_size={cfg.image_size}; set dataset.image_size / dataset.channels to match"
            )
        if len(data) and (int(data.y.min()) < 0 or int(data.y.max()) >= int(cfg.num_classes)):
            raise ConfigError(
                f"dataset.{cfg.name}: {split} labels span {int(data.y.min())}..{int(data.y.max())} but "
                f"dataset.num_classes={cfg.num_classes}: labels must be in 0..{int(cfg.num_classes) - 1}"
            )
    if train.num_classes != cfg.num_classes:
        raise ConfigError(
            f"dataset.num_classes={cfg.num_classes} but {cfg.root if 'root' in cfg else cfg.name} "
            f"has {train.num_classes} classes: set dataset.num_classes={train.num_classes}"
        )
    return train, test
