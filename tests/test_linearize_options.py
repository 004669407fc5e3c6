"""Every option of every conversion method is checked at conversion, before any layer changes (issue 26, defect 5).

Each method's options are declared with their kind and range (``Method.option_specs()``); these tests send bad
values of each kind to every option of every method in ``method_names()`` and check the refusal names the method,
the option and the value, and that the model is exactly as it was.
"""

import functools
import math

import numpy as np
import pytest
import torch
from tiny_dits import tiny_dit, tiny_flux
from tiny_models import tiny_unet, unet_inputs

import linfuse
from linfuse.errors import InvalidArgumentError
from linfuse.linearize import METHODS, linearized_layers, method_names
from linfuse.linearize.registry import HYBRID, Method, hybrid_option_specs, register

MODEL_OF = {"clear": tiny_flux, "lit": tiny_dit}  # the others convert UNet self-attention
REQUIRED = {HYBRID: {"softmax_layers": 1}}  # what a method needs besides the option under test

BAD_VALUES = {  # kind -> values no option of that kind accepts
    "int": [math.nan, math.inf, -1, 2.5, "3", True, 4.0],
    "float": [math.nan, math.inf, -math.inf, -1.0, 0, "1e-4", True, None],
    "bool": [1, 0, "yes", None],
    "choice": ["softplusx", 1, None, ""],
    "int_or_names": [2.5, -1, True, "mid_block", [1], math.nan],
}


@functools.cache
def model_for(method: str):
    return MODEL_OF.get(method, tiny_unet)()


def specs_of(method: str) -> dict:
    if method == HYBRID:
        return {**hybrid_option_specs(), **METHODS["linfusion"].option_specs()}
    return METHODS[method].option_specs()


def bad_cases():
    for method in method_names():
        for name, spec in specs_of(method).items():
            for value in BAD_VALUES[spec.kind]:
                if value is None and spec.optional:
                    continue
                yield pytest.param(method, name, value, id=f"{method}-{name}-{value!r}")


def processors(model) -> dict:
    return {name: module.processor for name, module in model.named_modules() if hasattr(module, "processor")}


def snapshot(model):
    return {key: value.clone() for key, value in model.state_dict().items()}, processors(model)


def assert_unchanged(model, before) -> None:
    state, installed = before
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[key], state[key]) for key in state)
    assert processors(model) == installed  # the very same processor objects
    assert not linearized_layers(model)


def test_every_method_declares_every_option():
    for method in METHODS.values():
        assert list(method.option_specs()) == method.options()
        assert all(spec.text for spec in method.option_specs().values())


def test_an_option_without_a_declaration_cannot_be_registered():
    class Undeclared(METHODS["sana"].processor_class):
        def __init__(self, dim, heads, eps=1e-4, sharpness=2.0):
            super().__init__(dim, heads, eps)

    with pytest.raises(TypeError, match="does not declare sharpness"):
        register(Method("undeclared", Undeclared, "test"))
    assert "undeclared" not in METHODS


@pytest.mark.parametrize("method, name, value", list(bad_cases()))
def test_a_bad_option_value_is_refused_before_the_model_changes(method, name, value):
    model = model_for(method)
    before = snapshot(model)
    options = {**REQUIRED.get(method, {}), name: value}
    with pytest.raises(InvalidArgumentError) as error:
        linfuse.linearize(model, method=method, **options)
    message = str(error.value)
    assert f"method={method!r}" in message or f"method {method!r}" in message
    assert f"{name} must be " in message and f"got {value!r}" in message
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", method_names())
def test_an_unknown_option_is_refused_with_the_methods_options(method):
    model = model_for(method)
    before = snapshot(model)
    with pytest.raises(InvalidArgumentError, match=r"takes the options .*; got sharpness"):
        linfuse.linearize(model, method=method, sharpness=2, **REQUIRED.get(method, {}))
    assert_unchanged(model, before)


@pytest.mark.parametrize("options, message", [
    ({"eps": -1.0}, "linearize(method='linfusion'): eps must be a finite number > 0; got -1.0"),
    ({"eps": math.nan}, "linearize(method='linfusion'): eps must be a finite number > 0; got nan"),
    ({"feature_map": "softplusx"},
     "linearize(method='linfusion'): feature_map must be one of 'elu1', 'relu', 'identity'; got 'softplusx'"),
])
def test_the_reported_cases_are_refused_with_the_allowed_range(options, message):
    unet = tiny_unet()
    before = snapshot(unet)
    with pytest.raises(InvalidArgumentError) as error:
        linfuse.linearize(unet, **options)
    assert str(error.value) == message
    assert_unchanged(unet, before)


def test_hybrid_checks_its_base_methods_options():
    unet = tiny_unet()
    with pytest.raises(InvalidArgumentError, match=r"method='hybrid', base='slab'\): kernel_size must be an odd "
                                                   r"integer >= 1; got 4"):
        linfuse.linearize(unet, method=HYBRID, base="slab", softmax_layers=1, kernel_size=4)
    with pytest.raises(InvalidArgumentError, match=r"base must be one of 'linfusion', .*; got 'hybrid'"):
        linfuse.linearize(unet, method=HYBRID, base=HYBRID, softmax_layers=1)
    assert not linearized_layers(unet)


def test_options_of_loaded_weights_are_checked_too(tmp_path):
    model = tiny_flux()
    linfuse.linearize(model, method="clear", radius=2)
    linfuse.save_linear_weights(model, tmp_path / "clear")
    fresh = tiny_flux()
    with pytest.raises(InvalidArgumentError, match="proportional_attention must be True or False; got 'yes'"):
        linfuse.linearize(fresh, method="clear", weights=tmp_path / "clear", proportional_attention="yes")
    assert not linearized_layers(fresh)
    linfuse.linearize(fresh, method="clear", weights=tmp_path / "clear", proportional_attention=True)
    assert all(attn.processor.proportional_attention for _, attn in linearized_layers(fresh))


@pytest.mark.parametrize("method", method_names())
def test_the_defaults_still_convert(method):
    model = MODEL_OF.get(method, tiny_unet)()
    report = linfuse.linearize(model, method=method, **REQUIRED.get(method, {}))
    assert report.layers_replaced >= 1


def test_valid_values_of_other_number_types_are_taken():
    unet = tiny_unet()
    linfuse.linearize(unet, method="slab", kernel_size=np.int64(3), eps=np.float32(1e-3))
    processor = linearized_layers(unet)[0][1].processor
    assert (processor.kernel_size, processor.eps) == (3, pytest.approx(1e-3))
    with torch.no_grad():
        assert torch.isfinite(unet(**unet_inputs(unet)).sample).all()


def test_a_distill_config_checks_the_method_options_before_loading():
    from linfuse.distill.recipe import DistillConfig

    with pytest.raises(InvalidArgumentError, match="linearize\\(method='rala'\\): eps must be a finite number > 0; "
                                                   "got nan"):
        DistillConfig(model="no/such-model", method="rala", options={"eps": math.nan}).validate()
