import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("ERASER_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def launch_two_processes(cli_args: list[str], timeout: int = 600):
    """``accelerate launch --multi_gpu --num_processes 2 -m apps.cli ...`` (torchrun; gloo on CPU)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")
    return subprocess.run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "apps.cli",
            *cli_args,
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The library's disk caches (FID statistics, concept-bank features) in a folder of this test
    session, never the user's ~/.cache."""
    import os

    from eraser.hashing import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("eraser-cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture
def shared_data() -> Path:
    """The read-only real data beside the project (see ../shared/data/README.md)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


class TinyNet(torch.nn.Module):
    """A small conv classifier: features -> ``head`` (10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(torch.relu(self.body(x)))


@pytest.fixture
def tiny():
    return TinyNet()


@pytest.fixture
def images():
    return torch.randn(24, 3, 8, 8)


class ToyCNN(torch.nn.Module):
    """A small CNN for 1x8x8 inputs and 4 classes, with BatchNorm (as real classifiers have)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 4 * 4, 32)
        self.head = torch.nn.Linear(32, classes)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(torch.relu(self.fc(x.flatten(1))))


def toy_data(n_per_class: int, seed: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable 1x8x8 images: each class a fixed random pattern plus noise."""
    g = torch.Generator().manual_seed(1234)
    patterns = torch.randn(classes, 1, 8, 8, generator=g)
    g.manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = patterns[y] + 1.6 * torch.randn(len(y), 1, 8, 8, generator=g)
    return x, y


@pytest.fixture(scope="session")
def toy_task():
    """A trained ToyCNN and its data split for forgetting class 0: dict of model state, forget,
    retain and test (inputs, labels) pairs. Copy the state into a fresh ToyCNN per test."""
    from eraser.methods.finetune import RetainCE
    from eraser.training import TrainConfig, fit

    torch.manual_seed(0)
    x, y = toy_data(60, seed=1)
    xt, yt = toy_data(30, seed=2)
    model = ToyCNN()
    fit(model, RetainCE(), {"retain": (x, y)}, TrainConfig(epochs=6, lr=0.05, batch_size=32))
    f = y == 0
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "forget": (x[f], y[f]),
        "retain": (x[~f], y[~f]),
        "test": (xt[yt != 0], yt[yt != 0]),
        "test_forget": (xt[yt == 0], yt[yt == 0]),
    }


@pytest.fixture
def toy_model(toy_task):
    model = ToyCNN()
    model.load_state_dict(toy_task["state"])
    return model


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state, to check later that it is bit for bit the same."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    now = module.state_dict()
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)
