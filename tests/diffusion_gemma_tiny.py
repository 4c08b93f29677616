"""The smallest DiffusionGemma that transformers builds: a random model for the CPU tests."""

from __future__ import annotations

import torch


def tiny_config(vocab_size: int = 64, canvas_length: int = 8, eos_token_id: int | None = None):
    """Two text layers (a sliding one and the full one the model requires), one expert routed
    of two, hidden size 16, and a one-layer vision tower of width 8 (the model always builds
    one): about 11k parameters."""
    from transformers import DiffusionGemmaConfig

    text = dict(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, global_head_dim=8,
        layer_types=["sliding_attention", "full_attention"], sliding_window=8, num_experts=2,
        top_k_experts=1, moe_intermediate_size=16, max_position_embeddings=512, pad_token_id=0,
        eos_token_id=eos_token_id, bos_token_id=2,
    )  # fmt: skip
    vision = dict(
        model_type="gemma4_vision", hidden_size=8, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=8, position_embedding_size=16,
        patch_size=2,
    )  # fmt: skip
    return DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=canvas_length,
        boi_token_id=vocab_size - 4, eoi_token_id=vocab_size - 3, image_token_id=vocab_size - 2,
    )  # fmt: skip


def tiny_model(seed: int = 0, logit_scale: float = 100.0, **kw):
    """A random tiny ``DiffusionGemmaForBlockDiffusion`` in eval mode. ``logit_scale`` sharpens
    the tied output layer so that some tokens are confident (a random model of width 16 is
    nearly uniform, which would make every policy accept one token per call)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(**kw)).eval()
    with torch.no_grad():
        model.model.decoder.norm.weight.mul_(logit_scale)
    return model
