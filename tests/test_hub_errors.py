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


@pytest.mark.parametrize("status, says", [
    (401, "the Hub refused the token (HTTP 401): log in again (`hf auth login`) or set HF_TOKEN"),
    (403, "the token may not write there (HTTP 403)"),
    (500, "HTTP 500"),
])
def test_a_dataset_push_that_the_hub_refuses_is_one_line_and_keeps_the_folder(monkeypatch, tmp_path, status, says):
    from stargate_lite.commands.dataset import push_folder

    asked = []

    class Handler(QuietHandler):
        def do_POST(self):
            asked.append(self.path)
            self.send(status, {"error": "no"})

    server, endpoint = serve(Handler)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    folder = tmp_path / "data"
    folder.mkdir()
    try:
        with pytest.raises(StargateError) as err:
            push_folder(folder, "someone/records", private=True)
    finally:
        server.shutdown()
    assert asked and asked[0].startswith("/api/repos/create")  # the real client asked the (fake) Hub
    message = str(err.value)
    assert message.startswith("pushing to someone/records on the Hugging Face Hub failed: " + says)
    assert "\n" not in message and message.endswith(f"the dataset is in {folder}")


def test_a_dataset_push_without_a_token_says_so_before_asking_the_hub(monkeypatch, tmp_path):
    from stargate_lite.commands.dataset import push_folder

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(StargateError, match=r"^pushing to someone/records: not logged in to the Hugging Face Hub: "
                                            r"run `hf auth login` or set HF_TOKEN"):
        push_folder(tmp_path, "someone/records", private=True)
