"""The LoRA trainer the train stage drives: a fresh adapter on the base model (or the last one, train.init
previous), the optimisation loop (SFT's masked loss, DPO's against the base with the adapter off, or RLOO's and
GRPO's clipped policy gradient), gradients summed across processes, and the adapter written atomically. Shared by
the in-process, isolated (Unsloth) and multi-process paths of stages/train.py."""

from __future__ import annotations

import errno
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import StargateError
from ..recipe import POLICY_GRADIENT_METHODS, TrainConfig, check_dropout_masks
from .encoded import Encoded
from .logits import at_least_fp32, fast_scoring_refusal, head_logits, sampling_logprobs
from .memory import trim_heap
from .questioner import Questioner, checked_adapter

IGNORE = -100
GRPO_STD_EPSILON = 1e-4  # added to a group's standard deviation, as TRL's GRPOTrainer does


def group_advantages(rewards: list[float], method: str) -> list[float]:
    """Each sample's advantage within its group (a pair's conversations): rloo, its reward less the mean of the
    others' (REINFORCE leave-one-out); grpo, its reward less the group's mean, over the group's standard deviation
    (the sample's, n - 1) plus GRPO_STD_EPSILON. A group of equal rewards gets 0 everywhere."""
    n = len(rewards)
    if n < 2:
        raise ValueError("a group needs at least two samples to be its own baseline")
    if len(set(rewards)) == 1:
        return [0.0] * n  # exactly, where the mean's rounding would leave a few ulps
    mean = sum(rewards) / n
    if method == "rloo":
        return [(r - mean) * n / (n - 1) for r in rewards]  # r - (sum - r) / (n - 1), exactly rearranged
    if method == "grpo":
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))
        return [(r - mean) / (std + GRPO_STD_EPSILON) for r in rewards]
    raise ValueError(f"no group advantage for train.method {method}")


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Length-grouped micro-batches of example indices (little padding), visited in random order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _keep_last(example: Encoded, max_length: int) -> Encoded:
    """Cut a long example from the left: the trained turns are at the end of a conversation. A target the cut
    leaves first has nothing before it to predict it from, so it goes with the cut: every kept target is one the
    loss trains, and the counts (trained tokens, one advantage per target) are of those."""
    cut = max(0, len(example.input_ids) - max_length)
    return Encoded(example.input_ids[cut:], [p - cut for p in example.target_positions if p > cut])


def _keep_last_advantages(example: Encoded, advantage, max_length: int) -> tuple[Encoded, list[float]]:
    """`_keep_last`, with the sample's advantage as one value per target token that is kept."""
    per_token = advantage if isinstance(advantage, list) else [advantage] * len(example.target_positions)
    if len(per_token) != len(example.target_positions):
        raise ValueError(f"{len(per_token)} advantages for {len(example.target_positions)} target tokens")
    cut = _keep_last(example, max_length)
    return cut, per_token[len(per_token) - len(cut.target_positions) :]


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


def resolve_backend(config: TrainConfig, device_type: str) -> str:
    """The trainer to use: Unsloth where asked or (auto) where it is installed and the Questioner is on CUDA."""
    import importlib.util

    check_dropout_masks(config, "train")
    if config.processes > 1:
        if config.backend == "unsloth":
            raise StargateError("train.backend unsloth trains in one process: set train.processes=1, or "
                                "train.backend=peft (or auto) to train in several")
        return "peft"
    if config.method != "sft":
        if config.backend == "unsloth":
            raise StargateError(f"train.method {config.method} trains with the peft backend (its loss needs each "
                                "sequence's log-probs, with and without the adapter): set train.backend=peft (or auto)")
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


def load_for_training(questioner: Questioner, config: TrainConfig, seed: int, start_from: str | None = None):
    """A freshly loaded base Questioner with a fresh LoRA adapter, or the adapter `start_from`, ready for
    `train_lora` (peft, or Unsloth's model and LoRA). Returns (model, backend name)."""
    backend = resolve_backend(config, questioner.device.type)
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
    seed: int,
    out_dir: Path,
    pad_token_id: int,
    backend: str = "peft",
    on_step: Callable[[dict], None] | None = None,
    accelerator=None,
    sampling: tuple[float, float] | None = None,
) -> dict:
    """Train `model`'s LoRA adapter (from `load_for_training`, or `attach_lora`) and save it to out_dir.
    Returns the training record.

    `examples` are Encoded sequences (train.method sft), (chosen, rejected) pairs of them (dpo, `_dpo_loss`), or
    (sequence, advantage) samples (rloo and grpo, `policy_terms`: one advantage for the sequence, or one per
    target token with reward.per_turn; `sampling` is the (temperature, top_p) they were sampled at).
    With an `accelerator` of N processes (train_processes.py), each micro-batch's examples are shared out
    among them (per-process batch ceil(batch_size / N)), so an optimizer step sees the same examples as in one
    process; the summed gradients make the same step, and the main process saves the adapter.

    `on_step` gets each optimizer step as it ends: {step, total, loss, lr (the rate the step used), tokens (its
    target tokens)}, and rloo's and grpo's ratio_drift, clipped and kl."""
    import torch

    if not examples:
        raise ValueError("no training examples")
    preference = config.method == "dpo"
    policy_gradient = config.method in POLICY_GRADIENT_METHODS
    if policy_gradient and sampling is None:
        raise ValueError(f"train.method {config.method} needs the temperature and top-p its samples were drawn at")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if preference:
        examples = [(_keep_last(c, config.max_length), _keep_last(r, config.max_length)) for c, r in examples]
        lengths = [max(len(c.input_ids), len(r.input_ids)) for c, r in examples]
        targets = [len(c.target_positions) + len(r.target_positions) for c, r in examples]
    elif policy_gradient:
        examples = [_keep_last_advantages(e, advantage, config.max_length) for e, advantage in examples]
        lengths = [len(e.input_ids) for e, _ in examples]
        targets = [len(e.target_positions) for e, _ in examples]
    else:
        examples = [_keep_last(e, config.max_length) for e in examples]
        lengths = [len(e.input_ids) for e in examples]
        targets = [len(e.target_positions) for e in examples]
    epochs = [_batches(lengths, config.batch_size, rng) for _ in range(config.epochs)]
    micro = [b for epoch in epochs for b in epoch]
    micro_epoch = [e for e, epoch in enumerate(epochs) for _ in epoch]
    total_steps = math.ceil(len(micro) / config.gradient_accumulation)
    schedule = warmup_cosine(math.ceil(config.warmup_ratio * total_steps), total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    autocast = precision(device.type)

    decoder = model.get_base_model() if hasattr(model, "get_base_model") else model
    target_logits_only = backend == "peft" and fast_scoring_refusal(decoder) is None
    reference: dict[int, tuple[float, float]] = {}  # dpo: each pair's log-probs under the base, once computed
    losses: list[float] = []
    policy_steps: list[dict] = []  # rloo, grpo: per optimizer step, how far the policy has moved from the sampler
    trained_tokens = 0
    started = time.time()
    processes, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    masks = None
    if config.seeds_dropout_per_sequence:
        from .sequence_dropout import SequenceMasks

        masks = SequenceMasks(seed)
        if not masks.install(model):
            raise StargateError("train.dropout_masks sequence found no LoRA dropout module to seed in this model")
    behaviour = None
    if policy_gradient:  # before any step, with the batches the steps will use (the same in every epoch)
        behaviour = _behaviour(model, decoder, examples, [b[rank::processes] for b in epochs[0]], config, sampling,
                               pad_token_id, target_logits_only, autocast)
    for step in range(total_steps):
        first = step * config.gradient_accumulation
        group = micro[first : first + config.gradient_accumulation]
        step_tokens = sum(targets[i] for b in group for i in b)
        step_pairs = sum(len(b) for b in group)
        step_loss = 0.0
        step_terms = [0.0, 0.0, 0.0]  # rloo, grpo: the step's summed |ratio - 1|, clipped tokens and KL
        for j, whole in enumerate(group):
            batch = whole[rank::processes]
            if not batch:  # fewer examples than processes: this one has none of them
                continue
            if masks:  # each row's key: its epoch and index (and, in dpo, chosen 0 or rejected 1)
                epoch = micro_epoch[first + j]
                if preference:
                    masks.rows = [((epoch, i, k), len(examples[i][k].input_ids)) for k in (0, 1) for i in batch]
                else:
                    masks.rows = [((epoch, i), len(examples[i].input_ids)) for i in batch]
            if preference:
                with autocast:  # the mean over the step's pairs, however the step is split
                    loss = _dpo_loss(model, decoder, examples, batch, reference, config.dpo_beta, pad_token_id,
                                     target_logits_only) / step_pairs
            elif policy_gradient:
                with autocast:  # like SFT's, the mean over the step's target tokens, however the step is split
                    loss, terms = policy_terms(model, decoder, examples, batch, behaviour, config, sampling,
                                               pad_token_id, target_logits_only)
                    loss = loss / max(step_tokens, 1)
                step_terms = [a + b for a, b in zip(step_terms, terms, strict=True)]
            else:
                ids, labels, mask = _padded([examples[i] for i in batch], pad_token_id, device)
                with autocast:
                    # Summed over target tokens and divided by the step's target count, so every token weighs the
                    # same however the step is split.
                    if target_logits_only:
                        loss = _loss_at_targets(decoder, ids, labels) / max(step_tokens, 1)
                    else:  # the model's own loss (Unsloth's fused one)
                        loss = model(input_ids=ids, attention_mask=mask, labels=labels,
                                     num_items_in_batch=max(step_tokens, 1)).loss
            loss.backward()
            step_loss += loss.item()
            if device.type == "cpu":
                trim_heap()  # give back each micro-batch's freed activations (memory.py)
        if processes > 1:
            step_loss, *step_terms = sum_gradients(params, [step_loss, *step_terms], accelerator)
        if policy_gradient:
            drift, clipped, kl = (value / max(step_tokens, 1) for value in step_terms)
            policy_steps.append({"ratio_drift": drift, "clipped": clipped, "kl": kl})
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        rate = scheduler.get_last_lr()[0]  # the rate this step uses: the scheduler moves on after it
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        trained_tokens += step_tokens
        if on_step:
            on_step({"step": step + 1, "total": total_steps, "loss": step_loss, "lr": rate, "tokens": step_tokens,
                     **(policy_steps[-1] if policy_gradient else {})})

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
        "policy_steps": policy_steps or None,
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


def _behaviour(model, decoder, samples, batches: list[list[int]], config: TrainConfig, sampling, pad_token_id: int,
               target_logits_only: bool, autocast) -> dict[int, tuple]:
    """Each sample's per-token log-probs under the policy that sampled it (the model as training starts: train.init
    previous) and under the base (its adapter off; only with a KL penalty), at the temperature and top-p it was
    sampled at, without grad, in the micro-batches training will use and in the precision context (`autocast`)
    the policy's own log-probs are computed in, so that the first step's importance ratios are 1 and its KL 0 to
    the last bit where the kernels are deterministic (outside bf16 autocast, the ratios drifted by 0.03).

    Recomputed rather than stored at simulation time: the stored turns are text, and re-encoding it need not
    give the sampled token ids back, so only log-probs of the re-encoded tokens make a ratio of the same tokens.
    The cost is one forward pass without grad per sample (two with the KL), next to the epochs' passes with it."""
    import torch

    out: dict[int, tuple] = {}
    model.eval()
    with torch.no_grad(), autocast:
        for batch in batches:
            if not batch:
                continue
            sequences = [samples[i][0] for i in batch]
            logits, tokens, rows = target_logits(model, decoder, sequences, pad_token_id, target_logits_only)
            old = sampling_logprobs(logits, tokens, *sampling)
            ref = old
            if config.kl_beta:
                with model.disable_adapter():
                    logits, _, _ = target_logits(model, decoder, sequences, pad_token_id, target_logits_only)
                ref = sampling_logprobs(logits, tokens, *sampling)
            counts = rows.bincount(minlength=len(batch)).tolist()
            for i, o, r in zip(batch, old.split(counts), ref.split(counts), strict=True):
                out[i] = (o, r)
    model.train()
    return out


def policy_terms(model, decoder, samples, batch: list[int], behaviour: dict, config: TrainConfig, sampling,
                 pad_token_id: int, target_logits_only: bool):
    """The summed clipped policy-gradient loss of these samples' target tokens (rloo, grpo), and the sums of
    |ratio - 1|, of clipped tokens and of the KL estimate, for the training record.

    Per token: ratio = pi(a) / pi_old(a), both at the sampling temperature and top-p; the PPO-style surrogate
    min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) with A the sample's advantage; less kl_beta times the k3
    estimate of KL(pi || pi_base), exp(d) - d - 1 with d = log pi_base(a) - log pi(a) (as GRPO). The loss is
    summed over tokens; the caller divides by the step's target tokens, so every token weighs the same (as
    DAPO's, not GRPO's paper, which averages each sequence's tokens first)."""
    import torch

    logits, tokens, _ = target_logits(model, decoder, [samples[i][0] for i in batch], pad_token_id,
                                         target_logits_only)
    new = sampling_logprobs(logits, tokens, *sampling)
    old = torch.cat([behaviour[i][0] for i in batch]).to(new.device)
    ref = torch.cat([behaviour[i][1] for i in batch]).to(new.device)
    advantage = torch.tensor([a for i in batch for a in samples[i][1]], device=new.device, dtype=new.dtype)
    ratio = torch.exp(new - old)
    eps = config.clip_epsilon
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - eps, 1 + eps) * advantage)
    gap = ref - new
    kl = torch.exp(gap) - gap - 1
    loss = -(surrogate - config.kl_beta * kl).sum()
    with torch.no_grad():
        # Only where the clip binds, as TRL counts: the clipped term is the smaller one (and so the one taken)
        # above 1 + eps for a positive advantage and below 1 - eps for a negative one; elsewhere it changes nothing.
        clipped = (((ratio > 1 + eps) & (advantage > 0)) | ((ratio < 1 - eps) & (advantage < 0))).sum()
        terms = [float((ratio - 1).abs().sum()), float(clipped), float(kl.sum())]
    return loss, terms


def _dpo_loss(model, decoder, pairs, batch: list[int], reference: dict, beta: float, pad_token_id: int,
              target_logits_only: bool):
    """Summed DPO loss of these (chosen, rejected) pairs: -log sigmoid(beta * (chosen's log-ratio - rejected's)),
    a log-ratio being log pi(y) - log pi_ref(y) over the trained tokens. pi_ref is the base: the same model with its
    adapter switched off, so no second copy is held; its log-probs are computed once per pair, without grad."""
    import torch

    missing = [i for i in batch if i not in reference]
    if missing:
        model.eval()
        with torch.no_grad(), model.disable_adapter():
            base = sequence_logprobs(model, decoder, [pairs[i][0] for i in missing] + [pairs[i][1] for i in missing],
                                     pad_token_id, target_logits_only)
        model.train()
        for k, i in enumerate(missing):
            reference[i] = (float(base[k]), float(base[k + len(missing)]))
    ours = sequence_logprobs(model, decoder, [pairs[i][0] for i in batch] + [pairs[i][1] for i in batch],
                             pad_token_id, target_logits_only)
    chosen, rejected = ours[: len(batch)], ours[len(batch) :]
    base = torch.tensor([reference[i] for i in batch], device=ours.device, dtype=ours.dtype)
    margin = (chosen - base[:, 0]) - (rejected - base[:, 1])
    return -torch.nn.functional.logsigmoid(beta * margin).sum()


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


def _loss_at_targets(decoder, ids, labels):
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
