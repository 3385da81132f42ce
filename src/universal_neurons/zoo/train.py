"""Train a suite of small GPT-2 models that differ only in their seed.

Each member is a Hugging Face ``GPT2LMHeadModel``. The seed sets both the weight
initialisation and the order of the training windows; everything else (corpus,
tokenizer, architecture, schedule) is shared. Training is resumable: a member's state
(fp32 weights, optimiser, step) is checkpointed every ``checkpoint_every`` tokens and a
restarted run continues from it. Snapshots at ``snapshot_tokens`` keep intermediate
weights for studying universality over training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and optimisation settings shared by every member of a suite."""

    suite: str = "tiny-gpt2"
    """Suite name; members are named ``{suite}-a``, ``{suite}-b``, ..."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_layer: int = 4
    d_model: int = 160
    d_mlp: int = 512
    n_head: int = 5
    n_ctx: int = 256
    tokens: int = 12_000_000
    """Training tokens per member."""
    batch_size: int = 16
    """Sequences per optimiser step."""
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    autocast_bf16: bool = True
    compile: bool = True
    threads: int = 1
    """Torch threads per member process."""
    checkpoint_every: int = 500_000
    snapshot_tokens: tuple[int, ...] = (250_000, 500_000, 1_000_000, 2_000_000, 3_000_000,
                                        4_000_000, 8_000_000, 10_000_000)
    eval_tokens: int = 200_000
    restart_tokens: tuple[int, ...] = (6_000_000,)
    """Token counts where the learning-rate schedule restarts: a new warm-up to
    ``restart_lr``, then cosine decay to ``min_lr_ratio * restart_lr`` at the next restart or
    the end. Steps before the first restart follow the schedule of a run that ends there,
    so a longer run continues a shorter one exactly. The weights at each restart are saved
    as a snapshot."""
    restart_lr: float = 1e-3

    def __post_init__(self) -> None:
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if len(self.seeds) > 26:
            raise ValueError(f"at most 26 seeds (members a..z), got {len(self.seeds)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.tokens < self.batch_size * self.n_ctx:
            raise ValueError(f"tokens={self.tokens} is less than one batch "
                             f"({self.batch_size}x{self.n_ctx})")
        steps = [t // self.tokens_per_step for t in self.restart_tokens]
        if any(b <= a for a, b in zip([0, *steps], [*steps, self.total_steps])):
            raise ValueError(f"restart_tokens={self.restart_tokens} must increase, each at least "
                             f"one batch after the last and before tokens={self.tokens}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.n_ctx

    @property
    def total_steps(self) -> int:
        return self.tokens // self.tokens_per_step

    @property
    def restart_steps(self) -> tuple[int, ...]:
        """Optimiser steps at which a new learning-rate segment starts."""
        return tuple(t // self.tokens_per_step for t in self.restart_tokens)

    def member_names(self) -> list[str]:
        return [f"{self.suite}-{chr(ord('a') + i)}" for i in range(len(self.seeds))]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Per segment (split at ``cfg.restart_tokens``): linear warm-up, then cosine decay to
    ``min_lr_ratio`` of the segment's peak (``lr`` for the first, ``restart_lr`` after)."""
    start, end, peak = 0, cfg.total_steps, cfg.lr
    for r in cfg.restart_steps:
        if step < r:
            end = r
            break
        start, peak = r, cfg.restart_lr
    step -= start
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, end - start - cfg.warmup_steps)
    frac = min(1.0, frac)
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def tokenize_split(tokenizer_dir: str | Path, corpus_path: str | Path,
                   out_path: str | Path) -> np.ndarray:
    """Tokenize a corpus split into one uint16 stream, documents separated by EOT."""
    from transformers import AutoTokenizer

    from .corpus import read_corpus

    out_path = Path(out_path)
    if out_path.exists():
        return np.load(out_path, mmap_mode="r")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    texts = [r["text"] for r in read_corpus(corpus_path)]
    ids = tok(texts)["input_ids"]
    eot = tok.eos_token_id
    stream = np.fromiter((t for doc in ids for t in ([eot] + doc)), dtype=np.uint16)
    tmp = out_path.with_suffix(".tmp.npy")
    np.save(tmp, stream)
    os.replace(tmp, out_path)
    return stream


def build_model(cfg: TrainConfig, vocab_size: int, eot_id: int, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=cfg.d_mlp, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eot_id,
        eos_token_id=eot_id, pad_token_id=eot_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def sample_batch(stream: np.ndarray, rng: np.random.Generator, batch_size: int, n_ctx: int,
                 bos: int) -> np.ndarray:
    """``(batch, n_ctx)`` windows: BOS followed by ``n_ctx - 1`` tokens from a random offset."""
    starts = rng.integers(0, len(stream) - n_ctx, size=batch_size)
    out = np.empty((batch_size, n_ctx), dtype=np.int64)
    out[:, 0] = bos
    for i, s in enumerate(starts):
        out[i, 1:] = stream[s : s + n_ctx - 1]
    return out


@dataclass
class MemberState:
    step: int = 0
    train_loss_ema: float = float("nan")
    history: list[dict] = field(default_factory=list)


def evaluate(model, stream: np.ndarray, cfg: TrainConfig, bos: int) -> float:
    """Mean next-token loss on consecutive BOS-prefixed windows of a held-out stream."""
    import torch

    width = cfg.n_ctx - 1
    n_win = max(1, min(cfg.eval_tokens // width, (len(stream) - 1) // width))
    losses = []
    model.eval()
    with torch.no_grad():
        for b in range(0, n_win, cfg.batch_size):
            rows = range(b, min(n_win, b + cfg.batch_size))
            x = np.stack([np.concatenate([[bos], stream[r * width : (r + 1) * width]])
                          for r in rows]).astype(np.int64)
            xt = torch.from_numpy(x)
            losses.append(float(model(input_ids=xt, labels=xt).loss) * len(rows))
    model.train()
    return sum(losses) / n_win


def train_member(cfg: TrainConfig, index: int, work_dir: str | Path,
                 train_stream_path: str | Path, test_stream_path: str | Path,
                 tokenizer_dir: str | Path, show_progress: bool = True) -> dict:
    """Train (or resume) member ``index`` of the suite; returns its model card dict."""
    import torch
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    name = cfg.member_names()[index]
    seed = cfg.seeds[index]
    mdir = Path(work_dir) / "members" / name
    mdir.mkdir(parents=True, exist_ok=True)
    train_stream = np.load(train_stream_path, mmap_mode="r")
    test_stream = np.load(test_stream_path, mmap_mode="r")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    bos = tok.bos_token_id
    model = build_model(cfg, len(tok), bos, seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    state = MemberState()
    ckpt = mdir / "state.pt"
    rng = np.random.default_rng(seed)
    if ckpt.exists():
        state = _load_state(ckpt, model, opt, rng)
        log.info("%s: resumed at step %d", name, state.step)
    fwd = torch.compile(model) if cfg.compile else model
    tps = cfg.tokens_per_step
    snapshots = sorted(cfg.snapshot_tokens)
    bar = tqdm(total=cfg.total_steps, initial=state.step, desc=name, unit="step",
               disable=not show_progress, position=index, leave=True)
    t0, s0 = time.time(), state.step
    while state.step < cfg.total_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, state.step)
        x = torch.from_numpy(sample_batch(train_stream, rng, cfg.batch_size, cfg.n_ctx, bos))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        lv = loss.item()
        state.train_loss_ema = lv if math.isnan(state.train_loss_ema) else (
            0.98 * state.train_loss_ema + 0.02 * lv)
        bar.update(1)
        bar.set_postfix(loss=f"{state.train_loss_ema:.3f}")
        seen = state.step * tps
        if any(seen - tps < s <= seen for s in snapshots) or state.step in cfg.restart_steps:
            _save_snapshot(model, mdir / "snapshots" / f"tokens-{seen}")
            state.history.append({"tokens": seen, "train_loss_ema": state.train_loss_ema,
                                  "test_loss": evaluate(model, test_stream, cfg, bos)})
        if seen // cfg.checkpoint_every != (seen - tps) // cfg.checkpoint_every or \
                state.step == cfg.total_steps:
            _save_state(ckpt, model, opt, state, rng)
    bar.close()
    elapsed = time.time() - t0
    test_loss = evaluate(model, test_stream, cfg, bos)
    card = {
        "name": name, "suite": cfg.suite, "seed": seed, "config": asdict(cfg),
        "tokens_seen": state.step * tps, "train_loss_ema": state.train_loss_ema,
        "test_loss": test_loss, "history": state.history,
        "tokens_per_second_last_session": (state.step - s0) * tps / max(elapsed, 1e-9),
    }
    (mdir / "card.json").write_text(json.dumps(card, indent=2))
    torch.save({"model": model.state_dict()}, mdir / "final.pt")
    return card


def _save_snapshot(model: Any, folder: Path) -> None:
    """A float16 snapshot an HF loader opens (``model.safetensors`` + ``config.json``; the
    tied ``lm_head`` is left out)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous()
               for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(folder / "model.safetensors"))
    model.config.save_pretrained(folder)


def _save_state(ckpt: Path, model: Any, opt: Any, state: MemberState,
                rng: np.random.Generator) -> None:
    """The resumable training state, written atomically."""
    import torch

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "step": state.step, "ema": state.train_loss_ema,
                "history": json.dumps(state.history),
                "rng": json.dumps(rng.bit_generator.state)}, tmp)
    os.replace(tmp, ckpt)


def _load_state(ckpt: Path, model: Any, opt: Any, rng: np.random.Generator) -> MemberState:
    """Restore what :func:`_save_state` wrote into ``model``, ``opt`` and ``rng``."""
    import torch

    saved = torch.load(ckpt, weights_only=True)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    rng.bit_generator.state = json.loads(saved["rng"])
    return MemberState(step=int(saved["step"]), train_loss_ema=float(saved["ema"]),
                       history=json.loads(saved["history"]))


def _train_member_job(args: tuple) -> dict:
    cfg, index, work_dir, show_progress = args
    work = Path(work_dir)
    return train_member(cfg, index, work, work / "train_tokens.npy", work / "test_tokens.npy",
                        work / "tokenizer", show_progress=show_progress)


def train_suite(cfg: TrainConfig, work_dir: str | Path, corpus_dir: str | Path,
                jobs: int | None = None, show_progress: bool = True) -> list[dict]:
    """Train every member of the suite, ``jobs`` processes at a time (default: all at once).

    ``work_dir`` must hold ``tokenizer/``; the token streams are made there on first use.
    A re-run resumes every member from its last checkpoint.
    """
    import multiprocessing as mp

    work = Path(work_dir)
    if not (work / "tokenizer" / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer in {work / 'tokenizer'}; run "
                                "`universal-neurons zoo tokenizer` first")
    for split in ("train", "test"):
        tokenize_split(work / "tokenizer", Path(corpus_dir) / f"corpus-{split}.jsonl.xz",
                       work / f"{split}_tokens.npy")
    (work / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    n = len(cfg.seeds)
    jobs = n if jobs is None else max(1, min(jobs, n))
    args = [(cfg, i, str(work), show_progress) for i in range(n)]
    if jobs == 1:
        return [_train_member_job(a) for a in args]
    with mp.get_context("spawn").Pool(jobs) as pool:
        return pool.map(_train_member_job, args)
