"""LoRA on a linearized pipeline (PEFT, diffusers' LoRA API): adapters on to_q/to_k/to_v/to_out act through the
linear-attention processors, exactly as the same LoRA merged into the weights does.

LinFusion keeps every layer's own projections under their diffusers names, so a LoRA made for the teacher (SD-1.5
fine-tunes, styles) loads into its linear student unchanged; the mixers (``processor.to_q_``/``to_k_``) are not LoRA
targets.
"""

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from tiny_models import tiny_sd_pipeline, unet_inputs

import linfuse
from linfuse.linearize import linearized_layers

PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]


def lora_config(rank: int = 4) -> LoraConfig:
    # init_lora_weights=False: B is random too, so the adapter changes the output (as a trained one does)
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=PROJECTIONS, init_lora_weights=False)


def unet_output(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


def linearized_pipeline():
    pipe = tiny_sd_pipeline()
    linfuse.linearize(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_an_adapter_acts_through_the_linear_processors_as_its_merged_weights_do():
    pipe = linearized_pipeline()
    unet = pipe.unet
    inputs = unet_inputs(unet, batch=1)
    plain = unet_output(unet, inputs)
    torch.manual_seed(0)
    unet.add_adapter(lora_config(), adapter_name="style")
    wrapped = [name for name, attn in linearized_layers(unet) if hasattr(attn.to_q, "lora_A")]
    assert len(wrapped) == len(linearized_layers(unet)) == 16  # every converted layer's projections carry it
    assert not [n for n, _ in unet.named_modules() if ".processor." in n and "lora" in n]  # the mixers do not
    active = unet_output(unet, inputs)
    assert (active - plain).abs().mean() > 1e-3 * plain.abs().mean()
    pipe.set_adapters(["style"], adapter_weights=[0.5])
    half = unet_output(unet, inputs)
    assert (half - active).abs().mean() > 1e-4 * plain.abs().mean()
    pipe.set_adapters(["style"], adapter_weights=[1.0])
    pipe.fuse_lora(components=["unet"], lora_scale=1.0)
    torch.testing.assert_close(unet_output(unet, inputs), active, rtol=1e-4, atol=1e-5)
    pipe.unfuse_lora(components=["unet"])
    pipe.unload_lora_weights()
    assert not [n for n, _ in unet.named_modules() if "lora" in n]
    torch.testing.assert_close(unet_output(unet, inputs), plain, rtol=1e-5, atol=1e-6)
    linfuse.unlinearize(pipe)  # still reversible after a LoRA came and went
    assert not linearized_layers(unet)


def test_a_lora_made_for_the_teacher_loads_into_its_student_with_its_text_encoder_part(tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    teacher = tiny_sd_pipeline()
    torch.manual_seed(1)
    teacher.unet.add_adapter(lora_config())
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,  # peft itself: transformers'
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),  # own needs 0.22
                            teacher.text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(teacher.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(teacher.text_encoder)))
    tokens = teacher.tokenizer(["a cat"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        teacher_text = teacher.text_encoder(tokens)[0]

    student = linearized_pipeline()
    inputs = unet_inputs(student.unet, batch=1)
    before = unet_output(student.unet, inputs)
    student.load_lora_weights(tmp_path, adapter_name="teacher-lora")
    with torch.no_grad():  # the text-encoder part is the teacher's text-encoder LoRA, untouched by linfuse
        torch.testing.assert_close(student.text_encoder(tokens)[0], teacher_text, rtol=1e-5, atol=1e-6)
    with_lora = unet_output(student.unet, inputs)
    assert (with_lora - before).abs().mean() > 1e-3 * before.abs().mean()
    assert all(hasattr(attn.to_v, "lora_A") for _, attn in linearized_layers(student.unet))
    student.fuse_lora(components=["unet"])
    torch.testing.assert_close(unet_output(student.unet, inputs), with_lora, rtol=1e-4, atol=1e-5)


def test_a_zero_weighted_adapter_leaves_the_linear_model_as_it_was():
    pipe = linearized_pipeline()
    inputs = unet_inputs(pipe.unet, batch=1)
    plain = unet_output(pipe.unet, inputs)
    pipe.unet.add_adapter(lora_config(), adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.0])
    torch.testing.assert_close(unet_output(pipe.unet, inputs), plain, rtol=1e-5, atol=1e-6)
