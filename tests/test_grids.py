"""Image grids (evaluation/grids.py): row labels keep their spaces and wrap inside their column."""

import numpy as np
import pytest
from PIL import Image

from evaluation.grids import LABEL_W, save_image_grid


def _grid(tmp_path, labels, cols=None):
    cells = [Image.new("L", (32, 32), 128)] * 2
    path = save_image_grid([cells] * len(labels), tmp_path / "g.png", row_labels=labels, col_labels=cols)
    return np.asarray(Image.open(path).convert("L"))


def _blank_runs(ink_columns: np.ndarray) -> list[int]:
    """Widths of the runs of ink-free columns between the first and the last inked column."""
    xs = np.flatnonzero(ink_columns)
    runs, run = [], 0
    for x in range(xs[0], xs[-1] + 1):
        if ink_columns[x]:
            if run:
                runs.append(run)
            run = 0
        else:
            run += 1
    return runs


def test_row_label_keeps_its_spaces(tmp_path):
    """The label drawn in one string with Pillow's default font read "a photoof the digitseven":
    its spaces were 2 pixels, as narrow as the gaps between letters. Each space must show as a gap
    wider than any gap inside a word."""
    label = "a photo of the digit seven"
    pixels = _grid(tmp_path, [label])
    ink = pixels[:, :LABEL_W] < 128
    runs = _blank_runs(ink.any(0))
    word_gaps = [r for r in runs if r >= 4]
    assert len(word_gaps) == label.count(" "), runs


def test_long_row_labels_wrap_inside_the_label_column(tmp_path):
    long = "a black and white picture of a handwritten seven next to a handwritten one " * 3
    pixels = _grid(tmp_path, [long, "七 digit"], cols=["original 0", "erased 0"])
    left = LABEL_W
    label_area = pixels[:, :left] < 128
    rows_with_ink = np.flatnonzero(label_area[:, : left - 4].any(1))
    assert rows_with_ink.size and rows_with_ink[-1] - rows_with_ink[0] > 40  # several lines, not one
    assert not label_area[:, left - 4:].any()  # nothing spills over the column's right edge


def test_wrap_words_keeps_every_word_in_order():
    from evaluation.grids import wrap_words

    measure = len  # one unit per character
    text = "a photo of  the digit\tseven supercalifragilistic"
    lines = wrap_words(text, 10, measure, gap=1)
    assert [" ".join(line) for line in lines] == ["a photo of", "the digit", "seven", "supercalif", "ragilistic"]
    assert all(sum(map(measure, line)) + len(line) - 1 <= 10 for line in lines)
    assert "".join(w for line in lines for w in line) == "".join(text.split())
    assert wrap_words("", 10, measure, gap=1) == [] and wrap_words("one", 100, measure, gap=3) == [["one"]]


@pytest.mark.parametrize("labels", [None, ["a", "b"]])
def test_grid_size_does_not_depend_on_label_text(tmp_path, labels):
    cells = [Image.new("L", (32, 32))] * 3
    a = Image.open(save_image_grid([cells, cells], tmp_path / "a.png", row_labels=labels))
    if labels:
        b = Image.open(save_image_grid([cells, cells], tmp_path / "b.png", row_labels=["x " * 200, "y"]))
        assert a.size == b.size
    assert a.size[0] >= 3 * 96
