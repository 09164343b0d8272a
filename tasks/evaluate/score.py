"""The one batched log-likelihood scorer: log P(continuation | context) for any Hugging Face causal LM.

Semantics follow lm-evaluation-harness's `loglikelihood` (HFLM): trailing whitespace of the context moves
onto the continuation, the continuation's tokens are those of the whole string's encoding after the
context's own tokens, an empty context is the BOS token (EOS when there is none), and a sequence longer than
the model's window loses context tokens on the left. Speed comes from two things: requests are batched by
a token budget in order of length, and a request's context runs once for all its continuations. A row is
[context, cont_1[:-1], cont_2[:-1], ...] under a 4D mask where each continuation sees the whole context and
itself (causally) but not the other continuations, with position ids restarting at len(context) for each
continuation, so every continuation token sees exactly what it would see in its own sequence. Only the
positions that predict continuation tokens go through the LM head (`logits_to_keep` as a boolean mask).
A model whose forward does not honour the custom mask or `logits_to_keep` is caught by a probe on first use
and scored the plain way (one row per continuation, 2D padding mask, full logits).
"""
from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.core.errors import UserError

log = logging.getLogger(__name__)

Request = tuple[str, list[str]]
_HALF = (torch.float16, torch.bfloat16)


@dataclass
class ChoiceScore:
    """One continuation's score: log-probability summed over its tokens and what acc_norm divides by."""

    logprob: float
    n_tokens: int
    n_chars: int  # len(continuation)
    greedy: bool  # every continuation token is the model's argmax
    # lm-eval's acc_norm divisor, len(choice) for a request continuation target_delimiter + choice: our
    # continuations carry the delimiter, so this is the continuation without its leading whitespace
    norm_chars: int | None = None


@dataclass
class _Unit:
    """One row of a batch: a context and the continuations that share it; `slots` index the flat output."""

    ctx: list[int]
    conts: list[list[int]]
    slots: list[int]

    @property
    def length(self) -> int:
        return len(self.ctx) + sum(len(c) - 1 for c in self.conts)


def load_causal_lm(path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer with a pad token: EOS when it has none) from a local HF
    directory; `kwargs` go to `AutoModelForCausalLM.from_pretrained` (e.g. attn_implementation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path} is not a Hugging Face model directory (no config.json); export one with "
                        "tasks.pretrain.export.export_hf or give the directory that holds config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    return model.to(device).eval(), tokenizer


def open_scorer(hf_dir: str | Path, device: str = "auto", cpu_threads: int = 0,
                max_batch_tokens: int = 0) -> LoglikScorer:
    """The stages' scorer: the model of `hf_dir` on CUDA when `device` allows and one is present, else on the
    CPU (with `cpu_threads` threads when set); its model and tokenizer are `scorer.model`, `.tokenizer`."""
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if dev.type == "cpu" and cpu_threads:
        torch.set_num_threads(cpu_threads)
    model, tokenizer = load_causal_lm(hf_dir, dev)
    return LoglikScorer(model, tokenizer, dev, max_batch_tokens=max_batch_tokens or None)


@contextmanager
def quiet_transformers():
    """transformers' load report (the new head's weights are 'MISSING' by design) and progress bars off;
    finetune reports unexpected missing weights itself."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def max_length(model: Any, tokenizer: Any) -> int:
    """The model's window, looked up as lm-eval's HFLM does (config, then tokenizer, then 2048)."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(model.config, attr, None):
            return int(getattr(model.config, attr))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 10**12 else 2048


# padded tokens per batch when none is given: a CPU gains nothing from wide batches and pays for their
# padding (bench/evaluate.py: 2.1x lm-eval at 1024-2048 against 1.6x at 8192); a GPU wants them wide
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768}


def default_batch_tokens(device: str | torch.device) -> int:
    return DEFAULT_BATCH_TOKENS.get(torch.device(device).type, 8192)


class LoglikScorer:
    """Scores (context, continuations) requests in token-budgeted batches, sharing each context's pass."""

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device = "cpu",
                 max_batch_tokens: int | None = None, dtype: torch.dtype | None = None, *,
                 share_context: bool = True) -> None:
        self.device = torch.device(device)
        max_batch_tokens = max_batch_tokens or default_batch_tokens(self.device)
        self.model = model.to(self.device, dtype) if dtype is not None else model.to(self.device)
        self.model.eval()
        self.tokenizer = tokenizer
        self.max_batch_tokens = max_batch_tokens
        self.max_length = max_length(model, tokenizer)
        self.dtype = next(self.model.parameters()).dtype
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0
        bos = tokenizer.bos_token_id
        self.prefix_id = bos if bos is not None else tokenizer.eos_token_id
        self.share_context = share_context
        self.keep_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._probed = False

    def score(self, requests: list[Request], skip_too_long: bool = False) -> list[list[ChoiceScore] | None]:
        """One ChoiceScore per continuation of each request, in the order given. A continuation longer than
        the model's window cannot be scored (a context is cut on the left, a continuation cannot be): an
        error, or with `skip_too_long` None in that request's place."""
        if not self._probed:
            self._probe()
        units, chars, n_slots, skipped = self._encode(requests, skip_too_long)
        logprob, n_tok, greedy = self._run(units, n_slots, self.share_context, self.keep_logits)
        out: list[list[ChoiceScore] | None] = []
        slot = 0
        for r, (_, conts) in enumerate(requests):
            row = [ChoiceScore(logprob[s], n_tok[s], len(c), greedy[s], chars[s])
                   for s, c in enumerate(conts, start=slot)]
            out.append(None if r in skipped else row)
            slot += len(conts)
        return out

    # -- tokenization, lm-eval's way ------------------------------------------------------------------

    def _encode(self, requests: list[Request], skip_too_long: bool = False
                ) -> tuple[list[_Unit], list[int], int, set[int]]:
        """The rows to run (context left-truncated to the window), each slot's norm_chars, the slot count, and
        the requests left out for a continuation longer than the window (with skip_too_long)."""
        ctx_strs, whole_strs, chars = [], [], []
        for r, (context, conts) in enumerate(requests):
            if not conts:
                raise UserError(f"request {r} has no continuations to score")
            ctx_strs.append(context.rstrip())
            for cont in conts:
                whole_strs.append(context + cont)
                chars.append(len(cont.lstrip()))
        ctx_ids = self._tok(ctx_strs)
        whole_ids = self._tok(whole_strs)
        units, slot, skipped = [], 0, set()
        for r, (context, conts) in enumerate(requests):
            ctx = ctx_ids[r]
            if not ctx:  # "" (or only whitespace, which lm-eval would leave with no context at all)
                if self.prefix_id is None:
                    raise UserError("an empty context needs a BOS or EOS token; the tokenizer has neither")
                ctx = [self.prefix_id]
            cont_ids = [whole_ids[slot + i][len(ctx_ids[r]):] for i in range(len(conts))]
            for i, ids in enumerate(cont_ids):
                if not ids:
                    raise UserError(f"request {r}: continuation {i} ({conts[i]!r}) encodes to no tokens "
                                    "after its context; give every choice some text")
                if len(ids) > self.max_length and not skip_too_long:
                    raise UserError(f"request {r}: continuation {i} has {len(ids)} tokens, more than the "
                                    f"model's window of {self.max_length}")
            if any(len(ids) > self.max_length for ids in cont_ids):
                skipped.add(r)
            else:
                units += self._units(ctx, cont_ids, list(range(slot, slot + len(conts))))
            slot += len(conts)
        return units, chars, slot, skipped

    def _tok(self, strings: list[str]) -> list[list[int]]:
        if not strings:
            return []
        return self.tokenizer(strings, add_special_tokens=False, verbose=False)["input_ids"]

    def _units(self, ctx: list[int], conts: list[list[int]], slots: list[int]) -> list[_Unit]:
        """Rows for one request: one row per continuation when not sharing, or when the request does not fit
        the window (lm-eval truncates each (context, continuation) alone, by the continuation's length);
        else shared rows, split so that each fits the batch budget."""
        if not self.share_context or any(len(ctx) + len(c) - 1 > self.max_length for c in conts):
            return [_Unit(ctx[-(self.max_length + 1 - len(c)):], [c], [s]) for c, s in zip(conts, slots)]
        if len(ctx) == 1:  # an empty context (BOS): sharing saves one token and costs the 4D mask
            return [_Unit(ctx, [c], [s]) for c, s in zip(conts, slots)]
        units = [_Unit(ctx, [], [])]
        for c, s in zip(conts, slots):
            if units[-1].conts and units[-1].length + len(c) - 1 > self.max_batch_tokens:
                units.append(_Unit(ctx, [], []))
            units[-1].conts.append(c)
            units[-1].slots.append(s)
        return units

    # -- batched forward ----------------------------------------------------------------------------

    def _run(self, units: list[_Unit], n_slots: int, share: bool,
             keep: bool) -> tuple[list[float], list[int], list[bool]]:
        """Per slot: summed log-probability, token count, greedy; batches of units by a token budget."""
        logprob, n_tok, greedy = [0.0] * n_slots, [0] * n_slots, [True] * n_slots
        order = sorted(range(len(units)), key=lambda i: -units[i].length)
        start = 0
        while start < len(order):
            width = units[order[start]].length
            stop = start + max(1, self.max_batch_tokens // max(width, 1))
            batch = [units[i] for i in order[start:stop]]
            for s, lp, n, g in zip(*self._forward(batch, share, keep)):
                logprob[s], n_tok[s], greedy[s] = lp, n, g
            start = stop
        return logprob, n_tok, greedy

    @torch.inference_mode()
    def _forward(self, batch: list[_Unit], share: bool,
                 keep: bool) -> tuple[list[int], list[float], list[int], list[bool]]:
        """One padded batch: (slots, summed log-probabilities, token counts, greedy) of its continuations."""
        width = max(u.length for u in batch)
        ids, pos, seg = [], [], []
        rows, cols, targets, owner = [], [], [], []  # one entry per continuation token: where it is predicted
        slots = []
        for b, u in enumerate(batch):
            n_ctx = len(u.ctx)
            row_ids, row_pos, row_seg = list(u.ctx), list(range(n_ctx)), [0] * n_ctx
            for k, (cont, slot) in enumerate(zip(u.conts, u.slots)):
                off = len(row_ids)
                rows += [b] * len(cont)
                cols += [n_ctx - 1, *range(off, off + len(cont) - 1)]
                targets += cont
                owner += [len(slots)] * len(cont)
                slots.append(slot)
                row_ids += cont[:-1]
                row_pos += range(n_ctx, n_ctx + len(cont) - 1)
                row_seg += [k + 1] * (len(cont) - 1)
            pad = width - len(row_ids)
            ids.append(row_ids + [self.pad_id] * pad)
            pos.append(row_pos + [0] * pad)
            seg.append(row_seg + [-1] * pad)
        dev = self.device
        input_ids = torch.tensor(ids, device=dev)
        seg_t = torch.tensor(seg, device=dev)
        rows_t, cols_t = torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)
        kwargs: dict[str, Any] = {"use_cache": False}
        if share and any(len(u.conts) > 1 for u in batch):  # else the plain causal mask is the same mask
            kwargs["attention_mask"] = self._shared_mask(seg_t)
            kwargs["position_ids"] = torch.tensor(pos, device=dev)
        else:
            kwargs["attention_mask"] = (seg_t >= 0).long()
        if keep:
            wanted = torch.zeros_like(input_ids, dtype=torch.bool)
            wanted[rows_t, cols_t] = True
            rank = wanted.flatten().cumsum(0) - 1  # index of each kept position in the flattened output
            logits = self.model(input_ids, logits_to_keep=wanted, **kwargs).logits
            logits = logits.reshape(-1, logits.shape[-1])[rank[rows_t * width + cols_t]]
        else:
            logits = self.model(input_ids, **kwargs).logits[rows_t, cols_t]
        target_t = torch.tensor(targets, device=dev)
        token_lp = torch.log_softmax(logits.float(), dim=-1).gather(1, target_t[:, None]).squeeze(1)
        misses = (logits.argmax(dim=-1) != target_t).long()
        owner_t = torch.tensor(owner, device=dev)
        sums = torch.zeros(len(slots), device=dev).index_add_(0, owner_t, token_lp)  # float32, as lm-eval
        wrong = torch.zeros(len(slots), dtype=torch.long, device=dev).index_add_(0, owner_t, misses)
        counts = [len(c) for u in batch for c in u.conts]
        return slots, sums.tolist(), counts, [w == 0 for w in wrong.tolist()]

    def _shared_mask(self, seg: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T) additive mask from segment ids (0 context, k continuation k, -1 padding): causal,
        a continuation sees the context and itself only; padding sees itself so no row is all masked."""
        width = seg.shape[1]
        idx = torch.arange(width, device=seg.device)
        causal = idx[None, :] <= idx[:, None]  # [query, key]
        q, k = seg[:, :, None], seg[:, None, :]
        allowed = causal & (k >= 0) & ((k == 0) | (k == q))
        allowed |= torch.eye(width, dtype=torch.bool, device=seg.device)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=seg.device)
        return mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)[:, None]

    # -- checking the fast path on this model ---------------------------------------------------------

    def _probe(self) -> None:
        """Check the shared-context rows and `logits_to_keep` against plain forwards on a small request;
        turn off whichever this model's forward does not honour (with a warning)."""
        self._probed = True
        vocab = getattr(self.model.config, "vocab_size", None) or len(self.tokenizer)
        n = min(8, max(2, self.max_length // 4))
        ctx = [(7 * i + 3) % vocab for i in range(n)]
        conts = [[(5 * i + j + 11) % vocab for i in range(j + 1)] for j in range(3)]
        conts = [c[: self.max_length - n + 1] for c in conts]
        units = [_Unit(ctx, conts, [0, 1, 2])]
        plain = [_Unit(ctx, [c], [s]) for c, s in zip(conts, range(3))]
        want = self._run(plain, 3, share=False, keep=False)[0]
        tol = (0.05 if self.dtype in _HALF else 1e-4) * sum(len(c) for c in conts)
        modes = ((self.share_context, self.keep_logits), (False, self.keep_logits), (False, False))
        for share, keep in modes:
            try:
                got = self._run(units if share else plain, 3, share, keep)[0]
                if max(abs(a - b) for a, b in zip(got, want)) <= tol:
                    break
                reason = f"log-probabilities {got} differ from plain forwards' {want}"
            except Exception as exc:  # noqa: BLE001 - a failing optional fast path is only not used
                reason = f"{type(exc).__name__}: {exc}"
            log.warning("%s does not support scoring with shared_context=%s, logits_to_keep=%s (%s); "
                        "falling back", type(self.model).__name__, share, keep, reason)
        self.share_context, self.keep_logits = share, keep
