"""A tiny multi-token model trained for a few seconds on phrase-structured tokens (shared by model tests)."""
import numpy as np
import pytest
import torch

from models.gpt import GPT, GPTConfig


@pytest.fixture(scope="session")
def trained_phrase_model():
    """(model, phrases): 4 heads trained until they predict the inside of 8 fixed 12-token phrases."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    phrases = rng.integers(1, 101, size=(8, 12))
    stream = torch.as_tensor(phrases[rng.integers(0, 8, size=4000)].reshape(-1))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=101, block_size=96, n_layer=2, n_head=4, n_kv_head=0, n_embd=64,
                          mlp="swiglu", dropout=0.0, tie_embeddings=True, n_future=4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    T = 32
    for _ in range(150):
        starts = torch.randint(0, stream.numel() - T - 4, (16,))
        windows = torch.stack([stream[s:s + T + 4] for s in starts])
        _, head_losses = model(windows[:, :T], windows[:, 1:])
        head_losses.sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.set_num_threads(threads)
    return model.eval(), phrases


@pytest.fixture(autouse=True)
def one_thread(torch_one_thread):
    """Every model test runs on one thread (see tests/conftest.py)."""
