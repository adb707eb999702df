"""`train.compile: true`: the compiled model computes what the eager one does, up to float rounding."""

from __future__ import annotations

import pytest
import torch
import yaml

from mbt import MBT, MBTConfig
from mbt.engine.losses import mbt_loss

TINY = dict(depth=2, width=32, num_heads=2, mlp_dim=64, num_frames=4, image_size=32, spec_frames=64,
            num_mel_bins=32, num_classes=5, fusion="bottleneck", fusion_layer=0, drop_path_rate=0.0)
# Inductor fuses and reorders float32 sums (softmax, LayerNorm, GELU, matmul epilogues): differences of a few ulps
# per op, measured at ~2e-6 of each tensor's largest magnitude after two layers, forward and backward. The bound is
# relative to the tensor's scale (its largest element), not per element: a gradient summed over the batch holds
# values near zero beside large ones. A real miscompilation (a wrong op, a lost bias) is orders of magnitude larger.
TOLERANCE = 2e-5


def assert_agree(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    scale = float(expected.abs().max())
    difference = float((actual - expected).abs().max())
    assert difference <= TOLERANCE * scale + 1e-7, f"{name}: differs by {difference:.3g} at a scale of {scale:.3g}"


@pytest.fixture(scope="module")
def inductor():
    """Skips where the CPU inductor back end cannot build its kernels (no C++ compiler, unsupported platform)."""
    try:
        torch.compile(lambda x: torch.sin(x) * 2)(torch.ones(4))
    except Exception as e:  # noqa: BLE001 - any failure of the toolchain means the same: nothing to test here
        pytest.skip(f"torch.compile (inductor, CPU) is unavailable here: {type(e).__name__}: {str(e)[:200]}")


def _inputs(cfg: MBTConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {m: torch.randn(2, *cfg.input_shape(m), generator=g) for m in cfg.modalities}


def test_compiled_model_matches_eager_forward_and_gradients(inductor):
    torch.manual_seed(0)
    cfg = MBTConfig(**TINY)
    model = MBT(cfg).train()
    with torch.no_grad():  # the zero-initialised head would give zero logits and zero gradients below it
        model.head.weight.normal_()
    x, targets = _inputs(cfg), torch.nn.functional.one_hot(torch.tensor([1, 3]), cfg.num_classes).float()
    compiled = torch.compile(model)

    results = []
    for module in (model, compiled):
        model.zero_grad(set_to_none=True)
        output = module(**x)
        mbt_loss(output, targets, cfg).backward()
        results.append((output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (eager_logits, eager_grads), (compiled_logits, compiled_grads) = results
    assert eager_logits.abs().max() > 0.1  # a real signal to compare, not zeros
    assert_agree(compiled_logits, eager_logits, "logits")
    for name, grad in eager_grads.items():
        assert_agree(compiled_grads[name], grad, f"gradient of {name}")


def test_train_compile_key_compiles_the_training_model(tmp_path, monkeypatch):
    """setup_run compiles the model it trains when (and only when) train.compile is true; checkpoints and state
    dicts keep using the model itself."""
    from engine_fixtures import toy_config, write_toy_set
    from mbt.config import load_config
    from mbt.engine import train as train_module

    compiled = []

    def spy(module, *args, **kwargs):
        compiled.append(module)
        return torch.nn.Sequential(module)  # stands for the compiled wrapper (a different module, same parameters)

    monkeypatch.setattr(torch, "compile", spy)
    manifest = write_toy_set(tmp_path, 4)
    path = toy_config(tmp_path, manifest, None, epochs=1)
    for flag in (False, True):
        values = yaml.safe_load(path.read_text())
        values["train"]["compile"] = flag
        path.write_text(yaml.safe_dump(values))
        run = train_module.setup_run(load_config(path), tmp_path / f"run-{flag}", progress=False)
        assert (run.ddp_model is not run.model) == flag and len(compiled) == int(flag)
        assert isinstance(run.model, MBT)
    assert compiled == [run.model]
