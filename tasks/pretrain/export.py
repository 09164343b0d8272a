"""Our model directory -> a Hugging Face directory that `AutoModelForCausalLM.from_pretrained` loads.

The GPT in models/ has Llama's layout (RMSNorm, rotary embeddings rotating (x_i, x_{i+d/2}) pairs,
SwiGLU, grouped-query attention, no biases), so the export is a renaming: the fused `qkv` and `fc`
weights are split into q/k/v and gate/up, the trunk's blocks and head 0's block become the Llama layers,
head 0's norm the final norm. With `n_future > 1` the next-token head is the exported model; the extra
heads are kept beside it in `extra_heads.safetensors` (their blocks and norms, under our names) so
nothing trained is lost. `mlp: gelu` has no Llama equivalent (Llama's MLP is always gated): its export
is refused with that reason.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.config import GPTConfig
from tasks.core.errors import UserError
from tasks.pretrain.checkpoint import read_model_config

EXTRA_HEADS = "extra_heads.safetensors"


def llama_config(cfg: GPTConfig, eos_id: int | None = None, pad_id: int | None = None) -> dict[str, Any]:
    """The `config.json` of the equivalent LlamaForCausalLM."""
    if cfg.mlp != "swiglu":
        raise UserError(f"mlp '{cfg.mlp}' cannot be exported as a Llama model (Llama's MLP is gated: "
                        "SwiGLU); train with pretrain.mlp: swiglu to get a Hugging Face export")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_size, "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "float32",
        "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
        "llmpipe": {"n_future": cfg.n_future, "extra_heads": EXTRA_HEADS if cfg.n_future > 1 else None},
    }


def llama_weights(cfg: GPTConfig, ours: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                          dict[str, torch.Tensor]]:
    """(Llama state dict, the extra heads' weights under our names) from our state dict."""
    q, kv = cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size
    blocks = [f"trunk.{i}." for i in range(cfg.n_layer - 1)] + ["heads.0.block."]
    out = {"model.embed_tokens.weight": ours["wte.weight"], "model.norm.weight": ours["heads.0.norm.weight"]}
    for i, src in enumerate(blocks):
        dst = f"model.layers.{i}."
        wq, wk, wv = ours[src + "attn.qkv.weight"].split([q, kv, kv], dim=0)
        gate, up = ours[src + "mlp.fc.weight"].chunk(2, dim=0)
        out |= {dst + "self_attn.q_proj.weight": wq, dst + "self_attn.k_proj.weight": wk,
                dst + "self_attn.v_proj.weight": wv, dst + "self_attn.o_proj.weight": ours[src + "attn.proj.weight"],
                dst + "mlp.gate_proj.weight": gate, dst + "mlp.up_proj.weight": up,
                dst + "mlp.down_proj.weight": ours[src + "mlp.proj.weight"],
                dst + "input_layernorm.weight": ours[src + "norm1.weight"],
                dst + "post_attention_layernorm.weight": ours[src + "norm2.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    extra = {k: v for k, v in ours.items() if k.startswith("heads.") and not k.startswith("heads.0.")}
    return ({k: v.contiguous() for k, v in out.items()}, {k: v.contiguous() for k, v in extra.items()})


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` (config.json, model.safetensors, tokenizer files, extra heads) from one of our model
    directories; returns it."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cfg = read_model_config(model_dir)
    meta = json.loads((model_dir / "config.json").read_text())
    eos = meta.get("eot_id")
    tokenizer = model_dir / "tokenizer.json"
    pad = _pad_id(tokenizer) if tokenizer.exists() else None
    weights, extra = llama_weights(cfg, load_file(str(model_dir / "model.safetensors")))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(llama_config(cfg, eos, pad), indent=2))
    if extra:
        save_file(extra, str(out_dir / EXTRA_HEADS))
    if tokenizer.exists():
        _save_tokenizer(tokenizer, out_dir, eos, pad, cfg.block_size)
    return out_dir


def _pad_id(tokenizer_json: Path) -> int | None:
    added = json.loads(tokenizer_json.read_text()).get("added_tokens", [])
    return next((t["id"] for t in added if t["content"] == "<|pad|>"), None)


def _save_tokenizer(tokenizer_json: Path, out_dir: Path, eos: int | None, pad: int | None, max_len: int) -> None:
    """tokenizer.json plus the config a `PreTrainedTokenizerFast` (AutoTokenizer) needs."""
    added = {t["id"]: t["content"] for t in json.loads(tokenizer_json.read_text()).get("added_tokens", [])}
    (out_dir / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "eos_token": added.get(eos), "bos_token": added.get(eos), "pad_token": added.get(pad),
              "clean_up_tokenization_spaces": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None},
                                                              indent=2))
