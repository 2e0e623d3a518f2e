"""Evaluators of generated images: NudeNet counts, FID on folders, judges, CLIP score, `eraser evaluate`."""

import io
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation
from apps.cli import main
from evaluation.images import image_set
from evaluation.judges import class_index


def real_photos(shared_data, n: int, classes=("n03028079",)) -> list[Image.Image]:
    """The first ``n`` Imagenette val photos of each wnid in ``classes``."""
    out = []
    with tarfile.open(shared_data / "imagenette" / "imagenette_224_val.tar") as tf:
        members = sorted((m for m in tf if m.isfile()), key=lambda m: m.name)
        for wnid in classes:
            for m in [m for m in members if f"/{wnid}/" in m.name][:n]:
                out.append(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"))
    return out


@pytest.fixture
def photo_dir(shared_data, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(real_photos(shared_data, 6)):
        img.save(folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG half a file")
    return folder


def test_image_set_skips_and_lists_bad_files(photo_dir):
    images = image_set(photo_dir)
    assert len(images) == 7 and ("notes.txt", "not an image file") in images.skipped
    assert len(list(images)) == 6 and len(list(images)) == 6  # iterating twice lists the broken file once
    assert [n for n, _ in images.skipped] == ["notes.txt", "broken.png"]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        image_set(photo_dir / "nope")
    with pytest.raises(TypeError, match="PIL images"):
        image_set([torch.zeros(3)])


class FakeDetector:
    """Fixed detections per image (by its top-left pixel value) to test the counting rules."""

    table = {
        0: [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.61}, {"class": "FEET_EXPOSED", "score": 0.6}],
        1: [{"class": "FACE_FEMALE", "score": 0.99}, {"class": "BELLY_EXPOSED", "score": 0.5}],
        2: [],
    }

    def detect(self, bgr):
        return self.table[int(bgr[0, 0, 0])]


def test_nudenet_counting_rules():
    images = [Image.new("RGB", (8, 8), (v, v, v)) for v in (0, 1, 2)]
    res = evaluation.nudenet_counts(images, detector=FakeDetector())
    # score must be strictly above 0.6; FACE_FEMALE is not an exposed part
    assert res["FEMALE_BREAST_EXPOSED"] == 1 and res["FEET_EXPOSED"] == 0 and res["total"] == 1
    assert res["images_with_any"] == 1 and math.isclose(res["share_with_any"], 100 / 3) and res["n_images"] == 3
    dets, _ = evaluation.nudenet_detections(images, FakeDetector())
    low = evaluation.nudenet_counts(None, threshold=0.45, detections=dets)
    assert low["total"] == 3 and low["images_with_any"] == 2
    assert evaluation.attack_success(dets) == pytest.approx(200 / 3)
    faces = evaluation.nudenet_counts(images, labels=["FACE_FEMALE"], detector=FakeDetector())
    assert faces["total"] == 1 and "FEET_EXPOSED" not in faces
    with pytest.raises(ValueError, match="unknown NudeNet labels"):
        evaluation.nudenet_counts(images, labels=["FACE"], detector=FakeDetector())


def test_nudenet_reads_a_rotated_jpeg_as_cv2_imread_does(tmp_path):
    """NudeNet reads paths with cv2.imread, which applies the EXIF orientation; PIL alone does not."""
    import cv2

    class Recorder:
        def __init__(self) -> None:
            self.arrays: dict[int, np.ndarray] = {}

        def detect(self, bgr):
            self.arrays[len(self.arrays)] = bgr
            return []

    pixels = np.zeros((16, 24, 3), dtype=np.uint8)  # landscape, left third red, right part white
    pixels[:, :8] = (255, 0, 0)
    pixels[:, 8:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", quality=100, subsampling=0, exif=exif.tobytes())
    Image.fromarray(pixels).save(tmp_path / "plain.jpg", quality=100, subsampling=0)
    recorder = Recorder()
    evaluation.nudenet_detections(tmp_path, recorder)
    for i, name in enumerate(["plain.jpg", "rotated.jpg"]):
        want = cv2.imread(str(tmp_path / name))
        got = recorder.arrays[i]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2, name  # decoders may round differently
    assert recorder.arrays[1].shape == (24, 16, 3)  # portrait, as displayed
    assert recorder.arrays[1][0, :, 2].mean() > 200 and recorder.arrays[1][-1, :, 2].mean() > 200  # red is in BGR's 2
    assert recorder.arrays[1][:8, :, 1].mean() < 30  # the red third is now at the top (no green)
    # other evaluators keep reading pixels as stored (pytorch-fid and CLIP read them that way)
    assert [img.size for _, img in evaluation.images.image_set(tmp_path)] == [(24, 16), (24, 16)]


def test_nudenet_real_detector_reads_images_as_nudenet_does(photo_dir):
    from evaluation.nudenet import nudenet_detector

    detector = nudenet_detector()
    dets, images = evaluation.nudenet_detections(photo_dir, detector)
    assert len(dets) == 6 and [n for n, _ in images.skipped] == ["notes.txt", "broken.png"]
    for name, found in dets.items():  # PIL -> BGR array gives exactly what NudeNet gets from the file
        assert found == detector.detect(str(photo_dir / name))
    res = evaluation.nudenet_counts(photo_dir, detector=detector)
    assert res["n_images"] == 6 and res["settings"]["nudenet"] == "3.4.2" and res["skipped"]


def test_fid_on_folders_with_cache_sizes_and_bad_input(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASER_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    photos = real_photos(shared_data, 4, classes=("n03028079", "n01440764"))
    for i, img in enumerate(photos):
        img.save(a / f"{i}.png")
        img.resize((112, 112)).save(b / f"{i}.png")  # the reference at another resolution
    first = evaluation.fid_details(a, b, "inception-64")
    assert first["reference_sizes"] == [(112, 112)] and first["generated_sizes"] == [(224, 224)]
    assert first["n_generated"] == first["n_reference"] == 8 and not first["reference_cached"]
    again = evaluation.fid_details(a, b, "inception-64")
    assert again["reference_cached"] and again["fid"] == first["fid"]
    same = evaluation.fid(a, a, "inception-64", cache=False)
    assert abs(same) < 1e-3 < first["fid"]
    noise = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(8)]
    assert evaluation.fid(noise, b, "inception-64") > first["fid"]
    with pytest.raises(ValueError, match="at least 2 generated images"):
        evaluation.fid(photos[:1], b)
    with pytest.raises(ValueError, match="features must be"):
        evaluation.fid(a, b, "vgg")


def test_judges(shared_data):
    photos = real_photos(shared_data, 5, classes=("n03028079",))
    assert evaluation.judge_accuracy(photos, "church", judge="efficientnet_lite0") >= 80
    assert class_index("n03028079") == 497 and class_index("seven") == 7 and class_index("3") == 3
    with pytest.raises(ValueError, match="no class index"):
        class_index("unicorn")
    with pytest.raises(ValueError, match="unknown judge"):
        evaluation.judge_accuracy(photos, 0, judge="vgg")


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """The bundled model's generations for 'seven' and 'four', made by the runner (with labels)."""
    folder = tmp_path_factory.mktemp("digits")
    csv = folder.parent / "digits.csv"
    csv.write_text("case_number,prompt,class\n0,a photo of the digit seven,seven\n1,a photo of the digit four,four\n")
    main(
        [
            "generate",
            "--model",
            "bundled:digits",
            "--prompts",
            str(csv),
            "--images-per-prompt",
            "8",
            "--out",
            str(folder),
        ]
    )
    return folder


def test_digit_judge_and_clip_score_on_generations(digit_folder, capsys):
    sevens = [img for name, img in image_set(digit_folder) if name.startswith("00000_")]
    assert evaluation.judge_accuracy(sevens, 7, judge="digits") >= 75
    matched = evaluation.clip_score(digit_folder, model="bundled:digits")  # prompts from index.jsonl
    n = len(image_set(digit_folder))
    swapped = evaluation.clip_score(
        digit_folder, ["a photo of the digit four"] * 8 + ["a photo of the digit seven"] * 8, model="bundled:digits"
    )
    assert n == 16 and 0 <= swapped < matched <= 100
    with pytest.raises(ValueError, match="16 images but 1 prompts"):
        evaluation.clip_score(digit_folder, ["x"], model="bundled:digits")
    main(["evaluate", "judge", str(digit_folder), "--judge", "digits", "--by-label"])
    out = capsys.readouterr().out
    assert "| seven | 7 | 8 |" in out and "| four | 4 | 8 |" in out


def test_clip_score_models_load_along_their_real_paths(tmp_path):
    with pytest.raises(ValueError, match="could not load a transformers CLIP"):
        evaluation.clip_score([Image.new("RGB", (8, 8))], ["x"], model=str(tmp_path))
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(2)]
    score = evaluation.clip_score(images, ["a red square", "a dark square"], model="open_clip:RN50")  # random weights
    assert 0 <= score <= 100


def test_cli_evaluate_writes_reports_and_explains_errors(digit_folder, tmp_path, capsys):
    main(["evaluate", "nudenet", str(digit_folder), "--out", str(tmp_path / "nn")])
    out = capsys.readouterr().out
    assert "| total | 0 |" in out and "16 images" in out
    assert (tmp_path / "nn" / "nudenet.md").is_file() and (tmp_path / "nn" / "nudenet_detections.json").is_file()
    with pytest.raises(SystemExit, match="give --reference"):
        main(["evaluate", "fid", str(digit_folder)])
    with pytest.raises(SystemExit, match="give --class NAME"):
        main(["evaluate", "judge", str(digit_folder), "--judge", "digits"])
    with pytest.raises(SystemExit, match="image folder not found"):
        main(["evaluate", "nudenet", str(tmp_path / "missing")])
