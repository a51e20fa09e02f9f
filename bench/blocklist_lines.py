#!/usr/bin/env python3
"""Writes a blocklist import file shaped like a real one, deterministically.

Usage: blocklist_lines.py [--lines N] [--format ndjson|csv] [--seed S] > FILE

By default 1,000,000 lines: 90 % `ip`, 10 % `cidr`; addresses 70 % IPv4
and 30 % IPv6 (IPv6 clustered in a few hundred /48s, as hosting providers
hand them out); networks IPv4 mostly /24 with some /16-/23, IPv6 mostly
/64 and /48; durations like a threat feed's (a third permanent, the rest
one hour to thirty days); reasons from a short list of scenarios. About
one line in a hundred repeats an earlier entity with another duration, and
a few IPv4 addresses are written in IPv4-mapped IPv6 form, as dual-stack
daemons log them. Nothing touches 127.0.0.0/8 or ::1, the default allowlist.
"""

import argparse
import ipaddress
import json
import random
import sys

REASONS = [
    "ssh brute force", "http scanner", "credential stuffing", "smtp spam source",
    "tor exit (policy)", "botnet c2", "port scan", "exploit attempt: CVE-2021-44228",
    "abuse report, feed \"blocklist.de\"", "wordpress login flood",
]
DURATIONS = [None, None, None, 3600, 14400, 86400, 86400, 604800, 2592000]


def public_v4(rng):
    while True:
        first = rng.randint(1, 223)
        if first not in (10, 127, 169, 172, 192):
            return first, rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254)


def ip_value(rng, v6_prefixes):
    if rng.random() < 0.7:
        a, b, c, d = public_v4(rng)
        text = f"{a}.{b}.{c}.{d}"
        return f"::ffff:{text}" if rng.random() < 0.002 else text
    prefix = rng.choice(v6_prefixes)
    host = (prefix << 80) | rng.getrandbits(80)
    return str(ipaddress.IPv6Address(host))


def cidr_value(rng, v6_prefixes):
    if rng.random() < 0.7:
        length = 24 if rng.random() < 0.8 else rng.randint(16, 23)
        a, b, c, d = public_v4(rng)
        network = ipaddress.IPv4Network(f"{a}.{b}.{c}.{d}/{length}", strict=False)
        return str(network)
    length = rng.choice([64, 64, 64, 48, 48, 56])
    host = (rng.choice(v6_prefixes) << 80) | rng.getrandbits(80)
    network = ipaddress.IPv6Network((host, length), strict=False)
    return str(network)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    v6_prefixes = [(0x2a00 + rng.randint(0, 0x1ff)) << 32 | rng.getrandbits(32) for _ in range(300)]
    out = sys.stdout
    if args.format == "csv":
        out.write("entity_type,value,reason,duration_seconds\n")
    seen = []
    for n in range(args.lines):
        if seen and rng.random() < 0.01:
            entity_type, value = rng.choice(seen)
        elif n % 10 == 9:
            entity_type, value = "cidr", cidr_value(rng, v6_prefixes)
        else:
            entity_type, value = "ip", ip_value(rng, v6_prefixes)
        if len(seen) < 10_000:
            seen.append((entity_type, value))
        reason = rng.choice(REASONS)
        duration = rng.choice(DURATIONS)
        if args.format == "csv":
            quoted = '"' + reason.replace('"', '""') + '"' if ('"' in reason or "," in reason) else reason
            out.write(f"{entity_type},{value},{quoted},{'' if duration is None else duration}\n")
        else:
            line = {"entity_type": entity_type, "value": value, "reason": reason}
            if duration is not None:
                line["duration_seconds"] = duration
            out.write(json.dumps(line, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
