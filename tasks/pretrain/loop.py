"""The pretraining loop on Accelerate: steps, validation, checkpoints, resume, metrics, final model.

Runs from a plain `TrainConfig` dataclass and needs only torch, accelerate, numpy and safetensors, so the
same code trains in the pipeline, under `accelerate launch -m tasks.pretrain`, and in bench/pretrain.py on
a bare GPU machine. Layout of a run directory:

    checkpoints/step-000100/   model.safetensors, optimizer.pt, state.json, rng-<rank>.safetensors
    checkpoints/latest         name of the newest complete checkpoint, written last
    metrics.jsonl              one JSON record per log interval and per validation
    model/                     model.safetensors, config.json, tokenizer.json, metrics.json, lineage.json

Optimizer state is saved with torch.save (our own file, loaded with weights_only=True); weights are
safetensors only.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.gpt import GPT, GPTConfig
from models.mtp import all_heads_backward, sequential_heads_backward
from tasks.core.errors import RunInterrupted, UserError
from tasks.core.stopping import stop_signal
from tasks.core.token_shards import ShardWriter, TokenSplit, TokenWindows, dtype_for_vocab, write_index

log = logging.getLogger("llmpipe.pretrain")

LATEST = "latest"

# dense bf16 tensor-core peaks (vendor datasheets), for MFU; unknown devices get no MFU
PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12),
                   ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12),
                   ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12)]


@dataclass
class TrainConfig:
    """Everything one training run needs; JSON-safe (run.json holds it)."""

    index: str = ""  # token index.json (train + val splits)
    out_dir: str = ""  # run directory
    tokenizer: str = ""  # tokenizer.json copied into model/ ("" = none)
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig fields; block_size is the training T
    micro_batch: int = 16  # sequences per process per forward
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 6e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = no clipping
    max_steps: int = 0  # stop after this many optimizer steps (0 = no step limit)
    max_tokens: int = 0  # or after this many training tokens, whichever comes first
    memory_saving_heads: bool = True  # one head's forward+backward at a time (n_future > 1)
    precision: str = "auto"  # auto (bf16 on GPUs that support it, else fp32) | bf16 | fp32
    compile: bool = False  # torch.compile the model
    attention: str = "auto"  # scaled-dot-product kernel tried first: auto | flash | cudnn | efficient | math
    cpu: bool = False  # train on CPU even when a GPU is present
    cpu_threads: int = 0  # CPU training threads (0 = PyTorch's default, one per core)
    seed: int = 0
    eval_every: int = 0  # validate every N steps (0 = at the end only)
    eval_batches: int = 20  # validation batches per process (0 = the whole val split)
    checkpoint_every: int = 100  # 0 = only at the end and on SIGTERM
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True  # a progress bar when stderr is a terminal
    lineage: dict[str, Any] = field(default_factory=dict)  # recorded in model/lineage.json

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


class NonFiniteLoss(UserError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


class OutOfMemory(UserError):
    """The micro-batch does not fit the device."""


class TrainingInterrupted(RunInterrupted, RuntimeError):
    """SIGTERM arrived; a checkpoint was written and a rerun resumes from it."""


# schedule and helpers ----------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * progress))


def resolve_precision(requested: str, device: torch.device) -> str:
    """'bf16' (autocast) where the device supports it, else 'fp32'."""
    if requested not in ("auto", "bf16", "fp32"):
        raise UserError(f"pretrain.precision must be auto, bf16 or fp32, not {requested!r}")
    if requested == "fp32":
        return "fp32"
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:  # CPUs run bf16 autocast, but without native bf16 it is slower than fp32: only when asked
        supported = requested == "bf16" and torch.backends.mkldnn.is_available() and \
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if requested == "bf16" and not supported:
        log.warning("bf16 is not supported on %s; training in fp32", device)
    return "bf16" if supported else "fp32"


def attention_kernels(first: str):
    """A context preferring one scaled-dot-product-attention kernel; 'auto' leaves PyTorch's order."""
    if first == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if first not in order:
        raise UserError(f"pretrain.attention must be auto or one of {sorted(order)}, not {first!r}")
    return sdpa_kernel([order[first], *(b for k, b in order.items() if k != first)], set_priority=True)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def total_steps_for(cfg: TrainConfig, world_size: int) -> int:
    tokens_per_step = cfg.micro_batch * cfg.grad_accum * world_size * cfg.model["block_size"]
    limits = [s for s in (cfg.max_steps, math.ceil(cfg.max_tokens / tokens_per_step)) if s > 0]
    if not limits:
        raise UserError("pretrain needs a budget: set pretrain.max_steps or pretrain.max_tokens above 0")
    return min(limits)


def unigram_counts(index_path: str | os.PathLike, split: str, chunk: int = 1 << 24) -> np.ndarray | None:
    """How often each token id occurs in a split (None when the split is absent or empty)."""
    try:
        data = TokenSplit(index_path, split)
    except ValueError:
        return None
    counts = np.zeros(data.vocab_size, dtype=np.int64)
    for arr in data.arrays:
        for start in range(0, arr.size, chunk):
            counts += np.bincount(arr[start:start + chunk], minlength=data.vocab_size)[:data.vocab_size]
    return counts if counts.sum() else None


def unigram_entropy(index_path: str | os.PathLike, split: str = "val") -> float | None:
    """Entropy in nats of the split's own token frequencies: the loss of the best context-free model
    that knew the split in advance (small splits make it optimistic)."""
    counts = unigram_counts(index_path, split)
    if counts is None:
        return None
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_baselines(index_path: str | os.PathLike) -> dict[str, float | None]:
    """Context-free baselines in nats: the entropy of all the data's token frequencies, the val split's own
    entropy, and the loss on val of a unigram model fit on train (add-one smoothed): the fair baseline
    for the validation loss, since the model too learns from train only."""
    train, val = unigram_counts(index_path, "train"), unigram_counts(index_path, "val")
    out: dict[str, float | None] = {"unigram_entropy_nats": None, "val_unigram_entropy_nats": None,
                                    "val_unigram_baseline_nats": None}
    total = sum(c for c in (train, val) if c is not None)
    if isinstance(total, np.ndarray):
        p = total[total > 0] / total.sum()
        out["unigram_entropy_nats"] = float(-(p * np.log(p)).sum())
    if val is not None:
        p = val[val > 0] / val.sum()
        out["val_unigram_entropy_nats"] = float(-(p * np.log(p)).sum())
        if train is not None:
            q = (train + 1) / (train.sum() + train.size)
            out["val_unigram_baseline_nats"] = float(-(val * np.log(q)).sum() / val.sum())
    return out


def weights_for_saving(state_dict: dict[str, torch.Tensor], model_cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, the tied unembedding stored once (safetensors refuses shared storage)."""
    out = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if model_cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def load_weights(model: GPT, path: str | os.PathLike) -> None:
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    allowed = {"lm_head.weight"} if model.cfg.tie_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise UserError(f"{path} does not match the model config: missing {sorted(set(missing) - allowed)}, "
                        f"unexpected {sorted(unexpected)}")


def load_pretrained(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """The trained model from a run's model/ directory (config.json + model.safetensors)."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "config.json").read_text())
    model = GPT(GPTConfig.from_dict(meta["model"]))
    load_weights(model, model_dir / "model.safetensors")
    return model.to(device).eval()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


# the trainer -------------------------------------------------------------------------------------
class Trainer:
    """Model, optimizer and data of one run, with one optimizer step per `train_step()`."""

    def __init__(self, cfg: TrainConfig, accelerator=None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.model_cfg = GPTConfig.from_dict(cfg.model)
        # autocast is ours (see autocast()), not Accelerate's: its forward patching would wrap the
        # compiled model in Python conversion code, and the memory-saving order calls heads outside forward
        self.accelerator = acc = accelerator or Accelerator(cpu=cfg.cpu or not torch.cuda.is_available())
        self.device, self.rank, self.world = acc.device, acc.process_index, acc.num_processes
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cpu" and cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        self.is_main = acc.is_main_process
        self.fsdp = acc.distributed_type.name == "FSDP"
        # the memory-saving order calls the heads outside the sharded forward, which FSDP cannot serve
        self.sequential_heads = cfg.memory_saving_heads and self.model_cfg.n_future > 1 and not self.fsdp
        if self.fsdp and cfg.memory_saving_heads and self.model_cfg.n_future > 1:
            log.warning("FSDP: the multi-token heads run in the plain order (memory_saving_heads ignored)")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.T = self.model_cfg.block_size
        self.total_steps = total_steps_for(cfg, self.world)
        self.tokens_per_step = cfg.micro_batch * cfg.grad_accum * self.world * self.T
        self.train_data = TokenWindows(cfg.index, "train", self.T, cfg.micro_batch, self.model_cfg.n_future,
                                       seed=cfg.seed, mode="random", rank=self.rank, world_size=self.world)
        self._check_vocab()
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        with torch.device(self.device):  # initializing on the GPU takes a fraction of the CPU's time
            self.core = GPT(self.model_cfg)
        self.step = 0
        self.checkpoint_state: dict[str, Any] | None = None  # state.json of the checkpoint resumed from
        self.resumed_from = self._load_checkpoint_weights()
        # one prepare call for both: FSDP2 shards the model and remaps the optimizer's parameters together
        self.model, self.optimizer = acc.prepare(self.core, self._make_optimizer(self.core))
        self.core = acc.unwrap_model(self.model)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.head_loss = torch.compile(self.core.head_loss) if cfg.compile else self.core.head_loss
        self.flops_per_token = self.core.flops_per_token(self.T)
        self.peak_flops = peak_flops(self.device)
        if self.resumed_from:
            self._load_checkpoint_state(self.resumed_from)
        else:
            torch.manual_seed(cfg.seed + 1 + self.rank)  # dropout streams differ between processes

    def _check_vocab(self) -> None:
        vocab = self.train_data.data.vocab_size
        if self.model_cfg.vocab_size < vocab:
            raise UserError(f"model vocab_size {self.model_cfg.vocab_size} is smaller than the tokenizer's "
                            f"{vocab} ({self.cfg.index}); set pretrain.vocab_size to 0 to take it from the "
                            "data")

    def _make_optimizer(self, model: GPT) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            # norm gains are not weights to shrink; matrices and embeddings are
            (no_decay if name.rsplit(".", 2)[-2].startswith("norm") else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
                                 fused=self.device.type == "cuda")

    # one optimizer step ----------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def kernels(self):
        """The configured attention kernel first, the others as fallbacks (a kernel that cannot run a
        shape is skipped); chosen when a compiled graph is traced, so it must hold around every call."""
        return attention_kernels(self.cfg.attention)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.train_data.next_batch()  # (B, T), (B, T + n_future - 1): views of one (B, T + n) array
        x, y = x.contiguous(), y.contiguous()
        if self.device.type == "cuda":  # pinned host memory: the copy overlaps the previous step's kernels
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x, y

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches. Returns (head losses (n,), grad norm) as
        device tensors: nothing here waits for the device."""
        cfg, acc = self.cfg, self.accelerator
        self.model.train()
        losses = torch.zeros(self.model_cfg.n_future, device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = self.next_batch()
            sync = micro == cfg.grad_accum - 1
            with (nullcontext() if sync else acc.no_sync(self.model)), self.autocast(), self.kernels():
                if self.sequential_heads:
                    losses += sequential_heads_backward(self.forward, self.core, x, y, 1 / cfg.grad_accum,
                                                        self.head_loss)
                else:
                    losses += all_heads_backward(self.forward, x, y, 1 / cfg.grad_accum)
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns the norm as a sharded-tensor type
            grad_norm = grad_norm.full_tensor()
        lr = lr_at(self.step, cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return losses / cfg.grad_accum, grad_norm.detach().float()

    @torch.no_grad()
    def evaluate(self) -> list[float] | None:
        """Mean head losses over the val split (every process runs the same number of batches)."""
        cfg = self.cfg
        try:
            val = TokenWindows(cfg.index, "val", self.T, cfg.micro_batch, self.model_cfg.n_future,
                               mode="sequential", rank=self.rank, world_size=self.world)
        except ValueError as exc:
            log.warning("no validation: %s", exc)
            return None
        val.batch_size = min(cfg.micro_batch, val.num_windows // self.world)
        if val.batch_size == 0:
            log.warning("no validation: the val split holds %d windows for %d processes", val.num_windows,
                        self.world)
            return None
        batches = val.num_windows // (val.batch_size * self.world)
        batches = min(batches, cfg.eval_batches) if cfg.eval_batches else batches
        self.model.eval()
        total = torch.zeros(self.model_cfg.n_future, device=self.device)
        for _ in range(batches):
            x, y = val.next_batch()
            with self.autocast(), self.kernels():
                total += self.forward(x.to(self.device), y.to(self.device))[1].float()
        total = self.accelerator.reduce(total / batches, reduction="mean")
        return total.tolist()

    # checkpoints -----------------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return Path(self.cfg.out_dir) / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `latest` names; if a kill left it naming a missing one, the newest complete one."""
        pointer = self.checkpoint_root / LATEST
        if pointer.exists():
            path = self.checkpoint_root / pointer.read_text().strip()
            if (path / "state.json").exists():
                return path
        complete = sorted(p for p in self.checkpoint_root.glob("step-*") if (p / "state.json").exists())
        return complete[-1] if complete else None

    def save_checkpoint(self, extra: dict[str, Any]) -> Path:
        """Write checkpoints/step-NNNNNN atomically (temp dir, rename, then the `latest` pointer)."""
        acc, name = self.accelerator, f"step-{self.step:06d}"
        final, tmp = self.checkpoint_root / name, self.checkpoint_root / f".{name}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        weights = acc.get_state_dict(self.model)  # collectives under FSDP: every process calls both
        optimizer_state = self._optimizer_state()
        if self.is_main:
            save_file(weights_for_saving(weights, self.model_cfg), str(tmp / "model.safetensors"))
            torch.save(optimizer_state, tmp / "optimizer.pt")
            state = {"step": self.step, "loader": self.train_data.state_dict(), "world_size": self.world,
                     "config": asdict(self.cfg), **extra}
            write_json_atomic(tmp / "state.json", state)
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_file(rng, str(tmp / f"rng-{self.rank}.safetensors"))
        acc.wait_for_everyone()
        if self.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer = self.checkpoint_root / f".{LATEST}.tmp"
            pointer.write_text(name)
            os.replace(pointer, self.checkpoint_root / LATEST)
            self._prune_checkpoints(keep=name)
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self, keep: str) -> None:
        """Keep the newest keep_checkpoints; drop temp dirs a killed run left behind."""
        done = sorted(p for p in self.checkpoint_root.glob("step-*") if p.is_dir())
        stale = list(self.checkpoint_root.glob(".step-*.tmp"))
        for old in done[:-max(1, self.cfg.keep_checkpoints)] + stale:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint_weights(self) -> Path | None:
        path = self.latest_checkpoint()
        if path is None:
            return None
        trained = json.loads((path / "state.json").read_text())["config"]["model"]
        if trained != self.cfg.model:
            raise UserError(f"checkpoint {path} was trained with model {trained}, this run asks for "
                            f"{self.cfg.model}; use another out_dir or delete {self.checkpoint_root}")
        load_weights(self.core, path / "model.safetensors")
        return path

    def _load_checkpoint_state(self, path: Path) -> None:
        state = json.loads((path / "state.json").read_text())
        self.step = state["step"]
        self.train_data.load_state_dict(state["loader"])
        if state["world_size"] != self.world:
            log.warning("resuming a %d-process checkpoint on %d processes: the data order changes",
                        state["world_size"], self.world)
        self._load_optimizer_state(path / "optimizer.pt")
        rng_file = path / f"rng-{self.rank}.safetensors"
        if rng_file.exists():
            rng = load_file(str(rng_file))
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.checkpoint_state = state

    def _optimizer_state(self) -> dict[str, Any]:
        """The whole optimizer state as plain tensors (under FSDP gathered from the shards to rank 0)."""
        if not self.fsdp:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load_optimizer_state(self, path: Path) -> None:
        if not self.fsdp:
            self.optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = torch.load(path, map_location="cpu", weights_only=True) if self.is_main else {}
        set_optimizer_state_dict(self.model, self.optimizer.optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def write_model(self, metrics: dict[str, Any]) -> Path:
        """model/: weights, config, tokenizer, metrics and lineage, published with one rename."""
        acc, out = self.accelerator, Path(self.cfg.out_dir)
        weights = acc.get_state_dict(self.model)
        final, tmp = out / "model", out / ".model.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(weights_for_saving(weights, self.model_cfg), str(tmp / "model.safetensors"),
                      metadata={"format": "pt"})
            config = {"architecture": "llmpipe-gpt", "model": self.model_cfg.to_dict(),
                      "eot_id": self.train_data.data.eot_id,
                      "tokenizer": "tokenizer.json" if self.cfg.tokenizer else None}
            write_json_atomic(tmp / "config.json", config)
            if self.cfg.tokenizer:
                shutil.copyfile(self.cfg.tokenizer, tmp / "tokenizer.json")
            write_json_atomic(tmp / "metrics.json", metrics)
            write_json_atomic(tmp / "lineage.json", {**self.cfg.lineage, "train_config": asdict(self.cfg),
                                                     "index_tokenizer_sha256":
                                                         self.train_data.data.index.get("tokenizer_sha256")})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        acc.wait_for_everyone()
        return final


# the loop ----------------------------------------------------------------------------------------
class MetricsLog:
    """metrics.jsonl on the main process; on resume, records past the checkpoint's step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class StopSignal:
    """Turns SIGTERM into a flag the loop checks between steps: its own handler in the main thread, and
    the stop the `llmpipe` command records (SIGINT or SIGTERM, tasks/core/stopping.py) in any thread."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    @property
    def requested(self) -> bool:
        return self.name is not None

    @property
    def name(self) -> str | None:
        signum = self.signum or stop_signal()
        return signal.Signals(signum).name if signum else None

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Log lines (and a tqdm bar on a terminal) with step, loss, tokens/s, MFU and ETA."""

    def __init__(self, trainer: Trainer, emit: Callable[[str], None]):
        self.trainer, self.emit = trainer, emit
        self.bar = None
        if trainer.is_main and trainer.cfg.progress and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", leave=False)
            except ImportError:
                pass

    def update(self, record: dict[str, Any], steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if self.trainer.is_main:
            mfu = f" | MFU {100 * record['mfu']:.1f}%" if record.get("mfu") is not None else ""
            self.emit(f"step {record['step']}/{self.trainer.total_steps} | loss {record['loss']:.4f} | "
                      f"lr {record['lr']:.2e} | {record['tokens_per_s']:,.0f} tok/s{mfu} | "
                      f"ETA {_format_eta(record['eta_s'])}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Loop:
    """Drives a Trainer: logging windows, validation, checkpoints, stop conditions."""

    def __init__(self, trainer: Trainer, emit: Callable[[str], None],
                 on_step: Callable[[Trainer], None] | None):
        self.t, self.emit, self.on_step = trainer, emit, on_step
        cfg = trainer.cfg
        self.metrics = MetricsLog(Path(cfg.out_dir) / "metrics.jsonl", trainer.is_main, trainer.step)
        self.progress = Progress(trainer, emit)
        self.stop = StopSignal()
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # device values since the last check
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.train_seconds, self.steps_run = 0.0, 0
        self.last_record: dict[str, Any] = {}
        self.last_val: list[float] | None = None
        self.last_checkpoint = trainer.resumed_from

    def run(self) -> None:
        t, cfg = self.t, self.t.cfg
        try:
            while t.step < t.total_steps:
                self.pending.append(self._guarded_step())
                self.window_steps += 1
                last = t.step == t.total_steps
                if t.step % cfg.log_every == 0 or last:
                    self.flush()
                if self._stop_requested():
                    self.flush()
                    self.checkpoint()
                    raise TrainingInterrupted(f"{self.stop.name or 'SIGTERM'} at step {t.step}: checkpoint "
                                              f"{self.last_checkpoint}; "
                                              "rerun the same command to resume")
                if cfg.eval_every and t.step % cfg.eval_every == 0 and not last:
                    self.validate()
                if cfg.checkpoint_every and t.step % cfg.checkpoint_every == 0 and not last:
                    self.flush()
                    self.checkpoint()
                if self.on_step:
                    self.on_step(t)
        finally:
            self.stop.restore()
            self.progress.close()

    def _guarded_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return self.t.train_step()
        except torch.OutOfMemoryError as exc:
            cfg = self.t.cfg
            raise OutOfMemory(
                f"out of device memory at pretrain.micro_batch={cfg.micro_batch} (T={self.t.T}): set "
                f"micro_batch to {max(1, cfg.micro_batch // 2)} and grad_accum to {cfg.grad_accum * 2} to "
                "keep "
                "the same global batch" + ("" if cfg.memory_saving_heads else
                                           ", or set memory_saving_heads: true")) from exc

    def _stop_requested(self) -> bool:
        t = self.t
        if t.world == 1:
            return self.stop.requested
        if t.step % t.cfg.log_every and t.step != t.total_steps:
            return False  # processes agree on a stop only at log steps (a collective)
        flag = torch.tensor(float(self.stop.requested), device=t.device)
        return bool(t.accelerator.reduce(flag, reduction="sum").item() > 0)

    def flush(self) -> None:
        """Bring the window's device values to the host: check them, log them."""
        if not self.pending:
            return
        t = self.t
        losses = torch.stack([p[0] for p in self.pending])  # (steps, n_future)
        norms = torch.stack([p[1] for p in self.pending])  # (steps,)
        losses = t.accelerator.reduce(losses, reduction="mean")
        values, norms = losses.tolist(), norms.tolist()
        first = t.step - len(values) + 1
        for i, (row, norm) in enumerate(zip(values, norms)):
            if not all(math.isfinite(v) for v in [*row, norm]):
                where = self.last_checkpoint or "none yet"
                raise NonFiniteLoss(f"training diverged at step {first + i}: head losses {row}, gradient "
                                    "norm "
                                    f"{norm}. Kept the last good checkpoint ({where}). Lower pretrain.lr, "
                                    "raise warmup_steps or set grad_clip, then rerun (it resumes there).")
        elapsed = time.perf_counter() - self.window_start
        self.train_seconds += elapsed
        self.steps_run += len(values)
        tokens_per_s = t.tokens_per_step * len(values) / max(elapsed, 1e-9)
        mean = np.mean(values, axis=0)
        record = {"step": t.step, "tokens": t.step * t.tokens_per_step, "loss": float(mean[0]),
                  "loss_heads": [float(v) for v in mean], "grad_norm": float(np.mean(norms)),
                  "lr": lr_at(t.step - 1, t.cfg, t.total_steps), "tokens_per_s": tokens_per_s,
                  "eta_s": (t.total_steps - t.step) * elapsed / len(values)}
        if t.peak_flops:
            record["mfu"] = t.flops_per_token * tokens_per_s / (t.peak_flops * t.world)
        self.metrics.write(record)
        self.progress.update(record, len(values))
        self.last_record = record
        self.pending = []
        self._restart_window()

    def _restart_window(self) -> None:
        self.window_start = time.perf_counter()

    def validate(self) -> None:
        self.flush()
        self.last_val = self.t.evaluate()
        if self.last_val is not None:
            self.metrics.write({"step": self.t.step, "val_loss": self.last_val[0],
                                "val_loss_heads": self.last_val})
            if self.t.is_main:
                self.emit(f"step {self.t.step} | val loss {self.last_val[0]:.4f}")
        self._restart_window()

    def checkpoint(self) -> None:
        self.last_checkpoint = self.t.save_checkpoint({"last_val": self.last_val})
        self._restart_window()


def train(cfg: TrainConfig, emit: Callable[[str], None] | None = None,
          on_step: Callable[[Trainer], None] | None = None, accelerator=None) -> dict[str, Any]:
    """Train (or resume) the run in cfg.out_dir to its step/token budget and write model/.

    on_step(trainer) runs after every step (tests use it to interrupt a run).
    Returns the run summary (also model/metrics.json). Raises NonFiniteLoss / OutOfMemory (user errors),
    TrainingInterrupted after SIGTERM (a checkpoint was written).
    """
    emit = emit or log.info
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    trainer = Trainer(cfg, accelerator)
    if not trainer.is_main:
        emit = log.debug  # one process speaks for all
    if trainer.resumed_from:
        emit(f"resuming from {trainer.resumed_from} (step {trainer.step}/{trainer.total_steps})")
    else:
        emit(f"training {trainer.core.num_params():,} parameters for {trainer.total_steps} steps of "
             f"{trainer.tokens_per_step:,} tokens on {trainer.world} x {trainer.device} "
             f"({trainer.precision})")
    loop = Loop(trainer, emit, on_step)
    if trainer.resumed_from:
        loop.last_val = trainer.checkpoint_state.get("last_val")
    loop.run()
    loop.flush()
    if not (trainer.resumed_from and trainer.step == trainer.checkpoint_state["step"] and loop.last_val):
        loop.validate()  # a rerun after the final checkpoint has nothing left to do
    if loop.last_checkpoint is None or loop.last_checkpoint.name != f"step-{trainer.step:06d}":
        loop.checkpoint()
    summary = _summary(trainer, loop, time.perf_counter() - start)
    trainer.write_model(summary)
    return summary


def _summary(trainer: Trainer, loop: Loop, seconds: float) -> dict[str, Any]:
    baselines = unigram_baselines(trainer.cfg.index) if trainer.is_main else {}
    baseline = baselines.get("val_unigram_baseline_nats")
    entropy = baselines.get("val_unigram_entropy_nats")
    val = loop.last_val
    record = loop.last_record
    summary = {
        "steps": trainer.step, "tokens": trainer.step * trainer.tokens_per_step,
        "train_loss": record.get("loss"), "train_loss_heads": record.get("loss_heads"),
        "val_loss": val[0] if val else None, "val_loss_heads": val,
        "tokens_per_s": trainer.tokens_per_step * loop.steps_run / loop.train_seconds
        if loop.steps_run else None,
        "seconds": round(seconds, 3), "params": trainer.core.num_params(),
        "flops_per_token": trainer.flops_per_token, "device": str(trainer.device),
        "processes": trainer.world, "precision": trainer.precision,
        "resumed_from_step": trainer.checkpoint_state["step"] if trainer.checkpoint_state else None,
        "loss_units": "nats",
        **baselines,
        "val_unigram_entropy_bits": entropy / math.log(2) if entropy is not None else None,
        "val_below_unigram": bool(val[0] < baseline) if val and baseline is not None else None,
    }
    if trainer.peak_flops and summary["tokens_per_s"]:
        achieved = trainer.flops_per_token * summary["tokens_per_s"]
        summary["mfu"] = achieved / (trainer.peak_flops * trainer.world)
    return summary


# synthetic data (benchmarks and tests) -----------------------------------------------------------
def phrase_tokens(n_tokens: int, vocab_size: int, n_phrases: int = 64, phrase_len: int = 16,
                  seed: int = 0) -> np.ndarray:
    """A stream of fixed random phrases in random order: inside a phrase every next token is
    determined (a model can learn it, and its extra heads can draft it), between phrases it is not."""
    rng = np.random.default_rng(seed)
    phrases = rng.integers(1, vocab_size, size=(n_phrases, phrase_len))
    order = rng.integers(0, n_phrases, size=n_tokens // phrase_len + 1)
    return phrases[order].reshape(-1)[:n_tokens]


def write_token_index(out_dir: str | os.PathLike, train: np.ndarray, val: np.ndarray, vocab_size: int,
                      eot_id: int = 0) -> Path:
    """A token index (train + val splits) in the tokenize stage's format; returns index.json's path."""
    out_dir = Path(out_dir)
    dtype = dtype_for_vocab(vocab_size)
    splits = {}
    for name, tokens in (("train", train), ("val", val)):
        writer = ShardWriter(out_dir, name, dtype)
        writer.append(tokens, docs=1)
        splits[name] = writer.close()
    write_index(out_dir / "index.json", dtype=dtype, vocab_size=vocab_size, eot_id=eot_id,
                tokenizer_sha256="synthetic", splits=splits)
    return out_dir / "index.json"
