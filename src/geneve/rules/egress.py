"""An egress filter by name: TLS SNI, HTTP Host, DNS query names, as AWS Network Firewall does.

``DomainFilter`` is a modifier for a :class:`geneve.Pipeline` with flows on. Strategy: decide
each TCP flow once, from the start of its client's direction (``geneve.stream_start``), holding
the client's segments (``Verdict.HOLD``) until the name is in; then set the flow's verdict, so
that the rest of the flow, both ways, never enters the modifier again (nor Python, in the
appliance's C path, once it is FORWARD or DROP). DNS over UDP is decided query by query.

Domain lists read as AWS Network Firewall's (its "domain list" stateful rule groups): an entry
``.example.com`` matches ``example.com`` and every name below it, ``www.example.com`` only
itself; case and a trailing dot do not matter; deny wins over allow; with a non-empty allow
list a name in neither list is denied, with only a deny list it is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Literal

from .._flows import Flow
from .._headers import IPPROTO_TCP, IPPROTO_UDP
from .._loader import modifier_factory
from .._packet import Packet
from .._pipeline import Interest, Verdict, count, declare_interest
from .._stream import STREAM_LIMIT, release_streams, stream_start
from ..inspect import (
    Incomplete,
    InspectError,
    dns_refused,
    looks_like_http,
    looks_like_tls,
    parse_client_hello,
    parse_dns_query,
    parse_http_request,
)

__all__ = ["DomainFilter", "DomainList", "EgressStats", "from_env"]

Action = Literal["drop", "reject"]
Default = Literal["deny", "allow"]

DNS_PORT = 53  # RFC 1035 4.2: UDP and TCP port 53
#: The reasons a decision is counted under: what named the flow, or nothing did.
REASONS = ("tls", "http", "dns", "unclassified")

_FORWARD = Verdict.FORWARD
_DROP = Verdict.DROP
_REJECT = Verdict.REJECT
_HOLD = Verdict.HOLD
# An entry: labels of letters, digits, hyphens and underscores, an optional leading dot
# (the domain and every name below it) and an optional trailing dot (the root).
_ENTRY = re.compile(r"\.?(?:[a-z0-9_-]+\.)*[a-z0-9_-]+\.?\Z")


def _entry(text: str) -> str:
    """An entry lower-cased without its trailing dot; ValueError when it cannot be a name."""
    name = text.strip().lower()
    if not _ENTRY.match(name) or len(name.strip(".")) > 253:
        raise ValueError(f"{text!r} is not a domain name or .domain")
    return name[:-1] if name.endswith(".") else name


class DomainList:
    """Names and domains (``.example.com``): :meth:`matches` says whether a name is in it."""

    __slots__ = ("domains", "names")

    def __init__(self, entries: Iterable[str] = ()) -> None:
        if isinstance(entries, str):
            raise TypeError("entries are a list of names, not one string")
        self.names: set[str] = set()  # exact names
        self.domains: set[str] = set()  # a domain: itself and every name below it
        for entry in entries:
            name = _entry(entry)
            if name.startswith("."):
                self.domains.add(name[1:])
            else:
                self.names.add(name)

    def __bool__(self) -> bool:
        return bool(self.names or self.domains)

    def matches(self, name: str) -> bool:
        """Whether ``name`` (any case, a trailing dot or not) is listed or below a listed domain."""
        name = name.lower().rstrip(".")
        if name in self.names:
            return True
        domains = self.domains
        if not domains:
            return False
        while True:  # the name itself, then each parent: a.b.c, b.c, c
            if name in domains:
                return True
            dot = name.find(".")
            if dot < 0:
                return False
            name = name[dot + 1 :]


class EgressStats:
    """Decisions by outcome ("allowed", "denied") and reason (:data:`REASONS`).

    A TCP flow counts once, when it is decided; a DNS query over UDP once per query.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {
            "allowed": dict.fromkeys(REASONS, 0),
            "denied": dict.fromkeys(REASONS, 0),
        }

    def count(self, allowed: bool, reason: str) -> None:
        outcome = "allowed" if allowed else "denied"
        self.counts[outcome][reason] += 1
        # Also the appliance's counters of the modifier's own: /metrics shows them as
        # geneve_rule_counter_total{name="egress-allowed-tls"} and so on, summed over workers.
        count(f"egress-{outcome}-{reason}")

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {outcome: dict(by_reason) for outcome, by_reason in self.counts.items()}


class DomainFilter:
    """Allow or deny each flow by the name it goes to (see the module).

    ``allow`` / ``deny``: the domain lists. ``action``: what a denied flow gets, "drop" or
    "reject" (TLS, HTTP and DNS over TCP: the flow's REJECT, a TCP reset; DNS over UDP: an
    answer with rcode REFUSED, sent back in the query's place). ``unclassified``: the
    decision for a flow no name was found for ("deny", the default, or "allow"): not TLS,
    HTTP or DNS, a ClientHello without SNI, a request without Host, a malformed message, a
    stream start full before the name came, a TCP packet without a flow. ``ports``: the TCP
    ports whose flows are inspected (a flow is when either port is in it; DNS's 53 always
    is); None, the default, inspects every TCP flow whatever its port. ``file``: a file of
    more entries, one a line (``#`` starts a comment; ``-name`` denies, ``name`` allows),
    read now and again at each :meth:`reload`.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        action: Action = "drop",
        unclassified: Default = "deny",
        ports: Collection[int] | None = None,
        *,
        file: str | os.PathLike[str] | None = None,
    ) -> None:
        if action not in ("drop", "reject"):
            raise ValueError(f"action must be 'drop' or 'reject', not {action!r}")
        if unclassified not in ("deny", "allow"):
            raise ValueError(f"unclassified must be 'deny' or 'allow', not {unclassified!r}")
        if ports is not None and not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
            raise ValueError("ports must be TCP port numbers, 1-65535")
        self.action: Action = action
        self.unclassified: Default = unclassified
        self.denied_verdict = _REJECT if action == "reject" else _DROP
        self.ports = None if ports is None else frozenset(ports) | {DNS_PORT}
        self.file = None if file is None else Path(file)
        self.stats = EgressStats()
        if isinstance(allow, str) or isinstance(deny, str):
            raise TypeError("allow and deny are lists of names, not one string")
        self.given_allow = list(allow)
        self.given_deny = list(deny)
        # The lists in use: one tuple, replaced whole by reload(), so that a packet never sees
        # an allow list of one load with a deny list of another.
        self.lists = self.read_lists()
        # What the appliance's C path may forward without calling us: UDP other than DNS, and
        # TCP on ports not inspected.
        declare_interest(self, interest=Interest(frozenset({DNS_PORT}), self.ports))

    # -- configuration ------------------------------------------------------------------------

    def read_lists(self) -> tuple[DomainList, DomainList]:
        """(allow, deny): the lists given, and the file's entries as it reads now."""
        allow, deny = list(self.given_allow), list(self.given_deny)
        if self.file is not None:
            file_allow, file_deny = read_domain_file(self.file)
            allow += file_allow
            deny += file_deny
        return DomainList(allow), DomainList(deny)

    def reload(self) -> None:
        """Read the file again (the lists given to the constructor stay); ValueError or
        OSError leave the lists in use as they were."""
        self.lists = self.read_lists()

    def counters(self) -> dict[str, dict[str, int]]:
        """Decisions so far: ``{"allowed": {reason: n}, "denied": {reason: n}}``."""
        return self.stats.snapshot()

    # -- deciding -----------------------------------------------------------------------------

    def allows(self, name: str | None) -> bool:
        """The decision for a flow to ``name`` (None: no name was found)."""
        if name is None:
            return self.unclassified == "allow"
        allow, deny = self.lists
        if deny.matches(name):
            return False
        return not allow or allow.matches(name)

    def __call__(self, packet: Packet) -> Verdict | None:
        protocol = packet.l4_protocol
        if protocol == IPPROTO_UDP:
            return self.dns_over_udp(packet)
        if protocol != IPPROTO_TCP or packet.l4_offset < 0:
            return None  # ICMP and the rest: not named
        flow: Flow | None = getattr(packet, "flow", None)
        ports = packet.ports
        if ports is None:
            return None
        if self.ports is not None and ports[0] not in self.ports and ports[1] not in self.ports:
            return None
        if flow is None:  # flows off: nothing to reassemble or to decide once
            return self.decide_packet(None, "unclassified")
        if flow.direction != "original":
            return None  # the server's side: it waits for the client's to be decided
        data = stream_start(packet)
        if not data:
            return None  # the handshake: nothing to read yet, and nothing held to release
        dns = flow.ports[1] == DNS_PORT
        reason = "dns" if dns else "unclassified"
        name: str | None = None
        try:
            if dns:
                names = [q.name for q in parse_dns_query(data, tcp=True).questions]
                allowed = self.names_allowed(names)
                return self.decide_flow(flow, allowed, reason)
            if looks_like_tls(data):
                reason = "tls"
                name = parse_client_hello(data).sni
            elif looks_like_http(data):
                reason = "http"
                name = parse_http_request(data).host
        except Incomplete:
            if len(data) >= STREAM_LIMIT:  # it will not come within the stream start
                return self.decide_flow(flow, self.allows(None), "unclassified")
            return _HOLD
        except InspectError:
            return self.decide_flow(flow, self.allows(None), "unclassified")
        if name is None:
            return self.decide_flow(flow, self.allows(None), "unclassified")
        return self.decide_flow(flow, self.allows(name), reason)

    def names_allowed(self, names: list[str]) -> bool | None:
        """Every question's name allowed (None: a query without a question)."""
        if not names:
            return None
        return all(self.allows(name) for name in names)

    def decide_flow(self, flow: Flow, allowed: bool | None, reason: str) -> Verdict:
        if allowed is None:
            allowed, reason = self.allows(None), "unclassified"
        self.stats.count(allowed, reason)
        verdict = _FORWARD if allowed else self.denied_verdict
        flow.verdict = verdict
        release_streams(flow)  # decided: its stream start is read for good
        return verdict

    def decide_packet(self, allowed: bool | None, reason: str) -> Verdict | None:
        """A decision for this packet only (DNS over UDP, a TCP packet without a flow)."""
        if allowed is None:
            allowed, reason = self.allows(None), "unclassified"
        self.stats.count(allowed, reason)
        return None if allowed else self.denied_verdict

    def dns_over_udp(self, packet: Packet) -> Verdict | None:
        ports = packet.ports
        if ports is None or ports[1] != DNS_PORT or packet.is_fragment:
            return None  # not a query (a response comes from 53 to the client's port)
        payload = packet.payload
        if payload is None or (len(payload) > 2 and payload[2] & 0x80):
            return None  # a response (QR set, RFC 1035 4.1.1), between two servers on port 53
        try:
            query = parse_dns_query(payload)
        except InspectError:
            return self.decide_packet(None, "dns")
        allowed = self.names_allowed([q.name for q in query.questions])
        verdict = self.decide_packet(allowed, "dns")
        if verdict is not _REJECT:
            return verdict
        return _refuse(packet, payload)


def _refuse(packet: Packet, query: memoryview) -> Verdict:
    """Turn a UDP query into its REFUSED answer, addressed back to the client: FORWARD it."""
    answer = dns_refused(query)
    ip = packet.inner_ip
    udp = packet.udp
    if ip is None or udp is None:
        return _DROP
    ip.src, ip.dst = ip.dst, ip.src
    udp.src_port, udp.dst_port = udp.dst_port, udp.src_port
    packet.replace_payload(answer)
    return _FORWARD


def read_domain_file(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(allow, deny) entries of a domain file: one a line, ``#`` comments, ``-name`` denies.

    ValueError names the file and line of an entry that is not a name.
    """
    allow: list[str] = []
    deny: list[str] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            target = deny if text.startswith("-") else allow
            entry = text[1:].strip() if text.startswith("-") else text
            try:
                _entry(entry)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
            target.append(entry)
    return allow, deny


def _env_list(name: str) -> list[str]:
    value = os.environ.get(name, "")
    entries = [item.strip() for item in value.split(",")]
    out = [item for item in entries if item]
    for item in out:
        try:
            _entry(item)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return out


@modifier_factory
def from_env() -> DomainFilter:
    """A DomainFilter configured from the environment, for the daemon:
    ``python -m geneve.appliance --rules geneve.rules.egress:from_env``.

    ``GENEVE_EGRESS_ALLOW`` and ``GENEVE_EGRESS_DENY`` (comma-separated entries),
    ``GENEVE_EGRESS_ACTION`` (drop, the default, or reject), ``GENEVE_EGRESS_UNCLASSIFIED``
    (deny, the default, or allow), ``GENEVE_EGRESS_FILE`` (a domain file, read again at
    :meth:`DomainFilter.reload`). A bad value raises ValueError, one line naming it.
    """
    action = os.environ.get("GENEVE_EGRESS_ACTION", "drop").strip().lower() or "drop"
    if action not in ("drop", "reject"):
        raise ValueError(f"GENEVE_EGRESS_ACTION: {action!r} is not drop or reject")
    default = os.environ.get("GENEVE_EGRESS_UNCLASSIFIED", "deny").strip().lower() or "deny"
    if default not in ("deny", "allow"):
        raise ValueError(f"GENEVE_EGRESS_UNCLASSIFIED: {default!r} is not deny or allow")
    allow = _env_list("GENEVE_EGRESS_ALLOW")
    deny = _env_list("GENEVE_EGRESS_DENY")
    file = os.environ.get("GENEVE_EGRESS_FILE") or None
    try:
        return DomainFilter(
            allow,
            deny,
            action,  # type: ignore[arg-type]
            default,  # type: ignore[arg-type]
            file=file,
        )
    except OSError as err:
        raise ValueError(f"GENEVE_EGRESS_FILE: {file}: {err.strerror or err}") from None
