"""Datasets in their official on-disk formats, held in memory as uint8 tensors.

Readers for CIFAR-10 / CIFAR-100 ("python version" pickles), Tiny ImageNet (the folder of JPEGs;
the official ``val`` split is the test set) and scikit-learn's bundled ``digits``; a seeded
train/validation split; and :class:`Batches`, a whole-batch tensor pipeline doing the paper's
preprocessing (mean-centering only, CIFAR random crop + flip, Tiny ImageNet RandAugment).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lipsweep.errors import InputError


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the trainer need to know about a dataset."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]  # per-channel mean in [0, 1]; inputs are centred only (std 1)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.49139968, 0.48215841, 0.44653091)),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409)),
    "tiny-imagenet": DatasetInfo("tiny-imagenet", 200, 3, 64, (0.485, 0.456, 0.406)),
    # scikit-learn's bundled handwritten digits (8x8 grey, 16 levels): needs no download.
    # The mean is that of the seeded 80% training split loaded by `load_split`.
    "digits": DatasetInfo("digits", 10, 1, 8, (0.30565021,)),
}

# The folder each downloadable dataset unpacks to, directly below the data directory.
FOLDERS: dict[str, str] = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "tiny-imagenet": "tiny-imagenet-200",
}

Split = Literal["train", "test"]
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
CROP_PADDING = 4
RANDAUGMENT_OPS = 2
RANDAUGMENT_MAGNITUDE = 9


@dataclass(frozen=True)
class ImageSet:
    """One split of a dataset in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    info: DatasetInfo
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...] = ()  # class names (or WordNet ids) in label order, when known

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError("labels must be int64 with one entry per image")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Tensor | Sequence[int]) -> ImageSet:
        """The samples at `indices`, in that order (a copy)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageSet(self.info, self.images[idx], self.labels[idx], self.classes)


# ----------------------------------------------------------------------------- locations


def default_data_dir() -> Path:
    """Where datasets live: $LIPSWEEP_DATA, else ~/.cache/lipsweep/data."""
    env = os.environ.get("LIPSWEEP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lipsweep" / "data"


def default_cache_dir() -> Path | None:
    """Where decoded Tiny ImageNet arrays are cached: $LIPSWEEP_CACHE_DIR (empty: no cache),
    else ~/.cache/lipsweep/decoded."""
    env = os.environ.get("LIPSWEEP_CACHE_DIR")
    if env is not None:
        return Path(env).expanduser() if env else None
    return Path.home() / ".cache" / "lipsweep" / "decoded"


def find_datasets(data_dir: Path | None = None) -> dict[str, Path]:
    """The downloadable datasets present in `data_dir` (digits is built in and not listed)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return {name: root / folder for name, folder in FOLDERS.items() if (root / folder).is_dir()}


def dataset_folder(dataset: str, data_dir: Path | None = None) -> Path:
    """The folder of `dataset` in `data_dir`; a one-line FileNotFoundError if it is missing."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = root / FOLDERS[dataset]
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{dataset} not found: expected the folder {folder}; "
            f"fetch it with `lipsweep data download {dataset}` (or set LIPSWEEP_DATA)"
        )
    return folder


# ----------------------------------------------------------------------------- readers


def load_split(dataset: str, split: Split, data_dir: Path | None = None) -> ImageSet:
    """Read one split of `dataset` ("cifar10", "cifar100", "tiny-imagenet", "digits")."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset == "digits":
        return _load_digits(split)
    folder = dataset_folder(dataset, data_dir)
    if dataset == "cifar10":
        return _load_cifar10(folder, split)
    if dataset == "cifar100":
        return _load_cifar100(folder, split)
    return _load_tiny_imagenet(folder, split)


# What a CIFAR "python version" pickle may ask for: builtin containers and numbers (Python 2
# pickles name their module __builtin__), and what numpy (1.x: numpy.core, 2.x: numpy._core)
# pickles an array, a dtype or a scalar with. Anything else (os.system, builtins.eval, ...)
# could run code while loading.
_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int")
_NUMBERS = ("float", "complex", "bool")
_ALLOWED_GLOBALS = {
    *((module, name) for module in ("builtins", "__builtin__") for name in _BUILTINS + _NUMBERS),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
    *((f"numpy.{core}.multiarray", "scalar") for core in ("core", "_core")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


def _latin1_encode(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as protocol 0-2 pickles use it for bytes, for latin1 only."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only `_ALLOWED_GLOBALS` (and latin1 bytes); others: InputError."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in _ALLOWED_GLOBALS:
            raise InputError(
                f"{self.path} is not a plain CIFAR pickle (it asks for {module}.{name}): "
                "refusing to load it"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[Any, Any]:
    """A CIFAR pickle as a dict (latin1 decoding, as the files are Python 2 pickles), read with
    an unpickler that refuses any global but builtin containers, numbers and numpy arrays."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}: the dataset folder is incomplete")
    with path.open("rb") as f:
        try:
            loaded = _CifarUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError) as error:
            raise InputError(
                f"{path} is not a readable CIFAR pickle ({error}): download the dataset again"
            ) from None
    if not isinstance(loaded, dict):
        raise InputError(
            f"{path} holds a {type(loaded).__name__}, not a CIFAR dict: download the dataset again"
        )
    return loaded


def _field(d: dict[Any, Any], key: str) -> Any:
    """`d[key]` whether the pickle was loaded with str or bytes keys."""
    if key in d:
        return d[key]
    if key.encode() in d:
        return d[key.encode()]
    raise KeyError(f"field {key!r} not in pickle (keys: {list(d)})")


def _names(values: Sequence[str | bytes]) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _cifar_arrays(batches: list[dict[Any, Any]], label_key: str) -> tuple[Tensor, Tensor]:
    """Stack CIFAR batches into uint8 (N, 3, 32, 32) images and int64 labels."""
    images, labels = [], []
    for batch in batches:
        y = np.asarray(_field(batch, label_key), dtype=np.int64)
        x = np.asarray(_field(batch, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32)
        if len(x) != len(y):
            raise ValueError(f"CIFAR batch holds {len(x)} images but {len(y)} labels")
        images.append(x)
        labels.append(y)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _load_cifar10(folder: Path, split: Split) -> ImageSet:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = _cifar_arrays([_unpickle(folder / f) for f in files], "labels")
    classes = _names(_field(_unpickle(folder / "batches.meta"), "label_names"))
    return ImageSet(DATASETS["cifar10"], images, labels, classes)


def _load_cifar100(folder: Path, split: Split) -> ImageSet:
    images, labels = _cifar_arrays([_unpickle(folder / split)], "fine_labels")
    classes = _names(_field(_unpickle(folder / "meta"), "fine_label_names"))
    return ImageSet(DATASETS["cifar100"], images, labels, classes)


def _tiny_files(folder: Path, split: Split, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """The JPEG paths of a Tiny ImageNet split and their labels (index in wnids.txt)."""
    index = {w: i for i, w in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for i, wnid in enumerate(wnids):
            files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
            paths += files
            labels += [i] * len(files)
        return paths, labels
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"missing file {annotations}: the dataset folder is incomplete")
    for line in annotations.read_text().splitlines():
        if line.strip():
            name, wnid = line.split("\t")[:2]
            if wnid not in index:
                raise ValueError(f"{annotations}: class {wnid} of {name} is not in wnids.txt")
            paths.append(folder / "val" / "images" / name)
            labels.append(index[wnid])
    return paths, labels


def _decode_jpegs(paths: list[Path], size: int) -> np.ndarray:
    """Decode JPEGs to a uint8 (N, size, size, 3) array (grayscale converted to RGB)."""
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        if rgb.shape != out.shape[1:]:
            raise ValueError(f"{path}: expected a {size}x{size} image, got {rgb.shape[:2]}")
        out[i] = rgb
    return out


def _fingerprint(paths: list[Path]) -> str:
    """A key that changes when any file is renamed, resized or rewritten."""
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.absolute()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode_cached(paths: list[Path], size: int, cache_dir: Path | None) -> np.ndarray:
    """`_decode_jpegs`, reusing a .npy in `cache_dir` keyed by the files' fingerprint."""
    if cache_dir is None:
        return _decode_jpegs(paths, size)
    cached = cache_dir / f"tiny-imagenet-{_fingerprint(paths)}.npy"
    if cached.is_file():
        arr = np.load(cached)
        if arr.shape == (len(paths), size, size, 3) and arr.dtype == np.uint8:
            return arr
    arr = _decode_jpegs(paths, size)
    try:  # best effort: a read-only or full cache only costs the next load a decode
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, arr)
        os.replace(tmp, cached)
    except OSError:
        pass
    return arr


def _load_tiny_imagenet(folder: Path, split: Split) -> ImageSet:
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise FileNotFoundError(f"missing file {wnids_file}: the dataset folder is incomplete")
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    paths, labels = _tiny_files(folder, split, wnids)
    info = DATASETS["tiny-imagenet"]
    arr = _decode_cached(paths, info.image_size, default_cache_dir())
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    return ImageSet(info, images, torch.tensor(labels, dtype=torch.int64), tuple(wnids))


def _load_digits(split: Split) -> ImageSet:
    """scikit-learn's 8x8 digits (levels 0..16 scaled to 0..255), a seeded 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = round(DIGITS_TEST_FRACTION * len(labels))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    idx = idx.sort().values
    classes = tuple(str(c) for c in bunch.target_names)
    return ImageSet(DATASETS["digits"], images[idx], labels[idx], classes)


def train_val_split(
    train: ImageSet, val_fraction: float = 0.1, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Split a training set into disjoint (train, validation) parts, seeded (paper: 90/10)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * len(train)))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)


# ----------------------------------------------------------------------------- batches


def crop_flip(x: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Zero-pad `x` (B, C, H, W) by `padding`, take the H x W window at (top, left) of each
    image and mirror it horizontally where `flip`; one gather for the whole batch."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    width = w + 2 * padding
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(0), cols) + left[:, None]  # (B, W)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B, H)
    flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(b, 1, h * w)
    return padded.flatten(2).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)


def random_crop_flip(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """RandomCrop(size, padding) with zero padding + RandomHorizontalFlip(0.5) on a batch."""
    b = len(x)
    offsets = torch.randint(
        0, 2 * padding + 1, (2, b), generator=generator, device=generator.device
    ).to(x.device)
    flip = (torch.rand(b, generator=generator, device=generator.device) < 0.5).to(x.device)
    return crop_flip(x, offsets[0], offsets[1], flip, padding)


def augmentation(dataset: str) -> str:
    """The training augmentation of a dataset: "crop_flip", "randaugment" or "none".

    Digits get none: its 8x8 digits are not mirror-symmetric and a padded crop would cut off
    a large part of the glyph."""
    return {"cifar10": "crop_flip", "cifar100": "crop_flip", "tiny-imagenet": "randaugment"}.get(
        dataset, "none"
    )


class Batches:
    """Batches of (x float32 centred by the dataset mean, std 1; y int64), on `device`.

    With `train`, samples are shuffled each epoch with `generator` and augmented as in the
    paper; otherwise they come in order, unaugmented. The last batch may be short. Iteration is
    deterministic given the generator state.
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        train: bool,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.info = images.info
        self.batch_size = batch_size
        self.train = train
        self.generator = generator
        self.device = torch.device(device)
        self.augment = augmentation(images.info.name) if train else "none"
        # RandAugment runs on the CPU uint8 batch; everything else can live on the device.
        store = torch.device("cpu") if self.augment == "randaugment" else self.device
        self._images = images.images.to(store)
        self._labels = images.labels.to(self.device)
        self._mean = torch.tensor(images.info.mean, dtype=torch.float32, device=self.device)
        self._mean = self._mean.view(1, -1, 1, 1)

    def __len__(self) -> int:
        return math.ceil(len(self._labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self._labels)
        if self.train:
            order = torch.randperm(n, generator=self.generator, device=self.generator.device)
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            yield self._batch(order[start : start + self.batch_size])

    def _batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        x = self._images[idx.to(self._images.device)]
        if self.augment == "randaugment":
            from lipsweep.randaugment import rand_augment

            x = rand_augment(
                x,
                num_ops=RANDAUGMENT_OPS,
                magnitude=RANDAUGMENT_MAGNITUDE,
                generator=self.generator,
            )
        x = x.to(self.device, non_blocking=True).float().div_(255).sub_(self._mean)
        if self.augment == "crop_flip":
            x = random_crop_flip(x, CROP_PADDING, self.generator)
        return x, self._labels[idx.to(self.device)]
