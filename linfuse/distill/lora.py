"""LoRA distillation (Liger-style): instead of the converted layers' q/k/v/out themselves, low-rank PEFT adapters on
them train alongside the linear-attention processors, and are exported in diffusers' LoRA format.

The student's projections stay the teacher's, so what ships is the processors (``linear_attention/``) plus one small
LoRA file that ``pipe.load_lora_weights`` reads; the adapters start at zero (B = 0), so step 0 is the plain
conversion.
"""

from pathlib import Path

import torch

from ..linearize.convert import linearized_layers, trainable_parameters

ADAPTER = "linfuse_distill"
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_DIR = "lora"


def add_projection_lora(student, rank: int) -> list[torch.nn.Parameter]:
    """Put rank-``rank`` adapters on every converted layer's projections; return what trains (processors + LoRA)."""
    from peft import LoraConfig

    targets = [f"{name}.{projection}" for name, _ in linearized_layers(student) for projection in PROJECTIONS]
    student.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True),
                        adapter_name=ADAPTER)
    lora = [param for name, param in student.named_parameters() if f".{ADAPTER}." in name]
    return trainable_parameters(student, train_projections=False) + lora


def take_lora(student) -> dict[str, torch.Tensor]:
    """The adapters in diffusers' LoRA layout (without the ``unet.`` prefix), then removed from the student, whose
    projections are the teacher's again."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(student, adapter_name=ADAPTER))
    student.unload_lora()
    return {key: value.detach().cpu().contiguous() for key, value in state.items()}


def save_lora(pipe_class, state: dict[str, torch.Tensor], folder: Path) -> Path:
    """``folder/pytorch_lora_weights.safetensors`` written by the pipeline class's own LoRA writer (atomic). ``folder``
    lies in a run or export folder whose ownership the caller has checked, so an earlier one is replaced."""
    from ..fileio import atomic_folder

    return atomic_folder(Path(folder), lambda tmp: pipe_class.save_lora_weights(tmp, unet_lora_layers=state),
                         made_by="distill", kind="a LoRA", overwrite=True)
