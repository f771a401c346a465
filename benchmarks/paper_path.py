"""The paper recipe's whole path, one iteration at reduced size: every stage's time and peak memory, extrapolated
to the paper recipe's iteration and the authors', beside `run --dry-run`'s estimate of the same settings.

Nothing can be downloaded, so random weights of the real shapes stand in for the models:
- the Questioner: a Mistral-7B-shaped checkpoint (4-bit nf4 on CUDA, as paper.yaml loads it; the static decoder),
  with SmolLM2's tokenizer so that prompts and texts have realistic token counts;
- the Roleplayer, Oracle and Judge: one llama-server with paper.yaml's 16 slots serving a Mixtral-8x7B-shaped
  Q4_K GGUF written here with the `gguf` package (26 GB at full shape), its 4-bit blocks' scales set so every
  weight is finite with a standard deviation of 0.02;
- training as paper.yaml trains (Unsloth where the [gpu] extra is installed, else peft).
Random weights never stop by themselves, so every generation runs to the lengths DESIGN.md section 7 assumes:
questions 30 tokens, answers 60, gold responses and regulariser responses 300.

    python -m benchmarks.paper_path                      # CUDA: the real shapes, 16 pairs x 10 conversations
    python -m benchmarks.paper_path --shape tiny         # CPU: tiny shapes, the same code path (tests run this)

Per stage it prints the measured time, the dry-run's estimate, their ratio, the peak memory (summed over the
processes of the run: this one, the llama-server and training children; GPU memory from nvidia-smi on CUDA, RSS
on CPU), and the time extrapolated to 1,500 pairs x 10 conversations (paper.yaml) and 12,500 pairs (the
authors' data). Extrapolation scales each stage's work linearly (simulate and score by conversations, the rest by
pairs) and keeps its fixed costs (model loads and server starts, timed here) as they are. --json writes it all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ITERATION_STAGES = ("simulate", "score", "select", "respond", "train")
PER_CONVERSATION = {"simulate", "score"}  # the others scale with pairs
PAPER_PAIRS, AUTHORS_PAIRS, PAPER_CONVERSATIONS = 1500, 12500, 10
Q4_K_BLOCK, Q4_K_BYTES = 256, 144  # weights per block, bytes per block: d, dmin (f16), 12 bytes of scales, 128 of nibbles


@dataclass(frozen=True)
class Shape:
    """A Mistral-shaped Questioner and a Mixtral-shaped Roleplayer, and the run's size and token limits."""

    q_hidden: int
    q_layers: int
    q_heads: int
    q_kv_heads: int
    q_ffn: int
    r_hidden: int
    r_layers: int
    r_heads: int
    r_kv_heads: int
    r_ffn: int
    experts: int
    tasks: int
    personas: int
    conversations: int
    question_tokens: int
    answer_tokens: int
    response_tokens: int
    persona_tokens: int


SHAPES = {
    # Mistral-7B-Instruct-v0.2 and Mixtral-8x7B-Instruct-v0.1; 16 pairs of split A (4 tasks x 4 personas)
    "paper": Shape(4096, 32, 32, 8, 14336, 4096, 32, 32, 8, 14336, 8, tasks=4, personas=4, conversations=10,
                   question_tokens=30, answer_tokens=60, response_tokens=300, persona_tokens=220),
    "tiny": Shape(64, 2, 4, 2, 128, 256, 2, 4, 2, 512, 8, tasks=2, personas=2, conversations=2,
                  question_tokens=8, answer_tokens=8, response_tokens=16, persona_tokens=16),
}


# -- the stand-in models -------------------------------------------------------------------------------------------
def questioner_checkpoint(path: Path, shape: Shape, cuda: bool) -> Path:
    """A random Mistral-shaped checkpoint with SmolLM2's tokenizer (bf16 on CUDA, float32 on CPU), made once."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

    from benchmarks.shapes import tiny_source

    tokenizer = AutoTokenizer.from_pretrained(tiny_source())
    config = MistralConfig(hidden_size=shape.q_hidden, intermediate_size=shape.q_ffn, num_hidden_layers=shape.q_layers,
                           num_attention_heads=shape.q_heads, num_key_value_heads=shape.q_kv_heads,
                           vocab_size=len(tokenizer), max_position_embeddings=32768, rope_theta=1e6,
                           sliding_window=None, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(tmp, max_shard_size="4GB")
    tokenizer.save_pretrained(tmp)
    del model
    tmp.rename(path)
    return path


def _spm_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary for llama.cpp's tokenizer: <unk>, <s>, </s>, the 256 byte tokens it falls
    back to, then SmolLM2's printable word pieces in its merge order (so English text splits into about as many
    tokens as Mixtral's own tokenizer makes)."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    from benchmarks.shapes import tiny_source

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, *[TokenType.BYTE] * 256]
    seen = set(tokens)
    vocab = AutoTokenizer.from_pretrained(tiny_source()).get_vocab()
    for piece, _ in sorted(vocab.items(), key=lambda item: item[1]):
        word = piece.replace("\u0120", "\u2581")  # GPT-2's byte-level space is SentencePiece's word start
        if len(tokens) == size:
            break
        if word not in seen and word.replace("\u2581", "").isascii() and word.replace("\u2581", " ").isprintable():
            tokens.append(word)
            types.append(TokenType.NORMAL)
            seen.add(word)
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, [int(t) for t in types]


def _q4_k_rows(rng, rows: int, columns: int, std: float = 0.02):
    """Random Q4_K blocks with every sub-block's scale and min equal (8), d and dmin set so a weight is
    d * 8 * (q - 7.5) for a uniform nibble q: mean 0, standard deviation `std`, never NaN or infinite."""
    import numpy as np

    blocks = rng.integers(0, 256, size=(rows * columns // Q4_K_BLOCK, Q4_K_BYTES), dtype=np.uint8)
    scale = 8
    d = std / (scale * np.sqrt((16**2 - 1) / 12))
    blocks[:, 0:2] = np.frombuffer(np.float16(d).tobytes(), dtype=np.uint8)
    blocks[:, 2:4] = np.frombuffer(np.float16(d * 7.5).tobytes(), dtype=np.uint8)
    blocks[:, 4:12] = scale  # 6-bit scales (bytes 0-3) and mins (bytes 4-7) of sub-blocks 0-3
    blocks[:, 12:16] = scale | (scale << 4)  # low nibbles of sub-blocks 4-7's scales and mins
    return blocks.reshape(rows, columns // Q4_K_BLOCK * Q4_K_BYTES)


def mixtral_gguf(path: Path, shape: Shape) -> Path:
    """A Mixtral-shaped GGUF (llama architecture with experts) of random Q4_K weights, f32 norms and router,
    streamed tensor by tensor so that the full shape (26 GB) never sits in memory whole. Made once."""
    if path.is_file():
        return path
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    rng = np.random.default_rng(0)
    tokens, scores, types = _spm_vocab(32000)
    head = shape.r_hidden // shape.r_heads
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = GGUFWriter(tmp, "llama")
    writer.add_name("random Mixtral-8x7B shape")
    writer.add_context_length(32768)
    writer.add_embedding_length(shape.r_hidden)
    writer.add_block_count(shape.r_layers)
    writer.add_feed_forward_length(shape.r_ffn)
    writer.add_head_count(shape.r_heads)
    writer.add_head_count_kv(shape.r_kv_heads)
    writer.add_rope_dimension_count(head)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_expert_count(shape.experts)
    writer.add_expert_used_count(2)
    writer.add_file_type(15)  # MOSTLY_Q4_K_M
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    # Our own template in Mixtral's [INST] format; no system role (paper.yaml folds it into the first turn).
    writer.add_chat_template("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
                             "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
                             "{% endfor %}")

    kv = shape.r_kv_heads * head
    quantized = {"token_embd.weight": (len(tokens), shape.r_hidden)}
    for i in range(shape.r_layers):
        quantized |= {f"blk.{i}.attn_q.weight": (shape.r_hidden, shape.r_hidden),
                      f"blk.{i}.attn_k.weight": (kv, shape.r_hidden),
                      f"blk.{i}.attn_v.weight": (kv, shape.r_hidden),
                      f"blk.{i}.attn_output.weight": (shape.r_hidden, shape.r_hidden),
                      f"blk.{i}.ffn_gate_exps.weight": (shape.experts, shape.r_ffn, shape.r_hidden),
                      f"blk.{i}.ffn_up_exps.weight": (shape.experts, shape.r_ffn, shape.r_hidden),
                      f"blk.{i}.ffn_down_exps.weight": (shape.experts, shape.r_hidden, shape.r_ffn)}
    quantized["output.weight"] = (len(tokens), shape.r_hidden)
    plain = {"output_norm.weight": (shape.r_hidden,)}
    for i in range(shape.r_layers):
        plain |= {f"blk.{i}.attn_norm.weight": (shape.r_hidden,), f"blk.{i}.ffn_norm.weight": (shape.r_hidden,),
                  f"blk.{i}.ffn_gate_inp.weight": (shape.experts, shape.r_hidden)}

    def byte_shape(dims: tuple[int, ...]) -> tuple[int, ...]:
        return (*dims[:-1], dims[-1] // Q4_K_BLOCK * Q4_K_BYTES)

    for name, dims in quantized.items():
        writer.add_tensor_info(name, byte_shape(dims), np.dtype(np.uint8), int(np.prod(byte_shape(dims))),
                               raw_dtype=GGMLQuantizationType.Q4_K)
    for name, dims in plain.items():
        writer.add_tensor_info(name, dims, np.dtype(np.float32), int(np.prod(dims)) * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for dims in quantized.values():
        rows = int(np.prod(dims[:-1]))
        writer.write_tensor_data(_q4_k_rows(rng, rows, dims[-1]).reshape(byte_shape(dims)))
    for name, dims in plain.items():
        values = (np.ones(dims, np.float32) if name.endswith("norm.weight")
                  else rng.normal(0, 0.02, dims).astype(np.float32))
        writer.write_tensor_data(values)
    writer.close()
    tmp.rename(path)
    return path


# -- memory, sampled while the run runs ----------------------------------------------------------------------------
class MemorySampler:
    """Every half second: each process's memory (GPU memory per process from nvidia-smi on CUDA, else the RSS of
    this process and its descendants), kept with the time so that peaks can be read per stage afterwards."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._gpu() if self.cuda else self._rss()))
            self._stop.wait(0.5)

    @staticmethod
    def _gpu() -> dict[int, int]:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        return {int(pid): int(mib) * 2**20 for pid, mib in (line.split(",") for line in out.splitlines() if line)}

    @staticmethod
    def _rss() -> dict[int, int]:
        import psutil

        me = psutil.Process()
        usage = {}
        for process in [me, *me.children(recursive=True)]:
            try:
                usage[process.pid] = process.memory_info().rss
            except psutil.Error:
                pass
        return usage

    def peaks(self, start: float, end: float) -> dict[str, int]:
        """The most memory held at once in [start, end], and the sum of each process's own peak there (the
        bound that matters when processes peak at different moments on a card shared with others). The last
        sample before `start` counts too: what was held when the stage began (a stage may end between samples)."""
        before = [usage for at, usage in self.samples if at < start][-1:]
        window = before + [usage for at, usage in self.samples if start <= at <= end]
        per_process: dict[int, int] = {}
        for usage in window:
            for pid, used in usage.items():
                per_process[pid] = max(per_process.get(pid, 0), used)
        return {"at_once": max((sum(u.values()) for u in window), default=0), "summed": sum(per_process.values())}


class FixedCosts:
    """Time spent loading the Questioner and starting servers, by when it happened: the part of a stage that does
    not grow with its work. Timed by wrapping the two library calls that do it."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []

    def wrap(self, owner, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.spans.append((start, time.time()))

        setattr(owner, name, timed)

    def within(self, start: float, end: float) -> float:
        return sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.spans)


# -- the run -------------------------------------------------------------------------------------------------------
def recipe_overrides(shape: Shape, questioner: Path, gguf: Path, cuda: bool) -> list[str]:
    overrides = [
        f"questioner.model={questioner}",
        f"chat_models.mixtral.model={gguf}",
        "chat_models.mixtral.gguf_file=null",
        "roles.oracle=mixtral",  # the local Oracle and Judge: the same server
        "roles.judge=mixtral",
        f"data.tasks={{A: {shape.tasks}, B: 1, test: 1}}",
        f"data.personas={{A: {shape.personas}, B: 1, test: 1}}",
        f"data.persona_max_tokens={shape.persona_tokens}",
        f"data.gold_max_tokens={shape.response_tokens}",
        f"simulate.conversations_per_pair={shape.conversations}",
        f"simulate.question_max_tokens={shape.question_tokens}",
        f"simulate.answer_max_tokens={shape.answer_tokens}",
        f"respond.max_tokens={shape.response_tokens}",
    ]
    if not cuda:
        overrides += ["questioner.device=cpu", "questioner.dtype=float32", "questioner.load_in_4bit=false",
                      "chat_models.mixtral.n_gpu_layers=0", "chat_models.mixtral.n_threads=2",
                      "train.batch_size=2", "train.gradient_accumulation=1"]
    return overrides


def stage_spans(store, run_id: str, data_start: float) -> dict[str, tuple[float, float]]:
    """Each stage's [start, end] from the store's own marks: a stage starts when the one before it is done."""
    (iteration,) = store.iterations(run_id)
    done = store.stage_marks(run_id, 1)
    spans, previous = {"data": (data_start, iteration["started_at"])}, done["pairs"]
    for stage in ITERATION_STAGES:
        spans[stage] = (previous, done[stage])
        previous = done[stage]
    return spans


def dry_run_seconds(rows: list[dict]) -> dict[str, float | None]:
    """The dry-run's rows summed per stage ("simulate: questions" and "...: roleplayer answers" are simulate)."""
    seconds: dict[str, float | None] = {}
    for row in rows:
        stage = row["stage"].split(":")[0].strip()
        if row["seconds"] is None:
            seconds[stage] = None
        elif seconds.get(stage, 0.0) is not None:
            seconds[stage] = seconds.get(stage, 0.0) + row["seconds"]
    return seconds


def measure(shape_name: str, workdir: Path) -> dict:
    import torch

    from stargate_lite import Store, estimate, load_recipe, loop
    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.engines.servers import ManagedServer

    cuda = torch.cuda.is_available()
    if shape_name == "paper" and not cuda:
        raise SystemExit("--shape paper needs a CUDA GPU (a Mixtral-shaped model on CPU would take hours): "
                         "use --shape tiny")
    shape = SHAPES[shape_name]
    workdir.mkdir(parents=True, exist_ok=True)
    made = time.time()
    questioner = questioner_checkpoint(workdir / f"questioner-{shape_name}", shape, cuda)
    gguf = mixtral_gguf(workdir / f"mixtral-{shape_name}.gguf", shape)
    models_seconds = time.time() - made
    recipe = load_recipe("paper", recipe_overrides(shape, questioner, gguf, cuda))
    home = workdir / f"home-{shape_name}"
    shutil.rmtree(home, ignore_errors=True)

    estimated = dry_run_seconds(estimate(recipe, home))
    fixed = FixedCosts()
    fixed.wrap(Questioner, "load_base")
    fixed.wrap(ManagedServer, "start")
    free_at_training: list[tuple[int, int]] = []
    hand_over = loop.hand_over_memory

    def hand_over_and_read(*args):
        hand_over(*args)
        if cuda:
            free_at_training.append(torch.cuda.mem_get_info())
        else:
            import psutil

            memory = psutil.virtual_memory()
            free_at_training.append((memory.available, memory.total))

    loop.hand_over_memory = hand_over_and_read
    with MemorySampler(cuda) as memory:
        data_start = time.time()
        run_id = loop.run(recipe, iterations=1, home=home)
    store = Store(home, create=False)
    spans = stage_spans(store, run_id, data_start)

    pairs = shape.tasks * shape.personas
    conversations = pairs * shape.conversations
    stages = {}
    for stage, (start, end) in spans.items():
        seconds, constant = end - start, fixed.within(start, end)
        row = {"seconds": seconds, "fixed_seconds": constant, "estimate_seconds": estimated.get(stage),
               "peak_bytes": memory.peaks(start, end)}
        if stage != "data":
            work = PAPER_CONVERSATIONS / shape.conversations if stage in PER_CONVERSATION else 1.0
            row["paper_seconds"] = constant + (seconds - constant) * PAPER_PAIRS / pairs * work
            row["authors_seconds"] = constant + (seconds - constant) * AUTHORS_PAIRS / pairs * work
        stages[stage] = row
    free, total = free_at_training[0]
    return {
        "shape": shape_name, "device": torch.cuda.get_device_name() if cuda else "cpu", "pairs": pairs,
        "conversations": conversations,
        "turns": sum(c["turns"] for c in store.conversation_efficiency(run_id, 1)),
        "models_seconds": models_seconds, "stages": stages,
        "free_at_training_bytes": free, "total_bytes": total,
        "paper_hours": sum(s.get("paper_seconds", 0) for s in stages.values()) / 3600,
        "authors_hours": sum(s.get("authors_seconds", 0) for s in stages.values()) / 3600,
    }


def table(result: dict) -> str:
    gib = 2**30
    title = (f"paper recipe's path, one iteration at {result['shape']} shape on {result['device']}: "
             f"{result['pairs']} pairs, {result['conversations']} conversations, {result['turns']} answers "
             f"(random models made in {result['models_seconds']:.0f} s)")
    header = (f"{'stage':<9} {'seconds':>8} {'fixed':>6} {'dry-run':>8} {'ratio':>6} {'peak GiB':>9} "
              f"{'summed':>7} {'1,500 pairs':>12} {'12,500':>9}")
    lines = [title, header]
    for stage, s in result["stages"].items():
        estimate = s["estimate_seconds"]
        ratio = f"{s['seconds'] / estimate:.2f}" if estimate else "-"
        shown = f"{estimate:.1f}" if estimate is not None else "-"
        paper = f"{s['paper_seconds'] / 60:.1f} min" if "paper_seconds" in s else "once"
        authors = f"{s['authors_seconds'] / 60:.0f} min" if "authors_seconds" in s else ""
        lines.append(f"{stage:<9} {s['seconds']:>8.1f} {s['fixed_seconds']:>6.1f} {shown:>8} {ratio:>6} "
                     f"{s['peak_bytes']['at_once'] / gib:>9.2f} {s['peak_bytes']['summed'] / gib:>7.2f} "
                     f"{paper:>12} {authors:>9}")
    lines.append(f"extrapolated iteration: {result['paper_hours']:.2f} h at 1,500 pairs x 10 conversations, "
                 f"{result['authors_hours']:.2f} h at 12,500; free when training starts: "
                 f"{result['free_at_training_bytes'] / gib:.1f} of {result['total_bytes'] / gib:.1f} GiB")
    lines.append("fixed: model loads and server starts (kept as they are when extrapolating); ratio: measured / "
                 "dry-run; peak: most memory at once; summed: each process's own peak, added")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="paper")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stargate-paper-path",
                        help="where the random models (made once) and the run's home go")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = measure(args.shape, args.workdir)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
