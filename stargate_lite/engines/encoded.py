"""What every engine, stage and the trainer pass around: a tokenized chat and the positions of its targets.

Its own module so that the Questioner and the engines it may delegate to (vllm_engine.py) share it without
importing each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Encoded:
    """Token ids of a rendered chat plus the positions whose tokens are targets (trained or scored)."""

    input_ids: list[int]
    target_positions: list[int]
