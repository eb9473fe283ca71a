"""Test-session setup shared by every test module."""

import os
from pathlib import Path

import pytest
import torch

# Tiny tensors on a 2-core machine: extra intra-op threads only spin (see MACHINE.md).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path:
    """The real data subsets: $LIPSWEEP_DATA if it holds CIFAR-10, else ../shared/data."""
    given = os.environ.get("LIPSWEEP_DATA")
    if given and (Path(given) / "cifar-10-batches-py").is_dir():
        return Path(given)
    return PROJECT_ROOT.parent / "shared" / "data"


SHARED_DATA = find_shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The small real subsets of CIFAR-10, CIFAR-100 and Tiny ImageNet (README: Tests)."""
    if not (SHARED_DATA / "cifar-10-batches-py").is_dir():
        pytest.skip(f"real data subsets not found at {SHARED_DATA}: set LIPSWEEP_DATA")
    return SHARED_DATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (~3 s and ~0.8 GiB each)."""
    import ray

    from lipsweep.ray_local import start_local_ray

    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()
