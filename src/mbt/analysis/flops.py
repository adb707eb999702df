"""Multiply-adds (1 MAC = 1 FLOP, the paper's and XLA cost-analysis convention) and parameters.

Counted by running the model on the `meta` device under torch's FlopCounterMode, so the count is of exactly what
the code executes (matmuls, convolutions and scaled-dot-product attention, for whichever fusion schedule). Element-
wise work (LayerNorm, GELU, softmax, residual adds) is not counted; XLA counts it too, which puts the official
numbers ~0.8% above ours for the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mbt.model.config import MBTConfig


@dataclass
class FlopReport:
    gflops: float  # total GMACs of one clip (batch 1, evaluation mode, all modalities)
    params: int
    per_modality: dict[str, float]  # GMACs of each stream's tokenizer + blocks (joint blocks under "joint")
    params_per_modality: dict[str, int]
    unimodal: dict[str, float]  # GMACs of the model run on one modality alone

    def to_dict(self) -> dict:
        return {"gflops": round(self.gflops, 3), "params": self.params,
                "gflops_per_modality": {k: round(v, 3) for k, v in self.per_modality.items()},
                "params_per_modality": self.params_per_modality,
                "gflops_unimodal": {k: round(v, 3) for k, v in self.unimodal.items()}}


def _count(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    with FlopCounterMode(display=False) as counter:
        model(**inputs)
    per_module = {name: sum(ops.values()) / 2e9 for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() / 2e9, per_module  # FlopCounterMode counts a multiply-add as 2 FLOPs


def count_flops(cfg: MBTConfig, batch_size: int = 1) -> FlopReport:
    from mbt.model import MBT

    with torch.device("meta"):
        model = MBT(cfg).eval()
        inputs = {m: torch.empty(batch_size, *cfg.input_shape(m)) for m in cfg.modalities}
    total, per_module = _count(model, inputs)

    # Each stream's tokenizer and blocks are its own; shared blocks are counted under "joint" (the model says which
    # module belongs to which stream, so this needs no knowledge of its layout)
    owners = {f"MBT.{name}": stream for name, stream in model.module_owners().items()}
    per_modality = {m: 0.0 for m in cfg.modalities}
    for name, gmacs in per_module.items():
        if name in owners:
            per_modality[owners[name]] = per_modality.get(owners[name], 0.0) + gmacs

    unimodal = {}
    if len(cfg.modalities) > 1:
        for m in cfg.modalities:
            unimodal[m], _ = _count(model, {m: inputs[m]})

    params_per_modality = {m: 0 for m in cfg.modalities}
    for name, stream in model.parameter_owners().items():
        params_per_modality[stream] = params_per_modality.get(stream, 0) + model.get_parameter(name).numel()
    params = sum(p.numel() for p in model.parameters())
    return FlopReport(total, params, per_modality, params_per_modality, unimodal)
