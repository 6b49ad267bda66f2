"""CLIPLoss: gradients through cutouts and CLIP, ensembles, prompt weights and stops, reductions, image prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guidance import CLIPLoss, ImagePrompt, InvalidInputError, MakeCutouts, Prompt


def whole_image_cutouts(side: int = 32, cutn: int = 2) -> MakeCutouts:
    """Cutouts that are the whole (square, `side` px) image, unaugmented: every cutout equals the image."""
    return MakeCutouts(side, cutn=cutn, min_size=side, max_size=side, augment="none")


def loss_and_grad(loss_fn, images: torch.Tensor, seed: int = 0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of `images` under `seed` and its gradient with respect to the images."""
    images = images.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    loss = loss_fn(images, **kwargs)
    loss.backward()
    return loss.detach(), images.grad


def _spherical_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = (a / np.linalg.norm(a, axis=-1, keepdims=True) for a in (x.astype(np.float64), y.astype(np.float64)))
    return 2 * np.arcsin(np.linalg.norm(x - y, axis=-1) / 2) ** 2


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_gradient_reaches_a_non_square_batch_through_cutouts_and_clip(tiny_clip):
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    loss_fn = CLIPLoss(tiny_clip, "a red circle", cutouts=MakeCutouts(32, cutn=6))
    loss, grad = loss_and_grad(loss_fn, images)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert grad.shape == images.shape and torch.isfinite(grad).all()
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    assert not any(p.requires_grad for p in tiny_clip.parameters()), "CLIP stays frozen"


def test_default_cutouts_use_the_model_input_size(tiny_clip):
    loss_fn = CLIPLoss(tiny_clip, "a cat")
    assert loss_fn.cutouts.cut_size == tiny_clip.image_size
    _, grad = loss_and_grad(loss_fn, torch.rand(1, 3, 64, 64))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_loss_equals_spherical_distance_of_image_and_text_embeddings(tiny_clip, image):
    loss_fn = CLIPLoss(tiny_clip, "a red circle", cutouts=whole_image_cutouts())
    with torch.no_grad():
        expected = _spherical_np(tiny_clip.encode_image(image).numpy(), tiny_clip.encode_text(["a red circle"]).numpy())
    np.testing.assert_allclose(loss_fn(image).item(), expected[0], rtol=1e-4, atol=1e-6)


def test_contrast_subtracts_the_distance_to_the_empty_text(tiny_clip, image):
    loss_fn = CLIPLoss(tiny_clip, "a red circle", cutouts=whole_image_cutouts(), contrast=0.5)
    with torch.no_grad():
        embedded = tiny_clip.encode_image(image).numpy()
        to_prompt = _spherical_np(embedded, tiny_clip.encode_text(["a red circle"]).numpy())[0]
        to_nothing = _spherical_np(embedded, tiny_clip.encode_text([""]).numpy())[0]
    np.testing.assert_allclose(loss_fn(image).item(), to_prompt - 0.5 * to_nothing, rtol=1e-4, atol=1e-6)
    for bad in (-1.0, math.nan):
        with pytest.raises(InvalidInputError, match="contrast"):
            CLIPLoss(tiny_clip, "a cat", contrast=bad)


def test_cosine_distance_option(tiny_clip, image):
    loss_fn = CLIPLoss(tiny_clip, "a red circle", cutouts=whole_image_cutouts(), distance="cosine")
    with torch.no_grad():
        cos = (tiny_clip.encode_image(image) * tiny_clip.encode_text(["a red circle"])).sum().item()
    assert loss_fn(image).item() == pytest.approx(1 - cos, rel=1e-4, abs=1e-6)
    with pytest.raises(InvalidInputError, match="distance"):
        CLIPLoss(tiny_clip, "a cat", distance="euclid")


def test_ensemble_weights_its_members_as_given(tiny_clip, tiny_clip_b, image):
    cutouts = MakeCutouts(32, cutn=4)  # default augmentations: the seed must fix them for every call
    loss_a, grad_a = loss_and_grad(CLIPLoss(tiny_clip, "a cat", cutouts=cutouts), image)
    loss_b, grad_b = loss_and_grad(CLIPLoss(tiny_clip_b, "a cat", cutouts=cutouts), image)
    ensemble = CLIPLoss([(tiny_clip, 2.0), (tiny_clip_b, 1.0)], "a cat", cutouts=cutouts)
    loss, grad = loss_and_grad(ensemble, image)
    assert loss_a != pytest.approx(loss_b), "the two models must differ for this test to mean anything"
    torch.testing.assert_close(loss, 2 * loss_a + loss_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, 2 * grad_a + grad_b, rtol=1e-4, atol=1e-7)
    assert set(ensemble.last_losses) == {"tiny: a cat", "tiny-b: a cat"}


def test_ensemble_member_with_weight_zero_contributes_nothing(tiny_clip, tiny_clip_b, image):
    cutouts = MakeCutouts(32, cutn=4)
    alone = loss_and_grad(CLIPLoss(tiny_clip, "a cat", cutouts=cutouts), image)
    with_zero = loss_and_grad(CLIPLoss([(tiny_clip, 1.0), (tiny_clip_b, 0.0)], "a cat", cutouts=cutouts), image)
    torch.testing.assert_close(with_zero, alone, rtol=1e-6, atol=0)


def test_plain_list_ensemble_weights_members_equally(tiny_clip, tiny_clip_b, image):
    cutouts = whole_image_cutouts()
    pair = CLIPLoss([tiny_clip, tiny_clip_b], "a cat", cutouts=cutouts)(image)
    separate = CLIPLoss(tiny_clip, "a cat", cutouts=cutouts)(image) + CLIPLoss(tiny_clip_b, "a cat", cutouts=cutouts)(image)
    torch.testing.assert_close(pair, separate, rtol=1e-5, atol=1e-7)


def test_same_model_twice_keeps_one_last_losses_entry_per_member(tiny_clip, image):
    loss_fn = CLIPLoss([(tiny_clip, 1.0), (tiny_clip, 0.5)], "a cat", cutouts=whole_image_cutouts())
    loss_fn(image)
    assert len(loss_fn.last_losses) == 2


@pytest.mark.parametrize("members", [[], [("not a model", 1.0)], "nan weight"])
def test_bad_ensembles_raise_invalid_input(tiny_clip, members):
    if members == "nan weight":
        members = [(tiny_clip, math.nan)]
    with pytest.raises(InvalidInputError):
        CLIPLoss(members, "a cat")


def test_negative_prompt_weight_flips_the_gradient(tiny_clip, image):
    cutouts = MakeCutouts(32, cutn=4)
    loss_pos, grad_pos = loss_and_grad(CLIPLoss(tiny_clip, "a cat:1", cutouts=cutouts), image)
    loss_neg, grad_neg = loss_and_grad(CLIPLoss(tiny_clip, "a cat:-1", cutouts=cutouts), image)
    assert grad_pos.abs().sum() > 0
    torch.testing.assert_close(grad_neg, -grad_pos, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(loss_neg, -loss_pos)


def test_prompt_weight_scales_the_loss(tiny_clip, image):
    cutouts = MakeCutouts(32, cutn=4)
    torch.manual_seed(0)
    single = CLIPLoss(tiny_clip, "a cat", cutouts=cutouts)(image)
    torch.manual_seed(0)
    weighted = CLIPLoss(tiny_clip, "a cat:2.5", cutouts=cutouts)(image)
    torch.testing.assert_close(weighted, 2.5 * single)


def test_stop_removes_the_gradient_once_the_distance_is_below_it(tiny_clip, image):
    cutouts = whole_image_cutouts()
    plain_loss, plain_grad = loss_and_grad(CLIPLoss(tiny_clip, [Prompt("a cat")], cutouts=cutouts), image)
    distance = plain_loss.item()
    above_loss, above_grad = loss_and_grad(CLIPLoss(tiny_clip, [Prompt("a cat", 1.0, distance - 0.01)], cutouts=cutouts),
                                           image)
    below_loss, below_grad = loss_and_grad(CLIPLoss(tiny_clip, [Prompt("a cat", 1.0, distance + 0.01)], cutouts=cutouts),
                                           image)
    assert plain_grad.abs().sum() > 0
    torch.testing.assert_close(above_grad, plain_grad)
    assert torch.count_nonzero(below_grad) == 0, "no gradient once the distance is below the stop"
    torch.testing.assert_close(below_loss, plain_loss)  # the value is still reported
    torch.testing.assert_close(above_loss, plain_loss)


def test_stop_parsed_from_the_prompt_string(tiny_clip, image):
    loss_fn = CLIPLoss(tiny_clip, "a cat:1:5", cutouts=whole_image_cutouts())  # every distance is below 5
    assert loss_fn.prompts == [("a cat", 1.0, 5.0)]
    _, grad = loss_and_grad(loss_fn, image)
    assert torch.count_nonzero(grad) == 0


def test_normalize_weights_divides_by_absolute_sum(tiny_clip, image):
    cutouts = whole_image_cutouts()
    raw = CLIPLoss(tiny_clip, "a cat:3|a dog:-1", cutouts=cutouts)
    normalized = CLIPLoss(tiny_clip, "a cat:3|a dog:-1", cutouts=cutouts, normalize_weights=True)
    assert [w for _, w, _ in normalized.prompts] == pytest.approx([1.5, -0.5])
    torch.testing.assert_close(normalized(image), raw(image) / 2)


def test_normalize_weights_counts_image_prompts(tiny_clip, image):
    loss_fn = CLIPLoss(tiny_clip, "a cat:1", image_prompts=[ImagePrompt(image, weight=3.0)],
                       cutouts=whole_image_cutouts(), normalize_weights=True)
    assert [w for _, w, _ in loss_fn.prompts] == pytest.approx([0.25, 0.75])


def test_normalize_weights_summing_to_zero_is_invalid(tiny_clip):
    with pytest.raises(InvalidInputError, match="sum to zero"):
        CLIPLoss(tiny_clip, "a:1|b:-1", normalize_weights=True)


def test_reduction_none_gives_per_image_losses(tiny_clip):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss_fn = CLIPLoss(tiny_clip, "a cat|a dog:0.5", cutouts=MakeCutouts(32, cutn=4, augment="none"))
    torch.manual_seed(0)
    per_image = loss_fn(images, reduction="none")
    assert per_image.shape == (3,)
    for index in range(3):  # boxes are shared across the batch, so each image alone gives its own entry
        torch.manual_seed(0)
        torch.testing.assert_close(loss_fn(images[index:index + 1]), per_image[index], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    torch.testing.assert_close(loss_fn(images, reduction="mean"), per_image.mean())
    torch.manual_seed(0)
    torch.testing.assert_close(loss_fn(images, reduction="sum"), per_image.sum())
    with pytest.raises(InvalidInputError, match="reduction"):
        loss_fn(images, reduction="max")


def test_last_losses_has_one_entry_per_prompt(tiny_clip, image):
    other = torch.rand(3, 32, 32)
    loss_fn = CLIPLoss(tiny_clip, "a cat|a dog:-0.5", image_prompts=[image, ImagePrompt(other)],
                       cutouts=whole_image_cutouts())
    loss_fn(image)
    assert len(loss_fn.last_losses) == 4
    assert {"a cat", "a dog"} <= set(loss_fn.last_losses)
    assert all(not value.requires_grad and value.ndim == 0 for value in loss_fn.last_losses.values())
    with torch.no_grad():
        expected = _spherical_np(tiny_clip.encode_image(image).numpy(), tiny_clip.encode_text(["a dog"]).numpy())
    assert loss_fn.last_losses["a dog"].item() == pytest.approx(expected[0], rel=1e-4, abs=1e-6)


def test_image_prompt_equal_to_the_image_is_closer_than_a_random_one(tiny_clip, image):
    random_image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(99))
    loss_fn = CLIPLoss(tiny_clip, image_prompts=[ImagePrompt(image, label="same"), ImagePrompt(random_image, label="random")],
                       cutouts=whole_image_cutouts())
    loss_fn(image)
    same, random = loss_fn.last_losses["same"].item(), loss_fn.last_losses["random"].item()
    assert same < 1e-4 < random


def test_image_prompt_alone_gives_a_gradient(tiny_clip, image):
    loss_fn = CLIPLoss(tiny_clip, image_prompts=[torch.rand(3, 48, 48)], cutouts=MakeCutouts(32, cutn=4))
    _, grad = loss_and_grad(loss_fn, image)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_prompt_objects_and_strings_can_be_mixed(tiny_clip):
    loss_fn = CLIPLoss(tiny_clip, [Prompt("a cat", 2.0), "a dog:-1|a fox"])
    assert [(t, w) for t, w, _ in loss_fn.prompts] == [("a cat", 2.0), ("a dog", -1.0), ("a fox", 1.0)]


@pytest.mark.parametrize("prompts", ["", (), "a||b"])
def test_missing_or_malformed_prompts_raise_invalid_input(tiny_clip, prompts):
    with pytest.raises(InvalidInputError):
        CLIPLoss(tiny_clip, prompts)


@pytest.mark.parametrize("images", [
    torch.rand(3, 32, 32),
    torch.rand(1, 4, 32, 32),
    (torch.rand(1, 3, 32, 32) * 255).to(torch.uint8),
], ids=["chw", "four-channels", "uint8"])
def test_bad_images_raise_invalid_input(tiny_clip, images):
    with pytest.raises(InvalidInputError):
        CLIPLoss(tiny_clip, "a cat")(images)
