"""End to end with real honeypots: Cowrie and OpenCanary listen on 127.0.0.1,
`valhalla ship` follows their JSON logs into a real `valhalla serve`, a
scripted attacker logs in and runs commands, and the events Valhalla then
lists are checked against what the honeypots logged.

    target/e2e-venv/cowrie/bin/python tests/e2e/honeypots_e2e.py \\
        --valhalla target/debug/valhalla \\
        --cowrie-venv target/e2e-venv/cowrie \\
        --opencanary-venv target/e2e-venv/opencanary

Run it with the Cowrie venv's interpreter (it has paramiko); the venvs come
from tests/e2e/install-honeypots.sh, and tests/e2e/run.sh does both steps.
It builds nothing. All traffic stays
on 127.0.0.1, every wait has a deadline, and every process it starts is
stopped by its pid, also on failure. When run as root, the honeypots run
as `nobody`. The last line is `E2E: N passed, M failed`; the exit status is
non-zero unless every check passed.
"""

import argparse
import ftplib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import paramiko

LOOPBACK = "127.0.0.1"
# No proxy, whatever the environment says: every request goes to 127.0.0.1.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
STARTUP_SECONDS = 30
DELIVERY_SECONDS = 60
NETWORK_TIMEOUT_SECONDS = 10

# The Cowrie records Valhalla stores, and as what (the table in
# src/honeypots/formats/cowrie.rs); the scenario produces no other kind.
COWRIE_STORED = {
    "cowrie.session.connect": "connection",
    "cowrie.login.failed": "auth_attempt",
    "cowrie.login.success": "auth_attempt",
    "cowrie.command.input": "exploitation",
}

# The same for OpenCanary's `logtype` codes this scenario produces (the
# table in src/honeypots/formats/opencanary.rs); 17001 is a Redis `AUTH`.
OPENCANARY_STORED = {
    2000: ("auth_attempt", "ftp"),
    3001: ("auth_attempt", "http"),
    4000: ("connection", "ssh"),
    4001: ("connection", "ssh"),
    4002: ("auth_attempt", "ssh"),
    17001: ("auth_attempt", "redis"),
}

# Cowrie's accounts for this run, in its userdb.txt format: each refused
# guess below is denied by name, and root gets in with any other password.
COWRIE_USERDB = "root:x:!root\nroot:x:!123456\nadmin:x:!admin\nubuntu:x:!ubuntu\nroot:x:*\n"
COWRIE_REFUSED = [("admin", "admin"), ("ubuntu", "ubuntu"), ("root", "123456")]
COWRIE_ACCEPTED = ("root", "Tr0ub4dor&3")
COWRIE_COMMANDS = ["uname -a", "cat /etc/passwd"]


class Checks:
    """Named assertions; a failed one is reported and counted, not raised."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok      {name}")
        else:
            self.failed += 1
            print(f"FAILED  {name}" + (f": {detail}" if detail else ""))
        return condition

    def equal(self, name, actual, expected):
        return self.check(name, actual == expected, f"got {actual!r}, expected {expected!r}")


class Processes:
    """The processes this test started, stopped by pid in reverse order."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.started = []

    def start(self, name, argv, **options):
        log_path = os.path.join(self.log_dir, f"{name}.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **options
            )
        self.started.append((name, process, log_path))
        print(f"started {name} (pid {process.pid})")
        return process

    def stop(self, process, grace_seconds=10):
        """SIGTERM, then SIGKILL after the grace period; returns the exit status."""
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=grace_seconds)
        return process.returncode

    def stop_all(self):
        for name, process, _ in reversed(self.started):
            if process.poll() is None:
                print(f"stopping {name} (pid {process.pid})")
                self.stop(process)

    def print_logs(self, lines=40):
        for name, _, log_path in self.started:
            with open(log_path, "rb") as log:
                tail = log.read().decode("utf-8", "replace").splitlines()[-lines:]
            print(f"---- last lines of {name}'s output")
            print("\n".join(tail))


def free_port():
    """A port nothing listens on now; the kernel picks it, so it is free."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_until(what, condition, timeout_seconds, interval_seconds=0.2):
    """Polls `condition` until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout_seconds} s")
        time.sleep(interval_seconds)


def local_environment(**extra):
    """This process's environment without proxy settings, plus `extra`."""
    environment = {
        name: value for name, value in os.environ.items()
        if name.lower() not in PROXY_VARIABLES
    }
    environment.update(extra)
    return environment


def port_open(port):
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_ports(name, process, ports):
    def all_open():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}")
        return all(port_open(port) for port in ports)

    wait_until(f"{name} listening on {ports}", all_open, STARTUP_SECONDS)


class HoneypotUser:
    """Who the honeypots run as: `nobody` under root, else the caller."""

    def __init__(self):
        self.account = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    def options(self, home):
        environment = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}
        if self.account is None:
            return {"env": environment}
        return {
            "env": environment,
            "user": self.account.pw_uid,
            "group": self.account.pw_gid,
            "extra_groups": [],
        }

    def give_tree(self, path):
        """Hands a folder and all it holds to the honeypot's user."""
        if self.account is None:
            return
        for folder, _, files in os.walk(path):
            for name in [folder] + [os.path.join(folder, file) for file in files]:
                os.chown(name, self.account.pw_uid, self.account.pw_gid)

    def check_can_reach(self, python, work_dir):
        """Fails early, and clearly, when `nobody` cannot reach the venv or
        the work folder."""
        if self.account is None:
            return
        probe = subprocess.run(
            [python, "-c", "import os, sys, twisted; os.listdir(sys.argv[1])", work_dir],
            capture_output=True,
            timeout=STARTUP_SECONDS,
            **self.options("/"),
        )
        if probe.returncode != 0:
            raise RuntimeError(
                f"user nobody cannot run {python} or read {work_dir} (a folder on the "
                f"way closed to others?): {probe.stderr.decode(errors='replace').strip()}"
            )


class Valhalla:
    """`valhalla serve` on a free loopback port with a fresh SQLite file."""

    def __init__(self, binary, work_dir, processes):
        self.binary = binary
        self.port = free_port()
        self.base_url = f"http://{LOOPBACK}:{self.port}"
        self.admin_token = secrets.token_hex(32)
        database_dir = os.path.join(work_dir, "valhalla")
        os.makedirs(database_dir, mode=0o700)
        environment = local_environment(
            VALHALLA_LISTEN=f"{LOOPBACK}:{self.port}",
            VALHALLA_DATABASE_URL=f"sqlite://{database_dir}/valhalla.db",
            VALHALLA_ADMIN_TOKEN=self.admin_token,
        )
        self.process = processes.start("valhalla-serve", [binary, "serve"], env=environment)

    def wait_until_ready(self):
        def ready():
            if self.process.poll() is not None:
                status = self.process.returncode
                raise RuntimeError(f"valhalla serve exited with status {status}")
            try:
                with HTTP.open(f"{self.base_url}/readyz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until("valhalla serve ready", ready, STARTUP_SECONDS)

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.admin_token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with HTTP.open(request, timeout=NETWORK_TIMEOUT_SECONDS) as response:
            return json.load(response)

    def register_honeypot(self, name, honeypot_type):
        """Returns the new instance's id and key."""
        body = {"name": name, "honeypot_type": honeypot_type}
        instance = self.request("POST", "/security/honeypot/instances", body)
        return instance["id"], instance["api_key"]

    def events(self, honeypot_id):
        """Every event of one honeypot from 127.0.0.1, oldest first."""
        events, cursor = [], None
        for _ in range(100):
            query = {"source_ip": LOOPBACK, "honeypot_id": honeypot_id, "limit": 1000}
            if cursor:
                query["cursor"] = cursor
            path = "/security/honeypot/events?" + urllib.parse.urlencode(query)
            page = self.request("GET", path)
            events.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return sorted(events, key=lambda event: event["id"])
        raise RuntimeError("more than 100 pages of events")


def start_shipper(processes, valhalla, name, key, log_format, log_path, work_dir):
    """`valhalla ship` following one honeypot's JSON log; the key goes in
    the environment, where the process list does not show it."""
    environment = local_environment(VALHALLA_SHIP_KEY=key)
    argv = [
        valhalla.binary, "ship",
        "--url", valhalla.base_url,
        "--format", log_format,
        "--state-file", os.path.join(work_dir, f"{name}.state"),
        log_path,
    ]
    return processes.start(name, argv, env=environment)


def pair_events_with_records(events, records_by_key, key_of):
    """Pairs each event with the log record it came from (Valhalla keeps the
    record as the event's payload), taking the records it finds out of
    `records_by_key`; returns the pairs and the ids of unpaired events."""
    pairs, strays = [], []
    for event in events:
        record = records_by_key.pop(key_of(event["payload"] or {}), None)
        if record is None:
            strays.append(event["id"])
        else:
            pairs.append((event, record))
    return pairs, strays


def read_json_lines(path):
    """The complete lines of a JSON log, parsed; a line still being written
    (no newline yet) waits for the next read."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as log:
        lines = log.read().split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


# ---------------------------------------------------------------- Cowrie


def start_cowrie(venv, state_dir, user, processes):
    """Cowrie in the foreground (`twistd -n cowrie`), SSH only, on a free port;
    its etc/cowrie.cfg overrides the bundled defaults."""
    port = free_port()
    for folder in ("etc", "var/log/cowrie", "var/lib/cowrie/downloads"):
        os.makedirs(os.path.join(state_dir, folder))
    json_log = os.path.join(state_dir, "var/log/cowrie/cowrie.json")
    config = f"""[honeypot]
log_path = {state_dir}/var/log/cowrie
state_path = {state_dir}/var/lib/cowrie
download_path = {state_dir}/var/lib/cowrie/downloads
etc_path = {state_dir}/etc
ttylog = false

[ssh]
listen_endpoints = tcp:{port}:interface={LOOPBACK}
sftp_enabled = false
forwarding = false

[telnet]
enabled = false

[output_jsonlog]
enabled = true
logfile = {json_log}
"""
    with open(os.path.join(state_dir, "etc/cowrie.cfg"), "w") as file:
        file.write(config)
    with open(os.path.join(state_dir, "etc/userdb.txt"), "w") as file:
        file.write(COWRIE_USERDB)
    user.give_tree(state_dir)
    argv = [
        f"{venv}/bin/twistd", "--umask=0022", "--nodaemon", "--pidfile=", "--logfile=-", "cowrie",
    ]
    process = processes.start("cowrie", argv, cwd=state_dir, **user.options(state_dir))
    wait_for_ports("cowrie", process, [port])
    return port, json_log


def ssh_client(port, username, password):
    """A logged-in client; a refused login raises, its connection closed."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            LOOPBACK, port, username=username, password=password,
            look_for_keys=False, allow_agent=False,
            timeout=NETWORK_TIMEOUT_SECONDS, banner_timeout=NETWORK_TIMEOUT_SECONDS,
            auth_timeout=NETWORK_TIMEOUT_SECONDS,
        )
    except BaseException:
        client.close()
        raise
    return client


def read_until_prompt(channel, deadline):
    """Reads shell output up to Cowrie's root prompt (`# `)."""
    output = b""
    while not output.rstrip(b" ").endswith(b"#"):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no shell prompt; got {output[-200:]!r}")
        chunk = channel.recv(4096)
        if not chunk:
            raise ConnectionError(f"the shell closed; got {output[-200:]!r}")
        output += chunk
    return output.decode("utf-8", "replace")


def ssh_login_accepted(port, username, password):
    try:
        ssh_client(port, username, password).close()
        return True
    except paramiko.AuthenticationException:
        return False


def attack_cowrie(port, checks):
    """Three refused guesses, one accepted login, commands in a shell."""
    for username, password in COWRIE_REFUSED:
        refused = not ssh_login_accepted(port, username, password)
        checks.check(f"cowrie refuses {username}/{password}", refused)
    client = ssh_client(port, *COWRIE_ACCEPTED)
    try:
        channel = client.invoke_shell()
        channel.settimeout(NETWORK_TIMEOUT_SECONDS)
        deadline = time.monotonic() + 30
        read_until_prompt(channel, deadline)
        outputs = {}
        for command in COWRIE_COMMANDS:
            channel.send(command + "\n")
            outputs[command] = read_until_prompt(channel, deadline)
        channel.send("exit\n")
    finally:
        client.close()
    checks.check("cowrie's shell answers `uname -a`", "Linux" in outputs["uname -a"])
    passwd = outputs["cat /etc/passwd"]
    checks.check("cowrie's shell answers `cat /etc/passwd`", "root:x:0:0" in passwd)


def cowrie_record_key(record):
    return (record.get("eventid"), record.get("session"), record.get("timestamp"))


def wait_for_cowrie_delivery(valhalla, honeypot_id, json_log):
    """Waits until Cowrie has logged every login and closed every session,
    and Valhalla lists one event per stored record of its log; returns both."""
    def delivered():
        records = read_json_lines(json_log)
        opened = {r["session"] for r in records if r["eventid"] == "cowrie.session.connect"}
        closed = {r["session"] for r in records if r["eventid"] == "cowrie.session.closed"}
        logins = [r for r in records if r["eventid"].startswith("cowrie.login.")]
        if opened != closed or len(logins) < len(COWRIE_REFUSED) + 1:
            return None
        expected = [record for record in records if record["eventid"] in COWRIE_STORED]
        events = valhalla.events(honeypot_id)
        return (records, events) if len(events) >= len(expected) else None

    return wait_until("Cowrie's events listed by Valhalla", delivered, DELIVERY_SECONDS, 0.5)


def check_cowrie(records, events, port, checks):
    stored = [record for record in records if record["eventid"] in COWRIE_STORED]
    by_key = {cowrie_record_key(record): record for record in stored}
    pairs, strays = pair_events_with_records(events, by_key, cowrie_record_key)
    checks.equal("cowrie: every event listed is one line of Cowrie's log", strays, [])
    checks.equal("cowrie: every Cowrie line of a stored kind became one event", list(by_key), [])

    for event, record in pairs:
        expected = {
            "event_type": COWRIE_STORED[record["eventid"]],
            "session_id": record["session"],
            "source_ip": LOOPBACK,
            "destination_port": port,
            "protocol": "ssh",
        }
        checks.equal(
            f"cowrie: {record['eventid']} of session {record['session']}: type, session, "
            "addresses and protocol as logged",
            {field: event[field] for field in expected},
            expected,
        )

    refused = [event for event, record in pairs if record["eventid"] == "cowrie.login.failed"]
    accepted = [event for event, record in pairs if record["eventid"] == "cowrie.login.success"]
    checks.equal(
        "cowrie: refused logins, with the usernames and passwords tried",
        [(event["username"], event["password"]) for event in refused],
        COWRIE_REFUSED,
    )
    checks.check(
        "cowrie: refused logins are low, tagged brute_force",
        all(e["threat_level"] == "low" and "brute_force" in e["threat_tags"] for e in refused),
    )
    checks.equal(
        "cowrie: one login accepted",
        [(event["username"], event["password"]) for event in accepted],
        [COWRIE_ACCEPTED],
    )
    if not accepted:
        return
    login = accepted[0]
    checks.equal("cowrie: the accepted login is high", login["threat_level"], "high")
    checks.check(
        "cowrie: the accepted login is tagged credential_compromise",
        "credential_compromise" in login["threat_tags"],
    )
    sessions = {event["session_id"] for event in refused}
    checks.equal("cowrie: each refused guess had a session of its own", len(sessions), 3)
    checks.check("cowrie: the intruder's session is another", login["session_id"] not in sessions)

    commands = [event for event, _ in pairs if event["event_type"] == "exploitation"]
    checks.equal(
        "cowrie: exploitation events carry the commands, in order",
        [event["command"] for event in commands][: len(COWRIE_COMMANDS)],
        COWRIE_COMMANDS,
    )
    checks.check(
        "cowrie: the commands ran in the intruder's session",
        all(event["session_id"] == login["session_id"] for event in commands),
    )
    checks.check(
        "cowrie: the commands are high, tagged exploitation",
        all(e["threat_level"] == "high" and "exploitation" in e["threat_tags"] for e in commands),
    )


# ------------------------------------------------------------ OpenCanary


OPENCANARY_SERVICES = ("ssh", "ftp", "http", "mysql", "redis", "telnet", "git")


def start_opencanary(venv, state_dir, user, processes):
    """OpenCanary in the foreground: what `opencanaryd --dev` runs, without
    its pid file in /var/run. The config is $HOME/.opencanary.conf."""
    if os.path.exists("/etc/opencanaryd/opencanary.conf"):
        raise RuntimeError(
            "/etc/opencanaryd/opencanary.conf exists and would win over this test's config"
        )
    os.makedirs(state_dir)
    ports = {service: free_port() for service in OPENCANARY_SERVICES}
    json_log = os.path.join(state_dir, "opencanary.log")
    config = {
        "device.node_id": "valhalla-e2e",
        "device.listen_addr": LOOPBACK,
        "ip.ignorelist": [],
        "logtype.ignorelist": [],
        "logger": {
            "class": "PyLogger",
            "kwargs": {
                "formatters": {"plain": {"format": "%(message)s"}},
                "handlers": {"file": {"class": "logging.FileHandler", "filename": json_log}},
            },
        },
        "ssh.key_path": state_dir,
        "ssh.version": "SSH-2.0-OpenSSH_5.1p1 Debian-4",
        "ftp.banner": "FTP server ready",
        "http.banner": "Apache/2.2.22 (Ubuntu)",
        "http.skin": "nasLogin",
        "mysql.banner": "5.5.43-0ubuntu0.14.04.1",
        "telnet.banner": "",
        "telnet.honeycreds": [],
    }
    for service, port in ports.items():
        config[f"{service}.enabled"] = True
        config[f"{service}.port"] = port
    with open(os.path.join(state_dir, ".opencanary.conf"), "w") as file:
        json.dump(config, file, indent=2)
    user.give_tree(state_dir)
    argv = [
        f"{venv}/bin/twistd", "--nodaemon", "--pidfile=", "--logfile=-",
        "--python", f"{venv}/bin/opencanary.tac",
    ]
    process = processes.start("opencanary", argv, cwd=state_dir, **user.options(state_dir))
    wait_for_ports("opencanary", process, list(ports.values()))
    return ports, json_log


OPENCANARY_LOGINS = {
    "ftp": ("ftpadmin", "ftp-secret"),
    "http": ("nasadmin", "web-secret"),
    "ssh": ("pi", "raspberry"),
    "redis": (None, "redis-secret"),
}


def attack_opencanary(ports):
    """One login attempt on each of FTP, the web form, SSH and Redis."""
    username, password = OPENCANARY_LOGINS["ftp"]
    ftp = ftplib.FTP()
    ftp.connect(LOOPBACK, ports["ftp"], timeout=NETWORK_TIMEOUT_SECONDS)
    try:
        ftp.login(username, password)
    except ftplib.error_perm:
        pass
    finally:
        ftp.close()

    username, password = OPENCANARY_LOGINS["http"]
    form = urllib.parse.urlencode({"username": username, "password": password}).encode()
    url = f"http://{LOOPBACK}:{ports['http']}/index.html"
    try:
        HTTP.open(url, data=form, timeout=NETWORK_TIMEOUT_SECONDS).close()
    except urllib.error.HTTPError:
        pass

    username, password = OPENCANARY_LOGINS["ssh"]
    try:
        ssh_client(ports["ssh"], username, password).close()
    except paramiko.AuthenticationException:
        pass

    _, password = OPENCANARY_LOGINS["redis"]
    address = (LOOPBACK, ports["redis"])
    with socket.create_connection(address, timeout=NETWORK_TIMEOUT_SECONDS) as redis:
        redis.sendall(f"AUTH {password}\r\n".encode())
        redis.recv(1024)


def opencanary_stored(record):
    """Whether Valhalla stores this line: attacker activity of a known kind."""
    return bool(record.get("src_host")) and record.get("logtype") in OPENCANARY_STORED


def opencanary_record_key(record):
    return (record.get("logtype"), record.get("utc_time"), record.get("src_port"))


def wait_for_opencanary_delivery(valhalla, honeypot_id, json_log):
    """Waits until OpenCanary logged every attempt and Valhalla lists one
    event per stored line of its log; returns both."""
    def delivered():
        records = read_json_lines(json_log)
        expected = [record for record in records if opencanary_stored(record)]
        logins = [r for r in expected if OPENCANARY_STORED[r["logtype"]][0] == "auth_attempt"]
        if len(logins) < len(OPENCANARY_LOGINS):
            return None
        events = valhalla.events(honeypot_id)
        return (records, events) if len(events) >= len(expected) else None

    return wait_until("OpenCanary's events listed by Valhalla", delivered, DELIVERY_SECONDS, 0.5)


def check_opencanary(records, events, ports, checks):
    by_key = {opencanary_record_key(r): r for r in records if opencanary_stored(r)}
    pairs, strays = pair_events_with_records(events, by_key, opencanary_record_key)
    checks.equal("opencanary: every event listed is one line of its log", strays, [])
    checks.equal("opencanary: every line of a stored kind became one event", list(by_key), [])

    for event, record in pairs:
        event_type, protocol = OPENCANARY_STORED[record["logtype"]]
        expected = {
            "event_type": event_type,
            "protocol": protocol,
            "source_ip": LOOPBACK,
            "destination_port": ports[protocol],
        }
        checks.equal(
            f"opencanary: logtype {record['logtype']} from port {record['src_port']}: type, "
            "protocol and addresses",
            {field: event[field] for field in expected},
            expected,
        )

    logins = [event for event, _ in pairs if event["event_type"] == "auth_attempt"]
    for protocol, (username, password) in OPENCANARY_LOGINS.items():
        found = [event for event in logins if event["protocol"] == protocol]
        if not checks.equal(f"opencanary: one auth_attempt over {protocol}", len(found), 1):
            continue
        event = found[0]
        checks.equal(
            f"opencanary: {protocol} credentials",
            (event["username"], event["password"]),
            (username, password),
        )
        checks.equal(f"opencanary: {protocol} login attempt is low", event["threat_level"], "low")


# ------------------------------------------------------------------ main


def run(arguments, work_dir, processes, checks):
    user = HoneypotUser()
    valhalla = Valhalla(arguments.valhalla, work_dir, processes)
    valhalla.wait_until_ready()
    run_cowrie(arguments.cowrie_venv, valhalla, work_dir, user, processes, checks)
    if arguments.opencanary_venv:
        run_opencanary(arguments.opencanary_venv, valhalla, work_dir, user, processes, checks)
    else:
        print("OpenCanary: skipped (no --opencanary-venv)")
    checks.equal("valhalla serve stops cleanly on SIGTERM", processes.stop(valhalla.process), 0)


def run_cowrie(venv, valhalla, work_dir, user, processes, checks):
    user.check_can_reach(f"{venv}/bin/python", work_dir)
    honeypot_id, key = valhalla.register_honeypot("e2e-cowrie", "ssh")
    state_dir = os.path.join(work_dir, "cowrie")
    port, json_log = start_cowrie(venv, state_dir, user, processes)
    shipper = start_shipper(processes, valhalla, "ship-cowrie", key, "cowrie", json_log, work_dir)

    attack_cowrie(port, checks)

    records, events = wait_for_cowrie_delivery(valhalla, honeypot_id, json_log)
    check_cowrie(records, events, port, checks)
    checks.equal("valhalla ship (cowrie) stops cleanly on SIGTERM", processes.stop(shipper), 0)


def run_opencanary(venv, valhalla, work_dir, user, processes, checks):
    user.check_can_reach(f"{venv}/bin/python", work_dir)
    honeypot_id, key = valhalla.register_honeypot("e2e-opencanary", "custom")
    state_dir = os.path.join(work_dir, "opencanary")
    ports, json_log = start_opencanary(venv, state_dir, user, processes)
    shipper = start_shipper(
        processes, valhalla, "ship-opencanary", key, "opencanary", json_log, work_dir
    )

    attack_opencanary(ports)

    records, events = wait_for_opencanary_delivery(valhalla, honeypot_id, json_log)
    check_opencanary(records, events, ports, checks)
    checks.equal("valhalla ship (opencanary) stops cleanly on SIGTERM", processes.stop(shipper), 0)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--valhalla", required=True, help="the valhalla binary")
    parser.add_argument("--cowrie-venv", required=True, help="venv with cowrie and paramiko")
    parser.add_argument("--opencanary-venv", help="venv with opencanary (skipped if absent)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    arguments = parser.parse_args()
    arguments.valhalla = os.path.abspath(arguments.valhalla)
    arguments.cowrie_venv = os.path.abspath(arguments.cowrie_venv)
    if arguments.opencanary_venv:
        arguments.opencanary_venv = os.path.abspath(arguments.opencanary_venv)
    return arguments


class Interrupted(Exception):
    pass


def stop_on_signal(signum, _frame):
    """Turns SIGTERM or SIGINT into an exception, so the cleanup runs; a
    second signal (`timeout` also signals the whole group) must not
    interrupt that cleanup."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(f"stopped by signal {signum}")


def main():
    arguments = parse_arguments()
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    checks = Checks()
    work_dir = tempfile.mkdtemp(prefix="valhalla-e2e-")
    os.chmod(work_dir, 0o755)
    processes = Processes(work_dir)
    started = time.monotonic()
    try:
        run(arguments, work_dir, processes, checks)
    except Exception as error:  # every failure ends in the summary line
        checks.check("the scenario ran to its end", False, f"{type(error).__name__}: {error}")
    finally:
        processes.stop_all()
        if checks.failed:
            processes.print_logs()
        if arguments.keep:
            print(f"work folder kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(f"took {time.monotonic() - started:.1f} s")
    print(f"E2E: {checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
