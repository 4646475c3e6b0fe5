"""python -m geneve.appliance: every bad flag, environment variable or --rules is one line, exit 2.

These fail before any socket opens, so they need no network namespace.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from geneve import appliance
from geneve._appliance import Appliance, ApplianceError
from geneve._loader import RulesError, load_modifier


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["--port", "0"], {}, "--port"),
        (["--port", "abc"], {}, "--port"),
        ([], {"GENEVE_PORT": "abc"}, "--port"),
        (["--workers", "0"], {}, "--workers"),
        (["--batch", "0"], {}, "--batch"),
        (["--on-error", "bogus"], {}, "--on-error"),
        ([], {"GENEVE_ON_ERROR": "bogus"}, "GENEVE_ON_ERROR"),
        ([], {"GENEVE_LOG_LEVEL": "bogus"}, "GENEVE_LOG_LEVEL"),
        ([], {"GENEVE_RECEIVE": "tcp"}, "GENEVE_RECEIVE"),
        ([], {"GENEVE_FAST_PATH": "maybe"}, "GENEVE_FAST_PATH"),
        (["--max-inner-length", "1099511627776"], {}, "--max-inner-length"),
        (["--max-inner-length", "65468"], {}, "--max-inner-length"),
        (["--no-such-flag"], {}, "--no-such-flag"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    argv: list[str],
    env: dict[str, str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the setting got past the checks: the appliance was made")

    monkeypatch.setattr(appliance, "Appliance", started)
    assert appliance.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("geneve.appliance: ") and says in err


@pytest.mark.parametrize(
    ("value", "on"), [("off", False), ("False", False), ("0", False), ("yes", True)]
)
def test_fast_path_switch_spellings(value: str, on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENEVE_FAST_PATH", value)
    assert appliance._parse([]).fast_path is on
    assert appliance._parse(["--no-fast-path"]).fast_path is False


def test_max_inner_length_is_bounded_in_the_class_too() -> None:
    for bad in (0, 0xFFFF - 67, 1 << 40):
        with pytest.raises(ApplianceError):
            Appliance(lambda p: None, max_inner_length=bad)


@pytest.mark.parametrize(
    ("source", "spec"),
    [
        ("raise KeyboardInterrupt\n", "qa_kbd:modifier"),
        ("import sys\nsys.exit(7)\n", "qa_exit:modifier"),
        ("raise ValueError('broken rules')\n", "qa_value:modifier"),
        (
            "class W:\n    def __getattr__(self, name):\n        raise ValueError(name)\nw = W()\n",
            "qa_getattr:w.x",
        ),
    ],
)
def test_rules_that_fail_to_load_are_a_rules_error(
    source: str, spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = spec.split(":")[0]
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RulesError) as caught:
        load_modifier(spec)
    assert "\n" not in str(caught.value) and "--rules" in str(caught.value)
