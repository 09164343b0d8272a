"""The GPT trunk and multi-token heads: shapes, the loss each head computes, the memory-saving order."""
import pytest
import torch
import torch.nn.functional as F

from models.config import pad_vocab
from models.gpt import GPT, GPTConfig
from models.mtp import all_heads_backward, sequential_heads_backward

# the settings GPTConfig leaves to the stage config (no defaults there)
SETTINGS = dict(n_kv_head=0, mlp="swiglu", dropout=0.0, tie_embeddings=True, n_future=1)


def config(**kw) -> GPTConfig:
    return GPTConfig(**(SETTINGS | kw))


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(config(**(dict(vocab_size=97, block_size=32, n_layer=3, n_head=4, n_embd=32) | kw)))


@pytest.mark.parametrize("kw", [{}, {"n_future": 3},
                                {"n_kv_head": 2, "mlp": "gelu", "tie_embeddings": False}])
def test_shapes(kw):
    model = tiny(**kw)
    n = model.cfg.n_future
    x = torch.randint(0, 97, (2, 16))
    y = torch.randint(0, 97, (2, 16 + n - 1))
    logits, none = model(x)
    assert logits.shape == (2, 16, 97) and none is None
    none, head_losses = model(x, y)
    assert none is None and head_losses.shape == (n,)
    assert model(x, return_hidden=True).shape == (2, 16, 32)
    assert len(model.trunk) == model.cfg.n_layer - 1 and len(model.heads) == n
    with pytest.raises(ValueError, match="targets have"):
        model(x, y[:, :15])


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a multiple of n_head"):
        config(vocab_size=64, block_size=8, n_layer=2, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_kv_head"):
        config(vocab_size=64, block_size=8, n_layer=2, n_head=4, n_kv_head=3, n_embd=32)
    with pytest.raises(ValueError, match=r"unknown keys \['n_layers'\], missing keys \[.*'vocab_size'"):
        GPTConfig.from_dict({"n_layers": 3})
    assert pad_vocab(50257) == 50304 and pad_vocab(4096) == 4096


def test_next_token_loss_is_the_reference_cross_entropy():
    model = tiny()
    x = torch.randint(0, 97, (3, 20))
    y = torch.randint(0, 97, (3, 20))
    _, head_losses = model(x, y)
    logits, _ = model(x)
    log_probs = logits.log_softmax(-1)  # (B, T, V)
    reference = -log_probs.gather(-1, y[..., None]).mean()
    torch.testing.assert_close(head_losses[0], reference, rtol=1e-5, atol=1e-6)


def test_head_k_reads_targets_shifted_by_k():
    model = tiny(n_future=3)
    x = torch.randint(0, 97, (2, 10))
    y = torch.randint(0, 97, (2, 12))  # y[:, j] is the token at input position j + 1
    h = model.trunk_forward(x)
    _, head_losses = model(x, y)
    for k in range(3):
        logits = model.lm_head(model.head_forward(k, h))
        expected = F.cross_entropy(logits.reshape(-1, 97), y[:, k:k + 10].reshape(-1))
        torch.testing.assert_close(head_losses[k], expected)
        j = (k + 1) % 3  # another head's targets
        shifted_wrong = F.cross_entropy(logits.reshape(-1, 97), y[:, j:j + 10].reshape(-1))
        assert not torch.allclose(head_losses[k], shifted_wrong)


@pytest.mark.parametrize("tied", [True, False])
def test_memory_saving_order_gives_the_plain_gradients(tied):
    model = tiny(n_future=3, tie_embeddings=tied)
    x = torch.randint(0, 97, (2, 16))
    y = torch.randint(0, 97, (2, 18))
    plain = all_heads_backward(model, x, y, scale=0.5)
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    seq = sequential_heads_backward(model, model, x, y, scale=0.5)
    torch.testing.assert_close(seq, plain)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def saved_activation_peak(fn) -> int:
    """Peak bytes of tensors autograd holds for backward while fn runs (freed ones are subtracted)."""
    live, peak = [0], [0]

    class Held:
        def __init__(self, t):
            self.t = t
            live[0] += t.numel() * t.element_size()
            peak[0] = max(peak[0], live[0])
            self.size = t.numel() * t.element_size()

        def __del__(self):
            live[0] -= self.size

    with torch.autograd.graph.saved_tensors_hooks(Held, lambda held: held.t):
        fn()
    return peak[0]


def test_memory_saving_order_holds_one_heads_logits_at_a_time():
    model = tiny(n_future=4, vocab_size=8192)
    x = torch.randint(0, 8192, (4, 32))
    y = torch.randint(0, 8192, (4, 35))
    logits_bytes = 4 * 32 * 8192 * 4  # one head's fp32 logits
    plain = saved_activation_peak(lambda: all_heads_backward(model, x, y, 1.0))
    model.zero_grad(set_to_none=True)
    seq = saved_activation_peak(lambda: sequential_heads_backward(model, model, x, y, 1.0))
    assert plain - seq > 2.5 * logits_bytes  # three heads' logits fewer held at the peak
    assert seq < 0.5 * plain


def test_flops_per_token_matches_the_gpt2_reference():
    with torch.device("meta"):  # shapes only: no memory, no initialization time
        model = GPT(config(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, mlp="gelu"))
    # nanoGPT's estimate for GPT-2 small: 6 N + 12 L T C, N without position embeddings (~123.6M)
    n_params = model.num_params() - sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert model.flops_per_token(1024) == 6 * n_params + 12 * 12 * 1024 * 768
    assert 850e6 < model.flops_per_token(1024) < 860e6
    with torch.device("meta"):
        swiglu = GPT(config(vocab_size=50304, block_size=1024, n_layer=2, n_head=12, n_embd=768))
        gelu = GPT(config(vocab_size=50304, block_size=1024, n_layer=2, n_head=12, n_embd=768, mlp="gelu"))
    assert swiglu.num_params() == gelu.num_params()  # 2/3-width SwiGLU keeps the parameter count
