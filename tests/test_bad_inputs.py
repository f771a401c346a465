"""Bad input to every command, as a new user types it: one line on stderr ("Error: ..."), the exit code that says
so (2), and the home exactly as it was, its files byte for byte (or no home made where there was none).

Each case names the command line, the home it meets (none, a home with data, one with a run, one with a trained
iteration) and the words its line must hold. docs/tests.md lists what the cases cover. The refusals come from
issue 46 and the earlier ones it asked to keep (a recipe, a split, a file, a model, a port, a run that is not
there). Each command runs as a user runs it (`conftest.cli`), so the line is what a terminal shows."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cli, copy_home, files, run_home, trained_home

TASKS = ["Plan my week.", "Suggest a book for a long flight."]
PERSONAS = [{"name": "Ana", "text": "I'm ANA. I paint at night and sleep late."},
            {"name": "Bo", "text": "I'm BO. I run every morning before work."}]
GOLDS = {"prompt-0 persona-0": ["Paint on Monday night; sleep in on Tuesday."],
         "prompt-0 persona-1": ["Run on Monday morning; plan work after it."]}
LONG_PERSONA = "I'm ANA. " + "I grow tomatoes on my balcony and read about soil. " * 2000  # about 22,000 tokens


def _write(folder: Path, name: str, content) -> str:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


def _write_bytes(folder: Path, name: str, content: bytes) -> str:
    (folder / name).write_bytes(content)
    return str(folder / name)


def _adapter(folder: Path, config: str | None, weights: bytes | None) -> str:
    """A folder shaped like a LoRA adapter's, whole or broken as asked (no model is needed to make one)."""
    folder.mkdir()
    if config is not None:
        (folder / "adapter_config.json").write_text(config, encoding="utf-8")
    if weights is not None:
        (folder / "adapter_model.safetensors").write_bytes(weights)
    return str(folder)


LORA_CONFIG = json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
                          "base_model_name_or_path": "builtin:smollm2-135m-instruct", "task_type": "CAUSAL_LM"})


def _files(tmp: Path) -> dict[str, str]:
    """The inputs the cases name, as {NAME} in their arguments."""
    (tmp / "folder").mkdir()
    blocker = _write(tmp, "notes.txt", "a file, not a folder")
    (tmp / "exists").mkdir()
    return {
        "tmp": str(tmp), "folder": str(tmp / "folder"), "file": blocker, "exists": str(tmp / "exists"),
        "tasks": _write(tmp, "tasks.json", TASKS),
        "personas": _write(tmp, "personas.jsonl", "\n".join(json.dumps(p) for p in PERSONAS)),
        "empty_list": _write(tmp, "empty.json", []),
        "empty_jsonl": _write(tmp, "empty.jsonl", "\n\n"),
        "empty_object": _write(tmp, "golds.json", {}),
        "object": _write(tmp, "object.json", {"task": "Plan my week."}),
        "broken": _write(tmp, "broken.json", "[1, 2"),
        "not_utf8": _write_bytes(tmp, "latin1.json", b'["caf\xe9"]'),
        "twice_tasks": _write(tmp, "twice.json", ["Plan my week.", "Plan my week."]),
        "nameless": _write(tmp, "nameless.json", ["I paint.", "I run."]),
        "names_one": _write(tmp, "names.json", ["Ana"]),
        "repeated_key": _write(tmp, "repeated.jsonl", '{"name": "Bo", "text": "a", "text": "b"}\n'),
        "repeated_gold": _write(tmp, "repeated_gold.json",
                                '{"prompt-0 persona-0": ["a"], "prompt-0 persona-0": ["b"]}'),
        "bad_gold_key": _write(tmp, "bad_key.json", {"task 0 persona 0": ["a"]}),
        "changed_gold": _write(tmp, "changed.json", {"prompt-0 persona-0": ["Something else entirely."]}),
        "long_persona": _write(tmp, "long.jsonl", json.dumps({"name": "Ana", "text": LONG_PERSONA}) + "\n"),
        "long_persona_text": _write(tmp, "persona.txt", LONG_PERSONA),
        "long_gold": _write(tmp, "long_gold.json", {"prompt-0 persona-0": ["Water the tomatoes. " * 400]}),
        "bad_yaml": _write(tmp, "bad.yaml", "name: x\nseed: 0\nroles:\n  oracle: [a\n  judge: b\n"),
        "tab_yaml": _write(tmp, "tab.yaml", "name: x\n\tseed: 0\n"),
        "not_mapping_yaml": _write(tmp, "list.yaml", "- a\n- b\n"),
        "no_config": _adapter(tmp / "no-config", None, b"x" * 100),
        "no_weights": _adapter(tmp / "no-weights", LORA_CONFIG, None),
        "bad_json_config": _adapter(tmp / "bad-config", '{"peft_type": "LO', b"x" * 100),
        "not_lora": _adapter(tmp / "not-lora", "{}", b"x" * 100),
        "cut_weights": _adapter(tmp / "cut", LORA_CONFIG, b"x" * 100),
    }


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    says: str  # a regular expression the one line must match
    home: str = "none"  # none | data | run | trained
    stdin: str = ""


def case(name: str, says: str, *args: str, home: str = "none", stdin: str = "") -> Case:
    return Case(name, args, says, home, stdin)


IMPORT = ("data", "import", "--dataset", "mine", "--split", "A")
CASES = [
    # run: arguments, recipes and their settings, combinations refused before any work
    case("run-iterations-not-a-number", r"Invalid value for '--iterations'.*integer \(see `.* run --help`\)",
         "run", "--iterations", "abc"),
    case("run-iterations-zero", r"--iterations must be at least 1", "run", "--iterations", "0"),
    case("run-unknown-option", r"No such option.*--itterations", "run", "--itterations", "2"),
    case("run-unknown-recipe", r"no recipe 'nosuch'", "run", "--recipe", "nosuch"),
    case("run-recipe-bad-yaml", r"bad\.yaml is not valid YAML: line 5", "run", "--recipe", "{bad_yaml}"),
    case("run-recipe-tab-yaml", r"tab\.yaml is not valid YAML: line 2", "run", "--recipe", "{tab_yaml}"),
    case("run-recipe-not-a-mapping", r"list\.yaml must be a YAML mapping", "run", "--recipe", "{not_mapping_yaml}"),
    case("run-set-out-of-range", r"simulate\.max_turns", "run", "--set", "simulate.max_turns=0"),
    case("run-set-unknown-key", r"simulate\.nokey: unknown key", "run", "--set", "simulate.nokey=1"),
    case("run-set-unknown-section", r"nosection: unknown key", "run", "--set", "nosection.key=1"),
    case("run-set-not-key-value", r"expected section\.key=value", "run", "--set", "simulate.max_turns"),
    case("run-set-bad-yaml", r"is not valid YAML: line 1", "run", "--set", "data.tasks={A: 1"),
    case("run-set-wrong-type", r"simulate\.temperature: Input should be a valid number", "run", "--set", "simulate.temperature=hot"),
    case("run-unknown-method", r"train\.method: no training method 'nosuch': the registered ones are dpo, ",
         "run", "--set", "train.method=nosuch"),
    case("run-rloo-without-its-settings", r"train\.method rloo needs", "run", "--set", "train.method=rloo"),
    case("run-per-turn-without-policy-gradient", r"reward\.per_turn", "run", "--set", "reward.per_turn=true"),
    case("run-question-cost-without-policy-turns", r"question_cost needs simulate\.turns",
         "run", "--set", "reward.question_cost=1"),
    case("run-dpo-with-unsloth", r"train\.method dpo trains with peft, not Unsloth", "run", "--set", "train.method=dpo",
         "--set", "train.backend=unsloth"),
    case("run-compare-judge-short-budget", r"judge\.max_tokens 50", "run", "--set", "judge.template=compare",
         "--set", "judge.read=last_line", "--set", "judge.max_tokens=50"),
    # status
    case("status-no-store", r"no stargate-lite store in", "status"),
    case("status-unknown-run", r"no run 'nope'", "status", "--run", "nope", home="data"),
    case("status-unknown-option", r"No such option", "status", "--jsn"),
    # eval
    case("eval-no-store", r"no stargate-lite store in", "eval"),
    case("eval-unknown-run", r"no run 'nope'", "eval", "--run", "nope", home="run"),
    case("eval-unknown-roleplayer", r"--roleplayer 'nope' is not a chat model of run tiny", "eval", "--roleplayer", "nope", home="trained"),
    case("eval-unknown-judge", r"--judge 'nope' is not a chat model of run tiny", "eval", "--judge", "nope", home="trained"),
    case("eval-unknown-responder", r"--responder 'nope' is not a responder", "eval", "--responder", "nope", home="trained"),
    case("eval-untrained-iteration", r"no trained iteration 7", "eval", "--iteration", "7", home="trained"),
    case("eval-iteration-not-a-number", r"Invalid value for '--iteration'.*valid integer", "eval", "--iteration", "one"),
    case("eval-set-a-training-setting", r"--set train\.epochs: a stored run's evaluation can change only", "eval", "--set", "train.epochs=3", home="trained"),
    case("eval-set-bad-judge-template", r"judge\.template: not a shipped template", "eval", "--set", "judge.template=nope", home="trained"),
    # report
    case("report-no-store", r"no stargate-lite store in", "report"),
    case("report-unknown-run", r"no run 'nope'", "report", "--run", "nope", home="run"),
    case("report-unknown-roleplayer", r"--roleplayer 'nope' is not a chat model", "report", "--roleplayer", "nope",
         home="run"),
    case("report-unknown-judge", r"--judge 'nope' is not a chat model", "report", "--judge", "nope", home="run"),
    case("report-unknown-responder", r"--responder 'nope' is not a responder", "report", "--responder", "nope",
         home="run"),
    # probe
    case("probe-no-store", r"no stargate-lite store in", "probe"),
    case("probe-no-run", r"no runs in .*: start one with `stargate-lite run`", "probe", home="data"),
    case("probe-unknown-run", r"no run 'nope'", "probe", "--run", "nope", home="run"),
    case("probe-unknown-split", r"--tasks C=3: unknown split 'C'", "probe", "--tasks", "C=3", home="trained"),
    case("probe-split-size-not-a-number", r"--personas A=two: expected SPLIT=N", "probe", "--personas", "A=two",
         home="trained"),
    case("probe-split-size-zero", r"--tasks test=0: the probe needs at least one", "probe", "--tasks", "test=0",
         home="trained"),
    case("probe-no-conversations", r"at least one conversation per pair", "probe", "--conversations", "0",
         home="trained"),
    case("probe-unknown-roleplayer", r"--roleplayer 'nope' is not a chat model of run tiny", "probe",
         "--roleplayer", "nope", home="trained"),
    case("probe-untrained-iteration", r"no trained iteration 7", "probe", "--iteration", "7", home="trained"),
    case("probe-q0-from-unknown-run", r"no run 'nope'", "probe", "--q0-from", "nope", home="trained"),
    case("probe-plot-in-no-folder", r"--plot .*: there is no folder", "probe", "--plot", "{tmp}/nope/gains.png",
         home="trained"),
    # chat
    case("chat-no-store", r"no stargate-lite store in", "chat"),
    case("chat-negative-questions", r"--max-questions -1", "chat", "--base", "--max-questions", "-1",
         stdin="Plan my week.\n"),
    case("chat-persona-without-task", r"both --persona and --task", "chat", "--persona", "I'm ANA."),
    case("chat-task-without-persona", r"both --persona and --task", "chat", "--task", "Plan my week."),
    case("chat-adapter-missing", r"does-not-exist does not exist", "chat", "--adapter", "{tmp}/does-not-exist"),
    case("chat-adapter-without-config", r"no adapter_config\.json", "chat", "--adapter", "{no_config}"),
    case("chat-adapter-without-weights", r"no adapter weights", "chat", "--adapter", "{no_weights}"),
    case("chat-adapter-config-not-json", r"adapter_config\.json is not valid JSON", "chat", "--adapter",
         "{bad_json_config}"),
    case("chat-adapter-not-lora", r"not a LoRA adapter", "chat", "--adapter", "{not_lora}"),
    case("chat-adapter-weights-damaged", r"cannot be read", "chat", "--adapter", "{cut_weights}"),
    case("chat-unknown-run", r"no run 'nope'", "chat", "--run", "nope", home="run"),
    case("chat-untrained-run", r"run tiny has no trained adapter yet", "chat", home="run"),
    case("chat-untrained-iteration", r"no trained iteration 4", "chat", "--iteration", "4", home="trained"),
    case("chat-persona-too-long", r"--persona: the persona is [\d,]+ tokens, over the", "chat", "--base", "--persona", "{long_persona_text}",
         "--task", "Plan my week.", home="data"),
    # export
    case("export-no-destination", r"give one of --out .* or --data", "export", home="trained"),
    case("export-no-store", r"no stargate-lite store in", "export", "--out", "{tmp}/merged"),
    case("export-out-under-a-file", r"notes\.txt is a file, so --out", "export", "--out", "{file}/model", home="trained"),
    case("export-out-exists", r"exists: choose a new --out folder", "export", "--out", "{exists}", home="trained"),
    case("export-data-under-a-file", r"notes\.txt is a file, so --data", "export", "--data", "{file}/records", home="run"),
    case("export-data-exists", r"exists: choose a new --data folder", "export", "--data", "{exists}", home="run"),
    case("export-unknown-run", r"no run 'nope'", "export", "--out", "{tmp}/merged", "--run", "nope", home="run"),
    case("export-untrained-run", r"run tiny has no trained adapter yet", "export", "--out", "{tmp}/merged", home="run"),
    # browse
    case("browse-no-store", r"no stargate-lite store in", "browse"),
    case("browse-port-too-large", r"--port 70000 is not a port", "browse", "--port", "70000"),
    case("browse-port-negative", r"--port -1 is not a port", "browse", "--port", "-1"),
    case("browse-port-zero", r"--port 0 is not a port", "browse", "--port", "0"),
    case("browse-port-not-a-number", r"Invalid value for '--port'.*valid integer", "browse", "--port", "http"),
    case("browse-port-busy", r"port {busy_port} on 127\.0\.0\.1 is in use", "browse", "--port", "{busy_port}",
         home="data"),
    # data import
    case("import-no-file", r"nothing to import", *IMPORT),
    case("import-names-alone", r"nothing to import", *IMPORT, "--names", "{names_one}"),
    case("import-unknown-split", r"unknown split 'C'", "data", "import", "--dataset", "mine", "--split", "C",
         "--tasks", "{tasks}"),
    case("import-builtin-dataset", r"'builtin' is the package's own", "data", "import", "--dataset", "builtin",
         "--split", "A", "--tasks", "{tasks}"),
    case("import-missing-file", r"does not exist", *IMPORT, "--tasks", "{tmp}/nope.json"),
    case("import-folder-for-a-file", r"is a folder, not a file", *IMPORT, "--tasks", "{folder}"),
    case("import-broken-json", r"not valid JSON", *IMPORT, "--tasks", "{broken}"),
    case("import-not-utf8", r"not UTF-8", *IMPORT, "--tasks", "{not_utf8}"),
    case("import-tasks-not-a-list", r"must hold a JSON list", *IMPORT, "--tasks", "{object}"),
    case("import-empty-tasks", r"holds no tasks", *IMPORT, "--tasks", "{empty_list}"),
    case("import-empty-jsonl", r"holds no tasks", *IMPORT, "--tasks", "{empty_jsonl}"),
    case("import-empty-personas", r"holds no personas", *IMPORT, "--personas", "{empty_jsonl}"),
    case("import-empty-golds", r"holds no gold responses", *IMPORT, "--golds", "{empty_object}"),
    case("import-repeated-task", r"repeats 1 task", *IMPORT, "--tasks", "{twice_tasks}"),
    case("import-personas-without-names", r"needs a name", *IMPORT, "--personas", "{nameless}"),
    case("import-names-count", r"has 2 personas but .* has 1 names", *IMPORT, "--personas", "{nameless}",
         "--names", "{names_one}"),
    case("import-repeated-key-jsonl", r"repeated\.jsonl:1 repeats the key 'text'", *IMPORT, "--personas",
         "{repeated_key}"),
    case("import-repeated-key-golds", r"repeats the key 'prompt-0 persona-0'", *IMPORT, "--tasks", "{tasks}",
         "--golds", "{repeated_gold}"),
    case("import-bad-gold-key", r"'task 0 persona 0' is not of the form", *IMPORT, "--tasks", "{tasks}", "--golds", "{bad_gold_key}"),
    case("import-persona-too-long", r"long\.jsonl item 1 \(Ana\): the persona is [\d,]+ tokens, over the", *IMPORT, "--personas", "{long_persona}"),
    case("import-gold-too-long", r"train\.max_length", *IMPORT, "--tasks", "{tasks}", "--golds", "{long_gold}"),
    case("import-changed-gold", r"already has a different gold response", *IMPORT, "--golds", "{changed_gold}",
         home="data"),
    case("import-unknown-recipe", r"no recipe 'nosuch'", *IMPORT, "--tasks", "{tasks}", "--recipe", "nosuch"),
    # data show, recipes
    case("data-show-no-store", r"no stargate-lite store in", "data", "show"),
    case("data-unknown-subcommand", r"No such command 'shw'", "data", "shw"),
    case("recipe-unknown", r"no recipe 'nosuch'", "recipe", "show", "nosuch"),
    case("recipe-bad-yaml", r"bad\.yaml is not valid YAML: line 5, column 8", "recipe", "show", "{bad_yaml}"),
    case("recipe-set-bad-yaml", r"'data\.tasks=\{A: 1' is not valid YAML", "recipe", "show", "tiny", "--set",
         "data.tasks={A: 1"),
    case("recipe-set-unknown-key", r"train\.nokey: unknown key", "recipe", "show", "tiny", "--set", "train.nokey=1"),
    case("unknown-command", r"No such command 'rn'", "rn"),
]


def _filled(text: str, values: dict[str, str]) -> str:
    """{NAME} replaced by the input of that name; other braces (a YAML value's) left as they are."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], m[0]), text)


@pytest.fixture(scope="module")
def homes(tmp_path_factory, questioner) -> dict[str, Path]:
    """The homes a case may meet, made once: data alone (split A of a data set `mine`, golds included), a run's
    record beside it, and a run with one trained iteration (a fresh LoRA saved where training saves it)."""
    from stargate_lite.stages.data import import_data
    from stargate_lite.store import Store

    root = tmp_path_factory.mktemp("bad-input-homes")
    inputs = root / "inputs"
    inputs.mkdir()
    data = root / "data"
    import_data(Store(data), "mine", "A", Path(_write(inputs, "tasks.json", TASKS)),
                Path(_write(inputs, "personas.jsonl", "\n".join(json.dumps(p) for p in PERSONAS))), None,
                Path(_write(inputs, "golds.json", GOLDS)))
    run = run_home(copy_home(data, root / "run"))
    trained = copy_home(data, root / "trained")
    trained_home(trained, questioner)
    return {"data": data, "run": run, "trained": trained}


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(bad: Case, homes, tmp_path):
    home = copy_home(homes[bad.home], tmp_path / "home") if bad.home != "none" else tmp_path / "home"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    values = _files(inputs)
    with socket.socket() as busy:  # a port another server holds, for the case that needs one
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values["busy_port"] = str(busy.getsockname()[1])
        before = files(home) if home.exists() else None
        result = cli(*(_filled(a, values) for a in bad.args), home=home, stdin=bad.stdin, refused=True)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-3000:]
    assert re.search(_filled(bad.says, values), lines[0]), lines[0]
    assert (files(home) if home.exists() else None) == before, "the home changed"


def test_the_cases_cover_every_command_and_are_many():
    """Issue 46's measure: at least 60 inputs, and every command (and the command group) met by some."""
    from stargate_lite.cli import app, data_app, recipe_app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands} | \
        {f"data {c.name}" for c in data_app.registered_commands} | \
        {f"recipe {c.name}" for c in recipe_app.registered_commands}
    met = {" ".join(c.args[:2]) if c.args[0] in ("data", "recipe") else c.args[0] for c in CASES}
    assert len(CASES) >= 60
    assert commands - met <= {"recipe list"}, commands - met  # `recipe list` takes no input to get wrong
