"""The CloudFormation templates under deploy/cloudformation: lint-clean and in step with the daemon.

cfn-lint checks a template against CloudFormation's own resource schemas, offline; it cannot
know this project's facts. So the fleet template is also read here and held against the daemon
(its flags' defaults and environment variables), the shipped systemd unit (which the user data
writes unchanged) and the distribution name, so that none of them can change alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from geneve.appliance import build_parser

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "deploy" / "cloudformation").glob("*.yaml"))
FLEET = ROOT / "deploy" / "cloudformation" / "geneve-fleet.yaml"
UNIT = ROOT / "deploy" / "systemd" / "geneve-appliance.service"
UNIT_PATH = "/etc/systemd/system/geneve-appliance.service"
DROP_IN_PATH = "/etc/systemd/system/geneve-appliance.service.d/fleet.conf"
# Values for the parameters without a default, to render the user data as an instance sees it.
SAMPLE = {"Version": "0.1.0", "ApplianceSubnetCidrs": "10.0.1.0/24,10.0.2.0/24"}


def _cfn_lint() -> list[str]:
    """cfn-lint from this interpreter's environment, else from PATH, else through its module."""
    beside = Path(sys.executable).with_name("cfn-lint")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("cfn-lint")
    if found is not None:
        return [found]
    return [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())"]


def _load(path: Path) -> dict[str, Any]:
    template: dict[str, Any] = cfn_yaml.loads(path.read_text(encoding="utf-8"), str(path))
    return template


def _resources(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every resource, those a Fn::ForEach makes included (under its logical-id pattern)."""
    found: dict[str, dict[str, Any]] = {}
    for name, value in template["Resources"].items():
        if name.startswith("Fn::ForEach::"):
            _variable, _collection, body = value
            found.update(body)
        else:
            found[name] = value
    return found


def _for_each(template: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Each Fn::ForEach loop's variable: its collection and the loop's name."""
    return {
        value[0]: (name, value[1])
        for name, value in template["Resources"].items()
        if name.startswith("Fn::ForEach::")
    }


def _defaults(template: dict[str, Any]) -> dict[str, str]:
    values = {
        name: str(p["Default"]) for name, p in template["Parameters"].items() if "Default" in p
    }
    return values | SAMPLE


def _user_data(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The launch template's user data before substitution, and the Fn::Sub variable map."""
    data = _resources(template)["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    text, variables = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    return str(text), dict(variables)


def _rendered_user_data(template: dict[str, Any]) -> str:
    """The user data with every ${Name} replaced as CloudFormation would (defaults, SAMPLE)."""
    text, variables = _user_data(template)
    values = _defaults(template)
    assert variables == {"AllowFrom": {"Fn::Join": [",", {"Ref": "ApplianceSubnetCidrs"}]}}
    values["AllowFrom"] = values["ApplianceSubnetCidrs"]

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in values, f"${{{match.group(1)}}} is neither parameter nor variable"
        return values[match.group(1)]

    return re.sub(r"\$\{([^}!]+)\}", value, text)


def _heredoc(script: str, target: str) -> str:
    """The body of the here-document the script writes to ``target``."""
    match = re.search(rf"^cat > {re.escape(target)} <<'?EOF'?\n(.*?)^EOF$", script, re.M | re.S)
    assert match is not None, f"the user data writes no {target}"
    return match.group(1)


def _daemon_defaults(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in list(os.environ):
        if name.startswith("GENEVE_"):
            monkeypatch.delenv(name)
    return build_parser().parse_args([])


def _drop_in(template: dict[str, Any]) -> str:
    """The fleet's drop-in as the instance's shell writes it (its $iface and $((...)) expanded)."""
    script = _rendered_user_data(template)
    body = _heredoc(script, DROP_IN_PATH)
    expand = f"iface=ens5\ncat <<EOF\n{body}EOF\n"
    return subprocess.run(["bash", "-c", expand], capture_output=True, text=True,
                          check=True, timeout=30).stdout  # fmt: skip


def _environment(drop_in: str) -> dict[str, str]:
    return dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in drop_in.splitlines()
        if line.startswith("Environment=")
    )


def test_there_are_templates() -> None:
    assert FLEET in TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.name)
def test_cfn_lint_finds_nothing(template: Path) -> None:
    # Zero errors and zero warnings: any finding is a line of output and a non-zero status.
    result = subprocess.run([*_cfn_lint(), str(template)], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result


def test_target_group_is_geneve_checked_on_the_daemons_health_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    template = _load(FLEET)
    daemon = _daemon_defaults(monkeypatch)
    group = _resources(template)["TargetGroup"]["Properties"]
    assert (group["Protocol"], group["Port"]) == ("GENEVE", daemon.port) == ("GENEVE", 6081)
    assert group["HealthCheckProtocol"] == "HTTP"
    assert group["HealthCheckPort"] == {"Ref": "HealthPort"}
    assert template["Parameters"]["HealthPort"]["Default"] == daemon.health_port
    # Any path answers the health JSON except /metrics, which says 200 whatever the health;
    # 503 (unhealthy, draining) must fail the check.
    assert group["HealthCheckPath"].startswith("/") and group["HealthCheckPath"] != "/metrics"
    assert group["Matcher"] == {"HttpCode": "200"}


def test_one_parameter_sets_the_deregistration_delay_and_the_drain() -> None:
    template = _load(FLEET)
    resources = _resources(template)
    attributes = {
        a["Key"]: a["Value"]
        for a in resources["TargetGroup"]["Properties"]["TargetGroupAttributes"]
    }
    assert attributes["deregistration_delay.timeout_seconds"] == {"Ref": "DeregistrationDelay"}
    # Target failover: both keys, one parameter (GWLB wants them equal).
    assert attributes["target_failover.on_deregistration"] == {"Ref": "TargetFailover"}
    assert attributes["target_failover.on_unhealthy"] == {"Ref": "TargetFailover"}
    assert set(template["Parameters"]["TargetFailover"]["AllowedValues"]) == {
        "rebalance",
        "no_rebalance",
    }
    text, _variables = _user_data(template)
    assert "Environment=GENEVE_DRAIN_SECONDS=${DeregistrationDelay}\n" in text
    # GWLB's TCP idle timeout and the daemon's: one parameter too.
    (listener_attribute,) = resources["Listener"]["Properties"]["ListenerAttributes"]
    assert listener_attribute == {
        "Key": "tcp.idle_timeout.seconds",
        "Value": {"Ref": "TcpIdleTimeout"},
    }
    assert "Environment=GENEVE_FLOW_TIMEOUT_TCP=${TcpIdleTimeout}\n" in text


def test_the_drop_in_stops_after_the_drain_and_the_daemon_takes_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    template = _load(FLEET)
    drop_in = _drop_in(template)
    drain = int(template["Parameters"]["DeregistrationDelay"]["Default"])
    (stop,) = re.findall(r"^TimeoutStopSec=(\d+)$", drop_in, re.M)
    assert int(stop) == drain + 30  # test_appliance holds the shipped unit to more than drain + 5
    environment = _environment(drop_in)
    _daemon_defaults(monkeypatch)
    help_text = build_parser().format_help()
    for name, value in environment.items():
        assert re.search(rf"\[{name}\b", help_text), f"{name} is no variable the daemon reads"
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args([])  # raises on a value the daemon refuses
    assert args.drain_seconds == drain
    assert args.allow_from == SAMPLE["ApplianceSubnetCidrs"].split(",")
    assert args.flow_timeout_tcp == float(template["Parameters"]["TcpIdleTimeout"]["Default"])


def test_the_security_group_admits_geneve_and_health_checks_from_the_gwlb_subnets_only() -> None:
    template = _load(FLEET)
    resources = _resources(template)
    loops = _for_each(template)
    group = resources["ApplianceSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in group
    rules = [r["Properties"] for r in resources.values()
             if r["Type"] == "AWS::EC2::SecurityGroupIngress"]  # fmt: skip
    ports = sorted((r["IpProtocol"], str(r["FromPort"]), str(r["ToPort"])) for r in rules)
    health = str({"Ref": "HealthPort"})
    assert ports == [("tcp", health, health), ("udp", "6081", "6081")]
    for rule in rules:
        assert set(rule) == {"GroupId", "Description", "IpProtocol", "FromPort", "ToPort", "CidrIp"}
        variable = rule["CidrIp"]["Ref"]
        assert loops[variable][1] == {"Ref": "ApplianceSubnetCidrs"}
    text, variables = _user_data(template)
    assert "Environment=GENEVE_ALLOW_FROM=${AllowFrom}\n" in text
    assert variables["AllowFrom"] == {"Fn::Join": [",", {"Ref": "ApplianceSubnetCidrs"}]}


def test_the_package_is_pinned_by_its_distribution_name() -> None:
    name = re.search(r'^name = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert name is not None and name.group(1) == "geneve-gwlb"
    text, _variables = _user_data(_load(FLEET))
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert len(installs) == 1 and "'geneve-gwlb==${Version}'" in installs[0], installs
    assert "Default" not in _load(FLEET)["Parameters"]["Version"]  # a deploy names its release
    # The unit starts the command from the virtualenv the user data makes.
    (venv,) = re.findall(r"-m venv (\S+)$", text, re.M)
    assert f"ExecStart={venv}/bin/geneve-appliance\n" in UNIT.read_text()


def test_the_user_data_writes_the_shipped_unit_unchanged() -> None:
    shipped = UNIT.read_text()
    assert "${" not in shipped  # Fn::Sub would change it
    assert _heredoc(_rendered_user_data(_load(FLEET)), UNIT_PATH) == shipped


def test_the_user_data_is_valid_shell() -> None:
    script = _rendered_user_data(_load(FLEET))
    assert script.startswith("#!/bin/bash\n")
    result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result


def test_the_unit_with_the_fleets_drop_in_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    template = _load(FLEET)
    unit = _heredoc(_rendered_user_data(template), UNIT_PATH)
    command = Path(sys.executable).with_name("geneve-appliance")  # verify wants it to exist
    (tmp_path / "geneve-appliance.service").write_text(
        unit.replace("/opt/geneve/.venv/bin/geneve-appliance", str(command))
    )
    drop_ins = tmp_path / "geneve-appliance.service.d"
    drop_ins.mkdir()
    drop_in = _drop_in(template)
    ip = shutil.which("ip")
    if ip is not None:  # where ip lives on this machine rather than on Amazon Linux
        drop_in = drop_in.replace("+/usr/sbin/ip ", f"+{ip} ")
    (drop_ins / "fleet.conf").write_text(drop_in)
    result = subprocess.run([analyze, "verify", str(tmp_path / "geneve-appliance.service")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
