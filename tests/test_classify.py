"""Classifiers of the emoji domain, their scores, Grad-CAM, and LinearScope on them."""

import numpy as np
import pytest
import torch

from linfuse.companions.classify import CLASSIFIERS, CNNSVM, MobileNetV2, load_classifier, squared_hinge_loss
from linfuse.companions.classify.data import emoji_source, labelled_set
from linfuse.companions.classify.report import classifier_report, format_report
from linfuse.companions.classify.scores import frechet_distance
from linfuse.companions.classify.train import accuracy
from linfuse.companions.interpret import grad_cam, linear_map
from linfuse.errors import InvalidArgumentError


def test_squared_hinge_loss_is_the_multiclass_l2_svm_objective():
    scores = torch.tensor([[2.0, 0.5, -3.0], [0.2, -0.4, 1.5]])
    labels = torch.tensor([0, 1])
    # sample 0: margins 2 − 0.5 = 1.5 and 5 → no loss;  sample 1: −0.4 − 0.2 = −0.6 → 1.6², −0.4 − 1.5 → 2.9²
    expected = (0.0 + 1.6**2 + 2.9**2) / 2
    assert squared_hinge_loss(scores, labels).item() == pytest.approx(expected)
    weight = torch.ones(3, 4)
    assert squared_hinge_loss(scores, labels, weight, c=2.0).item() == pytest.approx(expected + 12 / (2 * 2.0 * 2))
    half_margin = torch.tensor([[0.5, 0.0]])
    assert squared_hinge_loss(half_margin, torch.tensor([0])).item() == pytest.approx(0.25)


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (4000, 1)), rng.normal(2, 3, (4000, 1))
    # 1-D: (μ₁ − μ₂)² + (σ₁ − σ₂)²
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    c = rng.normal(size=(500, 6))
    assert abs(frechet_distance(c, c)) < 1e-8
    rotated = c @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    assert frechet_distance(c, rotated) >= -1e-8
    with pytest.raises(InvalidArgumentError, match="same d"):
        frechet_distance(c, c[:, :3])


def test_mobilenet_v2_blocks_are_inverted_residuals_with_linear_bottlenecks():
    model = MobileNetV2(num_classes=10).eval()
    blocks = [m for m in model.features if type(m).__name__ == "InvertedResidual"]
    assert len(blocks) == 17 and sum(b.residual for b in blocks) == 10
    for block in blocks:
        assert isinstance(block.body[-1], torch.nn.BatchNorm2d)  # no activation after the projection
        convs = [m for m in block.body if isinstance(m, torch.nn.Conv2d)]
        assert convs[-2].groups == convs[-2].in_channels  # depth-wise 3×3
        assert convs[-1].out_channels <= convs[-2].out_channels  # projection narrows (or keeps) the width
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_grad_cam_of_a_pool_and_linear_head_is_the_class_activation_map():
    torch.manual_seed(0)
    model = CNNSVM(num_classes=5).eval()
    with torch.no_grad():
        model.svm.weight[3].abs_()  # a class whose map is not all clipped by the ReLU
    x = torch.rand(1, 3, 64, 64)
    cam, target = grad_cam(model, x, target=3, layer=model.features[-1])  # the last ReLU's output
    with torch.no_grad():
        activations = model.features(x)[0]
        direct = torch.relu(torch.einsum("k,khw->hw", model.svm.weight[3], activations))[None, None]
        direct = torch.nn.functional.interpolate(direct, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    assert target == 3
    assert torch.allclose(cam, direct / direct.max(), atol=1e-5)
    assert grad_cam(model, x)[1] == int(model(x).argmax())
    with pytest.raises(InvalidArgumentError, match="target must be a class index in \\[0, 4\\]"):
        grad_cam(model, x, target=5)


@pytest.mark.parametrize("build", [lambda: CNNSVM(num_classes=6), lambda: MobileNetV2(num_classes=6, width=0.25)])
def test_linearscope_reproduces_the_classifiers_scores(build):
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # give BatchNorm non-trivial statistics, as training would
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 32, 32)
    mapping = linear_map(model, x)
    with torch.no_grad():
        expected = model.double()(x.double())
    assert (mapping(x) - expected).abs().max() < 1e-5 * max(1.0, expected.abs().max().item())
    assert mapping.row_image(0).shape == (1, 3, 32, 32)


@pytest.fixture(scope="module")
def validation():
    source = emoji_source()
    return source, labelled_set(len(source.catalogue) * 2, validation=True, source=source)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_bundled_classifiers_name_held_out_renders(name, validation):
    _, (pictures, labels) = validation
    model, names = load_classifier(name)
    assert len(names) == 144 and names[0] == "chestnut"
    assert accuracy(model, pictures, labels) > 0.5  # chance is 1/144


def test_classifier_report_scores_renders_against_themselves(validation):
    source, _ = validation
    intended = list(range(0, 144, 4))
    renders = [source.render(i, "white") for i in intended]
    shifted = [source.render(i, "white", scale=0.6, offset=(0.2, 0.8)) for i in intended]
    report = classifier_report(source.names, intended, {"a": renders, "b": shifted}, renders,
                               classifiers=("cnn-svm",))["cnn-svm"]
    assert report["models"]["a"]["prompt_accuracy"] > 0.7
    shifted_distance = report["models"]["b"]["frechet_to_renders"]
    assert shifted_distance > 0
    # the same pictures: zero up to the eigen-decompositions' rounding, tiny next to a real difference
    assert abs(report["models"]["a"]["frechet_to_renders"]) < 1e-4 * shifted_distance
    assert 0 <= report["pairs"]["a|b"]["agreement"] <= 1
    lines = format_report({"cnn-svm": report})
    assert any("b vs a: agreement" in line for line in lines)
