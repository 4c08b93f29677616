"""``make gpu-bench`` (benchmarks/gpu.py): its ``--tiny`` mode runs every row on the CPU, and
without a GPU the plain command stops with a message instead of measuring the CPU."""

from __future__ import annotations

import math

import pytest
import torch

import benchmarks.gpu as gpu  # the GPU benchmark itself is what is tested here


def test_tiny_mode_runs_every_row_on_the_cpu(capsys):
    rows = gpu.main(["--tiny"])
    out = capsys.readouterr().out
    metrics = [r.metric for r in rows]
    for part in ("copy bandwidth", "uniform NELBO fwd+bwd", "uniform NELBO peak extra memory",
                 "ancestral step", "fused head", "sample_uniform", "kernel loop",
                 "MFU, eager", "MFU, compiled", "block sampling"):  # fmt: skip
        assert any(part in m for m in metrics), part
        assert part in out
    timed = [r for r in rows if r.unit in ("ms", "GB/s", "%") and "MFU" not in r.metric]
    assert timed and all(r.ours is not None and math.isfinite(r.ours) for r in timed)
    assert all(r.met is None for r in rows)  # no verdicts from CPU timings


def test_head_parts_is_the_input_of_the_output_projection():
    model = gpu._model(gpu.TINY, torch.device("cpu")).eval()  # no dropout
    z_t = torch.randint(0, gpu.TINY.dit_vocab, (2, 5))
    sigma = torch.rand(2)
    hidden, weight, bias = gpu.head_parts(model, z_t, sigma)
    torch.testing.assert_close(hidden @ weight.T + bias, model(z_t, sigma))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_without_a_gpu_it_exits_with_a_message(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu.main([])
    assert exc.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err
