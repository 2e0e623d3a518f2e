import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("ERASER_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
