"""The LoRA trainer the train stage drives: a fresh adapter on the base model (or the last one, train.init
previous), the optimisation loop, gradients summed across processes, and the adapter written atomically. Shared by
the in-process, isolated (Unsloth) and multi-process paths of stages/train.py.

The loop is the same for every training method: batching by length, accumulation, the schedule, sequence-seeded
dropout, several processes. What differs, the examples' form and the loss, is the method's (stargate_lite/methods/,
one module each): the trainer is given the method object and calls its hooks (`TrainingMethod`), and never names a
method."""

from __future__ import annotations

import errno
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import StargateError
from ..recipe import TrainConfig, check_dropout_masks
from .encoded import Encoded
from .logits import at_least_fp32, fast_scoring_refusal, head_logits
from .memory import trim_heap
from .questioner import Questioner, checked_adapter

IGNORE = -100


@dataclass(frozen=True)
class Trainee:
    """The model in training as a method's hooks see it: the peft model and its decoder, the settings, and how
    its logits are made (the lean head at target positions, or the model's own forward), in the precision context
    (`autocast`) every forward of training runs in. `sampling` is the (temperature, top_p) a policy gradient's
    samples were drawn at, None for methods that need none."""

    model: Any
    decoder: Any
    config: TrainConfig
    pad_token_id: int
    target_logits_only: bool
    sampling: tuple[float, float] | None
    autocast: Any

    @property
    def device(self):
        return next(self.model.parameters()).device

    def target_logits(self, sequences: list[Encoded]):
        return target_logits(self.model, self.decoder, sequences, self.pad_token_id, self.target_logits_only)

    def sequence_logprobs(self, sequences: list[Encoded]):
        return sequence_logprobs(self.model, self.decoder, sequences, self.pad_token_id, self.target_logits_only)


@dataclass(frozen=True)
class Step:
    """The optimizer step a micro-batch belongs to, whole (every micro-batch and process): its target tokens and
    its examples. A method's loss divides by one of them, so that each token (or example) weighs the same however
    the step is split."""

    tokens: int
    examples: int


class TrainingMethod(Protocol):
    """What the trainer asks of a training method (stargate_lite/methods/ implements it: methods.Method)."""

    name: str
    # Why the method trains with peft only (its loss needs log-probs that Unsloth's fused loss does not give), or
    # None where Unsloth may train it.
    peft_only: str | None
    needs_sampling: bool  # its examples were sampled, and `sampling` says how
    # Sums a step's micro-batches return beside the loss, each over the step's target tokens, recorded per step as
    # the mean per token (the record's policy_steps); () for none.
    step_terms: tuple[str, ...]

    def cut(self, example, max_length: int):
        """The example cut to max_length tokens a sequence (`keep_last`)."""

    def sequences(self, example) -> tuple[Encoded, ...]:
        """The example's sequences, in the order its loss lays them out: a micro-batch's rows are every example's
        first sequence, then every example's second (where there is one), and so on."""

    def before_steps(self, trainee: Trainee, examples: list, batches: list[list[int]]):
        """What the loss needs before any step (e.g. the sampler's log-probs), given the micro-batches of the first
        epoch as this process sees them (the same in every epoch); passed to every `loss` as `state`."""

    def loss(self, trainee: Trainee, examples: list, batch: list[int], state, step: Step):
        """The micro-batch's loss (its share of the step's mean) and its `step_terms` sums."""


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Length-grouped micro-batches of example indices (little padding), visited in random order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def keep_last(example: Encoded, max_length: int) -> Encoded:
    """Cut a long example from the left: the trained turns are at the end of a conversation. A target the cut
    leaves first has nothing before it to predict it from, so it goes with the cut: every kept target is one the
    loss trains, and the counts (trained tokens, one advantage per target) are of those."""
    cut = max(0, len(example.input_ids) - max_length)
    return Encoded(example.input_ids[cut:], [p - cut for p in example.target_positions if p > cut])


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


def resolve_backend(config: TrainConfig, device_type: str, method: TrainingMethod) -> str:
    """The trainer to use: Unsloth where asked or (auto) where it is installed and the Questioner is on CUDA, and
    the settings and `method` (config.method's) allow it."""
    import importlib.util

    check_dropout_masks(config, "train")
    if config.processes > 1:
        if config.backend == "unsloth":
            raise StargateError("train.backend unsloth trains in one process: set train.processes=1, or "
                                "train.backend=peft (or auto) to train in several")
        return "peft"
    if method.peft_only:
        if config.backend == "unsloth":
            raise StargateError(f"train.method {method.name} trains with the peft backend ({method.peft_only}): set "
                                "train.backend=peft (or auto)")
        return "peft"
    if config.init == "previous":
        if config.backend == "unsloth":
            raise StargateError("train.init previous continues the last adapter with peft (Unsloth makes its own "
                                "LoRA): set train.backend=peft (or auto), or train.init=base")
        return "peft"
    if config.seeds_dropout_per_sequence:
        if config.backend == "unsloth":
            raise StargateError("train.dropout_masks sequence replaces peft's dropout modules; Unsloth's kernels "
                                "want lora_dropout 0: set train.backend=peft (or auto), or lora_dropout 0")
        return "peft"
    available = device_type == "cuda" and importlib.util.find_spec("unsloth") is not None
    if config.backend == "unsloth" and not available:
        raise StargateError(
            "train.backend is unsloth, but " + ("Unsloth is not installed (pip install -e '.[gpu]')"
                                                 if device_type == "cuda" else "the Questioner is not on a CUDA GPU")
            + ": set train.backend=peft (or auto)"
        )
    return "unsloth" if config.backend != "peft" and available else "peft"


def attach_lora(model, config: TrainConfig, seed: int, start_from: str | None = None):
    """A LoRA adapter on a plain base model (peft), to train: a fresh one initialised from `seed` (train.init
    base, the paper's), or the saved adapter `start_from` (train.init previous)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no grad on the inputs. 4-bit models stay as loaded: without
        # prepare_model_for_kbit_training's fp32 upcast of norms, embeddings and head, a Mistral-7B step ran
        # 1.37x faster in 0.76x the memory on an H100 (benchmarks/RESULTS.md).
        # Newer transformers name it activation_checkpointing_enable and warn at every call of the old name (the
        # user saw it at every iteration); the older 5.x releases we accept have only the old one.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)
    if start_from is not None:
        return PeftModel.from_pretrained(model, checked_adapter(start_from), is_trainable=True)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def load_for_training(questioner: Questioner, config: TrainConfig, seed: int, start_from: str | None = None, *,
                      method: TrainingMethod):
    """A freshly loaded base Questioner with a fresh LoRA adapter, or the adapter `start_from`, ready for
    `train_lora` (peft, or Unsloth's model and LoRA) to train with `method`. Returns (model, backend name)."""
    backend = resolve_backend(config, questioner.device.type, method)
    if backend == "peft":
        return attach_lora(questioner.load_base(), config, seed, start_from), backend
    from unsloth import FastLanguageModel

    source = Path(questioner.source)
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(source.resolve()) if source.exists() else questioner.source,  # relative: taken for a Hub id
        max_seq_length=config.max_length,
        dtype=questioner.dtype,
        load_in_4bit=questioner.config.load_in_4bit,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_unsloth_targets(config.target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        random_state=seed,
    )
    return model, backend


def _unsloth_targets(target_modules) -> list[str]:
    """Unsloth wants module names; "all-linear" on a decoder means the attention and MLP projections."""
    if target_modules != "all-linear":
        return list(target_modules)
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def precision(device_type: str):
    """The precision context every forward pass of training runs in: bf16 autocast on CUDA, none on CPU."""
    import torch

    if device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_lora(
    model,
    examples: list,
    config: TrainConfig,
    *,
    method: TrainingMethod,
    seed: int,
    out_dir: Path,
    pad_token_id: int,
    backend: str = "peft",
    on_step: Callable[[dict], None] | None = None,
    accelerator=None,
    sampling: tuple[float, float] | None = None,
) -> dict:
    """Train `model`'s LoRA adapter (from `load_for_training`, or `attach_lora`) with `method` (config.method's:
    the examples are of its form, its hooks give the loss) and save it to out_dir. Returns the training record.

    `sampling` is the (temperature, top_p) a policy gradient's samples were drawn at (method.needs_sampling).
    With an `accelerator` of N processes (train_processes.py), each micro-batch's examples are shared out
    among them (per-process batch ceil(batch_size / N)), so an optimizer step sees the same examples as in one
    process; the summed gradients make the same step, and the main process saves the adapter.

    `on_step` gets each optimizer step as it ends: {step, total, loss, lr (the rate the step used), tokens (its
    target tokens)}, and the method's step_terms (rloo's and grpo's ratio_drift, clipped and kl)."""
    import torch

    if not examples:
        raise ValueError("no training examples")
    if method.name != config.method:
        raise ValueError(f"train.method is {config.method}, but the trainer was given the method {method.name}")
    if method.needs_sampling and sampling is None:
        raise ValueError(f"train.method {config.method} needs the temperature and top-p its samples were drawn at")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    examples = [method.cut(e, config.max_length) for e in examples]
    sequences = [method.sequences(e) for e in examples]
    lengths = [max(len(s.input_ids) for s in seqs) for seqs in sequences]
    targets = [sum(len(s.target_positions) for s in seqs) for seqs in sequences]
    epochs = [_batches(lengths, config.batch_size, rng) for _ in range(config.epochs)]
    micro = [b for epoch in epochs for b in epoch]
    micro_epoch = [e for e, epoch in enumerate(epochs) for _ in epoch]
    total_steps = math.ceil(len(micro) / config.gradient_accumulation)
    schedule = warmup_cosine(math.ceil(config.warmup_ratio * total_steps), total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    autocast = precision(device.type)

    decoder = model.get_base_model() if hasattr(model, "get_base_model") else model
    trainee = Trainee(model, decoder, config, pad_token_id,
                      target_logits_only=backend == "peft" and fast_scoring_refusal(decoder) is None,
                      sampling=sampling, autocast=autocast)
    losses: list[float] = []
    step_records: list[dict] = []  # the method's step_terms, per optimizer step
    trained_tokens = 0
    started = time.time()
    processes, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    masks = None
    if config.seeds_dropout_per_sequence:
        from .sequence_dropout import SequenceMasks

        masks = SequenceMasks(seed)
        if not masks.install(model):
            raise StargateError("train.dropout_masks sequence found no LoRA dropout module to seed in this model")
    # Before any step, with the batches the steps will use (the same in every epoch).
    state = method.before_steps(trainee, examples, [b[rank::processes] for b in epochs[0]])
    for step in range(total_steps):
        first = step * config.gradient_accumulation
        group = micro[first : first + config.gradient_accumulation]
        whole_step = Step(tokens=sum(targets[i] for b in group for i in b), examples=sum(len(b) for b in group))
        step_loss = 0.0
        step_terms = [0.0] * len(method.step_terms)
        for j, whole in enumerate(group):
            batch = whole[rank::processes]
            if not batch:  # fewer examples than processes: this one has none of them
                continue
            if masks:  # each row's key: its epoch and index (and which of the example's sequences, if several)
                epoch = micro_epoch[first + j]
                masks.rows = [((epoch, i) if len(sequences[i]) == 1 else (epoch, i, k), len(sequences[i][k].input_ids))
                              for k in range(len(sequences[batch[0]])) for i in batch]
            with autocast:
                loss, terms = method.loss(trainee, examples, batch, state, whole_step)
            step_terms = [a + b for a, b in zip(step_terms, terms, strict=True)]
            loss.backward()
            step_loss += loss.item()
            if device.type == "cpu":
                trim_heap()  # give back each micro-batch's freed activations (memory.py)
        if processes > 1:
            step_loss, *step_terms = sum_gradients(params, [step_loss, *step_terms], accelerator)
        if method.step_terms:
            step_records.append({name: value / max(whole_step.tokens, 1)
                                 for name, value in zip(method.step_terms, step_terms, strict=True)})
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        rate = scheduler.get_last_lr()[0]  # the rate this step uses: the scheduler moves on after it
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        trained_tokens += whole_step.tokens
        if on_step:
            on_step({"step": step + 1, "total": total_steps, "loss": step_loss, "lr": rate,
                     "tokens": whole_step.tokens, **(step_records[-1] if step_records else {})})

    if rank == 0:
        save_adapter(model, out_dir)
    return {
        "adapter": str(out_dir),
        "examples": len(examples),
        "trained_tokens": trained_tokens,
        "steps": total_steps,
        "final_loss": losses[-1],
        "losses": losses,
        "seconds": time.time() - started,
        "backend": backend,
        "processes": processes,
        "method": config.method,
        "policy_steps": step_records or None,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def _padded(sequences: list[Encoded], pad_token_id: int, device):
    """Right-padded input ids, labels (IGNORE but at target positions) and attention mask."""
    import torch

    width = max(len(e.input_ids) for e in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, e in enumerate(sequences):
        seq = torch.tensor(e.input_ids)
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        positions = torch.tensor(e.target_positions, dtype=torch.long)
        labels[row, positions] = seq[positions]
    return ids.to(device), labels.to(device), mask.to(device)


def target_logits(model, decoder, sequences: list[Encoded], pad_token_id: int, target_logits_only: bool):
    """The logits that predict each sequence's target tokens [n, vocab] (with grad, where grad is on), those
    tokens [n] and the sequence each belongs to [n]; sequence by sequence, each's targets in order."""
    device = next(model.parameters()).device
    ids, labels, mask = _padded(sequences, pad_token_id, device)
    targets = labels[:, 1:]
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)  # the state at col predicts the token at col + 1
    if target_logits_only:
        hidden = decoder.base_model(input_ids=ids, use_cache=False).last_hidden_state
        logits = head_logits(decoder, hidden[rows, cols])
    else:  # the model's own forward, for heads the lean path does not reproduce
        logits = at_least_fp32(model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, cols])
    return logits, targets[rows, cols], rows


def sequence_logprobs(model, decoder, sequences: list[Encoded], pad_token_id: int, target_logits_only: bool):
    """Each sequence's summed log-prob of its target tokens (with grad, where grad is on): DPO's log pi(y | x),
    over exactly the tokens the SFT loss trains."""
    import torch

    logits, tokens, rows = target_logits(model, decoder, sequences, pad_token_id, target_logits_only)
    token = torch.log_softmax(logits, dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
    return torch.zeros(len(sequences), device=logits.device, dtype=token.dtype).index_add(0, rows, token)


def save_adapter(model, out_dir: Path) -> None:
    """Write the adapter to a temporary folder and rename it into place: a folder at out_dir is complete."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)  # a leftover from a run killed after the rename, before the record
    try:
        model.save_pretrained(tmp)
    except Exception as err:  # noqa: BLE001 - safetensors reports a full disk as SafetensorError, not OSError
        shutil.rmtree(tmp, ignore_errors=True)
        if "No space left on device" in str(err) or getattr(err, "errno", None) == errno.ENOSPC:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp)) from None
        raise
    tmp.rename(out_dir)


def sum_gradients(params, step_values: list[float], accelerator) -> list[float]:
    """Data parallelism by one all-reduce per optimizer step: each process holds the gradient of its share of
    the step's loss (its tokens' summed loss over the whole step's target count), so the sum over processes is
    the gradient one process would compute. Returns the step's values (its loss first, and any sums the record
    keeps) summed over the processes.

    Not torch's DDP wrapper: it syncs only through its own forward, and the lean loss calls the decoder inside
    the peft model; an adapter's gradient is small (a 7B model's r=16 LoRA: 40M values), so overlapping its
    reduction with the backward pass would save little."""
    import torch

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    values = torch.tensor(step_values, device=grads[0].device)
    flat = torch.cat([*(g.reshape(-1).float() for g in grads), values])
    flat = accelerator.reduce(flat, reduction="sum")
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(p).to(p.dtype)
        offset += g.numel()
    return flat[offset:].tolist()


def loss_at_targets(decoder, ids, labels):
    """Summed cross-entropy of the target tokens, with logits made only where a target is predicted.

    The model's own loss builds [batch x length x vocab] logits and keeps them, their log-softmax and its
    gradient for backward (benchmarks/bench_loss.py measures the difference). Sequences are right-padded, so
    under causal attention no real token sees a pad and no mask is needed (sdpa's causal kernels then apply).
    """
    import torch

    hidden = decoder.base_model(input_ids=ids, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)  # the state at col predicts the token at col + 1
    logits = head_logits(decoder, hidden[rows, cols])
    return torch.nn.functional.cross_entropy(logits, targets[rows, cols], reduction="sum")
