"""src/data/mixup.py: v2.MixUp / v2.CutMix seeded by the batch's position, replayed pixel by pixel."""

from __future__ import annotations

import pytest
import torch

from src.data.mixup import mix_batch, position_seed

torch.set_num_threads(1)


def _named_pixels(n: int, size: int = 8) -> torch.Tensor:
    """Every pixel names its image and position: image k holds k * 1000 + (y * size + x) on 3 channels."""
    pixels = torch.arange(n).view(n, 1, 1, 1) * 1000 + torch.arange(size * size).view(1, 1, size, size)
    return pixels.expand(n, 3, size, size).float().contiguous()


def test_mixup_blends_each_image_with_its_neighbour_by_the_targets_weight():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    labels = torch.tensor([0, 1, 2, 3])
    mixed, target = mix_batch(images, labels, 5, mixup_alpha=0.4, cutmix_alpha=0.0, seed=(7, 0, 0, 0))
    lam = float(target[0, 0])  # image 0 keeps lam of itself and takes 1 - lam of image 3 (the batch rolled by one)
    assert 0.0 < lam < 1.0
    partner = images.roll(1, 0)
    assert torch.allclose(mixed, lam * images + (1 - lam) * partner, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    want = torch.zeros(4, 5)
    want[torch.arange(4), labels] += lam
    want[torch.arange(4), labels.roll(1, 0)] += 1 - lam
    assert torch.allclose(target, want, rtol=0, atol=torch.finfo(torch.float32).eps)
    assert torch.allclose(target.sum(1), torch.ones(4))


# These seeds give a 6 x 6 box clipped by the right edge, a 2 x 2 box inside, and an empty box.
@pytest.mark.parametrize("seed, expected_box", [((3, 0, 0, 0), (1, 3, 7, 8)), ((11, 2, 0, 1), (6, 5, 8, 7)),
                                                ((3, 5, 1, 0), None)])
def test_cutmix_pastes_one_box_from_the_neighbour_and_weights_targets_by_its_exact_share(seed, expected_box):
    n, size = 4, 8
    images, labels = _named_pixels(n, size), torch.arange(n)
    mixed, target = mix_batch(images, labels, n, 0.0, 1.0, seed=seed)
    changed = (mixed != images).any(1)  # (N, H, W): where image i now shows another image
    box = changed[0]
    rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
    area = int(box.sum())
    if expected_box is None:
        assert area == 0
    else:  # one rectangle, the same for every image (all partners differ, so every box pixel changes)
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert (top, left, bottom, right) == expected_box and area == (bottom - top) * (right - left)
        assert all(torch.equal(changed[i], box) for i in range(n))
    for i in range(n):
        j = (i - 1) % n  # v2 pairs each image with the one before it
        expected = images[i].clone()
        expected[:, box] = images[j][:, box]  # the same positions of the partner
        assert torch.equal(mixed[i], expected)
        # the target weights are the pixel shares, exactly (dyadic on an 8 x 8 image)
        want = torch.zeros(n)
        want[i] += 1 - area / size**2
        want[j] += area / size**2
        assert torch.equal(target[i], want), (i, target[i], want)


def test_the_seed_alone_decides_and_the_global_generator_is_left_alone():
    images, labels = _named_pixels(4), torch.arange(4)
    torch.manual_seed(0)
    first = mix_batch(images, labels, 4, 0.2, 1.0, seed=(1, 2, 0, 0))
    torch.manual_seed(12345)  # another global stream: same result
    again = mix_batch(images, labels, 4, 0.2, 1.0, seed=(1, 2, 0, 0))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    state = torch.get_rng_state()
    mix_batch(images, labels, 4, 0.2, 1.0, seed=(1, 3, 0, 0))
    assert torch.equal(torch.get_rng_state(), state)  # dropout's stream is untouched
    other = mix_batch(images, labels, 4, 0.2, 1.0, seed=(1, 3, 0, 0))
    assert not torch.equal(first[1], other[1])  # the next step mixes differently
    assert position_seed((1, 2, 0, 0)) != position_seed((1, 2, 0, 1))  # ranks differ


def test_with_both_each_batch_is_mixup_or_cutmix_about_half_the_time():
    images, labels = _named_pixels(2, 4), torch.arange(2)
    cutmix = 0
    for step in range(200):
        mixed, _ = mix_batch(images, labels, 2, 1.0, 1.0, seed=(0, step, 0, 0))
        # CutMix copies pixels: every value is one of the two images' own; MixUp blends them
        cutmix += bool(((mixed == images) | (mixed == images.roll(1, 0))).all())
    assert 70 <= cutmix <= 130  # 200 fair draws: 100 +- 30 is over 4 standard deviations


def test_one_image_or_no_alpha_gives_the_images_and_one_hot_targets():
    images = _named_pixels(1)
    mixed, target = mix_batch(images, torch.tensor([2]), 3, 0.2, 1.0, seed=(0, 0, 0, 0))
    assert mixed is images and torch.equal(target, torch.tensor([[0.0, 0.0, 1.0]]))
    images = _named_pixels(3)
    mixed, target = mix_batch(images, torch.tensor([2, 0, 1]), 3, 0.0, 0.0, seed=(0, 0, 0, 0))
    assert mixed is images and torch.equal(target, torch.eye(3)[[2, 0, 1]])
