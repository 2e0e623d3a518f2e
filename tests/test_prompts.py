import pytest

from prompts import load_prompts


def test_i2p_rows_keep_seed_and_guidance(shared_data):
    rows = load_prompts(shared_data / "prompts/i2p_4703.csv")
    assert len(rows) == 4703
    assert all(r.seed is not None and r.guidance is not None for r in rows[:100])
    assert "categories" in rows[0].extra


def test_bom_header_is_read(shared_data):
    rows = load_prompts(shared_data / "prompts/imagenette_10.csv")
    assert len(rows) == 10 and rows[0].prompt == "Image of tench" and rows[0].seed == 4889
    assert set(rows[0].extra) == {"class", "classidx"}  # no "\ufeffcase_number" column


def test_missing_prompt_column(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("text,seed\nhello,1\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_prompts(p)


def test_bad_seed_names_the_row(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("prompt,evaluation_seed\nhello,1\nworld,abc\n")
    with pytest.raises(ValueError, match="row 3"):
        load_prompts(p)
