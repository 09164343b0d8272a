"""The Hugging Face export: transformers' Auto classes load it and give our logits."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from models.config import GPTConfig
from models.gpt import GPT
from tasks.core.errors import UserError
from tasks.pretrain.checkpoint import is_tied, weights_for_saving
from tasks.pretrain.export import EXTRA_HEADS, export_hf

transformers = pytest.importorskip("transformers", reason="transformers is needed to load the export")


def _tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"] * 20, trainer)
    tok.save(str(path))


def _model_dir(tmp_path, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(**({"vocab_size": 320, "block_size": 32, "n_layer": 3, "n_head": 4, "n_kv_head": 2,
                        "n_embd": 64, "n_future": 1, "mlp": "swiglu", "dropout": 0.0, "tie_embeddings": True} | kw))
    model = GPT(cfg)
    with torch.no_grad():  # norms away from 1, so a mix-up of norm weights shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    d = tmp_path / "model"
    d.mkdir()
    save_file(weights_for_saving(model.state_dict(), is_tied(model)), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"architecture": "llmpipe-gpt", "eot_id": 0,
                                               "model": cfg.to_dict(), "tokenizer": "tokenizer.json"}))
    _tokenizer(d / "tokenizer.json")
    return model.eval(), d


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "n_kv_head": 4}, {"n_future": 3}])
def test_exported_llama_gives_our_logits(tmp_path, kw, torch_one_thread):
    ours, model_dir = _model_dir(tmp_path, **kw)
    out = export_hf(model_dir, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    idx = torch.randint(0, 320, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ours.lm_head(ours.head_forward(0, ours.trunk_forward(idx)))
        got = theirs(idx).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (out / EXTRA_HEADS).exists() == (ours.cfg.n_future > 1)


def test_exported_tokenizer_loads_with_auto_tokenizer(tmp_path):
    _, model_dir = _model_dir(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(export_hf(model_dir, tmp_path / "hf"))
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id == 1
    assert tok.decode(tok("the cat sat")["input_ids"]) == "the cat sat"


def test_gelu_models_cannot_be_exported(tmp_path):
    _, model_dir = _model_dir(tmp_path, mlp="gelu")
    with pytest.raises(UserError, match="mlp 'gelu' cannot be exported"):
        export_hf(model_dir, tmp_path / "hf")
