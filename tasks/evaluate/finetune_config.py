"""The `evaluate.finetune` settings, torch-free: the stage's config imports it when the flow loads, and
importing torch there would cost every process that merely reads the config (workers, the CLI) seconds."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FinetuneConfig(BaseModel):
    """How a task head is fine-tuned; the same settings for the pretrained and the random-init model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "linear": a new head on `text <eos>`. "prompt" (classification): fine-tune from the zero-shot
    # classifier where the task has a prompt whose choices start with distinct tokens: the input is the
    # rendered prompt and the head starts as the LM head's rows of those tokens (Gao et al. 2021, "LM-BFF").
    # Regression, multiple choice and tasks without such a prompt always get the linear head. On the books
    # model the prompt head was no better than the linear one and 1.6x slower (README), so linear is the default.
    head: Literal["prompt", "linear"] = "linear"
    lr: float = Field(1e-4, gt=0.0, lt=1.0)  # peak learning rate (see the module docstring)
    epochs: int = Field(3, ge=1, le=100)  # passes over the training examples
    batch_size: int = Field(16, ge=1)  # examples per optimizer step (multiple choice: each with its choices)
    max_length: int = Field(256, ge=8)  # tokens per sequence (capped at the model's positions); cuts text
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)  # share of the steps warming up linearly
    weight_decay: float = Field(0.01, ge=0.0)  # AdamW's, on matrices and embeddings
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the training forward (CUDA; shapes vary per batch)
    seed: int = Field(0, ge=0)  # head init, random init, shuffling
    grad_clip: float = Field(1.0, ge=0.0)  # 0 = no clipping
    eval_batch_size: int = Field(64, ge=1)  # sequences per prediction batch
    group_by_length: bool = True  # training batches of similar lengths (less padding), in random order
    checkpoint_every: int = Field(500, ge=0)  # steps between checkpoints (0 = only at the end)
