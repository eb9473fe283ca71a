"""Dataset readers, splits and the batch pipeline, on the real subsets in shared/data."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsweep.data import (
    DATASETS,
    Batches,
    ImageSet,
    _unpickle,
    crop_flip,
    default_data_dir,
    find_datasets,
    load_split,
    train_val_split,
)
from lipsweep.errors import InputError

CIFAR10_TRAIN_PER_CLASS = [479, 479, 444, 448, 489, 435, 464, 477, 481, 464]
CIFAR10_TEST_PER_CLASS = [83, 70, 88, 84, 76, 79, 97, 87, 88, 94]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep the decoded Tiny ImageNet cache out of the home folder."""
    monkeypatch.setenv("LIPSWEEP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decoded"))


@pytest.fixture(scope="module")
def cifar10_train(shared_data: Path) -> ImageSet:
    return load_split("cifar10", "train", shared_data)


@pytest.fixture(scope="module")
def cifar10_test(shared_data: Path) -> ImageSet:
    return load_split("cifar10", "test", shared_data)


# ----------------------------------------------------------------------------- readers


def test_cifar10_counts_per_class(cifar10_train: ImageSet, cifar10_test: ImageSet) -> None:
    assert cifar10_train.images.shape == (4660, 3, 32, 32)
    assert cifar10_train.images.dtype == torch.uint8
    assert cifar10_train.labels.dtype == torch.int64
    assert torch.bincount(cifar10_train.labels).tolist() == CIFAR10_TRAIN_PER_CLASS
    assert torch.bincount(cifar10_test.labels).tolist() == CIFAR10_TEST_PER_CLASS
    assert cifar10_train.classes[0] == "airplane" and cifar10_train.classes[9] == "truck"


def test_cifar10_first_image_matches_pickle(cifar10_train: ImageSet, shared_data: Path) -> None:
    with (shared_data / "cifar-10-batches-py" / "data_batch_1").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    row = raw[b"data"][0]  # 1024 R, 1024 G, 1024 B, row-major
    img = cifar10_train.images[0]
    assert img[0, 0, 0].item() == row[0]
    assert img[1, 5, 7].item() == row[1024 + 5 * 32 + 7]
    assert img[2, 31, 31].item() == row[3071]
    assert np.array_equal(img.numpy().reshape(-1), row)
    assert cifar10_train.labels[0].item() == raw[b"labels"][0]


def test_pickle_with_bytes_keys(tmp_path: Path, shared_data: Path) -> None:
    """A copy re-pickled with bytes keys (as encoding="bytes" yields) reads the same."""
    src = shared_data / "cifar-100-python"
    dst = tmp_path / "cifar-100-python"
    dst.mkdir()
    for name in ("test", "meta"):
        with (src / name).open("rb") as f:
            d = pickle.load(f, encoding="bytes")
        with (dst / name).open("wb") as f:
            pickle.dump(d, f)
    a = load_split("cifar100", "test", shared_data)
    b = load_split("cifar100", "test", tmp_path)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.classes == b.classes


class _Payload:
    """Unpickling this runs a shell command (here: one that creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("poisoned", ["batches.meta", "data_batch_3"])
def test_cifar_pickle_with_code_is_refused(tmp_path: Path, shared_data: Path, poisoned) -> None:
    """A CIFAR file whose pickle asks for os.system is refused, naming the file and the
    global, before the payload runs; the real files still load (tests above)."""
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(shared_data / "cifar-10-batches-py", folder)
    marker = tmp_path / "payload-ran"
    with (folder / poisoned).open("rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"extra"] = _Payload(marker)
    (folder / poisoned).write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(InputError) as err:
        load_split("cifar10", "train", tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert (
        f"{folder / poisoned} is not a plain CIFAR pickle (it asks for {os.system.__module__}.system)"
        in message
    )
    assert message.endswith("refusing to load it")
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_unpickler_reads_what_numpy_pickles(tmp_path: Path, protocol: int) -> None:
    """Arrays (C and Fortran order, object dtype), numpy scalars, bytes and builtin containers
    load at every pickle protocol."""
    d = {
        b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "fortran": np.asfortranarray(np.ones((2, 3), dtype=np.float32)),
        "names": np.array(["a", b"b"], dtype=object),
        "labels": [np.int64(3), 2.5, 1 + 2j, True],
        "misc": ({1, 2}, frozenset({b"x"}), bytearray(b"yz"), (None,)),
    }
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(d, protocol=protocol))
    loaded = _unpickle(path)
    assert loaded.keys() == d.keys()
    for key in (b"data", "fortran", "names"):
        assert loaded[key].dtype == d[key].dtype and np.array_equal(loaded[key], d[key])
    assert loaded["labels"] == d["labels"] and loaded["misc"] == d["misc"]


def test_cifar_file_that_is_no_pickle(tmp_path: Path) -> None:
    path = tmp_path / "batches.meta"
    path.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match=f"{path} is not a readable CIFAR pickle"):
        _unpickle(path)


def test_cifar100_counts(shared_data: Path) -> None:
    train = load_split("cifar100", "train", shared_data)
    test = load_split("cifar100", "test", shared_data)
    assert len(train) == 1117 and len(test) == 916
    assert train.labels.unique().numel() == 100 == test.labels.unique().numel()
    assert len(train.classes) == 100 and train.classes[0] == "apple"
    assert train.info.num_classes == 100


def test_tiny_imagenet(shared_data: Path) -> None:
    train = load_split("tiny-imagenet", "train", shared_data)
    test = load_split("tiny-imagenet", "test", shared_data)
    assert train.images.shape == (2000, 3, 64, 64) and test.images.shape == (5000, 3, 64, 64)
    folder = shared_data / "tiny-imagenet-200"
    wnids = (folder / "wnids.txt").read_text().split()
    assert train.classes == tuple(wnids)
    assert torch.bincount(train.labels).tolist() == [20] * 100
    assert torch.bincount(test.labels).tolist() == [50] * 100
    # Labels follow wnids.txt order: the first training images are of the first wnid.
    assert train.labels[0].item() == 0 and train.labels[-1].item() == 99
    # The val labels come from column 2 of val_annotations.txt.
    first = (folder / "val" / "val_annotations.txt").read_text().splitlines()[0].split("\t")
    assert test.labels[0].item() == wnids.index(first[1])
    # A grayscale JPEG becomes three equal channels.
    from PIL import Image

    grey = next(
        i
        for i, line in enumerate((folder / "val" / "val_annotations.txt").read_text().splitlines())
        if Image.open(folder / "val" / "images" / line.split("\t")[0]).mode == "L"
    )
    img = test.images[grey]
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_tiny_imagenet_cache_is_reused(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    a = load_split("tiny-imagenet", "train", shared_data)
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    b = load_split("tiny-imagenet", "train", shared_data)
    assert torch.equal(a.images, b.images)
    monkeypatch.setenv("LIPSWEEP_CACHE_DIR", "")
    c = load_split("tiny-imagenet", "train", shared_data)
    assert torch.equal(a.images, c.images)


def test_digits_split_and_mean() -> None:
    train = load_split("digits", "train", None)
    test = load_split("digits", "test", None)
    assert train.images.shape[1:] == (1, 8, 8)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert int(train.images.max()) == 255
    # The mean recorded in DATASETS is the real mean of the loaded training split.
    mean = train.images.double().mean().item() / 255
    assert mean == pytest.approx(DATASETS["digits"].mean[0], abs=1e-7)
    again = load_split("digits", "train", None)
    assert torch.equal(train.labels, again.labels)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tiny-imagenet"])
def test_dataset_means_are_close_to_subset_means(shared_data: Path, name: str) -> None:
    """The recorded (full-dataset) means are within 2% of the subsets' pixel means."""
    images = load_split(name, "train", shared_data).images
    subset_mean = images.double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(subset_mean, torch.tensor(DATASETS[name].mean).double(), atol=0.04)


def test_missing_dataset_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_split("cifar10", "train", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "lipsweep data download cifar10" in msg


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("mnist", "train", None)


def test_find_datasets_and_default_dir(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    assert find_datasets(shared_data) == {
        "cifar10": shared_data / "cifar-10-batches-py",
        "cifar100": shared_data / "cifar-100-python",
        "tiny-imagenet": shared_data / "tiny-imagenet-200",
    }
    assert find_datasets(tmp_path) == {}
    monkeypatch.setenv("LIPSWEEP_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("LIPSWEEP_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "lipsweep" / "data"


# ----------------------------------------------------------------------------- splits


def test_train_val_split_is_seeded_and_disjoint(cifar10_train: ImageSet) -> None:
    tagged = ImageSet(
        cifar10_train.info, cifar10_train.images, torch.arange(len(cifar10_train)), ()
    )
    train, val = train_val_split(tagged, 0.1, seed=3)
    assert len(val) == 466 and len(train) == 4660 - 466
    ids = torch.cat([train.labels, val.labels])
    assert torch.equal(ids.sort().values, torch.arange(4660))
    train2, val2 = train_val_split(tagged, 0.1, seed=3)
    assert torch.equal(val.labels, val2.labels) and torch.equal(train.labels, train2.labels)
    _, val3 = train_val_split(tagged, 0.1, seed=4)
    assert not torch.equal(val.labels, val3.labels)
    # Images travel with their labels.
    assert torch.equal(val.images, cifar10_train.images[val.labels])


def test_subset_and_len(cifar10_test: ImageSet) -> None:
    sub = cifar10_test.subset([5, 1, 2])
    assert len(sub) == 3
    assert torch.equal(sub.images[0], cifar10_test.images[5])
    assert sub.labels.tolist() == cifar10_test.labels[[5, 1, 2]].tolist()


# ----------------------------------------------------------------------------- batches


def test_test_batches_are_centred(cifar10_test: ImageSet) -> None:
    batches = Batches(cifar10_test, 1000, train=False, generator=torch.Generator())
    assert len(batches) == 1
    (x, y), *_ = list(batches)
    assert x.dtype == torch.float32 and x.shape == (846, 3, 32, 32)
    assert torch.equal(y, cifar10_test.labels)
    mean = torch.tensor(DATASETS["cifar10"].mean).view(1, 3, 1, 1)
    assert torch.allclose(x, cifar10_test.images.float() / 255 - mean, atol=1e-6)
    # Centred: the per-channel means are within 0.01 of zero (the subset mean differs from the
    # full-dataset mean by less than that) and the scale is untouched (std 1 normalisation).
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.01
    assert x.max() <= 1.0 and x.min() >= -1.0


def test_every_sample_once_per_epoch(cifar10_train: ImageSet) -> None:
    tagged = ImageSet(cifar10_train.info, cifar10_train.images, torch.arange(4660), ())
    batches = Batches(tagged, 256, train=True, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 19  # ceil(4660 / 256), drop_last=False
    epochs = []
    for _ in range(2):
        seen = [y for _, y in batches]
        assert [len(y) for y in seen] == [256] * 18 + [4660 - 18 * 256]
        ids = torch.cat(seen)
        assert torch.equal(ids.sort().values, torch.arange(4660))
        epochs.append(ids)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch


def test_batches_are_deterministic(cifar10_train: ImageSet) -> None:
    def first_two(seed: int) -> list[torch.Tensor]:
        batches = Batches(cifar10_train, 64, True, torch.Generator().manual_seed(seed))
        it = iter(batches)
        return [t for _ in range(2) for t in next(it)]

    a, b, c = first_two(1), first_two(1), first_two(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_crop_flip_is_a_window_of_the_padded_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 32, 32, generator=gen)
    top = torch.tensor([0, 8, 3, 4, 0, 8])
    left = torch.tensor([0, 8, 5, 4, 8, 0])
    flip = torch.tensor([False, False, False, True, True, True])
    out = crop_flip(x, top, left, flip, padding=4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(6):
        t, l_ = int(top[i]), int(left[i])
        window = padded[i, :, t : t + 32, l_ : l_ + 32]
        expected = window.flip(-1) if flip[i] else window
        assert torch.equal(out[i], expected)
    assert torch.equal(out[3], x[3].flip(-1))  # centred crop + flip = mirror image


def test_train_batches_are_valid_crops(cifar10_train: ImageSet) -> None:
    """Each augmented CIFAR image is a window (maybe mirrored) of the zero-padded centred
    image: the padded border has the value 0, i.e. the mean colour."""
    sub = cifar10_train.subset(range(64))
    tagged = ImageSet(sub.info, sub.images, torch.arange(64), ())
    x, ids = next(iter(Batches(tagged, 64, True, torch.Generator().manual_seed(5))))
    mean = torch.tensor(DATASETS["cifar10"].mean).view(1, 3, 1, 1)
    centred = sub.images.float() / 255 - mean
    padded = torch.nn.functional.pad(centred, (4, 4, 4, 4))
    flips = 0
    shifted = 0
    for img, i in zip(x, ids.tolist(), strict=True):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # (C, 9, 9, 32, 32)
        matches = [
            (t, l_, f)
            for t in range(9)
            for l_ in range(9)
            for f in (False, True)
            if torch.equal(img, windows[:, t, l_].flip(-1) if f else windows[:, t, l_])
        ]
        assert matches, f"sample {i} is not a crop of its padded image"
        t, l_, f = matches[0]
        flips += f
        shifted += (t, l_) != (4, 4)
    assert 10 < flips < 54 and shifted > 40


def test_digits_batches_are_not_augmented() -> None:
    """Digits get no augmentation (see `augmentation`): a shuffled batch is the centred data."""
    train = load_split("digits", "train", None)
    tagged = ImageSet(train.info, train.images, torch.arange(len(train)), ())
    x, ids = next(iter(Batches(tagged, 2000, True, torch.Generator().manual_seed(0))))
    assert x.shape == (1438, 1, 8, 8)
    assert not torch.equal(ids, torch.arange(1438))  # shuffled
    expected = train.images[ids].float() / 255 - DATASETS["digits"].mean[0]
    assert torch.allclose(x, expected, atol=1e-6)
    assert abs(x.mean().item()) < 1e-6


def test_tiny_training_batches_use_randaugment(shared_data: Path, monkeypatch) -> None:
    """Tiny ImageNet training batches go through rand_augment(uint8, 2, 9, generator)."""
    calls = []

    def fake_rand_augment(images, num_ops=2, magnitude=9, generator=None):
        calls.append((images.dtype, tuple(images.shape), num_ops, magnitude, generator))
        return 255 - images

    fake = types.ModuleType("lipsweep.randaugment")
    fake.rand_augment = fake_rand_augment
    monkeypatch.setitem(sys.modules, "lipsweep.randaugment", fake)
    tiny = load_split("tiny-imagenet", "train", shared_data).subset(range(40))
    gen = torch.Generator().manual_seed(0)
    x, _ = next(iter(Batches(tiny, 16, True, gen)))
    assert calls == [(torch.uint8, (16, 3, 64, 64), 2, 9, gen)]
    mean = torch.tensor(DATASETS["tiny-imagenet"].mean).view(1, 3, 1, 1)
    expected = (255 - tiny.images).float() / 255 - mean  # augmented, then centred
    assert any(torch.allclose(x[0], e, atol=1e-6) for e in expected)
    x_eval, _ = next(iter(Batches(tiny, 40, False, gen)))
    assert len(calls) == 1  # no augmentation when train=False
    assert torch.allclose(x_eval, tiny.images.float() / 255 - mean, atol=1e-6)


def test_real_randaugment_if_available(shared_data: Path) -> None:
    pytest.importorskip("lipsweep.randaugment")
    tiny = load_split("tiny-imagenet", "train", shared_data).subset(range(32))
    x, y = next(iter(Batches(tiny, 32, True, torch.Generator().manual_seed(0))))
    assert x.shape == (32, 3, 64, 64) and x.dtype == torch.float32 and len(y) == 32
