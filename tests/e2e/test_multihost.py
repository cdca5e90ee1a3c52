"""Three Ember hosts on one PostgreSQL and one SeaweedFS bucket (issue 20, part 5): README's
production layout ("Store backends and several hosts"), each host in a network namespace of its
own (netns.py: its own interfaces, routes, nftables tables, conntrack, as on its own machine),
PostgreSQL and SeaweedFS on the LAN's gateway, boto3 in the root namespace spreading requests
over the hosts as a load balancer would.

- a function created through one host lists, runs (its code from the bucket) and changes on the
  others;
- of two conditional updates of one revision sent at once through two hosts exactly one wins;
- a host SIGKILLed in the middle of a stream of Event invocations loses none of them: every
  accepted event runs to completion and the log of each settled run is stored once, under the
  request id its 202 carried; the events it had claimed run again once it restarts (README: at
  least once);
- the killed host's leftovers (its VMs' processes, cgroups and directories, its VM network's
  table, links and address) are gone once it has restarted;
- no host fails to settle a run (PostgreSQL once refused a statement there).

One LAN, one PostgreSQL, one SeaweedFS and the three hosts serve the whole module."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from ember_e2e import (REGION, ROLE, EmberServer, ServerFactory, fleet, make_zip, send,
                       sha256_hex)
from netns import Lan
from postgres import Postgres
from seaweed import BUCKET, Seaweed
from test_durability import MARKER_PY, markers, stored_logs

pytestmark = [pytest.mark.needs_root, pytest.mark.own_backend]  # namespaces, and Invoke runs the function in a VM

HOSTS = 3
VICTIM = 2  # the host the SIGKILL test kills
CGROUP_ROOT = Path("/sys/fs/cgroup")


class Cluster(ServerFactory):
    """The hosts and what they share. A ServerFactory (of the hosts) so that a failed test's
    report carries the hosts' logs (conftest.py)."""

    def __init__(self, tmp: Path, lan: Lan, pg: Postgres, db: str, seaweed: Seaweed,
                 hosts: list[EmberServer]):
        super().__init__(hosts[0].ember_bin, tmp)
        self.servers = hosts
        self.lan = lan
        self.pg = pg
        self.db = db
        self.seaweed = seaweed
        self.hosts = hosts

    def client(self, i: int, retries: int = 1):
        """boto3 against host i with host 0's admin keys: keys are valid on every host."""
        keys = self.hosts[0].admin_keys()
        return boto3.client(
            "lambda", endpoint_url=self.hosts[i].endpoint, region_name=REGION,
            aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
            config=Config(retries={"total_max_attempts": retries}, connect_timeout=5,
                          read_timeout=60))

    def sql(self, query: str) -> str:
        return self.pg.psql(query, db=self.db).stdout.strip()


@pytest.fixture(scope="module")
def cluster(ember_bin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    lan = Lan(HOSTS)
    pg = seaweed = None
    hosts: list[EmberServer] = []
    try:
        pg = Postgres.create(listen=(lan.gateway,))
        seaweed = Seaweed(tmp / "seaweed", ip=lan.gateway)
        db = pg.database().rsplit("/", 1)[1]
        store = f"postgres://postgres@{lan.gateway}:{pg.port}/{db}"
        for i in range(HOSTS):
            host = EmberServer(ember_bin, tmp / f"host{i}", tmp / f"host{i}.log",
                               ("--store", store, "--blobs", seaweed.url("multihost")))
            host.listen_host = lan.address(i)
            host.command_prefix = lan.prefix(i)
            host.extra_env = seaweed.env()
            hosts.append(host)
        # All three start at once on the empty database: one migrates it and makes the admin
        # account, the others wait for the migration lock and get keys of that account.
        errors: list[BaseException] = []

        def start(host: EmberServer) -> None:
            try:
                host.start()
            except BaseException as e:  # reported below, with the others'
                errors.append(e)

        starters = [threading.Thread(target=start, args=(h,)) for h in hosts]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        assert not errors, errors
        yield Cluster(tmp, lan, pg, db, seaweed, hosts)
    finally:
        failures = []
        for host in hosts:
            if host.running:
                rc = host.stop()
                if rc != 0:
                    failures.append(f"host on {host.endpoint} exited with {rc}:\n{host.log_text()}")
        if seaweed is not None:
            seaweed.close()
        if pg is not None:
            pg.close()
        lan.close()
        assert not failures, "\n".join(failures)


def test_hosts_share_one_admin_account_and_answer_from_their_own_namespaces(cluster):
    assert cluster.sql("SELECT count(*) FROM accounts WHERE is_admin") == "1"
    keys = [h.admin_keys()["AccessKeyId"] for h in cluster.hosts]
    assert len(set(keys)) == HOSTS, keys  # a key pair of the one admin account each
    for i, host in enumerate(cluster.hosts):
        assert host.endpoint == f"http://{cluster.lan.address(i)}:{host.port}"
        assert "eth0" in cluster.lan.links(i)
        # What a load balancer's health check reads.
        r = send("GET", f"{host.endpoint}/ember/v1/health")
        assert r.status == 200 and (r.json()["Status"], r.json()["Store"]) == ("ok", "postgres")


def test_of_two_concurrent_creates_of_one_name_on_two_hosts_exactly_one_wins(cluster):
    first, second = cluster.client(0), cluster.client(1)
    for round_ in range(3):
        name = f"raced-{round_}"
        barrier = threading.Barrier(2)
        outcome: dict[str, str] = {}

        def create(who: str, lam) -> None:
            code = make_zip({"app.py": f"def handler(e, c):\n    return '{who}'\n"})
            barrier.wait()
            try:
                lam.create_function(FunctionName=name, Runtime="python3.12", Role=ROLE,
                                    Handler="app.handler", Code={"ZipFile": code})
                outcome[who] = "created"
            except lam.exceptions.ResourceConflictException:
                outcome[who] = "conflict"

        threads = [threading.Thread(target=create, args=(w, lam))
                   for w, lam in (("first", first), ("second", second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcome.values()) == ["conflict", "created"], outcome
        winner = next(w for w, o in outcome.items() if o == "created")
        # The winner's code is the one that runs, through either host.
        second.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1})
        assert cluster.sql(f"SELECT count(*) FROM functions WHERE name = '{name}'") == "1"
        if round_ == 0:
            for lam in (first, second):
                r = lam.invoke(FunctionName=name, Payload=b"{}")
                assert json.loads(r["Payload"].read()) == winner


def test_a_function_created_on_one_host_runs_on_the_others(cluster):
    first, second, third = (cluster.client(i) for i in range(HOSTS))
    code = make_zip({"app.py": "def handler(event, context):\n    return {'v': 1, 'got': event}\n"})
    first.create_function(FunctionName="everywhere", Runtime="python3.12", Role=ROLE,
                          Handler="app.handler", Code={"ZipFile": code})
    second.get_waiter("function_active_v2").wait(FunctionName="everywhere",
                                                 WaiterConfig={"Delay": 1})
    sha = sha256_hex(code)
    # The package is in the bucket (content-addressed), not on the first host alone.
    stored = cluster.seaweed.s3.get_object(Bucket=BUCKET, Key=f"multihost/sha256/{sha[:2]}/{sha}")
    assert stored["Body"].read() == code

    for lam in (first, second, third):
        names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
        assert "everywhere" in names
    for i, lam in ((1, second), (2, third)):
        r = lam.invoke(FunctionName="everywhere", Payload=json.dumps({"host": i}))
        assert r["StatusCode"] == 200 and "FunctionError" not in r, r
        assert json.loads(r["Payload"].read()) == {"v": 1, "got": {"host": i}}
        # Fetched from the bucket into that host's own cache.
        cached = cluster.hosts[i].data_dir / "blob-cache" / "sha256" / sha[:2] / sha
        assert cached.read_bytes() == code

    # New code through the third host; README's bound for the other hosts' caches is a
    # notification's delay (milliseconds): 1 s is ample.
    code2 = make_zip({"app.py": "def handler(event, context):\n    return {'v': 2}\n"})
    third.update_function_code(FunctionName="everywhere", ZipFile=code2)
    third.get_waiter("function_updated_v2").wait(FunctionName="everywhere",
                                                 WaiterConfig={"Delay": 1})
    time.sleep(1.0)
    for lam in (first, second):
        r = lam.invoke(FunctionName="everywhere", Payload=b"{}")
        assert json.loads(r["Payload"].read()) == {"v": 2}

    # Deleted through one host, gone on all.
    second.delete_function(FunctionName="everywhere")
    time.sleep(1.0)
    for lam in (first, third):
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.invoke(FunctionName="everywhere", Payload=b"{}")


def test_of_two_concurrent_revision_updates_from_two_hosts_exactly_one_wins(cluster):
    first, second, third = (cluster.client(i) for i in range(HOSTS))
    first.create_function(FunctionName="contended", Runtime="python3.12", Role=ROLE,
                          Handler="app.handler",
                          Code={"ZipFile": make_zip({"app.py": "def handler(e, c):\n    return 1\n"})})
    for round_ in range(4):
        revision = third.get_function_configuration(FunctionName="contended")["RevisionId"]
        barrier = threading.Barrier(2)
        outcome: dict[str, str] = {}

        def update(name: str, lam) -> None:
            barrier.wait()
            try:
                r = lam.update_function_configuration(
                    FunctionName="contended", Description=f"{name} {round_}", RevisionId=revision)
                outcome[name] = r["RevisionId"]
            except lam.exceptions.PreconditionFailedException:
                outcome[name] = "lost"

        threads = [threading.Thread(target=update, args=(n, lam))
                   for n, lam in (("first", first), ("second", second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [n for n, r in outcome.items() if r != "lost"]
        assert len(outcome) == 2 and len(winners) == 1, outcome
        # Within README's bound for other hosts' caches (milliseconds; 1 s is ample), every host
        # reads the winner's write, under the revision its answer carried.
        time.sleep(1.0)
        for lam in (first, second, third):
            seen = lam.get_function_configuration(FunctionName="contended")
            assert (seen["Description"], seen["RevisionId"]) == \
                (f"{winners[0]} {round_}", outcome[winners[0]])


def cgroup_prefixes(data_dir: Path) -> list[Path]:
    """The host's VMs' cgroup subtrees (serve.rs: `ember/` and 12 hex of sha256(data dir)), in
    the v2 hierarchy or in each v1 controller's."""
    relative = Path("ember") / hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:12]
    return [CGROUP_ROOT / relative] + [d / relative for d in CGROUP_ROOT.iterdir() if d.is_dir()]


def cgroups_of(data_dir: Path) -> dict[Path, int]:
    """Every cgroup below the host's subtrees (not the subtrees themselves): path -> inode (a
    recreated one gets a new inode)."""
    found = {}
    for root in cgroup_prefixes(data_dir):
        for dirpath, _dirs, _files in os.walk(root):
            if Path(dirpath) != root:
                found[Path(dirpath)] = os.stat(dirpath).st_ino
    return found


def processes_in(cgroups) -> set[tuple[int, str]]:
    """(pid, start time) of every process in `cgroups`: a pid reused later is told apart."""
    found = set()
    for path in cgroups:
        try:
            pids = (path / "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            start = process_start(int(pid))
            if start is not None:
                found.add((int(pid), start))
    return found


def process_start(pid: int) -> str | None:
    """The start time of a live process (a zombie has died: its parent has not reaped it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def vm_dirs(data_dir: Path) -> dict[str, int]:
    """The host's VMs' directories (their roots' mount points, serve.rs: `DATA_DIR/vms` is the
    VM driver's state dir): name -> inode."""
    root = data_dir / "vms" / "vms"
    return {p.name: p.stat().st_ino for p in root.iterdir()} if root.is_dir() else {}


def clean_log(host: EmberServer) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", host.log_text())


def vm_links(links: dict[str, int]) -> dict[str, int]:
    return {name: index for name, index in links.items() if name.startswith("em")}


def test_a_configuration_change_on_one_host_is_seen_by_the_others_at_once(cluster):
    """README's bound for other hosts' caches: a change is seen once its NOTIFY arrives
    (milliseconds), well inside the old 1 s expiry, and still after the hosts' listening
    connections were killed."""
    first, second, third = (cluster.client(i) for i in range(HOSTS))
    code = make_zip({"app.py": "import os\ndef handler(e, c):\n    return os.environ['VAL']\n"})
    first.create_function(FunctionName="notified", Runtime="python3.12", Role=ROLE,
                          Handler="app.handler", Code={"ZipFile": code},
                          Environment={"Variables": {"VAL": "0"}})
    second.get_waiter("function_active_v2").wait(FunctionName="notified",
                                                 WaiterConfig={"Delay": 1})

    def seen(lam, value: str, within: float) -> float:
        """Invokes until the function answers `value`; how long after the first attempt the
        invocation that answered it was sent (a cold start's time is not the cache's)."""
        start = time.monotonic()
        while True:
            sent = time.monotonic() - start
            r = lam.invoke(FunctionName="notified", Payload=b"{}")
            got = json.loads(r["Payload"].read())
            if got == value:
                return sent
            assert time.monotonic() - start < within, f"still {got!r}, not {value!r}"
            time.sleep(0.01)

    for lam in (second, third):  # each caches the function
        seen(lam, "0", 30)
    for round_, value in enumerate(("1", "2", "3")):
        if round_ == 2:
            # The listening connections die (a database failover, a proxy's idle reaper): the
            # hosts cache nothing until they listen again, so the change is still seen at once.
            killed = cluster.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE query ILIKE 'LISTEN%'")
            assert int(killed) >= HOSTS, killed
        first.update_function_configuration(FunctionName="notified",
                                            Environment={"Variables": {"VAL": value}})
        for lam in (second, third):
            took = seen(lam, value, 0.25)
            assert took < 0.25, took
    first.delete_function(FunctionName="notified")


def test_provisioned_concurrency_is_the_clusters_split_among_the_hosts(cluster):
    """README's "Provisioned concurrency" with several hosts: N environments in all, each host
    keeping its share (here 4 over 3 hosts: 2, 1, 1), Get through any host answering the sum,
    each host's invocations warm on its own, and a Delete through another host releasing all."""
    first, second, third = (cluster.client(i) for i in range(HOSTS))
    first.create_function(FunctionName="shared-pc", Runtime="python3.12", Role=ROLE,
                          Handler="app.handler",
                          Code={"ZipFile": make_zip({"app.py": "def handler(e, c):\n    return 'pc'\n"})})
    first.get_waiter("function_active_v2").wait(FunctionName="shared-pc", WaiterConfig={"Delay": 1})
    version = first.publish_version(FunctionName="shared-pc")["Version"]
    first.put_provisioned_concurrency_config(FunctionName="shared-pc", Qualifier=version,
                                             ProvisionedConcurrentExecutions=4)

    def shares() -> list[tuple[int, int]]:
        """(requested, ready) of the config on each host's own fleet."""
        out = []
        for host in cluster.hosts:
            mine = [p for p in fleet(host)["Provisioned"] if p["FunctionName"] == "shared-pc"]
            out.append((sum(p["Requested"] for p in mine), sum(p["Ready"] for p in mine)))
        return out

    deadline = time.monotonic() + 60
    while True:
        seen = shares()
        if sorted(r for r, _ in seen) == [1, 1, 2] and all(r == ready for r, ready in seen):
            break
        assert time.monotonic() < deadline, f"shares (requested, ready) per host: {seen}"
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while True:
        got = third.get_provisioned_concurrency_config(FunctionName="shared-pc", Qualifier=version)
        if got["Status"] == "READY":
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    assert got["RequestedProvisionedConcurrentExecutions"] == 4
    assert got["AvailableProvisionedConcurrentExecutions"] == 4
    assert got["AllocatedProvisionedConcurrentExecutions"] == 4
    listed = second.list_provisioned_concurrency_configs(FunctionName="shared-pc")
    assert [c["AvailableProvisionedConcurrentExecutions"]
            for c in listed["ProvisionedConcurrencyConfigs"]] == [4]
    for lam in (first, second, third):
        r = lam.invoke(FunctionName="shared-pc", Qualifier=version, Payload=b"{}")
        assert json.loads(r["Payload"].read()) == "pc"
        assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm", r["ResponseMetadata"]

    second.delete_provisioned_concurrency_config(FunctionName="shared-pc", Qualifier=version)
    deadline = time.monotonic() + 10
    while (seen := shares()) != [(0, 0)] * HOSTS:
        assert time.monotonic() < deadline, f"left after the delete: {seen}"
        time.sleep(0.2)
    with pytest.raises(first.exceptions.ProvisionedConcurrencyConfigNotFoundException):
        first.get_provisioned_concurrency_config(FunctionName="shared-pc", Qualifier=version)
    first.delete_function(FunctionName="shared-pc")


def test_a_host_killed_during_a_stream_of_events_loses_none_and_leaks_nothing(cluster):
    """A stream of Event invocations spread over the three hosts; one host is SIGKILLed while it
    has claimed events, the stream goes on through the other two (as a load balancer's health
    check would take it out), and the host is restarted on its data dir and taken back. Every
    accepted event runs to completion, with the log of each settled run (one, unless a run
    failed and was retried) stored once, under the request id its 202 carried: the events the
    killed host had claimed are released when it restarts (a kill cuts a run short before it
    is settled, so such an event may have run twice: at least once, README). And what the
    killed host left (its VMs' processes, cgroups and directories, its links) is gone once it
    has restarted."""
    try:
        stream_kill_and_restart(cluster)
    finally:
        # Whatever failed, the module's other tests get their three hosts back.
        if not cluster.hosts[VICTIM].running:
            cluster.hosts[VICTIM].start()


def stream_kill_and_restart(cluster: Cluster) -> None:
    victim = VICTIM
    lam = cluster.client(0)
    lam.create_function(FunctionName="marker", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": make_zip({"app.py": MARKER_PY})},
                        # A timeout (and so a lease, timeout + 120 s) the test never waits out:
                        # the killed host's claims must come back by its restart.
                        Timeout=120)
    clients = [cluster.client(i) for i in range(HOSTS)]
    up = [True] * HOSTS
    restarted = threading.Event()
    accepted: dict[str, str] = {}
    unanswered: list[str] = []
    total = 150

    def stream():
        for n in range(total):
            if n == total - 20 and not restarted.wait(120):
                return  # the last events go out once every host is back
            event_id = f"ev-{n:03}"
            target = n
            while True:
                while not up[target % HOSTS]:
                    target += 1
                try:
                    r = clients[target % HOSTS].invoke(
                        FunctionName="marker", InvocationType="Event",
                        Payload=json.dumps({"id": event_id}))
                    assert r["StatusCode"] == 202
                    accepted[event_id] = r["ResponseMetadata"]["RequestId"]
                except botocore.exceptions.EndpointConnectionError:
                    target += 1  # never sent: to the next host
                    continue
                except Exception:  # the host died under it: accepted or not
                    unanswered.append(event_id)
                break
            time.sleep(0.02)

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    host_id = (cluster.hosts[victim].data_dir / "host-id").read_text().strip()
    claimed_by_victim = ("SELECT count(*) FROM event_invocations "
                         f"WHERE claimed_by = '{host_id}'")
    victim_host = cluster.hosts[victim]
    # Kill it once it holds claims and runs VMs, some way into the stream.
    deadline = time.monotonic() + 90
    while True:
        if (int(cluster.sql(claimed_by_victim) or 0) > 0 and len(accepted) >= 30
                and vm_links(cluster.lan.links(victim)) and cgroups_of(victim_host.data_dir)):
            break
        assert time.monotonic() < deadline, "the victim claimed no event, or ran no VM"
        time.sleep(0.05)
    # What it has, read just before the kill (its VMs may die on their own after it).
    cgroups_before = cgroups_of(victim_host.data_dir)
    vms_left = processes_in(cgroups_before)
    vm_dirs_left = vm_dirs(victim_host.data_dir)
    links_left = vm_links(cluster.lan.links(victim))
    up[victim] = False
    victim_host.kill()
    accepted_at_kill = len(accepted)
    claimed_at_kill = int(cluster.sql(claimed_by_victim))
    assert claimed_at_kill > 0
    assert sender.is_alive(), "the stream had ended before the kill"

    assert vm_dirs_left and links_left and cgroups_before, "the killed host ran no VM"

    # The others take the stream meanwhile.
    deadline = time.monotonic() + 30
    while len(accepted) < accepted_at_kill + 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(accepted) >= accepted_at_kill + 10, "the other hosts stopped accepting events"

    old_block = re.findall(r"VM network ready block=(\S+)", clean_log(victim_host))[-1]
    victim_host.start()
    up[victim] = True
    restarted.set()
    log = clean_log(victim_host)
    assert re.search(r"re-queued Event invocations[^\n]*released=[1-9]", log), log[-4000:]
    # Its network's leftovers (nftables table, links, gateway address) in its namespace, named
    # by its dead block, went with the sweep at start.
    sweep = re.search(r"removed the network leftovers of ember servers that died report="
                      r"SweepReport \{ blocks: \[([^\]]*)\], tables: (\d+)", log)
    assert sweep and old_block in sweep[1].split(", ") and int(sweep[2]) >= 1, log[-4000:]

    # Swept: no process of its old VMs lives, none of its old cgroups or links is left.
    survivors = {p for p in vms_left if process_start(p[0]) == p[1]}
    assert not survivors, f"the killed host's VM processes survived its restart: {survivors}"
    cgroups_after = cgroups_of(victim_host.data_dir)
    old = {p for p, ino in cgroups_before.items() if cgroups_after.get(p) == ino}
    assert not old, f"the killed host's cgroups survived its restart: {sorted(old)}"
    vm_dirs_after = vm_dirs(victim_host.data_dir)
    kept = {n for n, ino in vm_dirs_left.items() if vm_dirs_after.get(n) == ino}
    assert not kept, f"the killed host's VM directories survived its restart: {sorted(kept)}"
    links_after = cluster.lan.links(victim)
    kept = {n for n, index in links_left.items() if links_after.get(n) == index}
    assert not kept, f"the killed host's links survived its restart: {sorted(kept)}"

    sender.join(120)
    assert not sender.is_alive()
    assert len(accepted) + len(unanswered) == total

    # Drain, then: every accepted event ran, and its logs are under its request id.
    deadline = time.monotonic() + 120
    while cluster.sql("SELECT count(*) FROM event_invocations") != "0":
        assert time.monotonic() < deadline, cluster.sql("SELECT * FROM event_invocations")
        time.sleep(0.2)
    runs = markers(stored_logs(cluster.hosts[0], "marker"))
    missing = sorted(set(accepted) - set(runs))
    assert not missing, f"accepted events that never ran: {missing}"
    # Once each, unless a run failed (on a machine too busy to start a container within its
    # bounds, say): a failed run is retried as Lambda retries it (MaximumRetryAttempts), and
    # each attempt that settled keeps its log, under the same request id.
    retried = {e: r for e, r in runs.items() if len(r) > 1}
    for event_id, request_id in accepted.items():
        assert set(runs[event_id]) == {request_id}, (event_id, runs[event_id])
        assert len(runs[event_id]) <= 3, (event_id, runs[event_id])  # 1 + 2 retries at most
    for event_id in unanswered:
        assert len(runs.get(event_id, [])) <= 1, (event_id, runs[event_id])
    assert set(runs) <= set(accepted) | set(unanswered)
    # With the database up, no host ever failed to settle a run (PostgreSQL refused one a
    # statement once: a NULL init time had fixed its parameter's type, ARCHITECTURE.md).
    for host in cluster.hosts:
        assert "cannot settle an event" not in clean_log(host), clean_log(host)[-4000:]
    print(f"accepted {len(accepted)} (at the kill {accepted_at_kill}; the killed host had "
          f"claimed {claimed_at_kill}); unanswered {len(unanswered)}; retried after a failed "
          f"run: {len(retried)}")
