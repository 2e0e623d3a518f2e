import json
import subprocess
import sys

import pytest
import torch

import eraser
from apps.cli import main


def test_methods_lists_unlink(capsys):
    main(["methods"])
    assert "unlink" in capsys.readouterr().out


def test_patch_info_reads_a_saved_patch(tiny, images, tmp_path, capsys):
    path = eraser.erase_classes(tiny, images, k=1, names=["cat"]).save(tmp_path / "p.safetensors")
    main(["patch-info", str(path)])
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["names"] == ["cat"] and info["layers"]["head"]["rank"] == 1


def test_patch_info_on_a_bad_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a patch")
    with pytest.raises(SystemExit, match="not a readable erasure patch"):
        main(["patch-info", str(bad)])


def test_demo_without_data_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="--data DIR"):
        main(["demo", "--data", str(tmp_path)])


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "apps.cli", "methods"], capture_output=True, text=True, check=True)
    assert "unlink" in out.stdout


@pytest.mark.slow
def test_demo_on_real_data(shared_data, capsys):
    main(["demo", "--data", str(shared_data), "--val-per-class", "10", "--forget", "50"])
    out = capsys.readouterr().out
    assert "UA (erased class no longer top-1)" in out
