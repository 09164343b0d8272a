"""A tiny exported model (random weights, a small BPE tokenizer) shared by the evaluate and bias tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.config import GPTConfig
from models.gpt import GPT
from tasks.pretrain.checkpoint import is_tied, weights_for_saving
from tasks.pretrain.export import export_hf

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "it was a great movie",
             "the film was terrible and boring", "is the sky blue? yes", "no, the grass is green"]


def write_tiny_model(d: Path, seed: int = 0, **kw) -> Path:
    """One of our model directories (random weights, seeded) with a BPE tokenizer; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 20, trainer)
    tok.save(str(d / "tokenizer.json"))
    torch.manual_seed(seed)
    cfg = GPTConfig(**({"vocab_size": 320, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2,
                        "n_embd": 32, "n_future": 1, "mlp": "swiglu", "dropout": 0.0,
                        "tie_embeddings": True} | kw))
    model = GPT(cfg)
    save_file(weights_for_saving(model.state_dict(), is_tied(model)), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"architecture": "llmpipe-gpt", "eot_id": 0,
                                               "model": cfg.to_dict(), "tokenizer": "tokenizer.json"}))
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One of our model directories: tiny, random, with its tokenizer."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_hf_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model exported as a Hugging Face LlamaForCausalLM directory (AutoModelForCausalLM loads it)."""
    return export_hf(tiny_model_dir, tmp_path_factory.mktemp("tiny-hf") / "hf")
