"""Pretraining speed: tokens/s, MFU and peak memory of the real training step against transformers'
Llama of the same shape, the cost of multi-token heads, and self-speculative decoding against greedy
decoding. Needs torch + accelerate + numpy (+ transformers for the reference); no pipeline libraries.

    python -m bench.pretrain --out bench-pretrain.json           # GPU: the gpt2-small shape (~5 min)
    python -m bench.pretrain --tiny                               # CPU: a tiny model, a minute or so

Every figure is measured in this run on synthetic tokens (a stream of fixed random phrases, so a briefly
trained model can learn them and its extra heads have something to draft). Baselines are measured in
the same run: transformers' LlamaForCausalLM with our shape (layers, width, heads, kv heads, SwiGLU width,
vocabulary, T, tied embeddings; SDPA attention, same precision, compiled, same micro-batch, fused AdamW)
for the training step, n_future=1 for the multi-token cost, head-0 greedy decoding for speculative decoding.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.generate import SpeculativeStats, generate, speculative_generate
from models.gpt import GPT, GPTConfig
from tasks.pretrain.data import LMData, phrase_tokens, write_token_index
from tasks.pretrain.lm import TrainConfig, make_trainer
from tasks.pretrain.loop import LoopConfig, Trainer, attention_kernels, peak_flops, resolve_precision

ARCH = dict(n_kv_head=0, mlp="swiglu", dropout=0.0, tie_embeddings=True)
GPT2_SMALL = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768) | ARCH
TINY = dict(vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=128) | ARCH
BOOKS = dict(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=192) | ARCH  # the README's books model
SHAPES = {"tiny": TINY, "books": BOOKS, "gpt2-small": GPT2_SMALL}
# the benchmark's own optimizer settings (the stage config that holds the pipeline's defaults needs
# pydantic, which bare GPU machines lack); only speed is measured, and both models get the same
OPTIMIZER = dict(weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, warmup_steps=10, min_lr_ratio=0.1)


def device_description() -> str:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
                f"torch {torch.__version__})")
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} x{torch.get_num_threads()} threads (torch {torch.__version__})"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release() -> None:
    """After the last reference to a trainer is gone: drop compiled graphs and cached device memory,
    so the next variant's peak memory is its own."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.gpu = torch.cuda.is_available() and not args.tiny
        self.shape = dict(SHAPES[args.shape] if args.shape else TINY if args.tiny else GPT2_SMALL)
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {"device": device_description(), "mode": "tiny-cpu" if args.tiny else
                                        ("gpu" if self.gpu else "cpu"), "errors": [], "skipped": []}
        vocab = self.shape["vocab_size"]
        stream = phrase_tokens(args.train_tokens + 200_000, vocab, n_phrases=args.phrases, phrase_len=16)
        self.index = write_token_index(workdir / "tokens", stream[:-200_000], stream[-200_000:], vocab)
        self.val_stream = stream[-200_000:]

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def compile(self) -> bool:
        return self.gpu and not self.args.no_compile

    def config(self, n_future: int, memory_saving: bool, attention: str, name: str,
               lr: float = 6e-4) -> TrainConfig:
        a = self.args
        loop = LoopConfig(out_dir=str(self.workdir / name), micro_batch=a.micro_batch, grad_accum=1, lr=lr,
                          max_steps=100_000, max_tokens=0, precision=a.precision, compile=self.compile,
                          attention=attention, cpu=not self.gpu, cpu_threads=0, seed=0, eval_every=0,
                          eval_batches=0, checkpoint_every=0, keep_checkpoints=1, log_every=100_000,
                          progress=False, **OPTIMIZER)
        return TrainConfig(index=str(self.index), tokenizer="", model=self.shape | {"n_future": n_future},
                           memory_saving_heads=memory_saving, init_from="", loop=loop)

    def measure(self, name: str, cfg: TrainConfig, keep: bool = False
                ) -> tuple[dict[str, Any], Trainer | None]:
        """Warm up (compiles), then time `steps` optimizer steps with one device sync at the end."""
        a = self.args
        trainer = make_trainer(cfg)
        warmup_s, seconds, outs = time_steps(trainer.train_step, a.warmup, a.steps, self.gpu)
        tokens_per_s = trainer.tokens_per_step * a.steps / seconds
        losses = torch.stack([out[0] for out in outs])[:, 0].tolist()
        row = {"name": name, "n_future": trainer.core.cfg.n_future,
               "memory_saving_heads": cfg.memory_saving_heads, "attention": cfg.loop.attention,
               "compiled": cfg.loop.compile, "precision": trainer.precision,
               "micro_batch": cfg.loop.micro_batch, "seq_len": trainer.T, "params": trainer.num_params,
               "tokens_per_s": round(tokens_per_s), "step_ms": round(1000 * seconds / a.steps, 2),
               "warmup_s": round(warmup_s, 1), "flops_per_token": trainer.flops_per_token,
               "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
        finish_row(row, name, trainer.device, tokens_per_s, self.gpu)
        if keep:
            return row, trainer
        trainer.accelerator.free_memory()
        del trainer
        release()
        return row, None

    def guarded(self, name: str, fn, *args, **kw):
        """Run one measurement; record a failure or a skipped one (time budget) instead of stopping."""
        if self.elapsed() > self.args.budget_s:
            self.results["skipped"].append(f"{name}: time budget of {self.args.budget_s} s spent")
            print(f"  {name}: skipped (time budget)", flush=True)
            return None
        try:
            return fn(*args, **kw)
        except Exception as exc:  # a variant that fails (say, a kernel missing) must not sink the others
            self.results["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"  {name}: FAILED {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
        release()  # outside the except block: the traceback no longer holds the failed trainer
        return None

    def variant(self, name: str, cfg: TrainConfig, keep: bool = False):
        """measure() a training variant; if compiling it fails, measure it eager instead (and say so)."""
        got = self.guarded(name, self.measure, name, cfg, keep)
        if got is None and cfg.loop.compile and self.elapsed() <= self.args.budget_s:
            cfg.loop.compile = False
            got = self.guarded(f"{name} (eager fallback)", self.measure, f"{name}-eager", cfg, keep)
        return got


def time_steps(step, warmup: int, steps: int, gpu: bool) -> tuple[float, float, list]:
    """Warm up (compiles), reset the peak-memory counter, then time `steps` calls with one device sync
    at the end: (warm-up seconds, timed seconds, what each timed call returned)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    results = [step() for _ in range(steps)]
    sync()
    return warmup_s, time.perf_counter() - t0, results


def finish_row(row: dict[str, Any], label: str, device: torch.device, tokens_per_s: float, gpu: bool) -> None:
    """Add MFU (on GPUs with a known peak) and peak memory to a measured row, and print it."""
    peak = peak_flops(device)
    if peak:
        row["mfu"] = round(row["flops_per_token"] * tokens_per_s / peak, 4)
    if gpu:
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"  {label}: {row['tokens_per_s']:,} tok/s, {row['step_ms']} ms/step"
          + (f", MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "")
          + (f", peak {row['peak_memory_gib']} GiB" if "peak_memory_gib" in row else "")
          + f" (warmup+compile {row['warmup_s']} s)", flush=True)


def run_throughput(bench: Bench) -> str:
    """Section 1: next-token training throughput, PyTorch's attention kernel order vs cuDNN first."""
    print("throughput (n_future=1):", flush=True)
    rows = []
    variants = ["auto", "cudnn"] if bench.gpu else ["auto"]
    for attention in variants:
        got = bench.variant(f"ntp-{attention}", bench.config(1, True, attention, f"ntp-{attention}"))
        if got:
            rows.append(got[0])
    bench.results["throughput"] = rows
    if not rows:
        return "auto"
    best = max(rows, key=lambda r: r["tokens_per_s"])
    bench.results["best_next_token"] = best
    return best["attention"]


def run_reference(bench: Bench) -> None:
    """Section 1b: transformers' LlamaForCausalLM with our shape, trained the way its users do
    (model(input_ids, labels=input_ids).loss), on the same tokens and micro-batch."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        bench.results["skipped"].append("reference: transformers is not installed (pip install transformers)")
        print("reference: skipped, transformers is not installed", flush=True)
        return
    print("reference (transformers LlamaForCausalLM, same shape):", flush=True)
    best = bench.results.get("best_next_token")
    # the attention kernel order that gave our best figure serves the reference too: its best usage here
    row = bench.guarded("reference", measure_reference, bench, best["attention"] if best else "auto")
    release()  # the reference model is gone with measure_reference's frame: free its memory
    if row is None:
        return
    out = {"reference": row}
    if best:
        out["ours_to_reference_tokens_per_s"] = round(best["tokens_per_s"] / row["tokens_per_s"], 3)
        if "peak_memory_gib" in best:
            out["ours_to_reference_peak_memory"] = round(best["peak_memory_gib"] / row["peak_memory_gib"], 3)
        print(f"  ours / reference: {out['ours_to_reference_tokens_per_s']}x tokens/s", flush=True)
    bench.results["reference"] = out


def llama_like(shape: dict[str, Any]):
    """LlamaForCausalLM with our GPT's shape (the export's own mapping): same matrices, same FLOPs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.pretrain.export import llama_config

    fields = llama_config(GPTConfig(**shape, n_future=1))
    for key in ("architectures", "model_type", "torch_dtype", "llmpipe"):
        fields.pop(key)
    return LlamaForCausalLM(LlamaConfig(**fields, attn_implementation="sdpa"))


def measure_reference(bench: Bench, attention: str = "auto") -> dict[str, Any]:
    a = bench.args
    device = torch.device("cuda" if bench.gpu else "cpu")
    bf16 = resolve_precision(a.precision, device) == "bf16"  # the same rule as ours: both sides alike
    torch.manual_seed(0)
    with device:
        model = llama_like(bench.shape)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(OPTIMIZER["beta1"], OPTIMIZER["beta2"]),
                                  weight_decay=OPTIMIZER["weight_decay"], fused=bench.gpu)
    forward = torch.compile(model) if bench.compile else model
    data = LMData(bench.index, bench.shape["block_size"], a.micro_batch, n_future=1, seed=0)

    def step() -> torch.Tensor:
        x, _ = data.next_batch()
        x = x.pin_memory().to(device, non_blocking=True) if bench.gpu else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIMIZER["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    with attention_kernels(attention):
        warmup_s, seconds, losses = time_steps(step, a.warmup, a.steps, bench.gpu)
    tokens_per_s = a.micro_batch * bench.shape["block_size"] * a.steps / seconds
    with torch.device("meta"):  # the same formula as ours, on the same shape
        flops_per_token = GPT(GPTConfig(**bench.shape, n_future=1)).flops_per_token(bench.shape["block_size"])
    import transformers

    row = {"name": "transformers-llama", "transformers": transformers.__version__, "params": params,
           "compiled": bench.compile, "precision": "bf16" if bf16 else "fp32", "attention": f"sdpa-{attention}",
           "micro_batch": a.micro_batch, "seq_len": bench.shape["block_size"],
           "tokens_per_s": round(tokens_per_s), "step_ms": round(1000 * seconds / a.steps, 2),
           "warmup_s": round(warmup_s, 1), "flops_per_token": flops_per_token,
           "loss_first": round(losses[0].item(), 4), "loss_last": round(losses[-1].item(), 4)}
    finish_row(row, "reference", device, tokens_per_s, bench.gpu)
    return row


def run_mtp_cost(bench: Bench, attention: str) -> dict[str, Any] | None:
    """Section 2: n_future=4 against n_future=1, memory-saving head order and plain order.
    Returns the memory-saving model, trained further, for the generation section (config + weights)."""
    print("multi-token prediction cost (n_future=4 vs 1):", flush=True)
    base = bench.results.get("best_next_token")
    saving = plain = generation_model = None
    lr = 1e-3 if bench.gpu else 2e-3  # this model goes on to learn the phrases for the generation section
    got = bench.variant("mtp4-saving", bench.config(4, True, attention, "mtp4-saving", lr=lr), keep=True)
    if got:
        saving, trainer = got
        del got
        generation_model = bench.guarded("train the generation model", train_more, bench, trainer)
        trainer.accelerator.free_memory()
        del trainer
        release()
    if not bench.args.skip_plain_mtp:
        got = bench.variant("mtp4-plain", bench.config(4, False, attention, "mtp4-plain"))
        plain = got[0] if got else None
    out: dict[str, Any] = {"n_future_1": base, "n_future_4_memory_saving": saving, "n_future_4_plain": plain}
    for key, row in (("memory_saving", saving), ("plain", plain)):
        if base and row:
            out[f"{key}_tokens_per_s_ratio"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
            # the most a perfect implementation could reach: the ratio of FLOPs per token
            out[f"{key}_flops_bound_ratio"] = round(base["flops_per_token"] / row["flops_per_token"], 3)
            if "peak_memory_gib" in row:
                out[f"{key}_peak_memory_ratio"] = round(row["peak_memory_gib"] / base["peak_memory_gib"], 3)
            memory = out.get(f"{key}_peak_memory_ratio")
            print(f"  {key}: {out[f'{key}_tokens_per_s_ratio']}x tokens/s (FLOP-bound ceiling "
                  f"{out[f'{key}_flops_bound_ratio']}x)" + (f", {memory}x peak memory" if memory else ""),
                  flush=True)
    out["targets"] = {"tokens_per_s_ratio": ">= 0.85", "peak_memory_ratio": "<= 1.15"}
    bench.results["mtp"] = out
    return generation_model


def train_more(bench: Bench, trainer: Trainer) -> dict[str, Any]:
    """Keep training the n_future=4 model on the phrase stream so its heads learn to draft; returns its
    config and a host copy of its weights (the trainer is released before the next variant)."""
    t0 = time.perf_counter()
    for _ in range(bench.args.gen_train_steps):
        losses, _ = trainer.train_step()
    heads = losses.tolist()
    bench.results["generation_model"] = {"extra_steps": bench.args.gen_train_steps, "head_losses": heads,
                                         "seconds": round(time.perf_counter() - t0, 1)}
    print(f"  trained the generation model {bench.args.gen_train_steps} more steps: head losses "
          f"{[round(h, 3) for h in heads]}", flush=True)
    weights = {k: v.detach().to("cpu", copy=True) for k, v in trainer.core.state_dict().items()}
    return {"config": trainer.core.cfg, "weights": weights, "device": trainer.device}


def run_generation(bench: Bench, trained: dict[str, Any]) -> None:
    """Section 3: greedy decoding with head 0 vs self-speculative decoding with all 4 heads."""
    print("generation (batch 1, greedy):", flush=True)
    device = trained["device"]
    with torch.device(device):
        model = GPT(trained["config"])
    model.load_state_dict(trained["weights"])
    model.eval()
    # full fp32 matmuls: head 0 then scores 1 token (greedy) or 4 at once (speculative), and TF32 rounds
    # those shapes differently, which can flip a near-tie between phrase starts
    torch.backends.cuda.matmul.allow_tf32 = False
    a = bench.args
    new_tokens = min(a.new_tokens, model.cfg.block_size - a.prompt_len)
    prompts = [torch.as_tensor(bench.val_stream[s:s + a.prompt_len].astype(np.int64))[None].to(device)
               for s in range(0, a.prompts * 997, 997)]
    generate(model, prompts[0], 8)  # warm up kernels and allocator
    speculative_generate(model, prompts[0], 8)
    greedy_s = spec_s = 0.0
    identical, first_mismatch, total_stats = 0, None, SpeculativeStats()
    for i, prompt in enumerate(prompts):
        sync()
        t0 = time.perf_counter()
        greedy = generate(model, prompt, new_tokens)
        sync()
        greedy_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        spec, stats = speculative_generate(model, prompt, new_tokens)
        sync()
        spec_s += time.perf_counter() - t0
        same = torch.equal(greedy, spec)
        identical += same
        if not same and first_mismatch is None:
            first_mismatch = {"prompt": i, "position": int((greedy != spec).nonzero()[0, 1]) - a.prompt_len}
        total_stats.forwards += stats.forwards
        total_stats.accepted += stats.accepted
        total_stats.drafted += stats.drafted
    total = new_tokens * len(prompts)
    out = {"prompts": len(prompts), "new_tokens_each": new_tokens,
           "precision": "fp32 (TF32 off)",
           "greedy_tokens_per_s": round(total / greedy_s, 1),
           "speculative_tokens_per_s": round(total / spec_s, 1),
           "speedup": round(greedy_s / spec_s, 3), "acceptance_rate": round(total_stats.acceptance_rate, 3),
           "tokens_per_forward": round(total_stats.tokens_per_forward, 3),
           "identical_outputs": f"{identical}/{len(prompts)}", "first_mismatch": first_mismatch}
    bench.results["generation"] = out
    print(f"  greedy {out['greedy_tokens_per_s']} tok/s, speculative {out['speculative_tokens_per_s']} tok/s "
          f"({out['speedup']}x), acceptance {out['acceptance_rate']}, "
          f"{out['tokens_per_forward']} tokens/forward, "
          f"identical {out['identical_outputs']}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model on CPU (CI-sized)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--micro-batch", type=int, help="sequences per step (default 16 GPU, 8 tiny)")
    p.add_argument("--steps", type=int, help="timed optimizer steps per variant (default 30 GPU, 10 tiny)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--gen-train-steps", type=int, help="extra steps training the n_future=4 model before "
                   "generation (default 250 GPU, 150 tiny)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, help="tokens generated per prompt (default 256 GPU, 96 tiny)")
    p.add_argument("--train-tokens", type=int, help="synthetic training tokens (default 4M GPU, 400k tiny)")
    p.add_argument("--phrases", type=int, help="distinct 16-token phrases in the synthetic stream "
                   "(default 64 GPU, 16 tiny)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's on GPU machines, 1 for --tiny: "
                   "a tiny model gains little from a second thread and loses much when another process "
                   "holds its core)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="the model's shape (default gpt2-small on a GPU, "
                   "tiny with --tiny); e.g. --tiny --shape books times the README's books model on the CPU")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="both sides' training precision, as pretrain.precision (auto: bf16 on a GPU that has it, "
                        "fp32 on a CPU; bf16 on a CPU with native bf16, e.g. AMX, is faster)")
    p.add_argument("--no-compile", action="store_true", help="eager mode on GPU")
    p.add_argument("--skip-plain-mtp", action="store_true", help="skip n_future=4 in the plain head order")
    p.add_argument("--budget-s", type=float, default=330, help="skip variants not started by then (seconds)")
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.tiny
    defaults = dict(micro_batch=16 if gpu else 8, steps=30 if gpu else 10,
                    gen_train_steps=250 if gpu else 150, new_tokens=256 if gpu else 96,
                    train_tokens=4_000_000 if gpu else 400_000,
                    phrases=64 if gpu else 16, threads=torch.get_num_threads() if gpu else 1)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        print("no GPU: running the tiny CPU configuration (--tiny)", flush=True)
        args = parse_args([*argv, "--tiny"])
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        bench = Bench(args, Path(tmp))
        print(f"device: {bench.results['device']}", flush=True)
        print(f"shape: {bench.shape}, micro-batch {args.micro_batch}", flush=True)
        attention = run_throughput(bench)
        run_reference(bench)
        trained = run_mtp_cost(bench, attention)
        if trained is not None:
            bench.guarded("generation", run_generation, bench, trained)
        bench.results["seconds"] = round(bench.elapsed(), 1)
    summarize(bench.results)
    if args.out:
        args.out.write_text(json.dumps(bench.results, indent=2))
        print(f"results written to {args.out}")
    return 1 if bench.results["errors"] else 0


def summarize(results: dict[str, Any]) -> None:
    best = results.get("best_next_token")
    print(f"\nsummary on {results['device']} ({results['seconds']} s):")
    if best:
        mfu = f", MFU {100 * best['mfu']:.1f}%" if "mfu" in best else ""
        print(f"  next-token training: {best['tokens_per_s']:,} tok/s{mfu} (attention={best['attention']})")
    ref = results.get("reference")
    if ref:
        row = ref["reference"]
        mfu = f", MFU {100 * row['mfu']:.1f}%" if "mfu" in row else ""
        ratio = ref.get("ours_to_reference_tokens_per_s")
        print(f"  transformers Llama, same shape: {row['tokens_per_s']:,} tok/s{mfu}"
              + (f"; ours / reference {ratio}x" if ratio else ""))
    mtp = results.get("mtp", {})
    if "memory_saving_tokens_per_s_ratio" in mtp:
        memory = mtp.get("memory_saving_peak_memory_ratio")
        print(f"  n_future=4 memory-saving: {mtp['memory_saving_tokens_per_s_ratio']}x the tok/s"
              + (f", {memory}x the peak memory" if memory else "") + " of n_future=1 (FLOP-bound ceiling "
              f"{mtp['memory_saving_flops_bound_ratio']}x)")
    if "plain_tokens_per_s_ratio" in mtp:
        memory = mtp.get("plain_peak_memory_ratio")
        print(f"  n_future=4 plain order: {mtp['plain_tokens_per_s_ratio']}x the tok/s"
              + (f", {memory}x the peak memory" if memory else "") + " of n_future=1")
    gen = results.get("generation")
    if gen:
        print(f"  speculative decoding: {gen['speedup']}x greedy, acceptance {gen['acceptance_rate']}")
    for line in results["errors"] + results["skipped"]:
        print(f"  ! {line}")


if __name__ == "__main__":
    sys.exit(main())
