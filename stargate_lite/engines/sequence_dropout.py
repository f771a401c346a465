"""LoRA dropout with masks seeded per sequence (train.dropout_masks: sequence).

torch's dropout draws one mask for a whole batch from the process's generator, and every training process seeds
that generator alike: with `train.processes` N the processes drop the same units of different sequences, and no
process draws the masks one process would. Here each sequence's masks come from a seed of (run seed, epoch,
sequence index, module), drawn for the sequence's own length, so they do not depend on which process trains the
sequence or which sequences share its batch: N processes train the adapter one process trains."""

from __future__ import annotations

import hashlib

import torch


class SequenceMasks:
    """The keys of the batch the next forward sees, shared by every seeded dropout module of a model."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rows: list[tuple[tuple, int]] = []  # (key, length) of each row

    def install(self, model) -> int:
        """Put a seeded module in place of every peft LoRA dropout with p > 0. Returns how many."""
        count = 0
        for module in model.modules():
            dropouts = getattr(module, "lora_dropout", None)
            if not isinstance(dropouts, torch.nn.ModuleDict):
                continue
            for name, dropout in dropouts.items():
                if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                    dropouts[name] = SeededDropout(self, dropout.p, count)
                    count += 1
        return count

    def mask_seed(self, key: tuple, module: int) -> int:
        digest = hashlib.blake2b(repr((self.seed, key, module)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1


class SeededDropout(torch.nn.Module):
    def __init__(self, masks: SequenceMasks, p: float, index: int):
        super().__init__()
        self.masks, self.p, self.index = masks, p, index

    def forward(self, x):
        if not self.training:
            return x
        rows = self.masks.rows
        if len(rows) != x.shape[0]:
            raise RuntimeError(f"sequence dropout: {len(rows)} sequence keys for a batch of {x.shape[0]}")
        keep = torch.ones_like(x)
        for row, (key, length) in enumerate(rows):
            generator = torch.Generator(device=x.device).manual_seed(self.masks.mask_seed(key, self.index))
            draw = torch.rand((min(length, x.shape[1]), *x.shape[2:]), generator=generator, device=x.device)
            keep[row, : draw.shape[0]] = (draw >= self.p).to(x.dtype) / (1 - self.p)
        return x * keep
