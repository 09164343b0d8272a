"""Pretraining a GPT language model with the shared loop: the run config (run.json), the multi-token
loss, warm start from a trained model, and the model directory the stage publishes.

    model/   model.safetensors, config.json, tokenizer.json, metrics.json, lineage.json

torch, accelerate, numpy and safetensors only (bench/pretrain.py runs it on a bare GPU machine).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.gpt import GPT, GPTConfig
from models.mtp import all_heads_backward, sequential_heads_backward
from tasks.core.errors import UserError
from tasks.pretrain.checkpoint import (
    check_warm_start,
    is_tied,
    load_weights,
    publish_model_dir,
    weights_for_saving,
    weights_sha256,
)
from tasks.pretrain.data import LMData, token_baselines
from tasks.pretrain.loop import LoopConfig, Trainer, check_keys, make_accelerator, run

log = logging.getLogger("llmpipe.pretrain")


@dataclass
class TrainConfig:
    """One pretraining run; JSON-safe (run.json holds it). Built by stage.build_train_config from the
    stage config, which holds every default."""

    index: str  # token index.json (train + val splits)
    tokenizer: str  # tokenizer.json copied into model/ ("" = none)
    model: dict[str, Any]  # GPTConfig fields; block_size is the training T
    memory_saving_heads: bool  # one head's forward+backward at a time (n_future > 1)
    init_from: str  # a model directory to start from ("" = random initialization)
    loop: LoopConfig
    # share of training windows from the earlier runs' tokens of an appended index (None = uniform over
    # all); a default, so a run.json written before the option still reads
    replay_ratio: float | None = None
    lineage: dict[str, Any] = field(default_factory=dict)  # recorded in model/lineage.json

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = check_keys(cls, d, "pretraining run")
        if not isinstance(d["loop"], dict):
            raise UserError(f"pretraining run config: 'loop' must be a mapping, not {d['loop']!r}")
        return cls(**(d | {"loop": LoopConfig.from_dict(d["loop"])}))


class LMObjective:
    """The summed cross-entropies of the model's n_future heads (n_future=1: next-token prediction),
    either all heads at once or one head's forward+backward at a time (models/mtp.py)."""

    def __init__(self, n_future: int, memory_saving: bool):
        self.n_losses, self.memory_saving = n_future, memory_saving
        self.oom_hint = "" if memory_saving or n_future == 1 else ", or set memory_saving_heads: true"
        self.sequential, self.core, self.head_loss = False, None, None

    def prepare(self, core: GPT, compile: bool, fsdp: bool) -> None:
        self.core = core
        self.head_loss = torch.compile(core.head_loss) if compile else core.head_loss
        # the memory-saving order calls the heads outside the sharded forward, which FSDP cannot serve
        self.sequential = self.memory_saving and self.n_losses > 1 and not fsdp
        if fsdp and self.memory_saving and self.n_losses > 1:
            log.warning("FSDP: the multi-token heads run in the plain order (memory_saving_heads ignored)")

    def backward(self, forward: Callable, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
        if self.sequential:
            return sequential_heads_backward(forward, self.core, x, y, scale, self.head_loss)
        return all_heads_backward(forward, x, y, scale)

    def losses(self, forward: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return forward(x, y)[1]


def check_vocab(model_cfg: GPTConfig, data: LMData, index: str) -> None:
    if model_cfg.vocab_size < data.vocab_size:
        raise UserError(f"model vocab_size {model_cfg.vocab_size} is smaller than the tokenizer's "
                        f"{data.vocab_size} ({index}); set pretrain.vocab_size to 0 to take it from the data")


def model_builder(model_cfg: GPTConfig, init_from: str) -> Callable[[], GPT]:
    """A fresh GPT, with a trained model's weights when init_from names its directory (warm start: the
    optimizer and schedule still start fresh)."""
    def build() -> GPT:
        model = GPT(model_cfg)
        if init_from:
            load_weights(model, Path(init_from) / "model.safetensors")
        return model

    return build


def make_trainer(cfg: TrainConfig, accelerator=None) -> Trainer:
    acc = accelerator or make_accelerator(cfg.loop)
    model_cfg = GPTConfig.from_dict(cfg.model)
    data = LMData(cfg.index, model_cfg.block_size, cfg.loop.micro_batch, model_cfg.n_future, cfg.loop.seed,
                  rank=acc.process_index, world_size=acc.num_processes, replay_ratio=cfg.replay_ratio)
    check_vocab(model_cfg, data, cfg.index)
    if cfg.init_from:
        check_warm_start(cfg.init_from, cfg.model)
    return Trainer(cfg.loop, model_builder(model_cfg, cfg.init_from), data,
                   LMObjective(model_cfg.n_future, cfg.memory_saving_heads), acc, model_spec=cfg.model)


def train(cfg: TrainConfig, emit: Callable[[str], None] | None = None,
          on_step: Callable[[Trainer], None] | None = None, accelerator=None) -> dict[str, Any]:
    """Train (or resume) the run in cfg.loop.out_dir to its step/token budget and write model/.

    on_step(trainer) runs after every step (tests use it to interrupt a run).
    Returns the run summary (also model/metrics.json). Raises NonFiniteLoss / OutOfMemory (user errors),
    TrainingInterrupted after SIGTERM (a checkpoint was written).
    """
    Path(cfg.loop.out_dir).mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(cfg, accelerator)
    _, summary = run(trainer, emit or log.info, on_step)
    summary |= trainer.data.replay_stats()
    if trainer.is_main:
        summary |= baseline_summary(cfg.index, summary["val_loss"])
    write_model(trainer, cfg, summary)
    return summary


def baseline_summary(index: str, val_loss: float | None) -> dict[str, Any]:
    baselines = token_baselines(index)
    entropy, unigram = baselines["val_unigram_entropy_nats"], baselines["val_unigram_baseline_nats"]
    bigram = baselines["val_bigram_baseline_nats"]
    return {**baselines,
            "val_unigram_entropy_bits": entropy / math.log(2) if entropy is not None else None,
            "val_below_unigram": bool(val_loss < unigram) if val_loss is not None and unigram is not None
            else None,
            "val_below_bigram": bool(val_loss < bigram) if val_loss is not None and bigram is not None
            else None}


def write_model(trainer: Trainer, cfg: TrainConfig, metrics: dict[str, Any]) -> Path:
    """model/: weights, config, tokenizer, metrics and lineage, published with one rename."""
    acc, final = trainer.accelerator, Path(cfg.loop.out_dir) / "model"
    weights = acc.get_state_dict(trainer.model)  # a collective under FSDP: every process calls it
    if trainer.is_main:
        data: LMData = trainer.data
        config = {"architecture": "llmpipe-gpt", "model": GPTConfig.from_dict(cfg.model).to_dict(),
                  "eot_id": data.eot_id, "tokenizer": "tokenizer.json" if cfg.tokenizer else None}
        lineage = {**cfg.lineage, "train_config": asdict(cfg),
                   "index_tokenizer_sha256": data.tokenizer_sha256}
        if cfg.init_from:
            lineage["init_from"] = {"model_dir": cfg.init_from, "model_sha256": weights_sha256(cfg.init_from)}
        publish_model_dir(final, weights_for_saving(weights, is_tied(trainer.core)),
                          {"config.json": config, "metrics.json": metrics, "lineage.json": lineage},
                          {"tokenizer.json": cfg.tokenizer} if cfg.tokenizer else None)
    acc.wait_for_everyone()
    return final
