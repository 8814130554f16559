"""Image data without torchvision: an ImageFolder reader with the ImageNet eval transform, and Fashion-MNIST.

ImageNet evaluation transform (timm's for crop_pct 0.9 at 224): resize the short side to
int(224 / 0.9) = 248 with PIL bicubic, center-crop 224, scale to [0, 1], normalise with the ImageNet
mean/std. Fashion-MNIST is read from the idx files of Debian's ``dataset-fashion-mnist`` package,
checked against pinned sha256 digests.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from flyweight.utils.io import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class EvalTransform:
    """PIL image -> normalised (3, crop, crop) float tensor: resize short side, center crop, mean/std."""

    def __init__(
        self,
        crop_size: int = 224,
        crop_pct: float = 0.9,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation: str = "bicubic",
    ):
        modes = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
        if interpolation not in modes:
            raise ValueError(f"interpolation must be one of {sorted(modes)}, got {interpolation!r}")
        self.crop_size = int(crop_size)
        self.resize_size = int(math.floor(crop_size / crop_pct))  # 224 / 0.9 -> 248
        self.resample = modes[interpolation]
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def resize(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        return img.resize(size, self.resample)

    def center_crop(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        c = self.crop_size
        if w < c or h < c:
            raise ValueError(f"image {w}x{h} smaller than the crop {c} after resizing")
        left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
        return img.crop((left, top, left + c, top + c))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = self.center_crop(self.resize(img.convert("RGB")))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std


class ImageFolder(Dataset):
    """root/<class>/<image>: classes sorted by name -> labels 0..C-1 (the torchvision/ImageNet convention)."""

    def __init__(self, root: str | Path, transform=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image folder {self.root} does not exist (expected <root>/<class>/<image>)"
            )
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root} holds no class sub-folders (expected <root>/<class>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [
            (p, self.class_to_idx[c])
            for c in self.classes
            for p in sorted((self.root / c).rglob("*"))
            if p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not self.samples:
            raise ValueError(f"{self.root}: no images with extensions {IMAGE_EXTENSIONS}")
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with Image.open(path) as img:
            img = img.convert("RGB")
            x = self.transform(img) if self.transform else img
        return x, label


def imagenet_val_dir(data_dir: str | Path) -> Path:
    """``data_dir/val`` when it exists, else ``data_dir`` itself (already the val folder)."""
    root = Path(data_dir)
    return root / "val" if (root / "val").is_dir() else root


# ---- Fashion-MNIST (Debian dataset-fashion-mnist) -------------------------------------------------------
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train-images": (
        "train-images-idx3-ubyte.gz",
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    ),
    "train-labels": (
        "train-labels-idx1-ubyte.gz",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    ),
    "test-images": (
        "t10k-images-idx3-ubyte.gz",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    ),
    "test-labels": (
        "t10k-labels-idx1-ubyte.gz",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    ),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (gzip or raw): big-endian magic 0x0000 <type 0x08=uint8> <ndim>, then ndim uint32 sizes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (magic {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} values), body has {body.size}")
    return body.reshape(dims)


def load_fashion_mnist(
    split: str, root: str | Path = FASHION_MNIST_DIR, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of split "train" (60k) or "test" (10k)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    arrays = []
    for part in ("images", "labels"):
        name, digest = FASHION_MNIST_FILES[f"{split}-{part}"]
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} is missing; install it with `{_INSTALL_HINT}` "
                "or pass the folder holding the idx files"
            )
        if verify and sha256_file(path) != digest:
            raise ValueError(f"{path}: sha256 mismatch (expected {digest}); reinstall with `{_INSTALL_HINT}`")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def upscale_batch(images_u8: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, size, size) normalised float (bilinear upscaling)."""
    x = images_u8[:, None].float() / 255.0
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - mean) / std


class ShuffledImageBatches(torch.utils.data.IterableDataset):
    """``steps`` training batches of (uint8 images, labels, flip mask), all drawn from one seeded generator.

    Batch ``s`` takes the ``batch_size`` images at positions ``s * batch_size mod N`` onwards of the current
    permutation; when fewer than ``batch_size`` remain, a fresh permutation starts and the batch is its first
    ``batch_size``. The flip mask (True with probability 1/2 per image, all False when ``hflip`` is off) is
    drawn right after the batch's indices, so the sequence of draws, and therefore a run, depends on the seed
    alone, never on how far ahead a loader prefetches. Yields whole batches: use ``DataLoader(batch_size=None)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, seed: int,
                 hflip: bool = False):
        if batch_size > images.shape[0]:
            raise ValueError(f"batch_size={batch_size} is larger than the {images.shape[0]} training images")
        self.images, self.labels = images, labels
        self.steps, self.batch_size, self.seed, self.hflip = int(steps), int(batch_size), int(seed), bool(hflip)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        n, bs = self.images.shape[0], self.batch_size
        order = torch.randperm(n, generator=gen)
        for step in range(self.steps):
            idx = order[(step * bs) % n:][:bs]
            if idx.numel() < bs:  # the permutation is used up: next epoch
                order = torch.randperm(n, generator=gen)
                idx = order[:bs]
            flip = torch.rand(bs, generator=gen) < 0.5 if self.hflip else torch.zeros(bs, dtype=torch.bool)
            yield self.images[idx], self.labels[idx], flip
