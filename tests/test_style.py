"""The tree passes the linter and formatter configured in pyproject.toml ([tool.ruff])."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
    except FileNotFoundError as err:  # pragma: no cover - the dev extras install ruff
        raise AssertionError("ruff is not installed: pip install -e '.[dev]'") from err


def test_ruff_check_passes():
    out = _ruff("check", ".")
    assert "No module named ruff" not in out.stderr, "ruff is not installed: pip install -e '.[dev]'"
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_ruff_format_is_applied():
    out = _ruff("format", "--check", ".")
    assert "No module named ruff" not in out.stderr, "ruff is not installed: pip install -e '.[dev]'"
    assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout[-4000:] + out.stderr[-2000:]
