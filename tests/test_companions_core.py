"""SR companions (ESPCN, SESR collapse) and LinearScope: exact algebra on small random networks."""

import copy

import pytest
import torch
from torch import nn

from linfuse.companions.interpret import linear_map
from linfuse.companions.sr import ESPCN, SESR, SESR_SIZES, CollapsibleLinearBlock
from linfuse.errors import InvalidArgumentError


def randomize(model, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.mark.parametrize("size, scale", [("m3", 2), ("m5", 4), ("m11", 2), ("xl", 2)])
def test_collapsed_sesr_equals_expanded_sesr(size, scale):
    torch.manual_seed(0)
    expanded = randomize(SESR(size, scale=scale, expansion=32), seed=1).double()
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        before = expanded(x)
        collapsed = copy.deepcopy(expanded).collapse()
        after = collapsed(x)
    assert before.shape == (2, 3, 12 * scale, 10 * scale)
    assert (after - before).abs().max() < 1e-5 * max(1.0, before.abs().max().item())
    blocks, features = SESR_SIZES[size]
    assert len(collapsed.blocks) == blocks and collapsed.first.collapsed.out_channels == features
    assert sum(p.numel() for p in collapsed.parameters()) < sum(p.numel() for p in expanded.parameters())
    assert not any("expand" in name for name, _ in collapsed.named_parameters())  # one conv per block


def test_collapse_in_fp32_stays_within_1e_5_of_the_output_scale():
    model = randomize(SESR("m5", expansion=64), seed=2)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        after = copy.deepcopy(model).collapse()(x)
    assert (after - before).abs().max() < 1e-5 * before.abs().max()


def test_a_residual_block_collapses_to_one_kernel_with_the_identity_at_its_centre():
    block = CollapsibleLinearBlock(4, 4, 3, expansion=8, residual=True)
    with torch.no_grad():
        block.squeeze.weight.zero_()
        block.squeeze.bias.zero_()
    weight, bias = block.collapsed_weights()
    expected = torch.zeros(4, 4, 3, 3)
    expected[:, :, 1, 1] = torch.eye(4)
    assert torch.equal(weight, expected) and torch.equal(bias, torch.zeros(4))
    with pytest.raises(InvalidArgumentError, match="needs as many output channels"):
        CollapsibleLinearBlock(4, 8, 3, residual=True)


def test_espcn_upscales_and_bicubic_like_residual_of_sesr_starts_at_nearest():
    assert ESPCN(scale=3)(torch.rand(1, 3, 7, 5)).shape == (1, 3, 21, 15)
    model = SESR("m3", scale=2, expansion=8)
    with torch.no_grad():
        model.last.squeeze.weight.zero_()
        model.last.squeeze.bias.zero_()
        x = torch.rand(1, 3, 4, 4)
        assert torch.equal(model(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))  # global residual only
    with pytest.raises(InvalidArgumentError, match="size must be one of m3, m5, m11, xl"):
        SESR("m7")
    with pytest.raises(InvalidArgumentError, match="scale must be 2 or 4"):
        SESR(scale=3)


class SmallClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.PReLU(), nn.Linear(5, 4))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("build, scale", [(lambda: SmallClassifier(), 0.5), (lambda: SESR("m3", expansion=8), 0.1)])
def test_linearscope_map_reproduces_the_network_output(build, scale):
    model = randomize(build(), seed=3, scale=scale).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    affine = linear_map(model, x)
    assert affine.matrix.shape == (expected.numel(), x.numel())
    assert (affine(x).float() - expected).abs().max() < 1e-5 * max(1.0, expected.abs().max().item())
    assert affine.row_image(0).shape == x.shape and affine.column_image(0).shape == expected.shape
    other = torch.rand(1, 3, 8, 8)  # a different input crosses other gates: the map is local to x
    with torch.no_grad():
        assert (affine(other).float() - model(other)).abs().max() > 1e-3 * expected.abs().max()


def test_linearscope_refuses_smooth_activations_and_batches():
    with pytest.raises(InvalidArgumentError, match="ReLU, LeakyReLU, PReLU, ReLU6"):
        linear_map(ESPCN(), torch.rand(1, 3, 4, 4))
    with pytest.raises(InvalidArgumentError, match="batch size 1"):
        linear_map(SmallClassifier(), torch.rand(2, 3, 8, 8))


def test_one_output_row_equals_the_row_of_the_full_map_and_pictures_show_its_sign():
    from linfuse.companions.interpret import output_row, signed_picture

    model = randomize(SESR("m3", scale=2, channels=1, expansion=8), seed=4)
    x = torch.rand(1, 1, 6, 7)
    mapping = linear_map(model, x)
    for index in (0, 37, mapping.bias.numel() - 1):
        assert torch.allclose(output_row(model, x, index), mapping.row_image(index), atol=1e-12)
    with pytest.raises(InvalidArgumentError, match="index must be an output position"):
        output_row(model, x, mapping.bias.numel())
    row = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    row[0, 0, 0, 0], row[0, 0, 1, 1] = 2.0, -1.0
    picture = signed_picture(row, size=8)
    assert picture.size == (8, 8)
    assert picture.getpixel((0, 0)) == (255, 0, 0) and picture.getpixel((7, 7)) == (128, 128, 255)
    assert picture.getpixel((7, 0)) == (255, 255, 255)
