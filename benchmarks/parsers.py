"""How fast are the inspection parsers? µs per ClientHello and per DNS query, against others.

    python benchmarks/parsers.py           # about half a minute on an idle machine
    python benchmarks/parsers.py --quick   # a few seconds, rougher numbers

Workloads (tests/support/messages.py builds them): a 517-byte ClientHello shaped like Debian
12's curl (31 cipher suites, SNI, ALPN, one X25519 key share, padded to 512 bytes of record as
curl pads), a 1.7 KB ClientHello whose key share is as large as a post-quantum one, and a
typical DNS query (one question, an EDNS OPT record, as dig sends).

Each parser is asked for the same thing, the server name or the query name (checked equal
before any timing): geneve.inspect; dpkt (``dpkt.ssl.TLSRecord``, ``TLSHandshake``, then the
server_name extension's bytes, which dpkt leaves undecoded, read at their fixed offset;
``dpkt.dns.DNS``); scapy (``scapy.layers.tls.record.TLS``, ``scapy.layers.dns.DNS``); and for
the DNS query dnspython (``dns.message.from_wire``), the library issue 15 asked us to weigh.

Timing: each round runs every parser once, in a rotating order, as a batch of calls lasting a
few milliseconds timed with time.perf_counter_ns. The table shows the median over the rounds
of µs per call, and its ratio to geneve.inspect's median of the same workload.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, where its name would hide the
# standard library's inspect module (which dataclasses imports).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.messages import client_hello, dns_query

from geneve.inspect import parse_client_hello, parse_dns_query

Parser = Callable[[bytes], object]


def curl_hello() -> bytes:
    # Debian 12's curl: 31 suites, a 32-byte session id, padding to a 512-byte record.
    base = client_hello("www.example.com", suites=31, alpn=(b"h2", b"http/1.1"))
    return client_hello(
        "www.example.com", suites=31, alpn=(b"h2", b"http/1.1"), padding=512 + 5 - len(base) - 4
    )


def large_hello() -> bytes:
    # X25519MLKEM768's client share alone is 1,216 bytes; one share of 1,522 bytes makes the
    # hello 1.7 KB, the size of a browser's post-quantum hello.
    return client_hello("www.example.com", suites=31, key_share=1216 + 36 + 270)


def dns_message() -> bytes:
    return dns_query((("www.example.com", 1, 1),), ident=0x4A2F, flags=0x0120, edns=True)


def geneve_tls(data: bytes) -> object:
    return parse_client_hello(data).sni


def geneve_dns(data: bytes) -> object:
    return parse_dns_query(data).questions[0].name


def dpkt_tls(data: bytes) -> object:
    import dpkt

    hello = dpkt.ssl.TLSHandshake(dpkt.ssl.TLSRecord(data).data).data
    for kind, body in hello.extensions:
        if kind == 0:  # list length 2, name type 1, name length 2
            return body[5:].decode("ascii").lower()
    return None


def dpkt_dns(data: bytes) -> object:
    import dpkt

    return dpkt.dns.DNS(data).qd[0].name.lower()


def scapy_tls(data: bytes) -> object:
    from scapy.layers.tls.extensions import TLS_Ext_ServerName
    from scapy.layers.tls.record import TLS

    for ext in TLS(data).msg[0].ext:  # type: ignore[no-untyped-call]
        if isinstance(ext, TLS_Ext_ServerName):
            return ext.servernames[0].servername.decode("ascii").lower()
    return None


def scapy_dns(data: bytes) -> object:
    from scapy.layers.dns import DNS

    return DNS(data).qd[0].qname.decode("ascii").rstrip(".").lower()


def dnspython_dns(data: bytes) -> object:
    import dns.message

    return dns.message.from_wire(data).question[0].name.to_text(omit_final_dot=True).lower()


WORKLOADS: dict[str, tuple[Callable[[], bytes], dict[str, Parser]]] = {
    "ClientHello, curl": (
        curl_hello,
        {"geneve.inspect": geneve_tls, "dpkt": dpkt_tls, "scapy": scapy_tls},
    ),
    "ClientHello, large key share": (
        large_hello,
        {"geneve.inspect": geneve_tls, "dpkt": dpkt_tls, "scapy": scapy_tls},
    ),
    "DNS query": (
        dns_message,
        {
            "geneve.inspect": geneve_dns,
            "dnspython": dnspython_dns,
            "dpkt": dpkt_dns,
            "scapy": scapy_dns,
        },
    ),
}


def batch_size(parse: Parser, data: bytes, seconds: float) -> int:
    """Calls that take about ``seconds``."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            parse(data)
        if time.perf_counter() - start > seconds / 4 or n > 1 << 20:
            return max(1, int(n * seconds / max(time.perf_counter() - start, 1e-9)))
        n *= 2


def measure(rounds: int, seconds: float) -> list[tuple[str, str, int, float, float]]:
    rows = []
    for workload, (make, parsers) in WORKLOADS.items():
        data = make()
        answers = {name: parse(data) for name, parse in parsers.items()}
        assert len(set(answers.values())) == 1, answers
        sizes = {name: batch_size(parse, data, seconds) for name, parse in parsers.items()}
        times: dict[str, list[float]] = {name: [] for name in parsers}
        names = list(parsers)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                parse, n = parsers[name], sizes[name]
                start = time.perf_counter_ns()
                for _ in range(n):
                    parse(data)
                times[name].append((time.perf_counter_ns() - start) / n / 1000)
        ours = statistics.median(times["geneve.inspect"])
        for name in names:
            median = statistics.median(times[name])
            rows.append((workload, name, len(data), median, median / ours))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 short rounds")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (at least 5)")
    args = parser.parse_args(argv)
    rounds, seconds = (5, 0.002) if args.quick else (max(args.rounds, 5), 0.02)
    print(f"Python {sys.version.split()[0]}, {rounds} alternated rounds, medians")
    print("| workload | bytes | parser | µs per call | x geneve.inspect |")
    print("| --- | ---: | --- | ---: | ---: |")
    for workload, name, size, median, ratio in measure(rounds, seconds):
        print(f"| {workload} | {size} | {name} | {median:.2f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
