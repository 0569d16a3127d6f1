"""The policy file: what loads, what fails at start and how, and what mode each call gets."""

from __future__ import annotations

import logging
import time
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
    Verdict,
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


@tool
def fetchPage(url: str) -> str:  # noqa: N802
    """Fetch a web page."""
    return f"<html>{url}</html>"


chargeCard.metadata = {"idempotent": True, "timeout_s": 7.0}
fetchPage.metadata = {"read_only": True, "untrusted_output": True}
TOOLS: list[BaseTool] = [*EXAMPLE_TOOLS, chargeCard, fetchPage]


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
        untrusted_output = true
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
            untrusted_output=True,
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
def test_a_missing_argument_makes_the_condition_hold(text: str) -> None:
    # Fail closed: a condition that cannot be evaluated asks, never lets the call run.
    assert Condition(text).evaluate({}) is None
    assert holds(text) is True
    assert holds(text, other=1) is True


def test_a_missing_nested_key_or_a_non_object_parent_is_missing() -> None:
    assert holds("target.host != 'x'", target={"port": 1}) is True
    assert holds("target.host != 'x'", target="db") is True
    assert holds("target.host != 'x'", target={"host": "y"}) is True  # decided: 'y' != 'x'
    assert holds("target.host != 'x'", target={"host": "x"}) is False


@pytest.mark.parametrize(
    "text",
    [
        "not n == 1",
        "not (n == 1)",
        "a == 2 and n == 1",  # `a == 2` is false: short-circuiting would decide the whole
        "n == 1 and a == 2",
        "not (a == 1 or n == 1)",
        "0 < a < n",  # a chain evaluates every link
    ],
)
def test_not_and_or_cannot_decide_a_condition_with_an_undecidable_part(text: str) -> None:
    assert Condition(text).evaluate({"a": 1}) is None
    assert holds(text, a=1) is True


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        ("amount > 100", {"amount": "5000"}),  # the tool would have coerced it to 5000
        ("n < 5", {"n": "3"}),
        ("n == 3", {"n": "3"}),
        ("n != 3", {"n": "3"}),
        ("force == True", {"force": 1}),  # a bool is not a number
        ("n > 0", {"n": True}),
        ("n >= 5", {"n": [1]}),
        ("n > 5", {"n": None}),
        ("n < 5", {"n": {"a": 1}}),
        ("n < m", {"n": [1], "m": [2]}),  # only numbers and strings are ordered
        ("n < m", {"n": False, "m": True}),
        ("'x' in n", {"n": 3}),
        ("'x' not in n", {"n": 3}),
        ("n in 'abc'", {"n": 1}),
        ("1 in n", {"n": {"1": True}}),  # an object's keys are strings
        ("startswith(n, 'x')", {"n": 123}),
        ("matches(n, '.*')", {"n": ["x"]}),
        ("n.inner == 1", {"n": [1]}),
    ],
)
def test_operands_of_different_kinds_make_the_condition_hold(
    text: str, arguments: dict[str, Any]
) -> None:
    assert Condition(text).evaluate(arguments) is None
    assert Condition(text).holds(arguments) is True


@pytest.mark.parametrize(
    ("text", "arguments", "expected"),
    [
        ("n == None", {"n": "x"}, False),
        ("n != None", {"n": 0}, True),
        ("n == None", {"n": None}, True),
        ("n in [1, 2]", {"n": "1"}, False),  # anything may be looked for in a list
        ("n not in ['a']", {"n": 3}, True),
        ("n in [1, 2]", {"n": True}, False),  # JSON's true is not 1
        ("'k' in o", {"o": {"k": 1}}, True),
        ("'z' in o", {"o": {"k": 1}}, False),
        ("x == [1, 2]", {"x": [True, 2]}, False),  # two arrays: decided, element by element
        ("n < 'b'", {"n": "a"}, True),
    ],
)
def test_null_tests_and_list_membership_are_always_decidable(
    text: str, arguments: dict[str, Any], expected: bool
) -> None:
    assert Condition(text).evaluate(arguments) is expected


def test_names_are_only_ever_the_calls_arguments() -> None:
    # `open` and `len` here are argument names, not Python's builtins.
    assert holds("open == 1 and len == 'x'", open=1, len="x") is True
    assert holds("open == 1", open=2) is False


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


def test_a_regex_runs_in_linear_time_on_an_argument_built_to_defeat_backtracking() -> None:
    condition = Condition("matches(text, '(a+)+$')")
    assert condition.holds({"text": "aaa"}) is True
    hostile = {"text": "a" * 5000 + "!"}
    started = time.perf_counter()
    assert condition.holds(hostile) is False
    # Python's `re` took 6 s on 28 characters of this; RE2 does not backtrack.
    assert time.perf_counter() - started < 0.5


def test_a_regex_re2_cannot_run_is_refused_at_load_naming_file_tool_and_field(
    tmp_path: Path,
) -> None:
    path = write_policy(
        tmp_path,
        r"""
        [tools.getStringLength]
        ask_when = ["text == 'x'", '''matches(text, r'(\w+) \1')''', "matches(text, 'a(?=b)')"]
        """,
    )
    backreference, lookahead = load_error(path).splitlines()
    assert backreference.startswith(f"{path}: {GET_LENGTH}[1]'")
    assert "bad regex" in backreference and "no backreferences" in backreference
    assert lookahead.startswith(f"{path}: {GET_LENGTH}[2]'") and "bad regex" in lookahead


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


# Verdicts: the mode and why


def test_a_verdict_says_why_a_call_got_its_mode() -> None:
    policy = Policy(
        tools={
            "writeNote": ToolRule(mode=ASK),
            "forbiddenTool": ToolRule(mode=DENY),
            "chargeCard": ToolRule(mode=AUTO, ask_when=[Condition("amount > 100")]),
        }
    )

    def verdict(name: str, arguments: dict[str, Any], read_only: bool = False) -> Verdict:
        found = policy.verdict(name, arguments, read_only_tool=read_only)
        assert policy.mode_for(name, arguments, read_only_tool=read_only) is found.mode
        return found

    assert verdict("writeNote", {}) == Verdict(ASK, "policy: writeNote asks")
    assert verdict("forbiddenTool", {}) == Verdict(DENY, "policy: forbiddenTool is denied")
    assert verdict("unlisted", {}) == Verdict(ASK, "policy: default rule asks")
    assert verdict("unlisted", {}, read_only=True) == Verdict(
        AUTO, "read-only: runs without asking"
    )
    assert verdict("chargeCard", {"amount": 5}) == Verdict(
        AUTO, "policy: chargeCard runs without asking"
    )
    assert verdict("chargeCard", {"amount": 500}) == Verdict(ASK, "ask_when: amount > 100")
    assert verdict("chargeCard", {"amount": "5000"}) == Verdict(
        ASK, "ask_when could not be evaluated: amount > 100 (asks)"
    )
    denying = Policy(default=ToolRule(mode=DENY))
    assert denying.verdict("x", {}, read_only_tool=False) == Verdict(
        DENY, "policy: default rule is denied"
    )


# Untrusted tool output


def test_after_untrusted_output_a_tool_that_is_not_read_only_asks() -> None:
    policy = Policy(
        tools={
            "writeNote": ToolRule(mode=AUTO),
            "lookupCapital": ToolRule(mode=AUTO, read_only=True),
            "forbiddenTool": ToolRule(mode=DENY),
            "deleteNote": ToolRule(mode=ASK),
        }
    )

    def tainted(name: str, read_only: bool = False) -> Verdict:
        return policy.verdict(name, {}, read_only_tool=read_only, untrusted_context=True)

    assert policy.verdict("writeNote", {}, read_only_tool=False).mode is AUTO
    assert tainted("writeNote") == Verdict(
        ASK, "the conversation contains untrusted tool output; writeNote is not read-only"
    )
    assert tainted("lookupCapital") == Verdict(AUTO, "policy: lookupCapital runs without asking")
    assert tainted("fetchPage", read_only=True) == Verdict(AUTO, "read-only: runs without asking")
    assert tainted("forbiddenTool") == Verdict(DENY, "policy: forbiddenTool is denied")
    assert tainted("deleteNote") == Verdict(ASK, "policy: deleteNote asks")


def test_a_rule_untrusted_output_flag_overrides_the_tools_metadata() -> None:
    plain = toolbox()
    assert plain.untrusted_output("fetchPage") and not plain.untrusted_output("writeNote")
    box = toolbox(
        fetchPage=ToolRule(untrusted_output=False), writeNote=ToolRule(untrusted_output=True)
    )
    assert not box.untrusted_output("fetchPage") and box.untrusted_output("writeNote")


def test_rules_for_tools_that_are_not_loaded_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        toolbox(dropTable=ToolRule(mode=DENY))
    assert "dropTable" in caplog.text
