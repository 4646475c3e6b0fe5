"""Rules that take arguments: --rules-factory MODULE:CALLABLE given the --rules-config table."""

from __future__ import annotations

from pathlib import Path

import pytest

from geneve import Pipeline, appliance
from geneve._loader import RulesError, RulesSource, load_rules

FACTORY = """
from geneve import Verdict

def make(table):
    ports = set(table.get("blocked_ports", []))
    if not all(isinstance(p, int) for p in ports):
        raise ValueError("blocked_ports must be port numbers")

    def modifier(packet):
        if packet.ports and packet.ports[1] in ports:
            return Verdict.DROP
        return None

    return modifier
"""


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "configured_rules.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def verdict_for(modifier: object, dport: int) -> bool:
    from support.frames import flow_frame

    frame = flow_frame("10.0.0.1", "10.0.0.2", "udp", 1000, dport)
    return bool(Pipeline(modifier).handle(frame, len(frame), 0.0))  # type: ignore[arg-type]


def test_the_factory_gets_the_table(factory_module: Path) -> None:
    config = factory_module / "rules.toml"
    config.write_text("blocked_ports = [23, 445]\n")
    modifier = load_rules(RulesSource(factory="configured_rules:make", config=str(config)))
    assert not verdict_for(modifier, 23) and verdict_for(modifier, 80)
    # Without a file the table is empty.
    assert verdict_for(load_rules(RulesSource(factory="configured_rules:make")), 23)


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("blocked_ports = [", "not TOML"),
        ('blocked_ports = ["x"]', "ValueError: blocked_ports must be port numbers"),
    ],
)
def test_a_bad_table_is_one_line(factory_module: Path, toml: str, needle: str) -> None:
    config = factory_module / "rules.toml"
    config.write_text(toml)
    with pytest.raises(RulesError, match=needle):
        load_rules(RulesSource(factory="configured_rules:make", config=str(config)))


def test_config_without_factory_and_a_missing_file_are_refused(factory_module: Path) -> None:
    with pytest.raises(RulesError, match="needs --rules-factory"):
        load_rules(RulesSource(rules="geneve.rules.reference:modifier", config="x.toml"))
    with pytest.raises(RulesError, match=r"no-such\.toml"):
        load_rules(RulesSource(factory="configured_rules:make", config="no-such.toml"))


def test_the_daemon_says_what_is_wrong_in_one_line(
    factory_module: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = factory_module / "rules.toml"
    config.write_text("blocked_ports = [")
    argv = ["--rules-factory", "configured_rules:make", "--rules-config", str(config)]
    assert appliance.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not TOML" in err


def test_a_reload_reads_the_file_again(factory_module: Path) -> None:
    config = factory_module / "rules.toml"
    config.write_text("blocked_ports = [23]\n")
    source = RulesSource(factory="configured_rules:make", config=str(config))
    assert not verdict_for(load_rules(source), 23)
    config.write_text("blocked_ports = [80]\n")
    reloaded = load_rules(source, reload=True)
    assert verdict_for(reloaded, 23) and not verdict_for(reloaded, 80)

