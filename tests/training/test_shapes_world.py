"""The synthetic shapes world: vocabulary, rendering, seeding, held-out pairs, the CSV writer."""

import colorsys
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from guidance.errors import InvalidInputError
from training import shapes_world as world


def test_vocabulary_covers_the_issue_words():
    assert {"red", "green", "blue", "yellow", "orange", "purple", "white", "black"} <= set(world.COLOURS)
    assert {"circle", "square", "triangle", "star"} <= set(world.SHAPES)
    assert set(world.POSITIONS) == {"left", "right", "top", "bottom", "centre"}
    assert set(world.SIZES) == {"small", "large"}
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in world.COLOURS.values())


def test_sampling_reaches_every_word_and_template():
    rng = np.random.default_rng(0)
    specs = [world.sample_spec(rng, "all") for _ in range(3000)]
    assert {s.colour for s in specs} == set(world.COLOURS)
    assert {s.shape for s in specs} == set(world.SHAPES)
    assert {s.position for s in specs} == set(world.POSITIONS)
    assert {s.size for s in specs} == set(world.SIZES)
    assert {s.background.kind for s in specs} == set(world.BACKGROUND_KINDS)
    dataset = world.ShapesDataset(400, seed=1)
    captions = [dataset.describe(i)[1] for i in range(400)]
    assert any(c.startswith("a photo of") for c in captions)
    assert any(c.endswith("on the left") for c in captions)
    assert any(c.startswith("an orange") for c in captions)
    assert not any(" a orange" in f" {c}" for c in captions)


def test_dataset_is_deterministic_under_seed():
    a, b, c = world.ShapesDataset(6, seed=7), world.ShapesDataset(6, seed=7), world.ShapesDataset(6, seed=8)
    for i in range(6):
        image_a, caption_a = a[i]
        image_b, caption_b = b[i]
        assert torch.equal(image_a, image_b) and caption_a == caption_b
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(6))
    image, caption = a[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and isinstance(caption, str)
    with pytest.raises(IndexError):
        a[6]


def test_held_out_pairs_never_appear_in_training():
    held = set(world.held_out_pairs())
    assert len(held) >= 6
    train_pairs = set(world.pairs_for_split("train"))
    assert not held & train_pairs
    assert train_pairs | held == {(c, s) for c in world.COLOURS for s in world.SHAPES}
    # every held-out colour and shape is still seen in training, with other partners
    assert {c for c, _ in held} <= {c for c, _ in train_pairs}
    assert {s for _, s in held} <= {s for _, s in train_pairs}
    stream = world.ShapesDataset(4000, seed=0, split="train")
    for i in range(4000):
        spec, caption = stream.describe(i)
        assert (spec.colour, spec.shape) not in held
        assert not any(f"{c} {s}" in caption for c, s in held)
    test = world.ShapesDataset(200, seed=0, split="held_out")
    assert all((s.colour, s.shape) in held for s in (test.describe(i)[0] for i in range(200)))


def test_canonical_render_is_exact():
    image = world.render_canonical("a red circle")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert tuple(image[32, 32]) == world.COLOURS["red"]
    assert tuple(image[0, 0]) == world.CANONICAL_BACKGROUND
    assert np.array_equal(image, world.render_shape_image("red", "circle"))
    big = world.render_canonical("a red circle", image_size=128)
    assert big.shape == (128, 128, 3)


def _mask(image: np.ndarray) -> np.ndarray:
    return np.abs(image.astype(int) - np.array(world.CANONICAL_BACKGROUND)).sum(-1) > 30


def test_positions_sizes_and_shapes_are_visible():
    left = _mask(world.render_canonical("a small blue square on the left"))
    right = _mask(world.render_canonical("a small blue square on the right"))
    top = _mask(world.render_canonical("a blue square at the top"))
    assert np.argwhere(left)[:, 1].mean() < 24 < 40 < np.argwhere(right)[:, 1].mean()
    assert np.argwhere(top)[:, 0].mean() < 24
    assert left.sum() < _mask(world.render_canonical("a large blue square on the left")).sum()
    masks = [_mask(world.render_shape_image("black", s)) for s in world.SHAPES + world.UNNAMED_SHAPES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] ^ masks[j]).sum() > 40


def test_parse_caption_and_errors():
    spec = world.parse_caption("A small purple star at the bottom")
    assert (spec.colour, spec.shape, spec.size, spec.position) == ("purple", "star", "small", "bottom")
    assert world.parse_caption("an orange triangle in the center").position == "centre"
    with pytest.raises(InvalidInputError, match="colour"):
        world.parse_caption("a circle")
    with pytest.raises(InvalidInputError, match="shape"):
        world.render_shape_image("red", "hexagon")
    with pytest.raises(InvalidInputError, match="split"):
        world.ShapesDataset(3, split="test")


def test_zero_shot_labels_line_up_with_pairs():
    labels = world.pair_labels()
    assert len(labels) == len(world.COLOURS) * len(world.SHAPES)
    assert labels[0] == "a red circle" and "an orange star" in labels
    assert world.shape_labels() == ["a circle", "a square", "a triangle", "a star"]


def test_cli_writes_images_and_csv(tmp_path):
    world.main(["--out", str(tmp_path), "--count", "5", "--seed", "3"])
    with open(tmp_path / "captions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    dataset = world.ShapesDataset(5, seed=3)
    for i, row in enumerate(rows):
        image = np.asarray(Image.open(tmp_path / row["filepath"]))
        expected, caption, _ = dataset.item(i)
        assert np.array_equal(image, expected) and row["caption"] == caption


def test_unnamed_colours_and_shapes_are_never_named():
    named = [colorsys.rgb_to_hsv(*(v / 255 for v in rgb)) for rgb in world.COLOURS.values()]
    named_hues = [h for h, s, _ in named if s > 0.3]
    stream = world.ShapesDataset(800, seed=2, split="train")
    items = [stream.describe(i) for i in range(800)]
    other_colours = [(spec, caption) for spec, caption in items if not isinstance(spec.colour, str)]
    other_shapes = [(spec, caption) for spec, caption in items if spec.shape in world.UNNAMED_SHAPES]
    assert abs(len(other_colours) / 800 - world.OTHER_COLOUR_RATE) < 0.1
    assert abs(len(other_shapes) / 800 - world.OTHER_SHAPE_RATE) < 0.1
    for spec, caption in other_colours:
        hue = colorsys.rgb_to_hsv(*(v / 255 for v in spec.colour))[0]
        assert min(world.hue_distance(hue, h) for h in named_hues) >= world.MIN_HUE_DISTANCE - 0.002  # 8-bit rounding
        assert spec.shape in world.SHAPES and not set(caption.split()) & set(world.COLOURS)
    for spec, caption in other_shapes:
        assert spec.colour in world.COLOURS and not set(caption.split()) & set(world.SHAPES)
    held_out = world.ShapesDataset(100, seed=2, split="held_out")
    assert all(spec.colour in world.COLOURS and spec.shape in world.SHAPES
               for spec, _ in map(held_out.describe, range(100)))


def test_backgrounds_contrast_with_the_shape():
    rng = np.random.default_rng(4)
    for _ in range(500):
        spec = world.sample_spec(rng, "train", other_colour_rate=0.5)
        rgb = np.asarray(world.COLOURS[spec.colour] if isinstance(spec.colour, str) else spec.colour, dtype=float)
        for stop in (spec.background.colour, spec.background.colour_b):
            assert np.linalg.norm(np.asarray(stop, dtype=float) - rgb) >= world.MIN_CONTRAST


# --- bilingual: Chinese captions, labels and the longer text context they need ---------------------------


def test_chinese_captions_describe_the_same_images():
    english, bilingual = world.ShapesDataset(400, seed=3), world.ShapesDataset(400, seed=3, chinese_share=0.5)
    pairs = [(english.describe(i), bilingual.describe(i)) for i in range(400)]
    assert all(e_spec == b_spec for (e_spec, _), (b_spec, _) in pairs)  # the same scenes, in the same order
    chinese = [(spec, caption) for _, (spec, caption) in pairs if world.re.search("[\u4e00-\u9fff]", caption)]
    assert 150 <= len(chinese) <= 250 and len({caption for _, caption in chinese}) > 100
    for spec, caption in chinese:  # every named colour and shape it mentions is the scene's
        if isinstance(spec.colour, str) and any(word in caption for word in world.COLOURS_ZH.values()):
            assert world.COLOURS_ZH[spec.colour] in caption
        if spec.shape in world.SHAPES and "图形" not in caption:
            assert world.chinese_to_english_words(caption).split().count(spec.shape) == 1
    np.testing.assert_array_equal(english.item(5)[0], bilingual.item(5)[0])


def test_chinese_captions_and_labels_fit_the_bilingual_context():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    dataset = world.ShapesDataset(2000, seed=4, chinese_share=1.0)
    texts = [dataset.describe(i)[1] for i in range(2000)]
    texts += [t.format(label) for t in world.PROMPT_TEMPLATES_ZH for label in world.pair_labels("zh")]
    assert max(len(tokenizer.encode(text)) + 2 for text in texts) <= 48


@pytest.mark.parametrize("caption, expected", [
    ("一个红色的圆形", ("red", "circle", "centre", "large")),
    ("蓝色的正方形", ("blue", "square", "centre", "large")),
    ("左边有一个蓝色的正方形", ("blue", "square", "left", "large")),
    ("一颗黄色的五角星", ("yellow", "star", "centre", "large")),
    ("一个小的白色三角形在上面", ("white", "triangle", "top", "small")),
])
def test_chinese_captions_render(caption, expected):
    spec = world.parse_caption(caption)
    assert (spec.colour, spec.shape, spec.position, spec.size) == expected
    np.testing.assert_array_equal(world.render_canonical(caption), world.render_canonical(
        f"a {expected[3]} {expected[0]} {expected[1]} {world.POSITION_PHRASES[expected[2]]}"))


def test_chinese_labels_name_every_pair_once():
    labels = world.pair_labels("zh")
    assert len(set(labels)) == len(world.COLOURS) * len(world.SHAPES) and labels[3] == "一颗红色的五角星"
    def english(label: str) -> list[str]:
        return world.re.findall("[a-z]+", world.chinese_to_english_words(label))

    assert [english(label) for label in world.colour_labels("zh")] == [[colour] for colour in world.COLOURS]
    assert [english(label) for label in world.shape_labels("zh")] == [[shape] for shape in world.SHAPES]


def test_chinese_share_out_of_range_is_refused():
    with pytest.raises(InvalidInputError, match="chinese_share"):
        world.ShapesDataset(4, chinese_share=1.5)


def test_shapeless_items_show_no_shape_and_say_so():
    """A shapeless share replaces some items by a field, blotches or an empty background, captioned with no shape
    word; the other items are unchanged."""
    plain, mixed = world.ShapesDataset(300, seed=5), world.ShapesDataset(300, seed=5, shapeless_share=0.3)
    kinds = []
    for index in range(300):
        image, caption, spec = mixed.item(index)
        if spec.shape not in world.SHAPELESS_TEMPLATES:
            reference, reference_caption, _ = plain.item(index)
            assert caption == reference_caption and np.array_equal(image, reference)
            continue
        kinds.append(spec.shape)
        words = set(caption.split())
        assert not words & set(world.SHAPES + world.UNNAMED_SHAPES + ("shape",)), caption
        colour = np.asarray(world.COLOURS[spec.colour], dtype=np.float32)
        close = (np.abs(image.astype(np.float32) - colour).max(axis=2) < 40).mean()
        if spec.shape == "field":
            assert spec.colour in words and close > 0.6, (caption, close)
        elif spec.shape == "blotches":
            assert spec.colour in words and 0.1 < close < 0.7, (caption, close)
        else:
            assert not words & set(world.COLOURS), caption
    assert 60 < len(kinds) < 120 and set(kinds) == set(world.SHAPELESS_TEMPLATES)
    with pytest.raises(InvalidInputError, match="shapeless_share"):
        world.ShapesDataset(4, shapeless_share=-0.1)
    with pytest.raises(InvalidInputError, match="shapeless kind"):
        world.render_shapeless("smoke", "red", world.Background())


def test_a_longer_context_keeps_what_the_model_says_about_short_texts():
    from guidance import load_clip
    from training.train_clip import with_context_length

    clip = load_clip("shapes-tiny")
    longer = with_context_length(clip, 48)
    assert longer.context_length == 48 and longer.model.positional_embedding.shape[0] == 48
    texts = ["a red circle", "a small blue square on the left"]
    with torch.no_grad():
        torch.testing.assert_close(longer.encode_text(texts), clip.encode_text(texts), rtol=0, atol=1e-5)
    with pytest.raises(InvalidInputError, match="shorter than"):
        with_context_length(clip, 8)
