"""Real CrowdSec clients pulling Valhalla's blocklist.

Starts a `valhalla serve` of its own (SQLite in a temporary folder, on
127.0.0.1), blocks and unblocks through Valhalla's API, and checks what the
clients make of it:

- `clients`: pycrowdsec's stream and query clients (run in this Python),
  then Debian's crowdsec-custom-bouncer with a script that writes down
  every call it gets;
- `firewall`: Debian's crowdsec-firewall-bouncer in nftables mode, whose
  sets must then hold exactly the active blocklist. Run it inside a network
  namespace of its own (run.sh does), since it changes the ruleset.

Every wait is bounded. Results go to stdout and, as `PASSED FAILED`, to the
file given with --results.
"""

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

WAIT_SECONDS = 25
RESULTS = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        RESULTS["passed"] += 1
        print(f"ok    {name}")
    else:
        RESULTS["failed"] += 1
        print(f"FAIL  {name} {detail}")
    sys.stdout.flush()
    return condition


def wait_until(probe, seconds=WAIT_SECONDS, interval=0.25):
    """Calls probe until it returns something true; returns its last value."""
    deadline = time.monotonic() + seconds
    value = probe()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = probe()
    return value


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Valhalla:
    """A server of this test's own, and its admin API."""

    def __init__(self, binary, folder):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin = secrets.token_hex(32)
        self.log = open(os.path.join(folder, "valhalla.log"), "w")
        environment = dict(os.environ)
        environment.update(
            VALHALLA_LISTEN=f"127.0.0.1:{self.port}",
            VALHALLA_DATABASE_URL=f"sqlite://{folder}/valhalla.db",
            VALHALLA_ADMIN_TOKEN=self.admin,
        )
        self.process = subprocess.Popen(
            [binary, "serve"], env=environment, stdout=self.log, stderr=subprocess.STDOUT
        )
        ready = wait_until(self._ready, seconds=30)
        if not ready:
            raise RuntimeError("valhalla did not become ready")

    def _ready(self):
        try:
            with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.log.close()

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.admin}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def bouncer_key(self, name):
        status, body = self.call("POST", "/security/tokens", {"name": name, "role": "bouncer"})
        assert status == 201, body
        return body["token"]

    def block(self, kind, value, seconds=None, reason="e2e"):
        body = {"entity_type": kind, "value": value, "reason": reason}
        if seconds is not None:
            body["duration_seconds"] = seconds
        return self.call("POST", "/security/policy/blocks", body)

    def deactivate(self, block_id):
        status, body = self.call(
            "POST", f"/security/policy/blocks/{block_id}/deactivate", {"reason": "e2e"}
        )
        assert status == 200, body

    def allowlist(self, entries):
        status, body = self.call("POST", "/security/policy/", {"allowlist": entries})
        assert status == 200, body


def held_by(client):
    """What a pycrowdsec stream client holds; its cache writes a single
    address as a /32 or /128 network."""
    held = {}
    for value, action in client.get_current_decisions().items():
        for host_suffix in ("/32", "/128"):
            if value.endswith(host_suffix):
                value = value[: -len(host_suffix)]
        held[value] = action
    return held


def pycrowdsec_clients(valhalla):
    from pycrowdsec.client import QueryClient, StreamClient, StreamDecisionClient

    key = valhalla.bouncer_key("pycrowdsec")
    _, kept = valhalla.block("ip", "192.0.2.10")
    _, dropped = valhalla.block("ip", "192.0.2.11")
    valhalla.block("cidr", "198.51.100.0/24")
    valhalla.block("user", "mallory")

    client = StreamClient(api_key=key, lapi_url=valhalla.base + "/", scopes=("ip", "range"))
    client.cycle("true")
    held = held_by(client)
    check(
        "pycrowdsec: the startup pull holds every active ip and range",
        held == {"192.0.2.10": "ban", "192.0.2.11": "ban", "198.51.100.0/24": "ban"},
        held,
    )
    check(
        "pycrowdsec: an address inside a range is banned",
        client.get_action_for("198.51.100.7") == "ban",
    )

    _, added = valhalla.block("ip", "203.0.113.5")
    valhalla.deactivate(dropped["id"])
    client.cycle("false")
    held = held_by(client)
    check("pycrowdsec: a new block arrives as new", held.get("203.0.113.5") == "ban", held)
    check("pycrowdsec: a deactivation arrives as deleted", "192.0.2.11" not in held, held)

    valhalla.block("ip", "203.0.113.6", seconds=2)
    client.cycle("false")
    check(
        "pycrowdsec: a short block arrives",
        held_by(client).get("203.0.113.6") == "ban",
    )
    time.sleep(3)
    client.cycle("false")
    held = held_by(client)
    check("pycrowdsec: an expiry arrives as deleted", "203.0.113.6" not in held, held)

    status, _ = valhalla.block("ip", "127.0.0.2")
    check("valhalla: an allowlisted address cannot be blocked", status == 409, status)
    valhalla.allowlist(["127.0.0.0/8", "::1/128", "203.0.113.0/24"])
    client.cycle("false")
    held = held_by(client)
    check(
        "pycrowdsec: an address that becomes allowlisted is deleted",
        "203.0.113.5" not in held and held.get("192.0.2.10") == "ban",
        held,
    )

    late = StreamDecisionClient(api_key=key, lapi_url=valhalla.base + "/")
    late.cycle("true")
    arrived = [decision["value"] for decision in late.get_new_decision()]
    check(
        "pycrowdsec: an allowlisted address never arrives",
        sorted(arrived) == ["192.0.2.10", "198.51.100.0/24"],
        arrived,
    )

    query = QueryClient(api_key=key, lapi_url=valhalla.base + "/")
    found = query.get_decisions_for("198.51.100.7")
    check(
        "pycrowdsec: a live query finds the containing range",
        [decision["value"] for decision in found or []] == ["198.51.100.0/24"],
        found,
    )
    check(
        "pycrowdsec: a live query for a clean address is null",
        query.get_decisions_for("192.0.2.99") is None,
    )
    check("pycrowdsec: the decision type is ban", query.get_action_for("192.0.2.10") == "ban")
    del kept, added


def run_bouncer(binary, config_path, log_path):
    log = open(log_path, "w")
    process = subprocess.Popen(
        [binary, "-c", config_path], stdout=log, stderr=subprocess.STDOUT
    )
    return process, log


def stop_bouncer(process, log):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    log.close()


def custom_bouncer(valhalla, folder):
    key = valhalla.bouncer_key("custom-bouncer")
    record = os.path.join(folder, "calls.txt")
    script = os.path.join(folder, "record.sh")
    with open(script, "w") as out:
        out.write(f'#!/bin/sh\necho "$@" >> "{record}"\n')
    os.chmod(script, 0o755)
    config = os.path.join(folder, "custom-bouncer.yaml")
    with open(config, "w") as out:
        out.write(
            f"bin_path: {script}\n"
            "feed_via_stdin: false\n"
            "total_retries: 0\n"
            "scenarios_containing: []\n"
            "scenarios_not_containing: []\n"
            "origins: []\n"
            f"piddir: {folder}\n"
            "update_frequency: 1s\n"
            "cache_retention_duration: 1s\n"
            "daemonize: false\n"
            "log_mode: stdout\n"
            "log_level: info\n"
            f"api_url: {valhalla.base}/\n"
            f"api_key: {key}\n"
            "prometheus:\n  enabled: false\n"
        )

    def calls():
        if not os.path.exists(record):
            return []
        with open(record) as lines:
            return [line.split() for line in lines if line.strip()]

    def has(verb, value):
        return any(call[:2] == [verb, value] for call in calls())

    _, first = valhalla.block("ip", "192.0.2.20")
    process, log = run_bouncer(
        "crowdsec-custom-bouncer", config, os.path.join(folder, "custom-bouncer.log")
    )
    try:
        check(
            "custom bouncer: the startup pull calls add",
            wait_until(lambda: has("add", "192.0.2.20")),
            calls(),
        )
        valhalla.block("cidr", "198.51.100.0/24")
        check(
            "custom bouncer: a new range calls add",
            wait_until(lambda: has("add", "198.51.100.0/24")),
            calls(),
        )
        valhalla.deactivate(first["id"])
        check(
            "custom bouncer: a deactivation calls del",
            wait_until(lambda: has("del", "192.0.2.20")),
            calls(),
        )
        valhalla.block("ip", "192.0.2.21", seconds=2)
        check(
            "custom bouncer: a short block calls add",
            wait_until(lambda: has("add", "192.0.2.21")),
            calls(),
        )
        check(
            "custom bouncer: its expiry calls del",
            wait_until(lambda: has("del", "192.0.2.21")),
            calls(),
        )
        durations_positive = all(
            call[0] != "add" or (len(call) > 2 and call[2].lstrip("-").isdigit()
                                 and int(call[2]) > 0)
            for call in calls()
        )
        check("custom bouncer: every add has a positive duration", durations_positive, calls())
        check("custom bouncer: is still running", process.poll() is None)
    finally:
        stop_bouncer(process, log)
    print("custom bouncer calls:", calls())


def nft_elements(family, table, set_name):
    """The elements of an nftables set, as addresses and networks."""
    listed = subprocess.run(
        ["nft", "-j", "list", "set", family, table, set_name],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if listed.returncode != 0:
        return None
    elements = set()
    for item in json.loads(listed.stdout)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, dict) and "elem" in element:
                element = element["elem"]["val"]
            if isinstance(element, dict) and "prefix" in element:
                prefix = element["prefix"]
                element = f"{prefix['addr']}/{prefix['len']}"
            elif isinstance(element, dict) and "range" in element:
                element = "-".join(element["range"])
            elements.add(str(element))
    return elements


def firewall_bouncer(valhalla, folder):
    key = valhalla.bouncer_key("firewall-bouncer")
    config = os.path.join(folder, "firewall-bouncer.yaml")
    with open(config, "w") as out:
        out.write(
            "mode: nftables\n"
            f"pid_dir: {folder}\n"
            "update_frequency: 1s\n"
            "daemonize: false\n"
            "log_mode: stdout\n"
            "log_level: info\n"
            f"api_url: {valhalla.base}/\n"
            f"api_key: {key}\n"
            "insecure_skip_verify: false\n"
            "disable_ipv6: false\n"
            "deny_action: DROP\n"
            "deny_log: false\n"
            "supported_decisions_types:\n  - ban\n"
            "blacklists_ipv4: crowdsec-blacklists\n"
            "blacklists_ipv6: crowdsec6-blacklists\n"
            "nftables:\n"
            "  ipv4:\n    enabled: true\n    set-only: false\n"
            "    table: crowdsec\n    chain: crowdsec-chain\n"
            "  ipv6:\n    enabled: true\n    set-only: false\n"
            "    table: crowdsec6\n    chain: crowdsec6-chain\n"
            "prometheus:\n  enabled: false\n"
        )

    _, gone = valhalla.block("ip", "192.0.2.30")
    valhalla.block("ip", "2001:db8::30")
    valhalla.block("ip", "::ffff:192.0.2.31")

    def sets():
        return (
            nft_elements("ip", "crowdsec", "crowdsec-blacklists"),
            nft_elements("ip6", "crowdsec6", "crowdsec6-blacklists"),
        )

    def holds(v4, v6):
        return lambda: sets() == (set(v4), set(v6))

    process, log = run_bouncer(
        "crowdsec-firewall-bouncer", config, os.path.join(folder, "firewall-bouncer.log")
    )
    try:
        check(
            "firewall bouncer: its sets hold exactly the active blocklist at start",
            wait_until(holds({"192.0.2.30", "192.0.2.31"}, {"2001:db8::30"})),
            sets(),
        )
        valhalla.deactivate(gone["id"])
        valhalla.block("ip", "192.0.2.32")
        valhalla.block("ip", "2001:db8::32", seconds=3)
        check(
            "firewall bouncer: a new block and a deactivation reach the sets",
            wait_until(holds({"192.0.2.31", "192.0.2.32"}, {"2001:db8::30", "2001:db8::32"})),
            sets(),
        )
        check(
            "firewall bouncer: an expiry leaves the set",
            wait_until(holds({"192.0.2.31", "192.0.2.32"}, {"2001:db8::30"})),
            sets(),
        )
        valhalla.block("cidr", "198.51.100.0/24")
        valhalla.block("cidr", "2001:db8:abcd::/48")
        # crowdsec-firewall-bouncer 0.0.25 (Debian 12) writes a Range
        # decision as the range's first address: the fault of FC-04, in the
        # bouncer (its set has no `interval` flag). Valhalla sends the range
        # with its prefix (tests/api/crowdsec.rs, fc_04); here the range
        # must at least reach the sets, and what the bouncer made of it is
        # printed.
        def ranges_arrived():
            v4, v6 = sets()
            return (v4 or set()) & {"198.51.100.0", "198.51.100.0/24"} and (
                v6 or set()
            ) & {"2001:db8:abcd::", "2001:db8:abcd::/48"}

        check(
            "firewall bouncer: range decisions reach the sets",
            wait_until(ranges_arrived),
            sets(),
        )
        print("firewall bouncer: the sets after two Range decisions:", sets())
        check("firewall bouncer: is still running", process.poll() is None)
    finally:
        stop_bouncer(process, log)
        with open(os.path.join(folder, "firewall-bouncer.log")) as lines:
            tail = lines.readlines()[-15:]
        print("firewall bouncer log (last lines):\n" + "".join(tail))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--valhalla", required=True)
    parser.add_argument("--part", choices=["clients", "firewall"], required=True)
    parser.add_argument("--results", required=True)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="valhalla-crowdsec-") as folder:
        valhalla = Valhalla(arguments.valhalla, folder)
        try:
            if arguments.part == "clients":
                pycrowdsec_clients(valhalla)
                custom_bouncer(valhalla, folder)
            else:
                firewall_bouncer(valhalla, folder)
        except Exception as error:  # a crash is a failure, reported as one
            check(f"{arguments.part}: ran to the end", False, repr(error))
        finally:
            valhalla.stop()
            with open(os.path.join(folder, "valhalla.log")) as lines:
                errors = [line for line in lines if "ERROR" in line]
            check(f"{arguments.part}: the server logged no error", not errors, errors)

    with open(arguments.results, "w") as out:
        out.write(f"{RESULTS['passed']} {RESULTS['failed']}\n")
    print(f"{arguments.part}: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
