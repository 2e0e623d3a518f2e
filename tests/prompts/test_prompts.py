import pytest

from prompts import (
    DEFAULT_TEMPLATES,
    IMAGENETTE_CLASSES,
    IMAGENETTE_TEMPLATE,
    NUDITY_WORDS,
    ImagenetteClass,
    expand_templates,
    get_preset,
    list_presets,
    load_prompts,
)

IMAGENETTE_NAMES = [c.name for c in IMAGENETTE_CLASSES]


def _csv(tmp_path, text, name="x.csv", **kw):
    p = tmp_path / name
    p.write_text(text, **kw)
    return p


# --- the shared prompt files -------------------------------------------------------------

SHARED_COUNTS = {
    "i2p_4703.csv": 4703,
    "nudity_142.csv": 142,
    "imagenette_10.csv": 10,
    "imagenette_100.csv": 100,
    "church_50.csv": 50,
    "garbage_truck_50.csv": 50,
    "parachute_50.csv": 50,
    "tench_50.csv": 50,
    "coco_10k.csv": 9969,
}


def test_every_shared_prompt_file_is_covered(shared_data):
    assert {p.name for p in (shared_data / "prompts").glob("*.csv")} == set(SHARED_COUNTS)


@pytest.mark.parametrize("name,count", SHARED_COUNTS.items())
def test_shared_file_loads_with_count_and_seeds(shared_data, name, count):
    rows = load_prompts(shared_data / "prompts" / name)
    assert len(rows) == count
    assert all(isinstance(r.seed, int) for r in rows)
    assert all(isinstance(r.case_number, int) for r in rows)
    assert sum(bool(r.prompt.strip()) for r in rows) >= count - 1  # i2p has one empty prompt
    for r in rows:  # index columns ("" / "Unnamed: 0") dropped, mapped columns not repeated in extra
        assert not {"", "Unnamed: 0", "prompt", "case_number", "evaluation_seed", "evaluation_guidance", "class"} & set(
            r.extra
        )


def test_i2p_rows_keep_seed_and_guidance(shared_data):
    rows = load_prompts(shared_data / "prompts/i2p_4703.csv")
    assert len(rows) == 4703
    assert all(r.seed is not None and r.guidance is not None for r in rows[:100])
    assert "categories" in rows[0].extra


def test_i2p_large_seeds_are_exact_ints(shared_data):
    rows = load_prompts(shared_data / "prompts/i2p_4703.csv")
    seeds = {r.seed for r in rows}
    assert 4261553411 in seeds and max(seeds) > 2**31
    assert (rows[0].case_number, rows[0].seed, rows[0].guidance) == (0, 4261553411, 13.0)
    assert all(type(r.guidance) is float for r in rows)
    assert set(rows[0].extra) >= {"categories", "hard", "lexica_url", "sd_model"}


def test_bom_header_is_read(shared_data):
    rows = load_prompts(shared_data / "prompts/imagenette_10.csv")
    assert len(rows) == 10 and rows[0].prompt == "Image of tench" and rows[0].seed == 4889
    assert set(rows[0].extra) == {"classidx"}  # "class" is now the label; no "\ufeffcase_number" column
    assert [r.case_number for r in rows] == list(range(10))


def test_imagenette_10_labels_are_the_classes_in_order(shared_data):
    rows = load_prompts(shared_data / "prompts/imagenette_10.csv")
    # the file spells the classes in lower case ("english springer")
    assert [r.label.casefold() for r in rows] == [n.casefold() for n in IMAGENETTE_NAMES]
    assert [int(r.extra["classidx"]) for r in rows] == list(range(10))
    assert [r.prompt.casefold() for r in rows] == [IMAGENETTE_TEMPLATE.format(n).casefold() for n in IMAGENETTE_NAMES]


def test_imagenette_100_labels_are_imagenette_classes(shared_data):
    rows = load_prompts(shared_data / "prompts/imagenette_100.csv")
    labels = [r.label.casefold() for r in rows]
    assert set(labels) == {n.casefold() for n in IMAGENETTE_NAMES}
    assert all(labels.count(n.casefold()) == 10 for n in IMAGENETTE_NAMES)
    assert all(r.label.casefold() in r.prompt.casefold() for r in rows)
    assert "" not in rows[0].extra and rows[0].extra == {}  # pandas index column dropped


def test_nudity_142_drops_unnamed_index_and_keeps_case_numbers(shared_data):
    rows = load_prompts(shared_data / "prompts/nudity_142.csv")
    assert "Unnamed: 0" not in rows[0].extra and "categories" in rows[0].extra
    assert all(r.guidance is not None for r in rows)
    assert len({r.case_number for r in rows}) == 142


def test_coco_case_numbers_parse_as_int(shared_data):
    rows = load_prompts(shared_data / "prompts/coco_10k.csv", limit=3)
    assert len(rows) == 3
    assert rows[0].case_number == 203564 and rows[0].seed == 41337
    assert rows[0].extra == {"source": "coco-30k"} and rows[0].guidance is None and rows[0].label is None


# --- column aliases and errors on small files ----------------------------------------------


def test_sd_seed_and_guidance_scale_aliases(tmp_path):
    p = _csv(tmp_path, "prompt,sd_seed,sd_guidance_scale,other\na cat,4261553411,7.5,x\n")
    (r,) = load_prompts(p)
    assert (r.prompt, r.seed, r.guidance, r.case_number, r.extra) == ("a cat", 4261553411, 7.5, 0, {"other": "x"})
    assert type(r.seed) is int


def test_seed_guidance_class_aliases(tmp_path):
    p = _csv(tmp_path, "seed,guidance,class,prompt\n3,5,dog,a dog\n4.0,,cat,a cat\n")
    rows = load_prompts(p)
    assert [(r.seed, r.guidance, r.label) for r in rows] == [(3, 5.0, "dog"), (4, None, "cat")]
    assert all(r.extra == {} for r in rows)


def test_first_present_alias_wins_and_others_go_to_extra(tmp_path):
    p = _csv(tmp_path, "prompt,seed,evaluation_seed,guidance_scale,label,concept\nx,1,2,3.5,l,c\n")
    (r,) = load_prompts(p)
    assert (r.seed, r.guidance, r.label) == (2, 3.5, "c")
    assert r.extra == {"seed": "1", "label": "l"}


def test_label_aliases_and_blank_label(tmp_path):
    assert load_prompts(_csv(tmp_path, "prompt,label\nx,church\n"))[0].label == "church"
    assert load_prompts(_csv(tmp_path, "prompt,concept\nx,nudity\n"))[0].label == "nudity"
    assert load_prompts(_csv(tmp_path, "prompt,class\nx,\n"))[0].label is None
    assert load_prompts(_csv(tmp_path, "prompt\nx\n"))[0].label is None


def test_index_columns_dropped_case_number_falls_back_to_row_index(tmp_path):
    p = _csv(tmp_path, ",Unnamed: 0,prompt,note\n5,7,a,n1\n6,8,b,n2\n")
    rows = load_prompts(p)
    assert [(r.prompt, r.case_number, r.extra) for r in rows] == [("a", 0, {"note": "n1"}), ("b", 1, {"note": "n2"})]


def test_blank_case_number_falls_back_and_limit(tmp_path):
    p = _csv(tmp_path, "case_number,prompt\n000000203564,a\n,b\n9,c\n")
    assert [r.case_number for r in load_prompts(p)] == [203564, 1, 9]
    assert [r.prompt for r in load_prompts(p, limit=2)] == ["a", "b"]
    assert load_prompts(p, limit=0) == []


def test_bom_with_alias_columns(tmp_path):
    p = _csv(tmp_path, "\ufeffsd_seed,text\n12,hello\n", encoding="utf-8")
    (r,) = load_prompts(p)
    assert (r.prompt, r.seed, r.extra) == ("hello", 12, {})


def test_default_prompt_column_order(tmp_path):
    assert load_prompts(_csv(tmp_path, "text,seed\nhello,1\n"))[0].prompt == "hello"
    (r,) = load_prompts(_csv(tmp_path, "caption,text\ncap,txt\n"))
    assert (r.prompt, r.extra) == ("txt", {"caption": "cap"})
    (r,) = load_prompts(_csv(tmp_path, "caption,prompt\ncap,pr\n"))
    assert (r.prompt, r.extra) == ("pr", {"caption": "cap"})


def test_explicit_column(tmp_path):
    p = _csv(tmp_path, "prompt,caption,seed\nthe prompt,the caption,3\n")
    (r,) = load_prompts(p, column="caption")
    assert (r.prompt, r.seed, r.extra) == ("the caption", 3, {"prompt": "the prompt"})
    (r,) = load_prompts(_csv(tmp_path, "sentence,seed\nhi,1\n"), column="sentence")
    assert r.prompt == "hi" and r.extra == {}


def test_explicit_column_missing_lists_columns(tmp_path):
    p = _csv(tmp_path, "prompt,seed\nhello,1\n")
    with pytest.raises(ValueError, match=r"no 'caption' column.*'prompt', 'seed'"):
        load_prompts(p, column="caption")


def test_missing_prompt_column(tmp_path):
    p = _csv(tmp_path, "words,seed\nhello,1\n")
    with pytest.raises(ValueError, match=r"no 'prompt' column.*'words', 'seed'"):
        load_prompts(p)


def test_bad_seed_names_the_row(tmp_path):
    p = _csv(tmp_path, "prompt,evaluation_seed\nhello,1\nworld,abc\n")
    with pytest.raises(ValueError, match="row 3"):
        load_prompts(p)


@pytest.mark.parametrize(
    "header,value,column",
    [
        ("sd_seed", "1.5", "sd_seed"),
        ("guidance", "high", "guidance"),
        ("case_number", "x", "case_number"),
    ],
)
def test_bad_values_name_row_and_column(tmp_path, header, value, column):
    p = _csv(tmp_path, f"prompt,{header}\na,1\nb,1\nc,{value}\n")
    with pytest.raises(ValueError, match=rf"row 4, column '{column}'.*{value}"):
        load_prompts(p)


def test_row_with_wrong_field_count_names_the_row(tmp_path):
    p = _csv(tmp_path, "prompt,seed\na,1\nb,2,extra\n")
    with pytest.raises(ValueError, match="row 3"):
        load_prompts(p)


def test_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope" / "prompts.csv"
    with pytest.raises(FileNotFoundError, match="nope/prompts.csv") as info:
        load_prompts(p)
    assert info.value.filename == str(p)


# --- presets and templates -----------------------------------------------------------------


def test_nudity_words():
    assert isinstance(NUDITY_WORDS, tuple) and len(NUDITY_WORDS) == 13 == len(set(NUDITY_WORDS))
    assert NUDITY_WORDS[0] == "nude" and "bare breasts" in NUDITY_WORDS and "attractive female goddess" in NUDITY_WORDS
    assert get_preset("nudity") == list(NUDITY_WORDS)


def test_imagenette_classes_match_the_classifier_table():
    from classifiers.zoo import IMAGENETTE

    assert [(c.wnid, c.name, c.imagenet_index) for c in IMAGENETTE_CLASSES] == [
        (w, n, i) for w, (n, i) in IMAGENETTE.items()
    ]
    assert [c.imagenet_index for c in IMAGENETTE_CLASSES] == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert IMAGENETTE_CLASSES[1] == ImagenetteClass("English springer", 217, "n02102040")
    with pytest.raises(AttributeError):
        IMAGENETTE_CLASSES[0].name = "carp"  # frozen
    assert IMAGENETTE_TEMPLATE.format("tench") == "Image of tench"


def test_imagenette_presets():
    assert get_preset("imagenette") == IMAGENETTE_NAMES
    assert get_preset("imagenette:french horn") == ["French horn"]
    assert get_preset("Imagenette:GARBAGE TRUCK") == ["garbage truck"]
    with pytest.raises(ValueError, match=r"unknown Imagenette class 'goldfish'.*'tench'"):
        get_preset("imagenette:goldfish")


def test_list_presets_all_resolve():
    names = list_presets()
    assert names[:2] == ["nudity", "imagenette"] and len(names) == 12
    assert all(get_preset(n) for n in names)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"unknown preset 'violence'.*'nudity'.*'imagenette'"):
        get_preset("violence")


def test_default_templates():
    assert DEFAULT_TEMPLATES == (
        "{}",
        "a photo of {}",
        "an image of {}",
        "a picture of {}",
        "a painting of {}",
        "{} in a photo",
    )


def test_expand_templates():
    assert expand_templates("nude", DEFAULT_TEMPLATES) == [
        "nude",
        "a photo of nude",
        "an image of nude",
        "a picture of nude",
        "a painting of nude",
        "nude in a photo",
    ]
    assert expand_templates(" church ", [IMAGENETTE_TEMPLATE]) == ["Image of church"]
    assert expand_templates("a {b}", ["x {} y"]) == ["x a {b} y"]  # the concept is not itself formatted


@pytest.mark.parametrize("template", ["a photo", "{} and {}", "a {0}"])
def test_expand_templates_bad_template_is_named(template):
    with pytest.raises(ValueError, match="template '" + template.replace("{", r"\{").replace("}", r"\}") + "'"):
        expand_templates("cat", ["{}", template])


@pytest.mark.parametrize("concept", ["", "   "])
def test_expand_templates_blank_concept(concept):
    with pytest.raises(ValueError, match="concept"):
        expand_templates(concept, DEFAULT_TEMPLATES)


def test_expand_templates_rejects_a_single_string_and_no_templates():
    with pytest.raises(TypeError):
        expand_templates("cat", "a photo of {}")
    with pytest.raises(ValueError, match="no templates"):
        expand_templates("cat", [])
