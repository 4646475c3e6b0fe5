"""What the emulator says on a console: the blog demo, the long-running mode, the summary."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checker import GENEVE_PORT
from .emulator import Emulator, describe_exit
from .namespaces import EmulatorError
from .topology import EmulatorConfig

#: The demo's UDP source port on the client (one flow for both messages, see run_demo).
DEMO_CLIENT_PORT = 40000
DEMO_SERVER_PORT = 3000


def format_summary(summary: dict[str, Any]) -> str:
    """The data plane's summary as a few readable lines."""
    s = summary
    lines = [
        f"emulator: sent {s['sent']} to the appliance, {s['returned']} returned "
        f"({s['modified']} modified), {s['not_returned']} not returned (dropped"
        + (", or only failed replies" if s["failed"] else "")
        + f"), {s['verified']} passed every check, {s['failed']} failed"
    ]
    if s["failures"]:
        lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in s["failures"].items()))
    if s["passed_through_invalid"]:
        lines.append(
            f"  passed through invalid: {s['passed_through_invalid']} (already bad from the "
            "tun and returned unchanged: not the appliance's failure)"
        )
    if s["injected"]:
        lines.append(
            f"  injected: {s['injected']} refusals from the appliance (a TCP RST, an ICMP "
            "unreachable or a DNS REFUSED for a packet it rejected), checked and delivered"
        )
    if s.get("expired_dropped"):
        lines.append(
            f"  expired: {s['expired_dropped']} non-SYN packets of TCP flows past their idle "
            "timeout, dropped as GWLB drops them (not sent to the appliance)"
        )
    if s["capture_dropped"]:
        lines.append(
            f"  lost by the emulator: {s['capture_dropped']} frames from the appliance "
            "overflowed its capture socket (counted as not returned, not as the appliance's)"
        )
    for key, label in (
        ("tun_invalid", "bad packets from the tun"),
        ("errors", "errors"),
    ):
        if s[key]:
            lines.append(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in s[key].items()))
    if s["data_plane_error"]:
        lines.append(f"  data plane died: {s['data_plane_error']}")
    for f in s["flows"]:
        ports = str(f["source_port"])
        if f.get("reply_source_port", f["source_port"]) != f["source_port"]:
            ports += f" (reply direction {f['reply_source_port']})"
        lines.append(
            f"  {f['flow']}: cookie {f['flow_cookie']}, udp src {ports}; "
            f"sent {f['sent']}, returned {f['returned']}, modified {f['modified']}, "
            f"failed {f['failed']}"
            + (f", injected {f['injected']}" if f["injected"] else "")
            + (f", expired dropped {f['expired_dropped']}" if f.get("expired_dropped") else "")
            + (" (ended: a newer flow took its 5-tuple)" if f.get("superseded") else "")
        )
    return "\n".join(lines)


@dataclass
class Check:
    ok: bool
    text: str

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.text}"


@dataclass
class DemoResult:
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "checks": [{"ok": c.ok, "text": c.text} for c in self.checks],
            "summary": self.summary,
        }


_PING_REPLY = re.compile(r"bytes from .*icmp_seq=(\d+)")


def run_demo(
    config: EmulatorConfig | None = None,
    *,
    appliance: Sequence[str] | None = None,
    rules: str | None = None,
    out: Callable[[str], None] | None = None,
) -> DemoResult:
    """The original GWLB blog demo, with real tools, through the emulator and the appliance.

    ``ping`` loses seq 5 and 10; ``drop me`` over UDP port 3000 never arrives; ``weakly typed
    programming language`` arrives as ``strongly typed programming language``; the health
    endpoint answers 200 with JSON. ``out`` receives each check as it is decided.
    """
    result = DemoResult()
    say = out or (lambda line: None)
    t0 = time.monotonic()

    def check(ok: bool, text: str) -> None:
        result.checks.append(Check(ok, text))
        say(result.checks[-1].line())

    emu = Emulator(config)
    a = emu.addressing
    # The appliance's output goes to a temporary file, shown if something went wrong.
    with tempfile.TemporaryFile() as log_file:
        try:
            with emu:
                say(
                    f"topology: client {a.client} -> gwlb (tun, Geneve to {a.appliance}:"
                    f"{GENEVE_PORT}) -> server {a.server}; namespaces {emu.names.base}-*"
                )
                emu.start_appliance(appliance or emu.appliance_command(rules), log=log_file)
                health = emu.wait_healthy()
                say(f"appliance healthy after {health.seconds:.1f} s")
                _demo_ping(emu, check)
                _demo_udp(emu, check)
                _demo_health(emu, check)
                time.sleep(0.2)  # let the last replies come back before counting
                _demo_summary(emu.summary(), check)
                rc, seconds = emu.stop_appliance()
                check(
                    rc == 0 and seconds <= 2.0,
                    f"appliance stopped on SIGTERM: exit status {rc} after {seconds:.1f} s "
                    "(expected 0 within 2 s)",
                )
        except (EmulatorError, OSError, subprocess.SubprocessError) as err:
            result.error = f"{type(err).__name__}: {err}"
            say(f"✗ demo failed: {result.error}")
        if not result.ok:
            log_file.seek(0)
            text = log_file.read().decode(errors="replace").strip()
            if text:
                say("appliance output:\n  " + "\n  ".join(text.splitlines()[-20:]))
    if emu.final_summary:
        result.summary = emu.final_summary
    result.seconds = time.monotonic() - t0
    return result


def _demo_ping(emu: Emulator, check: Callable[[bool, str], None]) -> None:
    server = emu.addressing.server
    proc = emu.run("client", ["ping", "-n", "-c", "10", "-i", "0.2", "-W", "1", server], timeout=15)
    answered = sorted({int(m.group(1)) for m in _PING_REPLY.finditer(proc.stdout)})
    lost = sorted(set(range(1, 11)) - set(answered))
    check(
        lost == [5, 10],
        f"ping -c 10 {server}: {len(answered)} of 10 answered, lost seq "
        f"{', '.join(map(str, lost)) or 'none'} (expected 5 and 10)",
    )


def _demo_udp(emu: Emulator, check: Callable[[bool, str], None]) -> None:
    server, port = emu.addressing.server, DEMO_SERVER_PORT
    listener = emu.spawn(
        "server", ["nc", "-u", "-l", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 3
    while not emu.udp_port_bound("server", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    # One client port for both messages: nc -l answers only the first peer it hears from.
    send = ["nc", "-u", "-q", "0", "-p", str(DEMO_CLIENT_PORT), server, str(port)]
    emu.run("client", send, input=b"drop me\n", timeout=5)
    time.sleep(0.3)
    emu.run("client", send, input=b"weakly typed programming language\n", timeout=5)
    assert listener.stdout is not None
    os.set_blocking(listener.stdout.fileno(), False)
    got = b""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and b"language" not in got:
        chunk = listener.stdout.read()
        if chunk:
            got += chunk
        time.sleep(0.05)
    time.sleep(0.2)  # anything else in flight
    got += listener.stdout.read() or b""
    listener.terminate()
    listener.wait(5)
    text = got.decode(errors="replace")
    check(
        "drop me" not in text,
        f"nc -u {server} {port} 'drop me': "
        + ("dropped, the server received nothing" if "drop me" not in text else "DELIVERED"),
    )
    lines = [line for line in text.splitlines() if line]
    check(
        lines == ["strongly typed programming language"],
        f"nc -u {server} {port} 'weakly typed programming language': server received {lines!r}",
    )


def _demo_health(emu: Emulator, check: Callable[[bool, str], None]) -> None:
    url = f"http://{emu.addressing.appliance}:8080/"
    try:
        result = emu.http_get("/")
        body: Any = result.json()
    except (OSError, ValueError, http.client.HTTPException) as err:
        check(False, f"health GET {url}: {err}")
        return
    text = json.dumps(body, sort_keys=True)
    if len(text) > 300:
        text = text[:297] + "..."
    check(result.status == 200, f"health GET {url}: {result.status} {text}")


def _demo_summary(summary: dict[str, Any], check: Callable[[bool, str], None]) -> None:
    failures = summary["failures"]
    check(
        summary["failed"] == 0 and summary["returned"] > 0 and not summary["data_plane_error"],
        f"emulator: {summary['verified']} of {summary['returned']} replies passed every check"
        + (f" (failures: {failures})" if failures else "")
        + (" (the appliance returned nothing)" if not summary["returned"] else ""),
    )


# -- the long-running mode ----------------------------------------------------------------------


def serve(
    emu: Emulator,
    *,
    duration: float | None,
    out: Callable[[str], None],
    wait_health: bool,
) -> None:
    """Print how to use the running emulator, then wait for a signal or ``duration``.

    Raises :class:`EmulatorError` if the appliance exits (or never gets healthy): the run has
    then failed, whatever the appliance's exit status.
    """
    a, n = emu.addressing, emu.names
    out(f"GWLB emulator up (namespaces {n.base}-*)")
    out(f"  client     {n.client}  {a.client} {a.client6 if emu.config.ipv6 else ''}")
    out(f"  server     {n.server}  {a.server} {a.server6 if emu.config.ipv6 else ''}")
    out(f"  appliance  {n.appliance}  {a.appliance}, GWLB at {a.gwlb} sends to UDP {GENEVE_PORT}")
    out("try:")
    out(f"  ip netns exec {n.client} ping {a.server}")
    out(f"  ip netns exec {n.server} nc -u -l {DEMO_SERVER_PORT}")
    if emu.appliance is None:
        out(f"  ip netns exec {n.appliance} {sys.executable} -m geneve.appliance  # yours")
    if wait_health:
        health = emu.wait_healthy()
        out(f"appliance healthy after {health.seconds:.1f} s: {health.body.decode()[:200]}")
    out("Ctrl-C to stop" + (f" (stopping after {duration:g} s)" if duration else ""))
    end = None if duration is None else time.monotonic() + duration
    while True:
        # Checked once more at the end, so a death in the last moments is not missed.
        if emu.appliance is not None and emu.appliance.poll() is not None:
            raise EmulatorError(f"the appliance {describe_exit(emu.appliance.returncode)}")
        left = 0.2 if end is None else min(0.2, end - time.monotonic())
        if left <= 0:
            return
        time.sleep(left)
