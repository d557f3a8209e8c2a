"""The small GPT-2-style byte-level language model shared by ``bench_lm_oneshot.py`` and ``bench_depth.py``.

Trained for a few CPU minutes on the Python standard library's sources (:func:`pyprune.data.stdlib_corpus`, split
by file), on one thread (on a shared 2-core machine, two threads were 10x slower per step than one), and cached
under ``$PYPRUNE_CACHE`` (default ``~/.cache/pyprune``) keyed by its configuration, so both benchmarks and every
rerun use the same weights. Perplexity is per byte on consecutive held-out windows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _runner import benchmark_parser, parse

import tests.conftest  # noqa: F401 - declares torchvision's op schemas so that transformers imports
from pyprune.data import stdlib_corpus, token_windows

MODEL = {"vocab_size": 256, "n_positions": 64, "n_embd": 64, "n_layer": 8, "n_head": 4}
TRAIN = {
    "steps": 600,
    "batch": 16,
    "seq_len": 64,
    "lr": 3e-3,
    "warmup": 30,
    "weight_decay": 0.01,
    "seed": 0,
    "train_bytes": 8_000_000,
    "held_out_bytes": 400_000,
}
QUICK_TRAIN = {**TRAIN, "steps": 60}
CACHE = Path(os.environ.get("PYPRUNE_CACHE", Path.home() / ".cache" / "pyprune"))


def corpus(train_bytes: int, held_out_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    return stdlib_corpus("train", max_bytes=train_bytes), stdlib_corpus("held_out", max_bytes=held_out_bytes)


def build_model() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**MODEL, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def trained_model(quick: bool = False) -> tuple[Any, dict[str, Any], torch.Tensor, torch.Tensor]:
    """``(model in eval mode, training record, train tokens, held-out tokens)``; trains once, then loads."""
    from transformers import GPT2LMHeadModel

    setup = QUICK_TRAIN if quick else TRAIN
    key = hashlib.sha256(json.dumps([MODEL, setup], sort_keys=True).encode()).hexdigest()[:12]
    folder = CACHE / f"stdlib_gpt2_{key}"
    train, held_out = corpus(setup["train_bytes"], setup["held_out_bytes"])
    if (folder / "record.json").is_file():
        model = GPT2LMHeadModel.from_pretrained(folder).eval()
        return model, json.loads((folder / "record.json").read_text()), train, held_out
    record = train_model(model := build_model(), train, held_out, setup)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    (folder / "record.json").write_text(json.dumps(record, indent=1))
    return model.eval(), record, train, held_out


def train_model(
    model: Any, train: torch.Tensor, held_out: torch.Tensor, setup: dict[str, Any]
) -> dict[str, Any]:
    torch.manual_seed(setup["seed"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup["lr"], weight_decay=setup["weight_decay"])
    steps, warmup = setup["steps"], setup["warmup"]

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(setup["seed"])
    start = time.perf_counter()
    model.train()
    losses = []
    try:
        for step in range(steps):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            x = token_windows(train, setup["seq_len"], setup["batch"], seed=seed)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            losses.append(float(loss))
            if step % 50 == 0 or step == steps - 1:
                print(
                    f"  step {step:4d}  loss {losses[-1]:.3f}  {time.perf_counter() - start:6.1f} s",
                    flush=True,
                )
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return {
        "model": MODEL,
        "train": setup,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": time.perf_counter() - start,
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "held_out_perplexity": perplexity(model, held_out, setup["seq_len"]),
    }


def eval_windows(held_out: torch.Tensor, seq_len: int, count: int | None = None) -> torch.Tensor:
    available = held_out.numel() // seq_len
    return token_windows(held_out, seq_len, min(count or available, available), seed=None)


def perplexity(
    model: Any, held_out: torch.Tensor, seq_len: int, count: int | None = 512, batch: int = 64
) -> float:
    """exp(mean next-byte NLL) over the first ``count`` consecutive held-out windows."""
    windows = eval_windows(held_out, seq_len, count)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch):
            x = windows[start : start + batch]
            logits = model(input_ids=x).logits[:, :-1].double()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            tokens += x[:, 1:].numel()
    return math.exp(total / tokens)


def calibration_batches(
    train: torch.Tensor, seq_len: int, count: int, seed: int, batch: int = 16
) -> list[dict]:
    """``count`` random training windows drawn with ``seed``, as dict batches (``input_ids``, ``attention_mask``)."""
    windows = token_windows(train, seq_len, count, seed=seed)
    return [
        {"input_ids": windows[i : i + batch], "attention_mask": torch.ones_like(windows[i : i + batch])}
        for i in range(0, count, batch)
    ]


def parse_arguments(description: str, argv: Any, calibration: int) -> argparse.Namespace:
    """The options both LM benchmarks take; adds ``seeds_used`` (1 with ``--quick``) and ``eval_windows``."""
    parser = benchmark_parser(description, "60-step model, one seed, 64 eval windows")
    parser.add_argument(
        "--seeds", type=int, default=3, help="calibration sets (and random draws) (default 3)"
    )
    parser.add_argument(
        "--calibration",
        type=int,
        default=calibration,
        help=f"calibration windows per seed (default {calibration})",
    )
    args = parse(parser, argv)
    args.seeds_used = 1 if args.quick else args.seeds
    args.eval_windows = 64 if args.quick else 512
    return args
