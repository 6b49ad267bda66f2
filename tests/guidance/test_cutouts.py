"""MakeCutouts: batched random square crops, their sizes, placement, order and argument checks."""

from __future__ import annotations

import pytest
import torch

from guidance import AUGMENT_PRESETS, Augment, InvalidInputError, MakeCutouts


def _box_geometry(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x0, y0, width, height of (N, 4, 2) corner boxes (inclusive pixel corners)."""
    x0, y0 = boxes[:, 0, 0], boxes[:, 0, 1]
    x1, y1 = boxes[:, 2, 0], boxes[:, 2, 1]
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


@pytest.mark.parametrize("augment", AUGMENT_PRESETS)
def test_cutouts_shape_range_dtype_and_device_for_a_non_square_batch(augment):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 40, 56)
    cutouts = MakeCutouts(24, cutn=5, augment=augment)(images)
    assert cutouts.shape == (10, 3, 24, 24)
    assert cutouts.dtype == images.dtype and cutouts.device == images.device
    assert cutouts.min() >= 0 and cutouts.max() <= 1


def test_cutouts_are_deterministic_under_manual_seed():
    images = torch.rand(2, 3, 48, 40)
    make = MakeCutouts(16, cutn=6, augment="default")
    torch.manual_seed(7)
    first = make(images)
    torch.manual_seed(7)
    again = make(images)
    torch.manual_seed(8)
    other = make(images)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_sampled_boxes_lie_inside_the_image_with_sizes_in_bounds():
    torch.manual_seed(0)
    height, width = 40, 56
    boxes = MakeCutouts(16, cutn=1, min_size=10, max_size=30).sample_boxes(height, width, 2000, torch.device("cpu"))
    assert boxes.shape == (2000, 4, 2)
    x0, y0, w, h = _box_geometry(boxes)
    assert torch.equal(w, h), "boxes must be square"
    assert torch.equal(boxes, boxes.round()), "corners are whole pixels"
    assert w.min() == 10 and w.max() == 30, "both size bounds are reachable and never exceeded"
    assert x0.min() >= 0 and y0.min() >= 0
    assert (x0 + w).max() <= width and (y0 + h).max() <= height


def test_max_size_is_capped_by_the_short_side_of_the_image():
    torch.manual_seed(0)
    boxes = MakeCutouts(16, min_size=8, max_size=500).sample_boxes(20, 60, 500, torch.device("cpu"))
    x0, y0, w, h = _box_geometry(boxes)
    assert w.max() == 20 and (y0[w == 20] == 0).all()
    assert (y0 + h).max() <= 20 and (x0 + w).max() <= 60


def test_cut_pow_skews_sizes_towards_small_crops():
    def mean_size(cut_pow: float) -> float:
        torch.manual_seed(0)
        boxes = MakeCutouts(16, cut_pow=cut_pow, min_size=8, max_size=64).sample_boxes(64, 64, 1000, torch.device("cpu"))
        return _box_geometry(boxes)[2].mean().item()

    assert mean_size(3.0) < mean_size(1.0) < mean_size(0.3)
    # E[u ** p] = 1 / (p + 1): about 8 + 57 / 4 = 22 for p = 3 and 8 + 57 / 1.3 = 52 for p = 0.3
    assert mean_size(3.0) < 30 and mean_size(0.3) > 45


def test_cutouts_match_slices_of_the_image_at_the_sampled_boxes():
    images = torch.rand(2, 3, 40, 56)
    make = MakeCutouts(16, cutn=4, min_size=16, max_size=16, augment="none")
    torch.manual_seed(3)
    boxes = make.sample_boxes(40, 56, 4, images.device)
    torch.manual_seed(3)
    cutouts = make(images)
    x0, y0, _, _ = _box_geometry(boxes)
    for k in range(4):
        x, y = int(x0[k]), int(y0[k])
        for b in range(2):  # cutout-major: index k * B + b
            torch.testing.assert_close(cutouts[k * 2 + b], images[b, :, y:y + 16, x:x + 16], atol=1e-5, rtol=0)


def test_whole_image_cutout_without_augmentation_is_the_image():
    images = torch.rand(2, 3, 32, 32)
    cutouts = MakeCutouts(32, cutn=3, min_size=32, max_size=32, augment="none")(images)
    torch.testing.assert_close(cutouts, images.repeat(3, 1, 1, 1), atol=1e-5, rtol=0)


def test_every_image_of_a_batch_gets_the_same_boxes_in_cutout_major_order():
    torch.manual_seed(0)
    first = torch.rand(1, 3, 30, 50)
    images = torch.cat([first, 0.5 * first])
    cutouts = MakeCutouts(12, cutn=5, augment="none")(images)
    torch.testing.assert_close(cutouts[1::2], 0.5 * cutouts[0::2], atol=1e-6, rtol=1e-5)


def test_cutouts_pass_gradients_to_the_images():
    images = torch.rand(2, 3, 40, 56, requires_grad=True)
    MakeCutouts(16, cutn=4, augment="default")(images).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, hint", [
    ({"cutn": 0}, "cutn must be between 1 and 1024, got 0"),
    ({"cutn": -3}, "cutn"),
    ({"cutn": 1025}, "cutn must be between 1 and 1024, got 1025"),
    ({"cutn": 2.5}, "cutn must be a whole number, got 2.5"),
    ({"augment": "heavy"}, "heavy"),
    ({"cut_pow": 0.0}, "cut_pow must be greater than 0, got 0"),
    ({"cut_pow": float("nan")}, "cut_pow must be a finite number, got nan"),
    ({"cut_pow": float("inf")}, "cut_pow must be a finite number, got inf"),
    ({"cut_pow": "1"}, "cut_pow must be a number, got '1'"),
    ({"min_size": 40, "max_size": 20}, "min_size"),
])
def test_bad_cutout_arguments_raise_invalid_input(kwargs, hint):
    with pytest.raises(InvalidInputError, match=hint) as error:
        MakeCutouts(16, **kwargs)
    assert "\n" not in str(error.value)


def test_cutout_count_and_power_are_kept_as_given():
    make = MakeCutouts(16, cutn=1024, cut_pow=0.25)
    assert (make.cutn, make.cut_pow) == (1024, 0.25) and isinstance(make.cutn, int)


def test_cutouts_of_a_chw_image_raise_invalid_input():
    with pytest.raises(InvalidInputError, match="BCHW"):
        MakeCutouts(16, cutn=2)(torch.rand(3, 32, 32))


@pytest.mark.parametrize("augment", AUGMENT_PRESETS)
def test_paired_augmentation_transforms_each_pair_alike(augment):
    torch.manual_seed(0)
    first, second = torch.rand(6, 3, 24, 24), torch.rand(6, 3, 24, 24)
    augment_module = Augment(augment)
    torch.manual_seed(1)
    pair = augment_module.pair(first, first.clone())
    assert torch.equal(pair[0], pair[1]), "equal inputs must give equal views"
    torch.manual_seed(1)
    mixed = augment_module.pair(first, second)
    assert torch.equal(mixed[0], pair[0]), "the first batch is augmented as on its own"
    if augment == "none":
        assert torch.equal(mixed[0], first) and torch.equal(mixed[1], second)
    else:
        assert not torch.allclose(mixed[0], first)


def test_geometric_preset_keeps_colours_that_default_jitters():
    torch.manual_seed(0)
    red = torch.zeros(64, 3, 24, 24)
    red[:, 0] = 0.9
    geometric = Augment("geometric", noise=0.0)(red)
    # flips, affine, perspective and erasing only move pixels or blacken them: no pixel gains green or blue
    assert torch.equal(geometric[:, 1:], torch.zeros_like(geometric[:, 1:]))
    default = Augment("default", noise=0.0)(red)
    assert default[:, 1:].max() > 0.01, "the default preset's colour jitter shifts hues"


def kornia_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The cutouts as they were cut before roi_align: every image copied once per box, then kornia's bilinear
    crop_and_resize (align_corners=True)."""
    from kornia.geometry.transform import crop_and_resize

    batch, n = images.shape[0], boxes.shape[0]
    repeated = images.unsqueeze(0).expand(n, *images.shape).reshape(n * batch, *images.shape[1:])
    return crop_and_resize(repeated, boxes.to(images.dtype).repeat_interleave(batch, dim=0), (size, size),
                           mode="bilinear", align_corners=True)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_roi_align_cutouts_equal_kornia_crop_and_resize_in_pixels_and_gradients(dtype, tolerance):
    # float64 shows the two are one formula; in float32 both round the sample positions, about 1e-5 px per
    # 100 px of image side, which moves noise pixels by up to about 1e-4
    torch.manual_seed(0)
    make = MakeCutouts(24, cutn=12, cut_pow=0.7, min_size=3, augment="none")
    images = torch.rand(2, 3, 70, 90, dtype=dtype, requires_grad=True)
    boxes = make.sample_boxes(70, 90, 12, images.device)
    boxes[0] = torch.tensor([[0, 0], [69, 0], [69, 69], [0, 69]])  # touches three borders
    new, old = make.crop(images, boxes), kornia_crop(images, boxes, 24)
    assert new.shape == old.shape == (24, 3, 24, 24) and new.dtype == dtype
    torch.testing.assert_close(new, old, atol=tolerance, rtol=0)
    weights = torch.rand_like(new)
    new_grad, = torch.autograd.grad(new, images, weights)
    old_grad, = torch.autograd.grad(old, images, weights)
    torch.testing.assert_close(new_grad, old_grad, atol=4 * tolerance, rtol=0)


def test_half_precision_images_are_cut_in_float32_and_keep_their_dtype():
    torch.manual_seed(0)
    make = MakeCutouts(16, cutn=4, augment="none")
    images = torch.rand(1, 3, 40, 40)
    boxes = make.sample_boxes(40, 40, 4, images.device)
    cutouts = make.crop(images.bfloat16(), boxes)
    assert cutouts.dtype == torch.bfloat16
    torch.testing.assert_close(cutouts.float(), make.crop(images.bfloat16().float(), boxes), atol=1e-2, rtol=0)
