"""How often does Q_0 ask for something the persona holds, under each candidate instruction to ask? A screen for
`simulate.instruction`, before a run and its probe: cheap (the first turn only, no user, no training).

    python -m benchmarks.instruction_screen --home H --run RUN [--samples 4] [--instructions FILE.json]

H is a gated run's home (`simulate.reveal asked`, `data.dataset builtin-written`) in which the learning probe has
run for RUN: the pairs are its split-A probe pairs (RUN#probe:smollm2:A:0), each persona with its facts. For each
pair Q_0 (the home's converted tiny Questioner, through transformers' `generate`) writes its first turn
`--samples` times, sampled at the tiny recipe's temperature 0.9 and top-p 0.9, at most 40 tokens, torch seed 0,
under each instruction; the shipped gate (threshold 0.30, spread 0.15) says which turns ask for any of the
persona's facts. Prints per instruction the share of turns that ask for a fact and the share that hold a question
mark. FILE.json maps names to instruction texts (default: the shipped one and the candidates below). Not a timing.
Later turns, which follow a user's reply, ask less: a run's own figure is `benchmarks/selection_anatomy.py`'s
share of sampled turns.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

CANDIDATES = {
    "examples": 'Before you help me, ask me one short question about my life, like "Who do you live with?", "What '
                'do you do for work?" or "Do you have a budget in mind?". Write only your question.',
    "topics": "Before you help me, ask me one short question about myself whose answer would change your advice: "
              "for example my diet, budget, schedule, home, family, health or work. Write only the question. Do not "
              "answer my request yet; when I repeat my request, give your full answer.",
    "starts-with": 'Reply with exactly one short question to me that starts with "What", "How" or "Do you" and asks '
                   "about me, my habits or my situation. Nothing else: no advice yet.",
    "good-questions": 'I want you to ask me a question first. Good questions are: "Who do you live with?", "What is '
                      'your job?", "How much time do you have?", "Do you have any health limits?". Ask me one '
                      "question like these, and write nothing else.",
    "one-question": "Ask me one question about myself. Only the question.",
    "personal": "Do not answer yet. First ask me one question about my own life, such as who I live with, what I "
                "like to eat, how much I can spend or what my job is. Reply with that question only.",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--run", required=True, help="the run whose split-A probe pairs to use")
    parser.add_argument("--samples", type=int, default=4, help="first turns per pair and instruction")
    parser.add_argument("--instructions", type=Path, help="JSON: {name: instruction text}")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stargate_lite.engines.gate import Gate, GateSettings
    from stargate_lite.prompts import QUESTION_INSTRUCTION, is_question, questioner_messages

    db = sqlite3.connect(args.home / "stargate.db")
    db.row_factory = sqlite3.Row
    pairs = db.execute("""select t.text as task, pe.name, pe.facts from pairs p join tasks t on t.id = p.task_id
                          join personas pe on pe.id = p.persona_id where p.run_id = ? order by p.idx""",
                       [f"{args.run}#probe:smollm2:A:0"]).fetchall()
    if not pairs:
        raise SystemExit(f"no split-A probe pairs of run {args.run!r} in {args.home}: run `stargate-lite probe` first")
    model_dir = next(p for p in (args.home / "models").iterdir() if p.name.startswith("SmolLM2") and p.is_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gate = Gate("builtin:all-minilm-l6-v2", GateSettings(), args.home / "models")
    candidates = (json.loads(args.instructions.read_text()) if args.instructions
                  else {"shipped": QUESTION_INSTRUCTION, **CANDIDATES})
    torch.manual_seed(0)
    results = {}
    for name, text in candidates.items():
        asks = questions = turns = 0
        for pair in pairs:
            messages = questioner_messages(pair["name"], pair["task"], [], final=False, instruction_text=text)
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(ids, do_sample=True, temperature=0.9, top_p=0.9, max_new_tokens=40,
                                 num_return_sequences=args.samples, pad_token_id=tokenizer.eos_token_id)
            facts = json.loads(pair["facts"])
            for row in out:
                turn = tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True).strip()
                turns, asks, questions = turns + 1, asks + bool(gate.asked(turn, facts)), questions + is_question(turn)
        results[name] = {"instruction": text, "turns": turns, "asks_for_a_fact": asks / turns,
                         "questions": questions / turns}
        print(f"{name:>14}: {asks / turns:6.1%} of {turns} first turns ask for a persona fact; "
              f"{questions / turns:6.1%} hold a question mark", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"pairs": len(pairs), "samples": args.samples, "results": results}, indent=1))


if __name__ == "__main__":
    main()
