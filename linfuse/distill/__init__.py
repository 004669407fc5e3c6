"""Distillation recipes (LinFusion, CLEAR, LiT losses) on accelerate. Filled in by the distillation issue."""
