"""The GPU path: CUDA-marked tests, skipped without a GPU (`make gpu-check` runs them).

What a CPU cannot check: the fused weight paths on CUDA tensors (the torch path; the
native kernels are CPU-only), the network on CUDA against the same network on CPU,
bf16 autocast with channels_last through the engine's training step, and the engine
itself on CUDA with fp16 and its GradScaler.
"""
import math

import pytest
import torch

from bnn_helpers import binarize as B
from bnn_helpers import create_model
from bnn_helpers.agc import parameters_except_classifier
from bnn_helpers.losses import Objective
from bnn_helpers.training_step import make_optimizer, training_step

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("fused, reference", [
    (B.binarize_standardized_weight, B.reference_binarize_standardized_weight),
    (B.standardize_weight, B.reference_standardize_weight)])
def test_fused_weight_paths_on_cuda_match_the_float64_composition(fused, reference):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, 3, 3, generator=g) * 0.7 + 0.3
    gain = torch.linspace(-1.5, 2.0, 64).view(-1, 1, 1, 1)
    up = torch.randn(w.shape, generator=g)

    def run(fn, dtype):
        wd = w.to(CUDA, dtype).requires_grad_()
        gd = gain.to(CUDA, dtype).requires_grad_()
        out = fn(wd, gd)
        return (out, *torch.autograd.grad(out, (wd, gd), up.to(CUDA, dtype)))

    for got, want in zip(run(fused, torch.float32), run(reference, torch.float64)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("variant", ["bf", "bn", "none"])
def test_network_on_cuda_matches_cpu(variant):
    torch.manual_seed(0)
    model = create_model(f"reactnet_a_{variant}", binary_weights=True, num_classes=10,
                         width_mult=0.25).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to(CUDA)(x.to(CUDA)).cpu()
    # TF32 and other kernels move pre-sign values by rounding; a sign that flips changes a
    # few logits a little, so compare the logits as a whole, not bit for bit.
    assert torch.isfinite(gpu).all()
    assert (gpu - cpu).norm() <= 0.05 * cpu.norm()


@pytest.mark.parametrize("variant", ["bf", "bn"])
def test_bf16_channels_last_training_step(variant):
    torch.manual_seed(0)
    model = create_model(f"reactnet_a_{variant}", binary_weights=True, num_classes=10,
                         width_mult=0.25).to(CUDA).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, "adam", 5e-4)
    x = torch.randn(16, 3, 64, 64, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=CUDA)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        out = training_step(model, x, y, Objective("ce"), optimizer, amp="bf16",
                            agc_params=parameters_except_classifier(model))
    assert math.isfinite(out.loss.item()) and 0.0 <= out.clip_share.item() <= 1.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_engine_fp16_on_cuda(tmp_path, tiny_run, make_image_folder):
    from bnn_helpers.train import run
    data = make_image_folder(tmp_path / "data")
    run_dir = run(None, **dict(tiny_run, dataset="folder", data_dir=str(data), image_size=32,
                               batch_size=8, device="cuda", amp="fp16", epochs=1,
                               output_dir=str(tmp_path / "runs"), name="fp16"))
    for step in (1, 2):
        assert (run_dir / f"step{step}" / "best.pth").is_file()
    rows = (run_dir / "summary.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all("nan" not in r for r in rows)
