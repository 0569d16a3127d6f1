"""The policy file: what loads, what fails at start and how, and what mode each call gets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import BaseTool, tool

from core.policy import (
    Condition,
    ConditionError,
    Policy,
    PolicyError,
    ToolRule,
    policy_from_settings,
)
from core.settings import PolicyMode, Settings
from core.tools import ToolBox
from examples.tools import TOOLS as EXAMPLE_TOOLS

EXAMPLE_POLICY = Path(__file__).parent.parent / "examples" / "policy.toml"
AUTO, ASK, DENY = PolicyMode.AUTO, PolicyMode.ASK, PolicyMode.DENY


@tool
def chargeCard(amount: float) -> str:  # noqa: N802 - tool names are the model's vocabulary
    """Charge a card."""
    return f"charged {amount}"


chargeCard.metadata = {"idempotent": True, "timeout_s": 7.0}
TOOLS: list[BaseTool] = [*EXAMPLE_TOOLS, chargeCard]


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(PolicyError) as caught:
        Policy.load(path)
    return str(caught.value)


# Loading


def test_a_valid_file_sets_every_field(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        """
        [default]
        mode = "deny"
        approvers = ["admin"]

        [tools.chargeCard]
        mode = "auto"
        ask_when = ["amount > 100"]
        editable = false
        idempotent = false
        read_only = false
        timeout_s = 2
        approvers = ["finance", "admin"]
        """,
    )
    policy = Policy.load(path)
    assert policy.default == ToolRule(mode=DENY, approvers=["admin"])
    assert policy.tools == {
        "chargeCard": ToolRule(
            mode=AUTO,
            ask_when=[Condition("amount > 100")],
            editable=False,
            idempotent=False,
            read_only=False,
            timeout_s=2.0,
            approvers=["finance", "admin"],
        )
    }


def test_the_example_policy_gives_the_documented_behaviour() -> None:
    toolbox = ToolBox(EXAMPLE_TOOLS, Policy.load(EXAMPLE_POLICY))
    assert toolbox.mode_for("lookupCapital", {"country": "Kenya"}) is AUTO
    assert toolbox.mode_for("getStringLength", {"text": "hello"}) is AUTO
    assert toolbox.mode_for("getStringLength", {"text": "secret plans"}) is ASK
    assert toolbox.mode_for("getStringLength", {"text": "my API_KEY is x"}) is ASK
    assert toolbox.mode_for("writeNote", {"name": "a", "content": "b"}) is ASK
    assert toolbox.mode_for("deleteNote", {"name": "a"}) is ASK
    assert toolbox.approvers("deleteNote") == ["admin"] and not toolbox.editable("deleteNote")
    assert toolbox.approvers("writeNote") == ["approver", "admin"] and toolbox.editable("writeNote")


WRITE_NOTE = "tool 'writeNote', field"
GET_LENGTH = "tool 'getStringLength', field 'ask_when"


@pytest.mark.parametrize(
    ("text", "where", "detail"),
    [
        ('[tools.writeNote]\ncolour = "red"', f"{WRITE_NOTE} 'colour'", "unknown field"),
        ('[tools.writeNote]\nmode = "maybe"', f"{WRITE_NOTE} 'mode'", "'auto', 'ask' or 'deny'"),
        ("[tools.writeNote]\ntimeout_s = 0", f"{WRITE_NOTE} 'timeout_s'", "greater than 0"),
        ('[tools.writeNote]\ntimeout_s = "5"', f"{WRITE_NOTE} 'timeout_s'", "valid number"),
        ('[tools.writeNote]\neditable = "no"', f"{WRITE_NOTE} 'editable'", "valid boolean"),
        ("[tools.writeNote]\napprovers = []", f"{WRITE_NOTE} 'approvers'", "at least 1 item"),
        ("[tools.writeNote]\nask_when = [1]", f"{WRITE_NOTE} 'ask_when[0]'", "is a string"),
        ('[tools]\nwriteNote = "ask"', "tool 'writeNote':", "valid dictionary"),
        ('[tool.writeNote]\nmode = "ask"', "top level, field 'tool'", "unknown field"),
        ('[default]\nmode = "never"', "[default], field 'mode'", "'auto', 'ask' or 'deny'"),
        ("[default]\nask = true", "[default], field 'ask'", "unknown field"),
        ('[tools.getStringLength]\nask_when = ["text =="]',
         f"{GET_LENGTH}[0]'", "condition 'text ==' is not valid syntax"),
        ('[tools.getStringLength]\nask_when = ["text == 1", "matches(text, \'(\')"]',
         f"{GET_LENGTH}[1]'", "bad regex"),
        ('[tools.getStringLength]\nask_when = ["open(text) == 1"]',
         f"{GET_LENGTH}[0]'", "at 'open(text)': only startswith() and matches()"),
        ('[tools.deleteNote]\nmode = "deny"\nask_when = ["name == \'x\'"]',
         "tool 'deleteNote', field 'ask_when'", "no effect with mode 'deny'"),
    ],
)  # fmt: skip
def test_each_invalid_file_fails_naming_file_tool_and_field(
    tmp_path: Path, text: str, where: str, detail: str
) -> None:
    path = write_policy(tmp_path, text)
    message = load_error(path)
    assert message.startswith(f"{path}: ") and where in message and detail in message


def test_every_problem_of_a_file_is_reported_each_on_its_own_line(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "[tools.a]\ntimeout_s = -1\n[tools.b]\nmode = 'maybe'\n")
    lines = load_error(path).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}: ") for line in lines)
    assert "tool 'a', field 'timeout_s'" in lines[0] and "tool 'b', field 'mode'" in lines[1]


def test_a_file_that_is_not_toml_fails_naming_the_file(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "[tools.writeNote\nmode = ask")
    message = load_error(path)
    assert message.startswith(f"{path}: not valid TOML")


def test_a_missing_file_fails_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert load_error(path).startswith(f"{path}: cannot read the policy file")


# The condition language


def holds(text: str, **arguments: Any) -> bool:
    return Condition(text).holds(arguments)


@pytest.mark.parametrize(
    ("text", "arguments", "expected"),
    [
        ("n == 3", {"n": 3}, True),
        ("n == 3", {"n": 4}, False),
        ("name != 'a'", {"name": "b"}, True),
        ("name != 'a'", {"name": "a"}, False),
        ("n < 3", {"n": 2}, True),
        ("n < 3", {"n": 3}, False),
        ("n <= 3", {"n": 3}, True),
        ("n > 2.5", {"n": 3}, True),
        ("n >= -1", {"n": -1}, True),
        ("n >= -1", {"n": -2}, False),
        ("0 < n <= 10", {"n": 10}, True),
        ("0 < n <= 10", {"n": 11}, False),
        ("env in ['prod', 'staging']", {"env": "prod"}, True),
        ("env in ('prod', 'staging')", {"env": "dev"}, False),
        ("env not in ['dev']", {"env": "prod"}, True),
        ("env not in ['dev']", {"env": "dev"}, False),
        ("'rm' in command", {"command": "sudo rm -rf"}, True),
        ("'admin' in roles", {"roles": ["user", "admin"]}, True),
        ("force == True", {"force": True}, True),
        ("force == False", {"force": True}, False),
        ("force", {"force": True}, True),
        ("force", {"force": False}, False),
        ("owner == None", {"owner": None}, True),
        ("a == 1 and b == 2", {"a": 1, "b": 2}, True),
        ("a == 1 and b == 2", {"a": 1, "b": 3}, False),
        ("a == 1 or b == 2", {"a": 0, "b": 2}, True),
        ("a == 1 or b == 2", {"a": 0, "b": 0}, False),
        ("not a == 1", {"a": 2}, True),
        ("not (a == 1 or b == 2)", {"a": 1, "b": 0}, False),
        ("target.host == 'db'", {"target": {"host": "db"}}, True),
        ("target.host.name == 'db'", {"target": {"host": {"name": "db"}}}, True),
        ("startswith(path, '/etc/')", {"path": "/etc/passwd"}, True),
        ("startswith(path, '/etc/')", {"path": "/home/etc/"}, False),
        ("matches(text, '(?i)password')", {"text": "my PassWord"}, True),
        ("matches(text, '^[0-9]+$')", {"text": "12a"}, False),
        ("matches(text, r'^\\d+\\.\\d+$')", {"text": "1.5"}, True),
        ("matches(target.host, 'prod')", {"target": {"host": "db.prod"}}, True),
    ],
)
def test_each_construct_evaluates_like_python(
    text: str, arguments: dict[str, Any], expected: bool
) -> None:
    assert Condition(text).holds(arguments) is expected


@pytest.mark.parametrize(
    "text",
    [
        "n == 1",
        "n != 1",
        "n < 1",
        "n <= 1",
        "n > 1",
        "n >= 1",
        "n in [1]",
        "n not in [1]",
        "'x' in n",
        "'x' not in n",
        "n",
        "startswith(n, 'x')",
        "matches(n, '.*')",
        "n.inner == 1",
        "n.inner != 1",
    ],
)
def test_a_missing_argument_makes_the_test_false(text: str) -> None:
    assert holds(text) is False
    assert holds(text, other=1) is False


def test_a_missing_nested_key_or_a_non_object_parent_is_missing() -> None:
    assert holds("target.host != 'x'", target={"port": 1}) is False
    assert holds("target.host != 'x'", target="db") is False


def test_not_negates_a_comparison_that_is_false_for_a_missing_argument() -> None:
    assert holds("not n == 1") is True


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        ("n < 5", {"n": "3"}),
        ("n >= 5", {"n": [1]}),
        ("n > 5", {"n": None}),
        ("n < 5", {"n": {"a": 1}}),
        ("'x' in n", {"n": 3}),
        ("'x' not in n", {"n": 3}),
        ("n in 'abc'", {"n": 1}),
        ("startswith(n, 'x')", {"n": 123}),
        ("matches(n, '.*')", {"n": ["x"]}),
        ("n.inner == 1", {"n": [1]}),
    ],
)
def test_a_type_mismatch_makes_the_test_false_without_raising(
    text: str, arguments: dict[str, Any]
) -> None:
    assert Condition(text).holds(arguments) is False


def test_names_are_only_ever_the_calls_arguments() -> None:
    # `open` and `len` here are argument names, not Python's builtins.
    assert holds("open == 1 and len == 'x'", open=1, len="x") is True
    assert holds("open == 1") is False


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("__import__('os')", "only startswith() and matches() may be called"),
        ("open('x')", "only startswith() and matches() may be called"),
        ("len(text) > 3", "only startswith() and matches() may be called"),
        ("text.startswith('a')", "only startswith() and matches() may be called"),
        ("x.__class__", "'__' are not allowed"),
        ("x.__class__.__name__ == 'str'", "'__' are not allowed"),
        ("__builtins__", "'__' are not allowed"),
        ("lambda: 1", "not allowed"),
        ("[y for y in x]", "not allowed"),
        ("x[0] == 1", "not allowed"),
        ("x if y else z", "not allowed"),
        ("x + 1 > 2", "not allowed"),
        ("(x := 1)", "not allowed"),
        ("f'{x}' == 'a'", "not allowed"),
        ("x == {'a': 1}", "not allowed"),
        ("x == [[1]]", "not allowed"),
        ("x == -True", "not allowed"),
        ("x is None", "'is' is not allowed"),
        ("force == true", "write the constants True, False and None capitalised"),
        ("owner != null", "write the constants True, False and None capitalised"),
        ("startswith(x, y)", "write startswith(argument_name, 'text')"),
        ("startswith(x, prefix='a')", "write startswith(argument_name, 'text')"),
        ("matches(x, 'a' * 3)", "write matches(argument_name, 'text')"),
        ("matches(x, 'a', 'b')", "write matches(argument_name, 'text')"),
        ("matches('abc', 'a')", "expected an argument name"),
        ("matches(x, '[a')", "bad regex"),
        ("x == ", "not valid syntax"),
        ("x == 1; y", "not valid syntax"),
        ("matches(x, '\\d')", "write regexes as r'...'"),
    ],
)
def test_constructs_outside_the_language_are_rejected_at_load(text: str, mentions: str) -> None:
    with pytest.raises(ConditionError) as caught:
        Condition(text)
    message = str(caught.value)
    assert message.startswith(f"condition {text!r}") and mentions in message


def test_a_regex_may_be_at_most_200_characters() -> None:
    assert Condition(f"matches(x, '{'a' * 200}')").holds({"x": "a" * 200}) is True
    with pytest.raises(ConditionError, match="longer than 200"):
        Condition(f"matches(x, '{'a' * 201}')")


# Mode resolution


def toolbox(**rules: ToolRule) -> ToolBox:
    return ToolBox(TOOLS, Policy(tools=rules))


def test_an_unlisted_tool_asks_and_an_unlisted_read_only_tool_runs() -> None:
    box = toolbox()
    assert box.mode_for("writeNote", {"name": "a", "content": "b"}) is ASK
    assert box.mode_for("lookupCapital", {"country": "Kenya"}) is AUTO  # metadata read_only


def test_the_default_rule_mode_applies_to_unlisted_tools_that_are_not_read_only() -> None:
    box = ToolBox(TOOLS, Policy(default=ToolRule(mode=DENY)))
    assert box.mode_for("writeNote") is DENY
    assert box.mode_for("lookupCapital") is AUTO


def test_a_rule_read_only_flag_overrides_the_tools_metadata() -> None:
    box = toolbox(writeNote=ToolRule(read_only=True), lookupCapital=ToolRule(read_only=False))
    assert box.mode_for("writeNote") is AUTO
    assert box.mode_for("lookupCapital") is ASK


def test_an_explicit_mode_beats_read_only() -> None:
    box = toolbox(lookupCapital=ToolRule(mode=DENY))
    assert box.mode_for("lookupCapital", {"country": "Kenya"}) is DENY


def test_ask_when_turns_an_auto_call_into_ask_only_when_a_condition_holds() -> None:
    rule = ToolRule(mode=AUTO, ask_when=[Condition("amount > 100"), Condition("currency != 'EUR'")])
    box = toolbox(chargeCard=rule)
    assert box.mode_for("chargeCard", {"amount": 50, "currency": "EUR"}) is AUTO
    assert box.mode_for("chargeCard", {"amount": 500, "currency": "EUR"}) is ASK
    assert box.mode_for("chargeCard", {"amount": 50, "currency": "USD"}) is ASK


def test_ask_when_applies_to_a_read_only_tool_that_is_auto_by_default() -> None:
    box = toolbox(lookupCapital=ToolRule(ask_when=[Condition("country == 'Atlantis'")]))
    assert box.mode_for("lookupCapital", {"country": "Kenya"}) is AUTO
    assert box.mode_for("lookupCapital", {"country": "Atlantis"}) is ASK


def test_the_tool_policy_map_becomes_rules_with_the_default_rules_other_fields() -> None:
    policy = Policy(default=ToolRule(approvers=["admin"])).with_modes({"writeNote": AUTO})
    box = ToolBox(TOOLS, policy)
    assert box.mode_for("writeNote") is AUTO and box.approvers("writeNote") == ["admin"]
    from_map = ToolBox(TOOLS, Policy.from_modes({"lookupCapital": ASK}))
    assert from_map.mode_for("lookupCapital") is ASK


def test_the_policy_file_wins_over_tool_policy_which_fills_in_unlisted_tools(
    tmp_path: Path,
) -> None:
    path = write_policy(tmp_path, '[tools.writeNote]\nmode = "deny"\n')
    settings = Settings(
        policy_file=path,
        tool_policy={"writeNote": AUTO, "deleteNote": DENY},
    )
    box = ToolBox(TOOLS, policy_from_settings(settings))
    assert box.mode_for("writeNote") is DENY
    assert box.mode_for("deleteNote") is DENY
    assert box.mode_for("getStringLength") is ASK


def test_without_a_policy_file_tool_policy_alone_decides() -> None:
    settings = Settings(policy_file=None, tool_policy={"getStringLength": AUTO})
    box = ToolBox(TOOLS, policy_from_settings(settings))
    assert box.mode_for("getStringLength") is AUTO and box.mode_for("writeNote") is ASK


def test_rule_idempotent_and_timeout_override_the_tools_metadata() -> None:
    box = toolbox(chargeCard=ToolRule(idempotent=False, timeout_s=2.5))
    assert not box.idempotent("chargeCard") and box.timeout_s("chargeCard", 30.0) == 2.5
    plain = toolbox()
    assert plain.idempotent("chargeCard") and plain.timeout_s("chargeCard", 30.0) == 7.0
    assert not plain.idempotent("writeNote") and plain.timeout_s("writeNote", 30.0) == 30.0
    assert not plain.idempotent("noSuchTool")


def test_rules_for_tools_that_are_not_loaded_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        toolbox(dropTable=ToolRule(mode=DENY))
    assert "dropTable" in caplog.text
