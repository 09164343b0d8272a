"""Checkpoints and model directories on disk: atomic writes, the `latest` pointer, resume, warm start.

    checkpoints/step-000100/   model.safetensors, optimizer.pt, state.json, rng-<rank>.safetensors
    checkpoints/latest         name of the newest complete checkpoint, written last
    model/                     model.safetensors, config.json (+ whatever the caller adds), one rename

Weights are safetensors only; the optimizer state is saved with torch.save (our own file, loaded with
weights_only=True). torch, accelerate and safetensors only.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.config import GPTConfig
from tasks.core.errors import UserError
from tasks.core.hashing import sha256_of

log = logging.getLogger("llmpipe.pretrain")

LATEST = "latest"
# GPTConfig fields that decide the shapes of the weights (block_size does not: positions are rotary)
SHAPE_FIELDS = ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp", "mlp_ratio", "n_future",
                "tie_embeddings")


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def weights_for_saving(state_dict: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, the tied unembedding stored once (safetensors refuses shared storage)."""
    out = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if tied:
        out.pop("lm_head.weight", None)
    return out


def is_tied(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "cfg", None), "tie_embeddings", False))


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    allowed = {"lm_head.weight"} if is_tied(model) else set()
    if set(missing) - allowed or unexpected:
        raise UserError(f"{path} does not match the model config: missing {sorted(set(missing) - allowed)}, "
                        f"unexpected {sorted(unexpected)}")


# model directories ------------------------------------------------------------------------------------
def read_model_config(model_dir: str | os.PathLike) -> GPTConfig:
    path = Path(model_dir) / "config.json"
    if not path.exists() or not (Path(model_dir) / "model.safetensors").exists():
        raise UserError(f"{model_dir} is not a model directory written by the pretrain stage (it needs "
                        "config.json and model.safetensors); point pretrain.init_from at a run's model/")
    return GPTConfig.from_dict(json.loads(path.read_text())["model"])


def weights_sha256(model_dir: str | os.PathLike) -> str:
    """SHA-256 of a model directory's model.safetensors (what a warm start's output depends on)."""
    return sha256_of(Path(model_dir) / "model.safetensors")


def check_warm_start(model_dir: str | os.PathLike, model: dict[str, Any]) -> None:
    """Refuse to start from a model whose weights do not have this run's shapes, naming both."""
    trained = read_model_config(model_dir).to_dict()
    wanted = GPTConfig.from_dict(model).to_dict()
    differ = [f"{k} {wanted[k]} vs {trained[k]}" for k in SHAPE_FIELDS if wanted[k] != trained[k]]
    if differ:
        raise UserError(f"pretrain.init_from {model_dir}: its weights have another shape than this run's "
                        f"model ({'; '.join(differ)}, this run's first, the init model's second). Set the "
                        "pretrain model keys (and tokenize.vocab_size) to the init model's, or train from "
                        "scratch without init_from")


def publish_model_dir(final: Path, weights: dict[str, torch.Tensor], files: dict[str, Any],
                      copies: dict[str, str] | None = None) -> Path:
    """Write weights, JSON files and copied files into a temp dir, then rename it to `final` (main
    process only)."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name, obj in files.items():
        write_json_atomic(tmp / name, obj)
    for name, source in (copies or {}).items():
        shutil.copyfile(source, tmp / name)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


# checkpoints ------------------------------------------------------------------------------------------
class Checkpoints:
    """The checkpoints/ directory of one run, written and read by every process together."""

    def __init__(self, root: Path, accelerator, keep: int, fsdp: bool):
        self.root, self.acc, self.keep, self.fsdp = root, accelerator, keep, fsdp
        self.is_main, self.rank = accelerator.is_main_process, accelerator.process_index

    def latest(self) -> Path | None:
        """The checkpoint `latest` names; if a kill left it naming a missing one, the newest complete one."""
        pointer = self.root / LATEST
        if pointer.exists():
            path = self.root / pointer.read_text().strip()
            if (path / "state.json").exists():
                return path
        complete = sorted(p for p in self.root.glob("step-*") if (p / "state.json").exists())
        return complete[-1] if complete else None

    def save(self, step: int, model, optimizer, state: dict[str, Any]) -> Path:
        """Write checkpoints/step-NNNNNN atomically (temp dir, rename, then the `latest` pointer)."""
        acc, name = self.acc, f"step-{step:06d}"
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.check_room(model)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        weights = acc.get_state_dict(model)  # collectives under FSDP: every process calls both
        optimizer_state = self._optimizer_state(model, optimizer)
        if self.is_main:
            tied = is_tied(acc.unwrap_model(model))
            save_file(weights_for_saving(weights, tied), str(tmp / "model.safetensors"))
            torch.save(optimizer_state, tmp / "optimizer.pt")
            write_json_atomic(tmp / "state.json", {"step": step, **state})
        rng = {"cpu": torch.get_rng_state()}
        if acc.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(acc.device)
        save_file(rng, str(tmp / f"rng-{self.rank}.safetensors"))
        acc.wait_for_everyone()
        if self.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer = self.root / f".{LATEST}.tmp"
            pointer.write_text(name)
            os.replace(pointer, self.root / LATEST)
            self._prune(keep=name)
        acc.wait_for_everyone()
        return final

    def check_room(self, model) -> None:
        """A new checkpoint is written before the oldest is dropped, so `keep + 1` must fit: fail with
        the figures, before writing, when the disk cannot take one more (the last one stays intact)."""
        done = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        if done:
            need = sum(f.stat().st_size for f in done[-1].iterdir() if f.is_file())
        else:  # weights, and AdamW's two moments per parameter (fp32)
            need = 3 * sum(p.numel() * 4 for p in self.acc.unwrap_model(model).parameters())
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free < need * 1.05:
            raise UserError(
                f"not enough disk space for a checkpoint in {self.root}: one takes about {need / 1e6:,.0f} MB, "
                f"{free / 1e6:,.0f} MB are free (keep_checkpoints={self.keep} kept, plus the one being "
                "written). Free space, lower pretrain.keep_checkpoints, or move the store; the last "
                "checkpoint is intact, so rerunning resumes from it.")

    def _prune(self, keep: str) -> None:
        """Keep the newest `keep` checkpoints; drop temp dirs a killed run left behind."""
        done = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        stale = list(self.root.glob(".step-*.tmp"))
        for old in done[:-max(1, self.keep)] + stale:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def read_state(path: Path) -> dict[str, Any]:
        return json.loads((path / "state.json").read_text())

    def load_training_state(self, path: Path, model, optimizer) -> None:
        """Optimizer state and this process's RNG streams (the weights are loaded before prepare())."""
        self._load_optimizer_state(path / "optimizer.pt", model, optimizer)
        rng_file = path / f"rng-{self.rank}.safetensors"
        if rng_file.exists():
            rng = load_file(str(rng_file))
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and self.acc.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.acc.device)

    def _optimizer_state(self, model, optimizer) -> dict[str, Any]:
        """The whole optimizer state as plain tensors (under FSDP gathered from the shards to rank 0)."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load_optimizer_state(self, path: Path, model, optimizer) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = torch.load(path, map_location="cpu", weights_only=True) if self.is_main else {}
        set_optimizer_state_dict(model, optimizer.optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
