"""Pretrain stage: a GPT (next-token or multi-token prediction) on the tokenize stage's packed shards.

One process trains in-process; more start `accelerate launch -m tasks.pretrain --config run.json`
(this module is that entry point) with a config from infra/accelerate/ and stream its logs. A rerun
with the same out_uri resumes from the last checkpoint inside it.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from models.config import GPTConfig, pad_vocab
from tasks.core.artifacts import Artifact, Markdown, rounded
from tasks.core.config import StageConfig
from tasks.core.errors import ConfigError, RunInterrupted, UserError
from tasks.core.hashing import sha256_of
from tasks.core.result import StageResult
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.core.stopping import stop_signal
from tasks.core.token_shards import ReplayError, read_index, replay_boundary

log = logging.getLogger("llmpipe.pretrain")

REPO_ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = REPO_ROOT / "infra" / "accelerate"
LAUNCH_ERROR = "launch-error.json"


class PretrainConfig(StageConfig):
    """The `pretrain:` section of pipelines.yaml. Defaults train the demo's tiny model on a CPU."""

    # model (see models/gpt.py GPTConfig)
    n_layer: int = Field(4, ge=1)  # blocks on each head's path: n_layer - 1 shared + 1 per head
    n_embd: int = Field(128, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int = Field(0, ge=0)  # 0 = n_head; fewer = grouped-query attention
    block_size: int = Field(128, ge=1)  # context length = training sequence length
    vocab_size: int = Field(0, ge=0)  # 0 = the tokenizer's vocabulary padded up to vocab_multiple
    vocab_multiple: int = Field(64, ge=1)
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    tie_embeddings: bool = True
    n_future: int = Field(1, ge=1)  # output heads (multi-token prediction); 1 = plain next-token prediction
    memory_saving_heads: bool = True  # run the heads' forward+backward one at a time
    # warm start: a model directory the stage wrote (<store>/pretrain/<key>/model); its weights start the
    # run (same shapes), the optimizer and the schedule start fresh. The store key holds the weights' digest
    init_from: str | None = None
    # continued pretraining on an index that tokenize.append_to wrote: this share of the training windows
    # is drawn from the earlier runs' tokens (replay), the rest from the new ones. None = uniformly over
    # all train tokens
    replay_ratio: float | None = Field(None, ge=0.0, le=1.0)
    # optimization
    micro_batch: int = Field(16, ge=1)  # sequences per process per forward pass
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    max_steps: int = Field(250, ge=0)  # budget: optimizer steps (0 = none) ...
    max_tokens: int = Field(0, ge=0)  # ... and/or training tokens (0 = none); whichever ends first
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    attention: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"  # attention kernel tried first
    cpu: bool = False  # train on CPU even when a GPU is present
    # CPU threads (0 = one per core). Small models on a CPU shared with other work: 1 is steadier, since
    # every parallel op waits for its slowest thread, and a thread sharing its core waits long
    cpu_threads: int = Field(0, ge=0)
    seed: int | None = None  # None = the pipeline's top-level `seed`
    # evaluation, checkpoints, logs
    eval_every: int = Field(125, ge=0)  # 0 = only at the end
    eval_batches: int = Field(20, ge=0)  # per process; 0 = the whole val split
    checkpoint_every: int = Field(125, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    # processes
    num_processes: int = Field(1, ge=1)  # > 1 starts `accelerate launch` (one process per GPU; gloo on CPUs)
    distributed: Literal["ddp", "fsdp"] = "ddp"

    key_exclude = frozenset({"log_every"})

    def key_dict(self) -> dict[str, Any]:
        """Unset, replay_ratio trains what the stage trained before the option existed, so it stays out
        of the key: the keys of existing configs do not change."""
        key = super().key_dict()
        if self.replay_ratio is None:
            del key["replay_ratio"]
        return key

    @model_validator(mode="after")
    def _check_model(self) -> PretrainConfig:
        # the model config checks head/width compatibility (a ValueError); vocab comes from the data later
        GPTConfig.from_dict(model_fields(self, vocab_size=max(self.vocab_size, 1)))
        if self.micro_batch < 1 or self.grad_accum < 1 or self.num_processes < 1:
            raise ValueError("micro_batch, grad_accum and num_processes must be >= 1")
        if self.max_steps <= 0 and self.max_tokens <= 0:
            raise ValueError("set max_steps or max_tokens above 0: training needs a budget")
        return self


def model_fields(cfg: PretrainConfig, vocab_size: int) -> dict[str, Any]:
    return {"vocab_size": vocab_size, "block_size": cfg.block_size, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_kv_head": cfg.n_kv_head, "n_embd": cfg.n_embd, "mlp": cfg.mlp,
            "dropout": cfg.dropout, "tie_embeddings": cfg.tie_embeddings, "n_future": cfg.n_future}


def loop_config(cfg: PretrainConfig, out_dir: Path, pipeline_seed: int = 0):
    """The loop's plain config: the fields of the same names, the seed resolved."""
    from tasks.pretrain.loop import LoopConfig  # torch: imported when a run starts, not with the flow

    shared = {f.name for f in fields(LoopConfig)} & set(PretrainConfig.model_fields)
    return LoopConfig(out_dir=str(out_dir), progress=True, **{k: getattr(cfg, k) for k in shared - {"seed"}},
                      seed=pipeline_seed if cfg.seed is None else cfg.seed)


def build_train_config(cfg: PretrainConfig, index_path: Path, tokenizer_path: Path | None, out_dir: Path,
                       lineage: dict[str, Any], pipeline_seed: int = 0):
    """The run's plain config (run.json), with the vocabulary resolved from the token index."""
    from tasks.pretrain.checkpoint import check_warm_start
    from tasks.pretrain.lm import TrainConfig

    index = read_index(index_path)
    vocab = cfg.vocab_size or pad_vocab(index["vocab_size"], cfg.vocab_multiple)
    if vocab < index["vocab_size"]:
        raise ConfigError(f"pretrain.vocab_size {vocab} is smaller than the tokenizer's "
                          f"{index['vocab_size']} ids ({index_path}); set it to 0 to take the "
                          "tokenizer's size")
    model = model_fields(cfg, vocab)
    if cfg.init_from:
        check_warm_start(cfg.init_from, model)
    if cfg.replay_ratio is not None:  # before any process starts: the index alone answers it
        try:
            replay_boundary(index, "train", cfg.block_size + cfg.n_future, cfg.replay_ratio, str(index_path))
        except ReplayError as exc:
            raise ConfigError(f"pretrain.replay_ratio: {exc}") from exc
    return TrainConfig(index=str(index_path), tokenizer=str(tokenizer_path) if tokenizer_path else "",
                       model=model, memory_saving_heads=cfg.memory_saving_heads,
                       init_from=cfg.init_from or "", loop=loop_config(cfg, out_dir, pipeline_seed),
                       replay_ratio=cfg.replay_ratio, lineage=lineage)


def run_pretrain(inputs: Inputs, out_uri: str, cfg: PretrainConfig, ctx: RunContext) -> StageOutput:
    """Train on the tokenize stage's token index; resumes from out_uri/checkpoints when a run was cut short."""
    store = ctx.open_store()
    tokens = inputs["tokenize"]
    index_path = store.local_path(tokens.files("index")[0])
    tokenizer_path = store.local_path(tokens.files("tokenizer")[0]) if "tokenizer" in tokens.outputs else None
    out_dir = store.local_path(out_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    lineage = {"token_index": str(index_path), "token_index_sha256": store.file_digest(str(index_path)),
               "tokenizer_sha256": read_index(index_path).get("tokenizer_sha256"),
               "upstream": {"stage": tokens.stage, "key": tokens.key, "digest": tokens.digest},
               "stage_config": cfg.canonical(), "pipeline": ctx.pipeline, "run_id": ctx.run_id}
    train_cfg = build_train_config(cfg, index_path, tokenizer_path, out_dir, lineage, ctx.seed)
    run_json = out_dir / "run.json"
    run_json.write_text(json.dumps({"train": asdict(train_cfg)}, indent=2))
    emit = _emitter()
    if cfg.num_processes > 1:
        summary = launch(run_json, cfg.num_processes, cfg.distributed, emit)
    else:
        from tasks.pretrain.lm import train

        def on_step(trainer) -> None:  # the Prefect UI's progress artifact, a few dozen updates a run
            if trainer.step % max(1, trainer.total_steps // 50) == 0 or trainer.step == trainer.total_steps:
                ctx.progress("pretrain", "training steps", trainer.step, trainer.total_steps)

        summary = train(train_cfg, emit=emit, on_step=on_step)
    png = write_loss_curve(out_dir)
    outputs = {"model": "model/model.safetensors", "model_config": "model/config.json",
               "model_metrics": "model/metrics.json", "lineage": "model/lineage.json",
               "metrics": "metrics.jsonl", "run_config": "run.json"}
    if tokenizer_path:
        outputs["tokenizer"] = "model/tokenizer.json"
    if png:
        outputs["loss_curve"] = "loss.png"
    stats = {}
    if cfg.mlp == "swiglu":  # also as a Hugging Face Llama directory (AutoModelForCausalLM loads it)
        from tasks.pretrain.export import export_hf

        hf = export_hf(out_dir / "model", out_dir / "hf")
        outputs["hf_model"] = sorted(f"hf/{p.name}" for p in hf.iterdir() if p.is_file())
    else:
        stats["hf_export"] = "none: mlp 'gelu' has no Llama form (Llama's MLP is gated)"
    stats_keys = ("steps", "tokens", "train_loss", "val_loss", "tokens_per_s", "mfu", "seconds", "params",
                  "processes", "device", "precision", "resumed_from_step", "loss_units",
                  "val_unigram_entropy_nats", "val_unigram_entropy_bits", "val_below_unigram",
                  "unigram_entropy_nats", "val_unigram_baseline_nats", "val_bigram_baseline_nats",
                  "val_below_bigram", "replay_ratio", "previous_train_tokens", "new_train_tokens",
                  "windows_from_previous", "windows_from_new")
    return StageOutput(outputs=outputs, stats=stats | {k: summary.get(k) for k in stats_keys if k in summary})


def pretrain_key_inputs(cfg: PretrainConfig, ctx: RunContext) -> dict[str, Any]:
    """What the store key needs beyond the config: the warm-start weights' digest (the init_from path
    alone does not change when the model in it is retrained)."""
    if not cfg.init_from:
        return {}
    weights = Path(cfg.init_from) / "model.safetensors"
    if not weights.exists():
        raise ConfigError(f"pretrain.init_from: {weights} does not exist; point init_from at the model/ "
                          "directory of a finished pretrain run (it holds model.safetensors and config.json)")
    return {"init_from_sha256": sha256_of(weights)}  # streamed: a model can be gigabytes


# several processes ---------------------------------------------------------------------------------
def launch_command(run_json: Path, num_processes: int, distributed: str) -> list[str]:
    """`accelerate launch` with the repo's config for the strategy; gloo on machines without GPUs."""
    with socket.socket() as s:  # a free rendezvous port: two runs on one machine must not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--main_process_port", str(port)]
    config = ACCELERATE_CONFIGS / f"{distributed}.yaml"
    cmd += ["--config_file", str(config)] if config.exists() else ["--multi_gpu"]
    return cmd + ["-m", "tasks.pretrain", "--config", str(run_json)]


def launch(run_json: Path, num_processes: int, distributed: str,
           emit: Callable[[str], None]) -> dict[str, Any]:
    """Run the training processes, streaming their output line by line; returns the run summary."""
    out_dir = run_json.parent
    (out_dir / LAUNCH_ERROR).unlink(missing_ok=True)
    cmd = launch_command(run_json, num_processes, distributed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    emit("launching: " + " ".join(cmd))
    # In a session of its own, a Ctrl-C to the terminal's process group does not reach the training
    # processes: `llmpipe` decides and forwards a stop as SIGTERM (they checkpoint and exit). It runs stages
    # with SIGINT/SIGTERM blocked (flows/cli.py), a mask the launcher would inherit: unblocked for it.
    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1, start_new_session=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    threading.Thread(target=_forward_stop, args=(proc,), daemon=True).start()
    try:
        for line in proc.stdout:
            emit(line.rstrip())
        code = proc.wait()
    finally:
        if proc.poll() is None:  # we are being cancelled: let the workers checkpoint on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    if code != 0 and stop_signal() is not None:
        raise RunInterrupted(f"{signal.Signals(stop_signal()).name}: the training processes wrote a checkpoint "
                             f"in {out_dir / 'checkpoints'} and stopped; rerun the same command to resume")
    if code != 0:
        error = out_dir / LAUNCH_ERROR
        if error.exists():
            raise UserError(json.loads(error.read_text())["message"])
        raise RuntimeError(f"training processes exited with status {code}; their log is above")
    return json.loads((out_dir / "model" / "metrics.json").read_text())


def _forward_stop(proc: subprocess.Popen) -> None:
    """A stop asked of `llmpipe` (tasks/core/stopping.py) reaches the launcher as SIGTERM, which it passes
    on to the training processes: they checkpoint and exit."""
    while proc.poll() is None:
        if stop_signal() is not None:
            proc.terminate()
            return
        time.sleep(0.5)


# reporting -------------------------------------------------------------------------------------------
def _emitter() -> Callable[[str], None]:
    """Training log lines go to this module's logger: the CLI prints it, and inside a flow run the flow
    sends the `llmpipe` loggers to Prefect (the UI's Logs tab)."""
    return log.info


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_loss_curve(out_dir: Path) -> Path | None:
    """loss.png: training and validation loss against tokens, with unigram and bigram models' val loss."""
    records = read_metrics(out_dir)
    train = [r for r in records if "loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = [r for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train loss (next token)")
    if val:
        per_step = train[-1]["tokens"] / train[-1]["step"]
        ax.plot([r["step"] * per_step for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    summary_path = out_dir / "model" / "metrics.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        for key, style, label in (("val_unigram_baseline_nats", "--", "unigram model (fit on train) on val"),
                                  ("val_bigram_baseline_nats", ":", "bigram model (fit on train) on val")):
            if summary.get(key):
                ax.axhline(summary[key], color="grey", linestyle=style, label=label)
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = out_dir / "loss.png"
    fig.savefig(png)
    plt.close(fig)
    return png


def pretrain_artifacts(result: StageResult) -> list[Artifact]:
    """The run's figures and its loss curve (an inline PNG) for the Prefect UI."""
    rows = "\n".join(f"| {k} | {rounded(v)} |" for k, v in result.stats.items() if not isinstance(v, (list, dict)))
    image = ""
    curve = result.files("loss_curve")
    if curve and Path(curve[0]).is_file():
        png = base64.b64encode(Path(curve[0]).read_bytes()).decode()
        image = f"\n\n![loss curve](data:image/png;base64,{png})"
    return [Markdown("training", f"## Pretraining\n\n| stat | value |\n|---|---|\n{rows}{image}",
                     "figures and loss curve")]


# `accelerate launch -m tasks.pretrain --config run.json` ----------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.pretrain",
                                     description="Train (or resume) one pretraining run from its run.json.")
    parser.add_argument("--config", required=True, help="run.json written by the pretrain stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    from tasks.pretrain.lm import TrainConfig, train

    run_json = Path(args.config)
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = TrainConfig.from_dict(json.loads(run_json.read_text())["train"])
        train(cfg)
    except UserError as exc:
        error = run_json.parent / LAUNCH_ERROR
        tmp = error.with_name(f".{LAUNCH_ERROR}.{rank}")
        tmp.write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        os.replace(tmp, error)
        log.error("%s: %s", type(exc).__name__, exc)
        return 2
    if rank == 0:
        write_loss_curve(Path(cfg.loop.out_dir))
    return 0


STAGE = Stage(name="pretrain", config=PretrainConfig, run=run_pretrain, reads=("tokenize",),
              uses_pipeline_seed=True, resumable=True, artifacts=pretrain_artifacts, key_inputs=pretrain_key_inputs,
              summary="train a GPT (next-token or multi-token prediction) with Accelerate")
