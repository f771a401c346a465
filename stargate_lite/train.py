"""Train stage: LoRA fine-tuning of the *base* Questioner on the kept conversations.

The questions and the final response are trained (each with its end-of-turn marker); the prompt and the
roleplayer's answers are masked. The adapter is written to a temporary folder and renamed into place, so a
folder at the final path is always complete.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .questioner import Encoded
from .recipe import TrainConfig

IGNORE = -100


def _batches(examples: list[Encoded], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Length-grouped micro-batches (little padding), visited in random order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _keep_last(example: Encoded, max_length: int) -> Encoded:
    """Cut a long example from the left: the trained turns are at the end of a conversation."""
    cut = max(0, len(example.input_ids) - max_length)
    return Encoded(example.input_ids[cut:], [p - cut for p in example.target_positions if p >= cut])


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate factor for optimizer step s (0-based): linear warm-up, then cosine decay towards zero.

    Unlike the usual schedule, step 0 already trains (factor 1/(warmup+1), not 0): small runs have few steps.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train_lora(
    model,
    examples: list[Encoded],
    config: TrainConfig,
    *,
    seed: int,
    out_dir: Path,
    pad_token_id: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Train a fresh LoRA adapter on `model` (the base) and save it to out_dir. Returns the training record."""
    import torch
    from peft import LoraConfig, get_peft_model

    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    examples = [_keep_last(e, config.max_length) for e in examples]
    epochs = [_batches(examples, config.batch_size, rng) for _ in range(config.epochs)]
    micro = [b for epoch in epochs for b in epoch]
    total_steps = math.ceil(len(micro) / config.gradient_accumulation)
    schedule = warmup_cosine(math.ceil(config.warmup_ratio * total_steps), total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False
    )

    losses: list[float] = []
    trained_tokens = 0
    started = time.time()
    for step in range(total_steps):
        group = micro[step * config.gradient_accumulation : (step + 1) * config.gradient_accumulation]
        step_tokens = sum(len(examples[i].target_positions) for b in group for i in b)
        step_loss = 0.0
        for batch in group:
            width = max(len(examples[i].input_ids) for i in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = torch.tensor(examples[i].input_ids)
                ids[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
                positions = torch.tensor(examples[i].target_positions, dtype=torch.long)
                labels[row, positions] = seq[positions]
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            with autocast:
                logits = model(input_ids=ids, attention_mask=mask).logits
            # Sum over target tokens, divided by the step's target count: every token weighs the same,
            # whatever the split into micro-batches.
            loss_sum = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            (loss_sum / max(step_tokens, 1)).backward()
            step_loss += loss_sum.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss / max(step_tokens, 1))
        trained_tokens += step_tokens
        if on_step:
            on_step(step + 1, total_steps, losses[-1])

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)  # a leftover from a run killed after the rename, before the record
    model.save_pretrained(tmp)
    tmp.rename(out_dir)
    return {
        "adapter": str(out_dir),
        "examples": len(examples),
        "trained_tokens": trained_tokens,
        "steps": total_steps,
        "final_loss": losses[-1],
        "losses": losses,
        "seconds": time.time() - started,
    }
