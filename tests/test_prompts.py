"""Prompt shapes that chat templates and small models depend on."""

from stargate_lite.prompts import fold_system, roleplayer_messages


def test_fold_system_merges_the_system_text_into_the_first_user_turn():
    turns = [{"role": "questioner", "text": "Do you cook?"}, {"role": "roleplayer", "text": "Rarely."},
             {"role": "questioner", "text": "Why?"}]
    messages = roleplayer_messages("I'm ANA. I paint.", "Plan my week.", turns)
    folded = fold_system(messages)
    assert [m["role"] for m in folded] == ["user", "assistant", "user"]
    assert folded[0]["content"] == f"{messages[0]['content']}\n\nDo you cook?"
    assert folded[1:] == messages[2:]
    # No user turn after the system text: the system text becomes one; no system text: unchanged.
    assert fold_system(messages[:1]) == [{"role": "user", "content": messages[0]["content"]}]
    assert fold_system(messages[1:]) == messages[1:] and fold_system([]) == []
