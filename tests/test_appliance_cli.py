"""python -m geneve.appliance: every bad flag, environment variable or --rules is one line, exit 2;
the flow flags and keywords reach each worker's table; health and metrics of an appliance
not started.

These open no socket, so they need no network namespace.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from geneve import FlowTable, appliance
from geneve._appliance import Appliance, ApplianceError, default_max_flows
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
        (["--flow-timeout-tcp", "0"], {}, "--flow-timeout-tcp"),
        (["--flow-timeout-tcp", "-5"], {}, "--flow-timeout-tcp"),
        (["--flow-timeout-tcp", "soon"], {}, "--flow-timeout-tcp"),
        (["--flow-timeout-other", "nan"], {}, "--flow-timeout-other"),
        (["--flow-timeout-other", "inf"], {}, "--flow-timeout-other"),
        ([], {"GENEVE_FLOW_TIMEOUT_TCP": "x"}, "--flow-timeout-tcp"),
        (["--max-flows", "0"], {}, "--max-flows"),
        (["--max-flows", "1.5"], {}, "--max-flows"),
        ([], {"GENEVE_MAX_FLOWS": "many"}, "--max-flows"),
        ([], {"GENEVE_FLOWS": "perhaps"}, "GENEVE_FLOWS"),
        (["--drain-seconds", "-1"], {}, "--drain-seconds"),
        (["--allow-from", "2001:db8::/32"], {}, "IPv4 only"),
        (["--allow-from", "10.0.0.0/33"], {}, "--allow-from"),
        ([], {"GENEVE_ALLOW_FROM": "10.0.0.1,fe80::1"}, "IPv4 only"),
        (["--max-error-share", "0"], {}, "--max-error-share"),
        (["--max-error-share", "2"], {}, "--max-error-share"),
        (["--drain-seconds", "nan"], {}, "--drain-seconds"),
        ([], {"GENEVE_DRAIN_SECONDS": "soon"}, "--drain-seconds"),
        (["--batch", "65"], {}, "--batch"),
        (["--bind", "1.2.3.999"], {}, "--bind"),
        (["--bind", "::1"], {}, "--bind"),
        ([], {"GENEVE_BIND": "localhost"}, "--bind"),
        (["--health-host", "nosuch.invalid"], {}, "--health-host"),
        (["--rules", "no_such_module_here:thing"], {}, "--rules"),
        (["--rules-config", "rules.toml"], {}, "--rules-config"),
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


def test_a_factory_is_called_once_and_its_value_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "qa_factory.py").write_text(
        "import os\n"
        "from geneve.rules import drop, modifier_factory\n"
        "calls = []\n"
        "@modifier_factory\n"
        "def build():\n"
        "    calls.append(1)\n"
        "    if os.environ.get('QA_FACTORY') == 'bad':\n"
        "        raise ValueError('QA_FACTORY: bad is not a setting')\n"
        "    return drop\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import geneve.rules

    assert load_modifier("qa_factory:build") is geneve.rules.drop
    monkeypatch.setenv("QA_FACTORY", "bad")
    with pytest.raises(RulesError) as caught:
        load_modifier("qa_factory:build")
    assert str(caught.value) == "--rules 'qa_factory:build': QA_FACTORY: bad is not a setting"
    import qa_factory  # type: ignore[import-not-found]

    assert qa_factory.calls == [1, 1]


# -- flows: flags and keywords ---------------------------------------------------------------


def test_flow_flags_defaults_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    args = appliance._parse([])
    assert (args.flows, args.flow_timeout_tcp, args.flow_timeout_other, args.max_flows) == (
        True, 350.0, 120.0, None,
    )  # fmt: skip
    args = appliance._parse(
        ["--no-flows", "--flow-timeout-tcp", "2.5", "--flow-timeout-other", "1",
         "--max-flows", "1000000"]
    )  # fmt: skip
    assert (args.flows, args.flow_timeout_tcp, args.flow_timeout_other, args.max_flows) == (
        False, 2.5, 1.0, 1_000_000,
    )  # fmt: skip
    monkeypatch.setenv("GENEVE_FLOWS", "off")
    monkeypatch.setenv("GENEVE_MAX_FLOWS", "5000000")
    args = appliance._parse([])
    assert args.flows is False and args.max_flows == 5_000_000


def test_the_flags_reach_the_appliance(monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, object] = {}

    class Made(Exception):
        pass

    def record(modifier: object, **kwargs: object) -> None:
        made.update(kwargs)
        raise Made

    monkeypatch.setattr(appliance, "Appliance", record)
    argv = ["--no-flows", "--flow-timeout-tcp", "90", "--flow-timeout-other", "7",
            "--max-flows", "1234"]  # fmt: skip
    with pytest.raises(Made):
        appliance.main(argv)
    wanted = {"flows": False, "flow_timeout_tcp": 90.0, "flow_timeout_other": 7.0,
              "max_flows": 1234}  # fmt: skip
    assert {k: made[k] for k in wanted} == wanted


def test_flow_keywords_default_to_gwlbs_timeouts_and_the_machines_size(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import os

    with caplog.at_level("WARNING", logger="geneve.appliance"):
        app = Appliance(lambda p: None)
    assert not [r for r in caplog.records if "flow-timeout" in r.getMessage()]
    assert (app.flows, app.flow_timeout_tcp, app.flow_timeout_other) == (True, 350.0, 120.0)
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert app.max_flows == min(1_000_000, memory // 4096) == default_max_flows()
    assert Appliance(lambda p: None, max_flows=3_000_000).max_flows == 3_000_000


def test_default_max_flows_follows_a_small_machines_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    sizes = {"SC_PHYS_PAGES": 1024 * 1024, "SC_PAGE_SIZE": 1024}  # 1 GiB
    monkeypatch.setattr(os, "sysconf", lambda name: sizes[name])
    assert default_max_flows() == (1 << 30) // 4096
    sizes["SC_PHYS_PAGES"] = 64 * 1024 * 1024  # 64 GiB
    assert default_max_flows() == 1_000_000


@pytest.mark.parametrize("timeout", [1.0, 59.0, 6001.0, 1e6])
def test_a_tcp_timeout_outside_gwlbs_range_is_accepted_with_a_warning(
    timeout: float, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="geneve.appliance"):
        app = Appliance(lambda p: None, flow_timeout_tcp=timeout)
    assert app.flow_timeout_tcp == timeout
    warned = [r.getMessage() for r in caplog.records if "--flow-timeout-tcp" in r.getMessage()]
    assert len(warned) == 1 and "60-6000" in warned[0], caplog.records


@pytest.mark.parametrize("timeout", [60.0, 350, 6000.0])
def test_a_tcp_timeout_inside_gwlbs_range_warns_nothing(
    timeout: float, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="geneve.appliance"):
        Appliance(lambda p: None, flow_timeout_tcp=timeout)
    assert not [r for r in caplog.records if "--flow-timeout-tcp" in r.getMessage()]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("flow_timeout_tcp", 0),
        ("flow_timeout_tcp", -1.0),
        ("flow_timeout_tcp", float("nan")),
        ("flow_timeout_tcp", "350"),
        ("flow_timeout_other", float("inf")),
        ("flow_timeout_other", True),
        ("max_flows", 0),
        ("max_flows", 2.5),
        ("max_flows", "1000"),
    ],
)
def test_bad_flow_keywords_are_one_line_errors(keyword: str, value: object) -> None:
    with pytest.raises(ApplianceError, match=keyword) as caught:
        Appliance(lambda p: None, **{keyword: value})  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


class _Sockets:
    """What a Worker reads of its sockets when it is made (nothing opens until it runs)."""

    port = 6081


@pytest.mark.parametrize(("workers", "max_flows", "share"), [(1, 10, 10), (3, 10, 3), (4, 3, 1)])
def test_max_flows_is_shared_among_the_workers(workers: int, max_flows: int, share: int) -> None:
    app = Appliance(lambda p: None, workers=workers, max_flows=max_flows,
                    flow_timeout_tcp=90.0, flow_timeout_other=7.0)  # fmt: skip
    assert app.max_flows_per_worker == share
    tables = [app._make_worker(i, _Sockets(), None).pipeline.flows for i in range(workers)]  # type: ignore[arg-type]
    assert all(isinstance(t, FlowTable) for t in tables)
    assert len({id(t) for t in tables}) == workers, "each worker keeps its own table"
    table = tables[0]
    assert isinstance(table, FlowTable)
    assert (table.tcp_timeout, table.other_timeout, table.max_flows) == (90.0, 7.0, share)


def test_no_flows_gives_pipelines_without_a_table() -> None:
    app = Appliance(lambda p: None, workers=2, flows=False)
    assert app.flow_table() is None
    for i in range(2):
        assert app._make_worker(i, _Sockets(), None).pipeline.flows is None  # type: ignore[arg-type]


@pytest.mark.parametrize("flows", [True, False])
def test_health_and_metrics_say_whether_flows_are_tracked(flows: bool) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    report = Appliance(lambda p: None, workers=3, max_flows=1001, flows=flows).report()
    # The bound reported is the workers' shares together: 3 x 333.
    reasons = {"fin": 0, "rst": 0, "idle": 0, "evicted": 0, "shutdown": 0}
    assert report.body["flows"] == {
        "tracking": flows, "max_flows": 999 if flows else 0, "active": 0, "created": 0,
        "ended": reasons, "verdict_packets": 0, "early_dropped": 0, "rejects": 0,
    }  # fmt: skip
    families = {f.name: f for f in text_string_to_metric_families(report.metrics)}
    value = {name: f.samples[0].value for name, f in families.items() if len(f.samples) == 1}
    assert value["geneve_flows_enabled"] == int(flows)
    assert value["geneve_flows_max"] == (999 if flows else 0)
    for name in ("active", "created", "verdict_packets", "early_dropped", "rejects"):
        assert value[f"geneve_flows_{name}"] == 0, name
    ended = {s.labels["reason"]: s.value for s in families["geneve_flows_ended"].samples}
    assert ended == reasons
    assert families["geneve_flows_active"].type == "gauge"
    assert families["geneve_flows_created"].type == "counter"
