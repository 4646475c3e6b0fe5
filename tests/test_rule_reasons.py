"""Drops with reasons of the modifier's own (Verdict.drop) and its own counters (geneve.count)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.frames import flow_frame

import geneve
from geneve import Packet, Pipeline, Verdict
from geneve._pipeline import _RULE_COUNTERS, MAX_RULE_REASONS
from geneve.rules import chain

POLICY_X = Verdict.drop("policy-x")


def send(p: Pipeline, payload: bytes = b"x", sport: int = 1000) -> bool:
    frame = flow_frame("10.0.0.1", "10.0.0.2", "udp", sport, 80, payload=payload)
    return bool(p.handle(frame, len(frame), 1.0))


def test_a_drop_reason_is_counted_apart_from_the_pipelines() -> None:
    p = Pipeline(lambda packet: POLICY_X)
    assert not send(p)
    assert p.stats.drops == {"rule:policy-x": 1} and p.stats.dropped == 1
    assert repr(POLICY_X) == "Verdict.drop('policy-x')"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 49, 'quote"', "new\nline", 5])
def test_a_reason_must_be_a_safe_label(bad: object) -> None:
    with pytest.raises(ValueError, match="drop reason"):
        Verdict.drop(bad)  # type: ignore[arg-type]


def test_distinct_reasons_are_capped() -> None:
    reasons = [Verdict.drop(f"r{i}") for i in range(MAX_RULE_REASONS + 5)]
    state = {"i": 0}

    def modifier(packet: Packet) -> geneve.Drop:
        state["i"] += 1
        return reasons[state["i"] - 1]

    p = Pipeline(modifier)
    for _ in reasons:
        send(p)
    assert len(p.stats.drops) == MAX_RULE_REASONS + 1
    assert p.stats.drops["rule:other"] == 5


def test_a_chain_stops_at_any_verdict_but_forward() -> None:
    seen: list[str] = []

    def first(packet: Packet) -> Verdict:
        seen.append("first")
        return Verdict.FORWARD

    def second(packet: Packet) -> geneve.Drop:
        seen.append("second")
        return POLICY_X

    def third(packet: Packet) -> None:
        seen.append("third")

    p = Pipeline(chain(first, second, third))
    assert not send(p)
    assert seen == ["first", "second"] and p.stats.drops == {"rule:policy-x": 1}
    held = Pipeline(chain(lambda packet: Verdict.HOLD, third), flows=True)
    assert not send(held)
    assert held.stats.held == 1 and seen == ["first", "second"]


def test_count_keeps_named_counters() -> None:
    before = dict(_RULE_COUNTERS)
    geneve.count("test-seen")
    geneve.count("test-seen", 4)
    assert _RULE_COUNTERS["test-seen"] == before.get("test-seen", 0) + 5
    with pytest.raises(ValueError, match="counter name"):
        geneve.count("bad name")


def two(packet: object, other: object) -> None:
    return None


@pytest.mark.parametrize("bad", [two, lambda: None, "not callable"])
def test_a_modifier_that_cannot_take_a_packet_is_refused_at_once(bad: object) -> None:
    with pytest.raises(TypeError, match="modifier"):
        Pipeline(bad)  # type: ignore[arg-type]
    with pytest.raises(geneve.ApplianceError, match="modifier"):
        geneve.Appliance(bad)  # type: ignore[arg-type]


def test_a_modifier_with_defaults_or_varargs_is_fine() -> None:
    def flexible(packet: object, extra: int = 1, *rest: object) -> None:
        return None

    Pipeline(flexible)
    Pipeline(print)  # no signature to read: taken as it is


def test_the_daemon_refuses_a_wrong_signature_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geneve import appliance

    (tmp_path / "two_args_rules.py").write_text("def modifier(packet, other):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert appliance.main(["--rules", "two_args_rules"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "must take one argument" in err
