"""Errors from the Hugging Face Hub keep their cause in the one-line message: a local HTTP server speaks the Hub's
error protocol (status and X-Error-Code, as huggingface.co answers), and huggingface_hub's real client reads it."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
from conftest import QuietHandler, serve

from stargate_lite.engines.models import resolve_gguf
from stargate_lite.errors import StargateError

ANSWERS = {  # repo -> (status, X-Error-Code)
    "org/gated": (403, "GatedRepo"),
    "org/missing": (401, "RepoNotFound"),
    "org/repo": (404, "EntryNotFound"),
}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    class Handler(QuietHandler):
        def do_HEAD(self):
            repo = "/".join(self.path.strip("/").split("/")[:2])
            status, code = ANSWERS[repo]
            self.send(status, b"", {"X-Error-Code": code, "X-Error-Message": f"{code} for {repo}"})

        do_GET = do_HEAD

    server, endpoint = serve(Handler)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    yield
    server.shutdown()


@pytest.mark.parametrize("repo, says", [
    ("org/gated", "a gated repo on the Hugging Face Hub: accept its terms"),
    ("org/missing", "no such repo on the Hugging Face Hub (or a private one"),
    ("org/repo", "the Hugging Face Hub repo has no such file: check the file name (gguf_file)"),
])
def test_hub_errors_say_what_went_wrong(fake_hub, repo, says):
    with pytest.raises(StargateError) as err:
        resolve_gguf(repo, "model.Q4_K_M.gguf")
    assert str(err.value).startswith(f"model.Q4_K_M.gguf from {repo}: {says}") and "\n" not in str(err.value)


def test_no_network_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(StargateError, match="the Hugging Face Hub cannot be reached .* not in the local cache"):
        resolve_gguf("org/repo", "model.gguf")


def test_a_hub_questioner_keeps_the_cause(fake_hub, tmp_path):
    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.recipe import QuestionerConfig

    with pytest.raises(StargateError, match="^questioner model org/gated: a gated repo on the Hugging Face Hub"):
        Questioner(QuestionerConfig(model="org/gated", device="cpu"), tmp_path)
