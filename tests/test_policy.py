"""The label config and the emoji policy."""
import pytest

from emoreact.heads import ConfigError, emoji_policy, parse_label_config


def test_sad_allows_and_blocks_what_the_user_specified(label_config):
    allowed, blocked = emoji_policy(["sad"], label_config)
    assert allowed == ["😢", "😐", "💔", "🤍", "🙏"]
    assert blocked == ["😂", "😆", "😎", "🎉"]


def test_two_labels_union_their_allowed_minus_anything_blocked(label_config):
    allowed, blocked = emoji_policy(["happy", "sad"], label_config)
    assert "😂" not in allowed and "🎉" not in allowed  # sad blocks them
    assert "😢" not in allowed  # happy blocks it
    assert "🥳" in allowed and "🤍" in allowed and "🙏" in allowed
    assert set(blocked) >= {"😂", "😆", "😎", "🎉", "😢", "😭"}
    surprise_happy, _ = emoji_policy(["happy", "surprise"], label_config)
    assert surprise_happy[:2] == ["😀", "😄"] and "😮" in surprise_happy


def test_default_config_has_the_eight_labels(label_config):
    assert label_config.names == ["happy", "sad", "angry", "fear", "surprise", "disgust", "neutral", "other"]
    assert "a photo of a sad looking face." in label_config.prompts("sad")


GOOD = """
[prompts]
templates = ["a {} photo"]

[labels.happy]
names = ["happy"]
allowed = ["😀"]
blocked = []
"""


@pytest.mark.parametrize("text, message", [
    (GOOD.replace('allowed = ["😀"]', 'allowed = []'), "line 7: label 'happy' has no allowed emojis"),
    (GOOD.replace('allowed = ["😀"]', 'allowed = ["smile"]'), "line 7: 'smile' in allowed of 'happy' is not a single emoji"),
    (GOOD.replace("blocked = []", 'blocked = ["😀"]'), "line 8: 😀 is both allowed and blocked"),
    (GOOD.replace('"a {} photo"', '"a photo"'), "line 3: templates must"),
    (GOOD + '\n[datasets.mikels]\nawe = "wonder"\n', "line 11: maps 'awe' to unknown label 'wonder'"),
    (GOOD.replace("[labels.happy]", "[labels.Happy]"), "line 5: label name 'Happy'"),
    (GOOD.replace("names =", "colour = 1\nnames ="), "line 6: unknown key 'colour'"),
    ("[labels.happy\n", "not valid TOML"),
])
def test_bad_configs_name_the_line(text, message):
    with pytest.raises(ConfigError) as info:
        parse_label_config(text, origin="labels.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("labels.toml")
