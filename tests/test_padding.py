"""Padding masks: the DiT, the diffusion objects, the example's unpacked data, loss and bound.

The exactness checks compare a padded row with the same row alone: padded keys are masked out
of attention, so the logits at real positions agree to rounding (float32 <= 1e-6, float64
<= 1e-12), and so does the per-token NELBO on real tokens with the same noisy tokens. Each
assertion message prints the measured max abs difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from discdiff import GaussianCurriculum, MaskedDiffusion, UniformDiffusion, losses
from discdiff.models import DiT
from examples.corpus import Document
from examples.data import BatchIterator, PaddedRows, pad_documents, prepare_data
from examples.tokenizer import CharTokenizer
from tests.helpers import make_corpus, tiny_config

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
LENGTHS = (16, 11, 5, 1)
K = 40


def _model(dtype: torch.dtype, causal: bool = False, vocab_size: int = K) -> DiT:
    torch.manual_seed(0)
    model = DiT.from_preset(
        "tiny", vocab_size=vocab_size, hidden_size=32, n_blocks=2, n_heads=4, cond_dim=16,
        causal=causal, dropout=0.0,
    )  # fmt: skip
    with torch.no_grad():  # random weights everywhere: adaLN-zero would hide the attention
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.to(dtype).eval()


def _padded_batch(length: int = 16, vocab_size: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab_size, (len(LENGTHS), length), generator=g)
    mask = torch.arange(length)[None, :] < torch.tensor(LENGTHS)[:, None]
    return x, mask


def _worst_row_gap(padded: torch.Tensor, alone: list[torch.Tensor]) -> float:
    return max(
        (padded[i, :n] - row[0]).abs().max().item() for i, (n, row) in enumerate(
            zip(LENGTHS, alone, strict=True))
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_dit_logits_at_real_positions_match_the_row_alone(dtype, causal):
    model = _model(dtype, causal)
    x, mask = _padded_batch()
    sigma = None if causal else torch.linspace(0.1, 3.0, len(LENGTHS))
    with torch.no_grad():
        padded = model(x, sigma, padding_mask=mask)
        alone = [
            model(x[i : i + 1, :n], None if sigma is None else sigma[i : i + 1])
            for i, n in enumerate(LENGTHS)
        ]
    gap = _worst_row_gap(padded, alone)
    assert gap <= TOL[dtype], f"max |logits padded - alone| = {gap:.3e} ({dtype}, causal={causal})"
    assert torch.isfinite(padded).all(), "padded positions must stay finite"
    if not causal:  # the check has teeth: without the mask the padding leaks in
        with torch.no_grad():
            leak = _worst_row_gap(model(x, sigma), alone)
        assert leak > 1e3 * TOL[torch.float32], f"unmasked gap only {leak:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dit_soft_inputs_with_padding_match_the_row_alone(dtype):
    model = _model(dtype)
    x, mask = _padded_batch()
    soft = torch.softmax(torch.randn(*x.shape, K, dtype=dtype) * 3, dim=-1)
    sigma = torch.full((len(LENGTHS),), 0.7)
    with torch.no_grad():
        padded = model(soft, sigma, padding_mask=mask)
        alone = [model(soft[i : i + 1, :n], sigma[i : i + 1]) for i, n in enumerate(LENGTHS)]
    gap = _worst_row_gap(padded, alone)
    assert gap <= TOL[dtype], f"max |logits padded - alone| = {gap:.3e} (soft input, {dtype})"


def test_padded_tokens_cannot_reach_real_ones():
    model = _model(torch.float64)
    x, mask = _padded_batch()
    other = torch.where(mask, x, (x + 7) % K)  # change every padded token, keep the real ones
    sigma = torch.ones(len(LENGTHS))
    with torch.no_grad():
        a = model(x, sigma, padding_mask=mask)
        b = model(other, sigma, padding_mask=mask)
    gap = (a - b)[mask].abs().max().item()
    assert gap == 0.0, f"padded tokens changed real logits by {gap:.3e}"
    assert not torch.equal(a[~mask], b[~mask])  # the padded positions themselves may change


def test_a_row_of_padding_only_gives_finite_logits():
    model = _model(torch.float32)
    x = torch.randint(0, K, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :3] = True
    with torch.no_grad():
        out = model(x, torch.ones(2), padding_mask=mask)
    assert torch.isfinite(out).all()


def test_padding_mask_rejects_kv_cache_and_the_flash_backend():
    model = _model(torch.float32, causal=True)
    x, mask = _padded_batch()
    with pytest.raises(ValueError, match="kv_cache"):
        model(x, padding_mask=mask, kv_cache=model.new_kv_cache())
    from discdiff.models.attention import attention

    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(RuntimeError, match="padding mask"):
        attention(q, q, q, causal=False, backend="flash", key_padding_mask=torch.ones(1, 4) > 0)


class _Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps the inputs of its last call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z_t, sigma, **cond):
        self.calls.append((z_t, sigma))
        return self.model(z_t, sigma, **cond)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("curriculum", [False, True])
def test_uniform_nelbo_on_real_tokens_matches_the_row_alone(dtype, curriculum):
    """diffusion.loss on a padded batch with cond={"padding_mask": mask}, against the NELBO of
    each real row alone at the same noisy tokens (recorded from the padded call)."""
    model = _model(dtype)
    recorder = _Recorder(model)
    cur = GaussianCurriculum(end_step=10) if curriculum else None
    diffusion = UniformDiffusion(K, curriculum=cur)
    x, mask = _padded_batch()
    t = torch.linspace(0.2, 0.9, len(LENGTHS), dtype=dtype)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        padded = diffusion.loss(recorder, x, t=t, generator=g, cond={"padding_mask": mask})
        (z_in, sigma), = recorder.calls
        schedule = diffusion.curriculum_schedule if curriculum else diffusion.schedule
        tt = t.to(torch.float32) if curriculum else t
        alpha, dalpha = schedule.alpha(tt)[:, None], schedule.dalpha_dt(tt)[:, None]
        z_t = z_in.argmax(-1) if curriculum else z_in  # relaxed softmax(w / tau): argmax is z_t
        gap = 0.0
        for i, n in enumerate(LENGTHS):
            logits = model(z_in[i : i + 1, :n], sigma[i : i + 1])
            alone = losses.uniform_nelbo(
                logits, x[i : i + 1, :n], z_t[i : i + 1, :n], alpha[i : i + 1], dalpha[i : i + 1]
            )
            gap = max(gap, (padded[i, :n] - alone[0]).abs().max().item())
    assert gap <= TOL[dtype] * 10, (
        f"max |NELBO padded - alone| on real tokens = {gap:.3e} ({dtype}, curriculum={curriculum})"
    )


def test_masked_nelbo_on_real_tokens_matches_the_row_alone():
    model = _model(torch.float64, vocab_size=K + 1)
    recorder = _Recorder(model)
    diffusion = MaskedDiffusion(K)
    x, mask = _padded_batch()
    t = torch.linspace(0.3, 0.95, len(LENGTHS), dtype=torch.float64)
    with torch.no_grad():
        padded = diffusion.loss(recorder, x, t=t, generator=torch.Generator().manual_seed(0),
                                cond={"padding_mask": mask})  # fmt: skip
        (z_t, sigma), = recorder.calls
        alpha = diffusion.schedule.alpha(t)[:, None]
        dalpha = diffusion.schedule.dalpha_dt(t)[:, None]
        gap = 0.0
        for i, n in enumerate(LENGTHS):
            logits = model(z_t[i : i + 1, :n], sigma[i : i + 1])
            alone = losses.masked_nelbo(logits, x[i : i + 1, :n], z_t[i : i + 1, :n],
                                        alpha[i : i + 1], dalpha[i : i + 1], K)  # fmt: skip
            gap = max(gap, (padded[i, :n] - alone[0]).abs().max().item())
    assert gap <= 1e-11, f"max |masked NELBO padded - alone| on real tokens = {gap:.3e}"


# --- the example: unpacked data, masked loss and bound ------------------------------------------


def test_pad_documents_one_document_per_row_and_long_ones_cut():
    tok = CharTokenizer("abc ")
    docs = [Document("a", "ab"), Document("b", "abc abc abc"), Document("c", "c")]
    rows = pad_documents(docs, tok, 6)
    # "ab" -> 4 tokens; "abc abc abc" -> 13 tokens = rows of 6, 6, 1; "c" -> 3 tokens
    assert rows.lengths.tolist() == [4, 6, 6, 1, 3]
    assert rows.documents == 3 and len(rows) == 5
    assert rows.ids[0].tolist() == [tok.bos_id, *tok.encode("ab"), tok.eos_id, tok.eos_id,
                                    tok.eos_id]  # fmt: skip
    assert rows.mask(np.array([0, 3])).tolist() == [
        [True] * 4 + [False] * 2, [True] + [False] * 5,
    ]  # fmt: skip
    assert rows.padded_fraction == pytest.approx(1 - 20 / 30)


def test_batch_iterator_gives_masks_for_padded_rows():
    ids = np.arange(24, dtype=np.int32).reshape(6, 4)
    rows = PaddedRows(ids, np.array([4, 3, 2, 1, 4, 2], dtype=np.int32), pad_id=0, documents=6)
    it = BatchIterator(rows, 2, seed=0)
    batch = it.next_batch()
    assert batch.mask is not None and batch.mask.dtype == torch.bool
    for row, m in zip(batch.x_0, batch.mask, strict=True):
        i = int(row[0]) // 4
        assert m.sum().item() == rows.lengths[i]
    assert BatchIterator(ids, 2).next_batch().mask is None  # packed: no mask


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_prepare_data_unpacked(corpus_dir):
    data = prepare_data(str(corpus_dir), seq_len=64, val_fraction=0.2, packing=False)
    assert isinstance(data.train, PaddedRows) and isinstance(data.val, PaddedRows)
    assert data.info["packing"] is False and data.info["train_padded_fraction"] > 0
    # every row starts a document or continues one; no token is dropped
    total = sum(int(n) for n in data.train.lengths)
    packed = prepare_data(str(corpus_dir), seq_len=64, val_fraction=0.2)
    assert total >= packed.train.size  # packing drops the final partial row


def test_objective_loss_and_bound_leave_padding_out():
    from examples.objectives import ARObjective, DuoObjective
    from examples.train import _mean_loss, evaluate_bound

    model = _model(torch.float32)
    x, mask = _padded_batch()
    duo = DuoObjective(K, gamma_min=-3.0, gamma_max=0.5, tau=1e-3, curriculum_end=0)
    per_token = duo.loss(model, x, step=0, t=None, generator=torch.Generator(), mask=mask)
    mean = _mean_loss(duo, per_token, mask)
    assert mean.item() == pytest.approx(per_token[mask].mean().item(), rel=1e-6)
    rows = PaddedRows(x.numpy().astype(np.int32), np.array(LENGTHS, dtype=np.int32), 0, 4)
    res = evaluate_bound(duo, model, rows, batch_size=2, max_sequences=None, seed=0,
                         device=torch.device("cpu"))  # fmt: skip
    assert res["tokens"] == sum(LENGTHS)
    ar = ARObjective(K, bos_id=0)
    causal = _model(torch.float32, causal=True)
    res = evaluate_bound(ar, causal, rows, batch_size=4, max_sequences=None, seed=0,
                         device=torch.device("cpu"))  # fmt: skip
    assert res["tokens"] == sum(n - 1 for n in LENGTHS)  # next-token targets inside each row


@pytest.mark.parametrize("objective", ["duo", "ar"])
def test_training_unpacked_runs_and_counts_real_tokens(corpus_dir, tmp_path, objective):
    from examples.train import train

    cfg = tiny_config(corpus_dir, tmp_path / objective, **{
        "data.packing": False, "data.seq_len": 64, "train.objective": objective,
        "train.steps": 3, "train.eval_every": 3, "train.ckpt_every": 3,
    })  # fmt: skip
    result = train(cfg)
    assert result.step == 3 and all(np.isfinite(result.losses))
    data = prepare_data(str(corpus_dir), tokenizer=_tokenizer(tmp_path / objective), seq_len=64,
                        val_fraction=0.2, packing=False)  # fmt: skip
    rows = min(len(data.val), cfg.train.eval_sequences)
    real = int(np.asarray(data.val.lengths[:rows]).sum())
    expected = real if objective == "duo" else real - rows
    assert result.val[-1]["tokens"] == expected


def _tokenizer(run_dir: Path):
    from examples.tokenizer import load_tokenizer

    return load_tokenizer(run_dir)
