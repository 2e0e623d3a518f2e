"""Image grids (evaluation/grids.py): layout, row/column/cell labels (spaces kept, wrapped to fit), bad input."""

import numpy as np
import pytest
from PIL import Image

from evaluation.grids import LABEL_W, PAD, save_image_grid


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
    assert not label_area[:, left - 4 :].any()  # nothing spills over the column's right edge


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


def test_pad_background_and_no_upscaling(tmp_path):
    """``min_cell=0`` keeps the images' size; ``pad`` pixels of ``background`` surround every cell
    (the layout of torchvision's ``save_image(nrow=..., padding=2, pad_value=0.5)``)."""
    rows = [[Image.new("L", (32, 32), 255)] * 9, [Image.new("L", (32, 32), 0)] * 9]
    path = save_image_grid(rows, tmp_path / "g.png", min_cell=0, pad=2, background=(128, 128, 128))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (2 * 32 + 3 * 2, 9 * 32 + 10 * 2, 3)
    assert (pixels[:2] == 128).all() and (pixels[:, :2] == 128).all() and (pixels[34:36] == 128).all()
    assert (pixels[2:34, 2:34] == 255).all() and (pixels[36:68, 36:68] == 0).all()
    # with the default min_cell the same 32 px images are upscaled 3x
    with Image.open(save_image_grid(rows, tmp_path / "big.png", pad=2)) as im:
        assert im.size == (9 * 96 + 10 * 2, 2 * 96 + 3 * 2)


def test_cell_labels_tag_their_cells_only(tmp_path):
    grey = Image.new("L", (32, 32), 128)
    path = save_image_grid(
        [[grey, grey], [grey, grey]],
        tmp_path / "g.png",
        pad=2,
        cell_labels=[["y=0", ""], ["", "pred 1"]],
        col_labels=["a", "b"],
    )
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    top, cell, pad = 16, 96, 2

    def corner(r, c):
        y0, x0 = top + pad + r * (cell + pad), pad + c * (cell + pad)
        return pixels[y0 : y0 + 20, x0 : x0 + 60]

    for r, c in [(0, 0), (1, 1)]:  # a black box with (anti-aliased) white text in the corner
        box = corner(r, c)
        assert (box == 0).all(-1).sum() > 100 and (box > 160).all(-1).sum() > 10  # the cells are 128 grey
    for r, c in [(0, 1), (1, 0)]:  # an empty label draws nothing
        assert (corner(r, c) == 128).all()
    assert pixels.shape == (top + 2 * cell + 3 * pad, 2 * cell + 3 * pad, 3)


def test_a_long_single_word_title_keeps_its_head(tmp_path):
    """A column title of one word too long for its column is cut with "..." (not reduced to "...")."""
    cells = [Image.new("L", (32, 32), 255)] * 2
    path = save_image_grid([cells], tmp_path / "g.png", col_labels=["forget_vector_compose_with_retain", ""])
    title = np.asarray(Image.open(path).convert("L"))[:16] < 128
    inked = np.flatnonzero(title.any(0))
    assert inked.size and inked[-1] - inked[0] > 60  # most of the column, not a 10 px ellipsis
    assert inked[-1] < PAD + 96  # and nothing over the next column


@pytest.mark.parametrize(
    "bad",
    [
        dict(rows=[]),
        dict(row_labels=["only one"]),
        dict(col_labels=["a", "b", "c"]),
        dict(cell_labels=[["a", "b"]]),
        dict(cell_labels=[["a"], ["b"]]),
        dict(pad=-1),
        dict(min_cell=-1),
    ],
)
def test_bad_input_is_refused(tmp_path, bad):
    cells = [Image.new("L", (8, 8))] * 2
    kwargs = {"rows": [cells, cells], **bad}
    rows = kwargs.pop("rows")
    with pytest.raises(ValueError):
        save_image_grid(rows, tmp_path / "g.png", **kwargs)
    assert not (tmp_path / "g.png").exists()
