"""The one training loop on Accelerate: optimizer steps, validation, checkpoints, resume, metrics.

The caller hands it the model (a builder), the data source and the loss (tasks/pretrain/lm.py does for
pretraining; fine-tuning and continued pretraining reuse this loop the same way):

- data: `seq_len` (tokens per example, for throughput), `next_batch() -> (x, y)` (CPU tensors, or dicts
  of them: fine-tuning's x holds input_ids and attention_mask), `state_dict()` / `load_state_dict()` (the
  position, saved in checkpoints), `val_batches(max_batches)` -> an iterator of (x, y) or None;
- objective: `n_losses`, `prepare(core, compile, fsdp)`, `backward(forward, x, y, scale)` -> the detached
  loss terms (n_losses,) after calling backward, `losses(forward, x, y)` -> the loss terms without
  gradients, and `oom_hint` (appended to the out-of-memory message).

torch, accelerate and numpy only, so the same code trains in the pipeline, under `accelerate launch -m
tasks.pretrain`, and in bench/pretrain.py on a bare GPU machine. Checkpoint I/O is in checkpoint.py.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.errors import RunInterrupted, UserError
from tasks.core.stopping import stop_signal
from tasks.pretrain.checkpoint import Checkpoints, load_weights

log = logging.getLogger("llmpipe.pretrain")

# dense bf16 tensor-core peaks (vendor datasheets), for MFU; unknown devices get no MFU
PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12),
                   ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12),
                   ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12)]


@dataclass
class LoopConfig:
    """How the loop trains. No defaults: the stage config (tasks/pretrain/stage.py PretrainConfig) is the
    one place they are written, and `stage.loop_config` builds this from it; see there for each field."""

    out_dir: str  # run directory: checkpoints/, metrics.jsonl
    micro_batch: int
    grad_accum: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    max_steps: int
    max_tokens: int
    precision: str
    compile: bool
    attention: str
    cpu: bool
    cpu_threads: int
    seed: int
    eval_every: int
    eval_batches: int
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int
    progress: bool  # a progress bar when stderr is a terminal

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopConfig:
        return cls(**check_keys(cls, d, "training loop"))


def check_keys(cls, d: dict[str, Any], what: str) -> dict[str, Any]:
    """d, if its keys are exactly the dataclass's required ones (a run.json written by another version
    fails here, not in a TypeError)."""
    known = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is f.default_factory}  # both MISSING
    unknown, missing = sorted(set(d) - known), sorted(required - set(d))
    if unknown or missing:
        raise UserError(f"{what} config: unknown keys {unknown}, missing keys {missing}; known keys: "
                        f"{sorted(known)}. Rewrite run.json by rerunning the pretrain stage")
    return d


class NonFiniteLoss(UserError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


class OutOfMemory(UserError):
    """The micro-batch does not fit the device."""


class TrainingInterrupted(RunInterrupted, RuntimeError):
    """SIGTERM arrived; a checkpoint was written and a rerun resumes from it."""


# schedule and helpers ----------------------------------------------------------------------------
def lr_at(step: int, cfg: LoopConfig, total_steps: int) -> float:
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


def total_steps_for(cfg: LoopConfig, world_size: int, seq_len: int) -> int:
    tokens_per_step = cfg.micro_batch * cfg.grad_accum * world_size * seq_len
    limits = [s for s in (cfg.max_steps, math.ceil(cfg.max_tokens / tokens_per_step)) if s > 0]
    if not limits:
        raise UserError("pretrain needs a budget: set pretrain.max_steps or pretrain.max_tokens above 0")
    return min(limits)


def make_accelerator(cfg: LoopConfig):
    """Accelerate's process state. Autocast is ours (Trainer.autocast), not Accelerate's: its forward
    patching would wrap the compiled model in Python conversion code, and the memory-saving head order
    calls heads outside forward."""
    from accelerate import Accelerator

    return Accelerator(cpu=cfg.cpu or not torch.cuda.is_available())


# the trainer -------------------------------------------------------------------------------------
class Trainer:
    """Model, optimizer, data and loss of one run, with one optimizer step per `train_step()`.

    build_model() runs under the run's seed on the training device; model_spec (JSON) is saved in every
    checkpoint, and a resume with another spec is refused. AdamW runs its fused kernel on CUDA, and on
    the CPU when fused_on_cpu (fine-tuning asks; pretraining keeps the per-tensor kernel its pinned
    losses and CPU benchmark were measured with).
    """

    def __init__(self, cfg: LoopConfig, build_model: Callable[[], torch.nn.Module], data, objective,
                 accelerator, model_spec: dict[str, Any], fused_on_cpu: bool = False):
        self.cfg, self.data, self.objective, self.model_spec = cfg, data, objective, model_spec
        self.fused_on_cpu = fused_on_cpu
        self.accelerator = acc = accelerator
        self.device, self.rank, self.world = acc.device, acc.process_index, acc.num_processes
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cpu" and cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        self.is_main = acc.is_main_process
        self.fsdp = acc.distributed_type.name == "FSDP"
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.T = data.seq_len
        self.total_steps = total_steps_for(cfg, self.world, self.T)
        self.tokens_per_step = cfg.micro_batch * cfg.grad_accum * self.world * self.T
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        with torch.device(self.device):  # initializing on the GPU takes a fraction of the CPU's time
            self.core = build_model()
        self.step = 0
        self.checkpoints = Checkpoints(Path(cfg.out_dir) / "checkpoints", acc, cfg.keep_checkpoints,
                                       self.fsdp)
        self.checkpoint_state: dict[str, Any] | None = None  # state.json of the checkpoint resumed from
        self.resumed_from = self._load_checkpoint_weights()
        # one prepare call for both: FSDP2 shards the model and remaps the optimizer's parameters together
        self.model, self.optimizer = acc.prepare(self.core, self._make_optimizer(self.core))
        self.core = acc.unwrap_model(self.model)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        objective.prepare(self.core, compile=cfg.compile, fsdp=self.fsdp)
        self.num_params = sum(p.numel() for p in self.core.parameters())  # a tied weight counts once
        flops = getattr(self.core, "flops_per_token", None)
        self.flops_per_token = flops(self.T) if flops else None
        self.peak_flops = peak_flops(self.device) if self.flops_per_token else None
        if self.resumed_from:
            self._load_checkpoint_state(self.resumed_from)
        else:
            torch.manual_seed(cfg.seed + 1 + self.rank)  # dropout streams differ between processes

    def _make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for p in model.parameters():
            # norm gains (and biases) are not weights to shrink; matrices and embeddings are
            (no_decay if p.ndim < 2 else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
                                 fused=self.device.type == "cuda" or self.fused_on_cpu)

    # one optimizer step ----------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def kernels(self):
        """The configured attention kernel first, the others as fallbacks (a kernel that cannot run a
        shape is skipped); chosen when a compiled graph is traced, so it must hold around every call."""
        return attention_kernels(self.cfg.attention)

    def to_device(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(x, dict):
            return {k: self.to_device(v) for k, v in x.items()}
        x = x.contiguous()
        if self.device.type == "cuda":  # pinned host memory: the copy overlaps the previous step's kernels
            return x.pin_memory().to(self.device, non_blocking=True)
        return x

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches. Returns (loss terms (n_losses,), grad norm)
        as device tensors: nothing here waits for the device."""
        cfg, acc = self.cfg, self.accelerator
        self.model.train()
        losses = torch.zeros(self.objective.n_losses, device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = (self.to_device(t) for t in self.data.next_batch())
            sync = micro == cfg.grad_accum - 1
            with (nullcontext() if sync else acc.no_sync(self.model)), self.autocast(), self.kernels():
                losses += self.objective.backward(self.forward, x, y, 1 / cfg.grad_accum)
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
        """Mean loss terms over the validation batches (every process runs the same number)."""
        batches = self.data.val_batches(self.cfg.eval_batches)
        if batches is None:
            return None
        self.model.eval()
        total, n = torch.zeros(self.objective.n_losses, device=self.device), 0
        for x, y in batches:
            with self.autocast(), self.kernels():
                total += self.objective.losses(self.forward, self.to_device(x), self.to_device(y)).float()
            n += 1
        if n == 0:
            return None
        total = self.accelerator.reduce(total / n, reduction="mean")
        return total.tolist()

    # checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, extra: dict[str, Any]) -> Path:
        state = {"loader": self.data.state_dict(), "world_size": self.world, "config": asdict(self.cfg),
                 "model": self.model_spec, **extra}
        return self.checkpoints.save(self.step, self.model, self.optimizer, state)

    def _load_checkpoint_weights(self) -> Path | None:
        path = self.checkpoints.latest()
        if path is None:
            return None
        trained = self.checkpoints.read_state(path).get("model")
        if trained != self.model_spec:
            raise UserError(f"checkpoint {path} was trained with model {trained}, this run asks for "
                            f"{self.model_spec}; use another out_dir or delete {self.checkpoints.root}")
        load_weights(self.core, path / "model.safetensors")
        return path

    def _load_checkpoint_state(self, path: Path) -> None:
        state = self.checkpoints.read_state(path)
        self.step = state["step"]
        self.data.load_state_dict(state["loader"])
        if state["world_size"] != self.world:
            log.warning("resuming a %d-process checkpoint on %d processes: the data order changes",
                        state["world_size"], self.world)
        self.checkpoints.load_training_state(path, self.model, self.optimizer)
        self.checkpoint_state = state


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
        self.window_start = time.perf_counter()
        self.train_seconds, self.steps_run = 0.0, 0
        self.last_record: dict[str, Any] = {}
        self.last_val: list[float] | None = None
        self.last_checkpoint = trainer.resumed_from

    def run(self) -> None:
        t, cfg = self.t, self.t.cfg
        try:
            while t.step < t.total_steps:
                self.pending.append(self._guarded_step())
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
                "keep the same global batch" + self.t.objective.oom_hint) from exc

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
                raise NonFiniteLoss(f"training diverged at step {first + i}: losses {row}, gradient "
                                    f"norm {norm}. Kept the last good checkpoint ({where}). Lower "
                                    "pretrain.lr, raise warmup_steps or set grad_clip, then rerun (it "
                                    "resumes there).")
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




def run(trainer: Trainer, emit: Callable[[str], None],
        on_step: Callable[[Trainer], None] | None = None) -> tuple[Loop, dict[str, Any]]:
    """Train (or resume) to the budget, validate and checkpoint at the end; returns the loop and the
    run's summary (loss, throughput, MFU)."""
    start = time.perf_counter()
    if not trainer.is_main:
        emit = log.debug  # one process speaks for all
    if trainer.resumed_from:
        emit(f"resuming from {trainer.resumed_from} (step {trainer.step}/{trainer.total_steps})")
    else:
        emit(f"training {trainer.num_params:,} parameters for {trainer.total_steps} steps of "
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
    return loop, _summary(trainer, loop, time.perf_counter() - start)


def _summary(trainer: Trainer, loop: Loop, seconds: float) -> dict[str, Any]:
    val, record = loop.last_val, loop.last_record
    summary = {
        "steps": trainer.step, "tokens": trainer.step * trainer.tokens_per_step,
        "train_loss": record.get("loss"), "train_loss_heads": record.get("loss_heads"),
        "val_loss": val[0] if val else None, "val_loss_heads": val,
        "tokens_per_s": trainer.tokens_per_step * loop.steps_run / loop.train_seconds
        if loop.steps_run else None,
        "seconds": round(seconds, 3), "params": trainer.num_params,
        "flops_per_token": trainer.flops_per_token, "device": str(trainer.device),
        "processes": trainer.world, "precision": trainer.precision,
        "resumed_from_step": trainer.checkpoint_state["step"] if trainer.checkpoint_state else None,
        "loss_units": "nats",
    }
    if trainer.peak_flops and summary["tokens_per_s"]:
        achieved = trainer.flops_per_token * summary["tokens_per_s"]
        summary["mfu"] = achieved / (trainer.peak_flops * trainer.world)
    return summary
