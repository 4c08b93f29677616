"""Released reference checkpoints -> discdiff DiT: the logits of the reference network itself.

``tests/reference_dit.py`` re-implements the reference DiT with its own parameter names. Random
weights in it are saved the three ways the reference code saves them (a Lightning checkpoint
with an EMA and a pickled Hydra config, a PyTorchModelHubMixin directory, a Hugging Face
remote-code directory), converted, and the converted DiT must give the same logits.
"""

from __future__ import annotations

import copy
import json
import sys
import types
from collections import OrderedDict

import pytest
import torch

from discdiff.convert import main as convert_main
from discdiff.models import DiT
from discdiff.models.reference import (
    convert_state_dict,
    load_reference,
    read_reference,
    reference_parameter_names,
)
from tests.reference_dit import DIT, randomize_

K, HIDDEN, HEADS, BLOCKS, COND, L, B = 37, 32, 4, 2, 16, 12, 3
TOL = 1e-5


def ref_config(causal: bool = False, name: str = "duo_base") -> dict:
    param = "ar" if causal else ("subs" if name == "mdlm" else "mean")
    return {
        "model": {"hidden_size": HIDDEN, "n_heads": HEADS, "n_blocks": BLOCKS, "cond_dim": COND,
                  "dropout": 0.1, "length": L},  # fmt: skip
        "algo": {"name": "ar" if causal else name, "causal_attention": causal,
                 "parameterization": param, "time_conditioning": name != "mdlm"},  # fmt: skip
        "data": {"tokenizer_name_or_path": "gpt2"},
    }


def make_models(causal: bool = False, name: str = "duo_base", seed: int = 0):
    """The raw reference model and an EMA of it (different weights), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    raw = randomize_(DIT(ref_config(causal, name), K), g).eval()
    ema = randomize_(copy.deepcopy(raw), g).eval()
    return raw, ema


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, (B, L), generator=g), torch.rand(B, generator=g) * 3


def max_diff(ref: DIT, ours: DiT, *, sigma_for_ref=None) -> float:
    x, sigma = inputs()
    with torch.no_grad():
        if ref.causal:
            a, b = ref(x, None), ours(x)
        else:
            a = ref(x, sigma if sigma_for_ref is None else sigma_for_ref)
            b = ours(x, sigma)
    assert a.abs().max() > 1.0  # the random weights shape the logits
    return float((a - b).abs().max())


# --- saving the way the reference saves --------------------------------------------------------


def _fake_module(monkeypatch, name: str, **classes) -> None:
    """Register ``classes`` under module ``name`` (and its parents) so that pickle names them
    as that library's classes."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    module = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, cls_name
        setattr(module, cls_name, cls)
    monkeypatch.setitem(sys.modules, name, module)


class _Node:  # pickles like omegaconf.nodes.AnyNode: its __dict__ holds _val
    def __init__(self, val, parent):
        self._val, self._metadata, self._parent = val, None, parent


class _Container:  # pickles like omegaconf.DictConfig: __getstate__ with _content
    def __init__(self, data, parent=None):
        self._parent, self._metadata = parent, None
        self._content = {
            k: _Container(v, self) if isinstance(v, dict) else _Node(v, self)
            for k, v in data.items()
        }

    def __getstate__(self):
        return {"_metadata": self._metadata, "_parent": self._parent, "_content": self._content}

    def __setstate__(self, state):
        self.__dict__.update(state)


class _Tokenizer:  # an object of a library the loader never imports
    def __init__(self):
        self.vocab = {"a": 0}


def save_lightning(path, raw, ema, config, monkeypatch, *, ema_too: bool = True,
                   drop: tuple[str, ...] = ()) -> None:  # fmt: skip
    """A Lightning-style checkpoint: the module's state dict under ``backbone.``, the EMA's
    shadow parameters (a list in ``backbone.parameters()`` order) and the Hydra config pickled
    as OmegaConf objects next to a tokenizer object."""
    state = OrderedDict(
        (f"backbone.{k}", v.clone()) for k, v in raw.state_dict().items() if k not in drop
    )
    ckpt = {
        "epoch": 0, "global_step": 7, "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 0}}}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4}]}],
    }  # fmt: skip
    if ema_too:
        ckpt["ema"] = {"decay": 0.9999, "num_updates": 7,
                       "shadow_params": [p.detach().clone() for p in ema.parameters()]}  # fmt: skip
    with monkeypatch.context() as m:
        _fake_module(m, "omegaconf.dictconfig", DictConfig=_Container)
        _fake_module(m, "omegaconf.nodes", AnyNode=_Node)
        _fake_module(m, "transformers.models.gpt2.tokenization_gpt2_fast",
                     GPT2TokenizerFast=_Tokenizer)  # fmt: skip
        ckpt["hyper_parameters"] = {"config": _Container(config), "tokenizer": _Tokenizer(),
                                    "vocab_size": None}  # fmt: skip
        torch.save(ckpt, path)


def save_hub_mixin(directory, model, config_json: dict, *, drop: tuple[str, ...] = (),
                   prefix: str = "") -> None:  # fmt: skip
    """``PyTorchModelHubMixin.save_pretrained``: the module's state dict as model.safetensors
    and a config.json of its JSON-able init arguments (here, possibly only vocab_size)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items() if k not in drop}
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config_json))


# --- the mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_reference_names_map_one_to_one_onto_ours(causal):
    ref, _ = make_models(causal)
    ours = DiT.from_preset("tiny", vocab_size=K, hidden_size=HIDDEN, n_heads=HEADS,
                           n_blocks=BLOCKS, cond_dim=COND, causal=causal)  # fmt: skip
    renamed = convert_state_dict(ref.state_dict())
    assert set(renamed) == set(ours.state_dict())
    assert "rotary_emb.inv_freq" in ref.state_dict()
    assert sum(p.numel() for p in ref.parameters()) == ours.num_parameters()
    names = [n for n, _ in ref.named_parameters()]
    assert names == reference_parameter_names(BLOCKS, causal=causal)


# --- the three sources ---------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["duo", "ar"])
@pytest.mark.parametrize("weights", ["raw", "ema"])
def test_lightning_checkpoint_logits_agree(tmp_path, monkeypatch, weights, causal):
    raw, ema = make_models(causal)
    path = tmp_path / "last.ckpt"
    save_lightning(path, raw, ema, ref_config(causal), monkeypatch)
    converted = load_reference(path, weights, model_class=DiT)
    diff = max_diff(raw if weights == "raw" else ema, converted.model)
    assert max_diff(raw if weights == "raw" else ema, DiT.from_reference(path, weights)) == diff
    print(f"lightning {weights} {'ar' if causal else 'duo'}: max |logit diff| = {diff:.2e}")
    assert diff <= TOL
    info = converted.info
    assert info["layout"] == "lightning" and info["weights"] == weights
    assert info["objective"] == ("ar" if causal else "duo") and info["global_step"] == 7
    assert info["tokenizer"] == "gpt2" and info["length"] == L


@pytest.mark.parametrize("weights", ["raw", "ema"])
def test_hub_mixin_directory_logits_agree(tmp_path, weights):
    raw, ema = make_models()
    model = raw if weights == "raw" else ema  # the mixin saves whichever weights were loaded
    save_hub_mixin(tmp_path / "hub", model, {"vocab_size": K})
    converted = load_reference(tmp_path / "hub", model_class=DiT)
    diff = max_diff(model, converted.model)
    print(f"hub-mixin {weights}: max |logit diff| = {diff:.2e}")
    assert diff <= TOL
    sources = converted.info["config_sources"]
    assert converted.info["layout"] == "hub-mixin"
    assert "rotary_emb.inv_freq" in sources["n_heads"] and "shape" in sources["hidden_size"]
    assert converted.model.config.n_heads == HEADS and converted.model.config.cond_dim == COND


def test_remote_code_directory_mdlm_logits_agree(tmp_path):
    raw, _ = make_models(name="mdlm")
    config_json = {
        "model_type": "mdlm", "auto_map": {"AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "vocab_size": K, "model_length": L, "hidden_dim": HIDDEN, "cond_dim": COND,
        "n_blocks": BLOCKS, "n_heads": HEADS, "dropout": 0.1, "time_conditioning": False,
    }  # fmt: skip
    save_hub_mixin(tmp_path / "mdlm", raw, config_json, prefix="backbone.",
                   drop=("rotary_emb.inv_freq",))  # fmt: skip
    converted = load_reference(tmp_path / "mdlm", dropout=0.0, model_class=DiT)
    # MDLM ignores the noise level (sigma is zeroed); discdiff's MaskedDiffusion passes 0.
    x, _ = inputs()
    zero = torch.zeros(B)
    with torch.no_grad():
        diff = float((raw(x, zero) - converted.model(x, zero)).abs().max())
    print(f"hf-remote-code mdlm: max |logit diff| = {diff:.2e}")
    assert diff <= TOL
    info = converted.info
    assert info["layout"] == "hf-remote-code" and info["objective"] == "mdlm"
    assert info["mask_id"] == K - 1 and info["time_conditioning"] is False
    assert info["config_sources"]["n_heads"] == "source config n_heads"
    assert info["config_sources"]["dropout"] == "override" and converted.model.config.dropout == 0


def test_lightning_config_is_read_without_omegaconf(tmp_path, monkeypatch):
    raw, ema = make_models()
    path = tmp_path / "no-rotary.ckpt"
    save_lightning(path, raw, ema, ref_config(), monkeypatch, drop=("rotary_emb.inv_freq",))
    assert "omegaconf.dictconfig" not in sys.modules
    ref = read_reference(path, "raw")
    assert ref.config["model"]["n_heads"] == HEADS and ref.config["algo"]["name"] == "duo_base"
    converted = load_reference(path, "ema", model_class=DiT)
    assert converted.info["config_sources"]["n_heads"] == "source config model.n_heads"
    assert max_diff(ema, converted.model) <= TOL


def test_cli_writes_a_from_pretrained_directory(tmp_path, monkeypatch, capsys):
    raw, ema = make_models()
    src = tmp_path / "duo.ckpt"
    save_lightning(src, raw, ema, ref_config(), monkeypatch)
    for weights, ref in (("raw", raw), ("ema", ema)):
        dst = tmp_path / f"duo-{weights}"
        convert_main([str(src), str(dst), "--weights", weights])
        model = DiT.from_pretrained(dst).eval()
        diff = max_diff(ref, model)
        print(f"convert CLI lightning {weights}: max |logit diff| = {diff:.2e}")
        assert diff <= TOL
        info = json.loads((dst / "reference.json").read_text())
        assert info["weights"] == weights and info["objective"] == "duo"
    assert "2 blocks, 4 heads" in capsys.readouterr().out


# --- clear errors --------------------------------------------------------------------------------


def test_errors_name_what_is_missing(tmp_path, monkeypatch):
    raw, ema = make_models()
    incomplete = tmp_path / "incomplete.ckpt"
    save_lightning(incomplete, raw, ema, ref_config(), monkeypatch,
                   drop=("blocks.1.attn_out.weight",))  # fmt: skip
    with pytest.raises(ValueError, match=r"backbone\.blocks\.1\.attn_out\.weight"):
        load_reference(incomplete, "raw", model_class=DiT)
    no_ema = tmp_path / "no-ema.ckpt"
    save_lightning(no_ema, raw, ema, ref_config(), monkeypatch, ema_too=False)
    with pytest.raises(ValueError, match="weights='raw'"):
        load_reference(no_ema, model_class=DiT)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": [1, 2, 3]}, other)
    with pytest.raises(ValueError, match="unknown layout"):
        load_reference(other, model_class=DiT)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown layout"):
        load_reference(tmp_path / "empty", model_class=DiT)
    with pytest.raises(FileNotFoundError):
        load_reference(tmp_path / "nowhere.ckpt", model_class=DiT)
    headless = tmp_path / "headless"
    save_hub_mixin(headless, raw, {"vocab_size": K}, drop=("rotary_emb.inv_freq",))
    with pytest.raises(ValueError, match="n_heads"):
        load_reference(headless, model_class=DiT)
    assert max_diff(raw, load_reference(headless, n_heads=HEADS, model_class=DiT).model) <= TOL
    with pytest.raises(ValueError, match="contradicts"):
        load_reference(headless, n_heads=HEADS, hidden_size=64, model_class=DiT)
    with pytest.raises(ValueError, match="unknown DiTConfig fields"):
        load_reference(headless, n_head=HEADS, model_class=DiT)
    with pytest.raises(SystemExit, match="n_heads"):
        convert_main([str(headless), str(tmp_path / "out")])
