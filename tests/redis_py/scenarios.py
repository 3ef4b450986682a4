#!/usr/bin/env python3
"""redis-py against redis-maint-sim under load: the scenarios .ci/run checks
for every third-party client (node-redis: tests/node_redis/accept.mjs).

  window   MIGRATING and FAILING_OVER with every reply held 700 ms, past the
           250 ms socket timeout: 0 timeouts with notifications on; the
           control run with notifications off must time out.
  moving   MOVING to a new port, 8 threads with a client each, then a new
           client per thread after the deadline, configured with the address
           the MOVING named: 0 failed. (redis-py 8.1 takes only the host from
           MOVING and keeps its port: expected to fail; see --only.)
  stay     MOVING SAME-PORT STAY-OPEN, 8 threads, then a new client per thread
           after the deadline at the configured address: 0 failed.
  cluster  a slot migration of 100 slots under 8 threads of RedisCluster,
           started through the HTTP control API (`slot_migrate`, effect
           remove-add, as the fault injector takes it): 0 failed commands and
           0 MOVED forwarded by the simulator.
  http     the fault injector's `sequence_of_actions` over HTTP: a MIGRATING
           and a FAILING_OVER window with replies held 700 ms (socket timeout
           250 ms), then a MOVING SAME-PORT STAY-OPEN, under 8 threads; new
           clients after it at the configured address: 0 failed, the action
           reported `success`.

It shares the venv and helpers of validate.py. Exit status 0 when every
check of the selected scenarios passes.

Usage:
    python3 tests/redis_py/scenarios.py --sim-bin target/debug/redis-maint-sim [--only window,stay,cluster,http]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import validate  # noqa: E402  (the venv bootstrap and process helpers)
from validate import CHILDREN, as_entries, cleanup, free_port, start_redis, start_sim, watchdog  # noqa: E402

RESULTS = []


def check(cond, what):
    print(f"{'ok' if cond else 'FAIL'}: {what}", flush=True)
    RESULTS.append(bool(cond))


class Tally:
    """Counts SET-then-GET round trips from many threads."""

    def __init__(self):
        self.ok = self.failed = self.new = 0
        self.errors = []
        self.lock = threading.Lock()

    def set_get(self, c, key, n):
        try:
            c.set(key, n)
            if c.get(key) != str(n):
                raise RuntimeError(f"{key}: read back wrong")
            with self.lock:
                self.ok += 1
        except Exception as e:  # any failure is what this counts
            with self.lock:
                self.failed += 1
                self.errors.append(f"{type(e).__name__}: {e}")

    def summary(self):
        return f"{self.ok} ok, {self.failed} failed {self.errors[:3] if self.errors else ''}"


def admin_for(redis, addr):
    return redis.Redis(host=addr[0], port=addr[1], protocol=2, decode_responses=True, socket_timeout=5)


class FaultInjector:
    """The HTTP API in the shape redis-py's own suite speaks to its fault
    injector: POST /action, then GET /action/{id} until it is done."""

    def __init__(self, addr):
        self.base = f"http://{addr}"

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, method=method, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read().decode())

    def trigger(self, kind, parameters):
        return self.request("POST", "/action", {"type": kind, "parameters": parameters})["action_id"]

    def result(self, action_id, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status = self.request("GET", f"/action/{action_id}")
            if status["status"] not in ("pending", "running"):
                return status
            time.sleep(0.1)
        raise validate.Failed(f"action {action_id} still running after {timeout} s")


def sim_lines(proc, want):
    """The simulator's address lines, as {kind: [values]}, until `want` is seen."""
    lines = {}
    while want not in lines:
        line = proc.stdout.readline()
        if not line:
            raise validate.Failed(f"redis-maint-sim exited ({proc.wait()}) before printing '{want}'")
        kind, _, value = line.strip().partition(" ")
        lines.setdefault(kind, []).append(value)
    return lines


def start_sim_http(args, log, *front):
    """redis-maint-sim in front of `front` (`--backend ...` or
    `--cluster-seed ...`) with its HTTP API: its address lines and a
    FaultInjector for that API."""
    sim = subprocess.Popen([args.sim_bin, *front, "--listen", "127.0.0.1:0",
                            "--admin", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
    CHILDREN.append(sim)
    lines = sim_lines(sim, "http")
    return sim, lines, FaultInjector(lines["http"][0])


def start_threads(loop, n=8):
    """n threads running loop(i), started."""
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    return threads


def window(redis, config, args, tmp, log):
    backend = start_redis(args.redis_server, tmp)
    for kind, label in (("MIGRATE", "MIGRATING"), ("FAILOVER", "FAILING_OVER")):
        for on in (True, False):
            p, listen, admin_addr = start_sim(args.sim_bin, backend, log)
            # No retries: a timeout must show, not be absorbed by a resend.
            r = redis.Redis(host=listen[0], port=listen[1], protocol=3, decode_responses=True,
                            socket_timeout=0.25, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                            maint_notifications_config=config(enabled=on, relaxed_timeout=5))
            r.set("w", "0")
            admin_for(redis, admin_addr).execute_command(f"SIM.{kind}", 3000, "DELAY", 700)
            ok = timeouts = 0
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                try:
                    r.get("w")
                    ok += 1
                except (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError):
                    timeouts += 1
            r.close()
            p.kill()
            if on:
                check(ok > 0 and timeouts == 0,
                      f"window: {label}, replies held 700 ms > 250 ms timeout, notifications on: {ok} ok, {timeouts} timeouts")
            else:
                check(timeouts > 0,
                      f"window: control run, {label} with notifications off times out: {ok} ok, {timeouts} timeouts")


def moving(redis, config, args, tmp, log, stay_open):
    backend = start_redis(args.redis_server, tmp)
    p, listen, admin_addr = start_sim(args.sim_bin, backend, log)
    admin = admin_for(redis, admin_addr)
    mk = lambda host, port: redis.Redis(host=host, port=port, protocol=3, decode_responses=True,
                                        socket_timeout=5, maint_notifications_config=config(enabled=True))
    clients = [mk(*listen) for _ in range(8)]
    for c in clients:
        c.ping()
    how = ["SAME-PORT", "STAY-OPEN"] if stay_open else []
    seq, to = admin.execute_command("SIM.MOVING", 2, *how)
    deadline = time.monotonic() + 2
    to_host, _, to_port = to.rpartition(":")
    t = Tally()
    cmd = lambda c, i, n: t.set_get(c, f"m:{i}", n)

    def loop(i):
        n = 0
        while time.monotonic() < deadline + 0.5:
            cmd(clients[i], i, n)
            n += 1
        # A new client after the deadline: at the configured address
        # (STAY-OPEN: it leads to the new node), or at the one MOVING named.
        fresh = mk(*listen) if stay_open else mk(to_host, int(to_port))
        with t.lock:
            t.new += 1
        for _ in range(20):
            cmd(fresh, i, n)
            n += 1
        fresh.close()

    threads = start_threads(loop)
    for th in threads:
        th.join()
    for c in clients:
        c.close()
    p.kill()
    label = f"stay: MOVING SAME-PORT STAY-OPEN (to {to})" if stay_open else f"moving: MOVING to a new port ({to})"
    check(t.failed == 0 and t.ok > 0 and t.new == 8,
          f"{label}, 8 threads, {t.new} new clients after the deadline: {t.summary()}")


def http(redis, config, args, tmp, log):
    backend = start_redis(args.redis_server, tmp)
    sim, lines, fi = start_sim_http(args, log, "--backend", f"127.0.0.1:{backend}")
    host, _, port = lines["listen"][0].rpartition(":")
    # Retries off: a timeout must show, not be absorbed by a resend.
    mk = lambda: redis.Redis(host=host, port=int(port), protocol=3, decode_responses=True,
                             socket_timeout=0.25, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                             maint_notifications_config=config(enabled=True, relaxed_timeout=5))
    clients = [mk() for _ in range(8)]
    for c in clients:
        c.ping()
    action = fi.trigger("sequence_of_actions", {"bdb_id": "1", "actions": [
        {"type": "migrate", "parameters": {"duration_ms": 1500, "delay_ms": 700}},
        {"type": "failover", "parameters": {"duration_ms": 1500, "delay_ms": 700}},
        {"type": "bind", "parameters": {"time_s": 2, "same_port": True, "stay_open": True}},
    ]})
    done = threading.Event()
    t = Tally()

    def loop(i):
        n = 0
        while not done.is_set():
            t.set_get(clients[i], f"h:{i}", n)
            n += 1
        # After the MOVING's deadline: a new client at the configured address.
        fresh = mk()
        with t.lock:
            t.new += 1
        for _ in range(20):
            t.set_get(fresh, f"h:{i}", n)
            n += 1
        fresh.close()

    threads = start_threads(loop)
    try:
        status = fi.result(action)
    finally:
        done.set()
        for th in threads:
            th.join()
    for c in clients:
        c.close()
    sim.kill()
    check(status["status"] == "success" and len(status["output"]) == 3,
          f"http: sequence_of_actions (migrate, failover, bind) reported {status}")
    check(t.failed == 0 and t.ok > 0 and t.new == 8,
          f"http: 8 threads across MIGRATING, FAILING_OVER (replies held 700 ms > 250 ms timeout) and MOVING, "
          f"{t.new} new clients after it: {t.summary()}")


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cluster(redis, config, args, tmp, log):
    # The bus port explicitly: the default (port + 10000) is above 65535 for
    # ports over 55535, a fifth of the ephemeral range, and the node fails
    # to start (seen in CI: "redis-server on port 56869 did not start").
    ports = [start_redis(args.redis_server, tmp, ("--cluster-enabled", "yes",
                                                  "--cluster-config-file", f"nodes-{i}.conf",
                                                  "--cluster-port", str(free_port())))
             for i in range(3)]
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, timeout=60)
    for _ in range(500):
        if all(b"cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "CLUSTER", "INFO"],
                                                    capture_output=True).stdout for p in ports):
            break
        time.sleep(0.05)
    sim, lines, fi = start_sim_http(args, log, "--cluster-seed", f"127.0.0.1:{ports[0]}")
    eps = dict(l.split(" -> ") for l in lines["node"])
    ep = lambda p: eps[f"127.0.0.1:{p}"]
    stats = lambda: fi.request("GET", "/stats")
    keys, seen, i = [], set(), 0
    while len(keys) < 150:
        k = f"c{i}"
        s = crc16(k.encode()) % 16384
        if (s < 100 and s not in seen) or (s >= 100 and i % 7 == 0 and len(keys) >= 100):
            seen.add(s)
            keys.append(k)
        i += 1
    h, _, p0 = ep(ports[0]).rpartition(":")
    t = Tally()
    stop = threading.Event()

    def loop(l):
        c = redis.RedisCluster(host=h, port=int(p0), protocol=3, decode_responses=True,
                               maint_notifications_config=config(enabled=True))
        n = 0
        while not stop.is_set():
            # Each thread its own keys, in the same slots (hash tags).
            t.set_get(c, f"{{{keys[(l * 17 + n) % len(keys)]}}}:{l}", n)
            n += 1
        c.close()

    threads = start_threads(loop)
    time.sleep(0.5)
    before = stats()
    try:
        effect = fi.request("GET", "/slot-migrate?effect=remove-add&cluster_index=0")
        action = fi.trigger("slot_migrate", {
            "bdb_id": "1", "cluster_index": 0, "effect": "remove-add",
            "trigger": effect["triggers"][0]["name"], "slots": "0-99",
            "source_node": ep(ports[0]), "target_node": ep(ports[1])})
        status = fi.result(action)
        time.sleep(1.0)
    finally:
        stop.set()
        for th in threads:
            th.join()
    after = stats()
    sim.kill()
    check(status["status"] == "success" and after["migrations_done"] == 1,
          f"cluster: slot_migrate 0-99 over HTTP: {status}, {after}")
    moved = after["moved"] - before["moved"]
    check(t.failed == 0 and t.ok > 0 and moved == 0,
          f"cluster: 8 threads across the migration, {moved} MOVED forwarded: {t.summary()}")


def main():
    sys.argv, only = validate_args()
    args = validate.parse_args()
    validate.bootstrap(args, __file__)
    import redis
    from redis.maint_notifications import MaintNotificationsConfig

    watchdog(180)
    print(f"redis-py {redis.__version__}", flush=True)
    tmp = tempfile.mkdtemp(prefix="redis-py-scenarios-")
    log = open(os.path.join(tmp, "sim.log"), "w")
    try:
        for name in only:
            try:
                if name == "window":
                    window(redis, MaintNotificationsConfig, args, tmp, log)
                elif name in ("moving", "stay"):
                    moving(redis, MaintNotificationsConfig, args, tmp, log, name == "stay")
                elif name == "cluster":
                    cluster(redis, MaintNotificationsConfig, args, tmp, log)
                elif name == "http":
                    http(redis, MaintNotificationsConfig, args, tmp, log)
            except Exception as e:  # a broken scenario is a failed check
                check(False, f"{name}: {type(e).__name__}: {e}")
    finally:
        cleanup()
        log.close()
        if not os.environ.get("KEEP_LOGS"):
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"redis-py scenarios: {sum(RESULTS)}/{len(RESULTS)} checks passed", flush=True)
    return 0 if RESULTS and all(RESULTS) else 1


def validate_args():
    """Takes `--only a,b` out of argv (validate.parse_args does not know it)."""
    argv, only = list(sys.argv), "window,stay,cluster,http"
    if "--only" in argv:
        i = argv.index("--only")
        only = argv[i + 1]
        del argv[i:i + 2]
    os.environ["_REDIS_PY_SCENARIOS_ONLY"] = os.environ.get("_REDIS_PY_SCENARIOS_ONLY", only)
    return argv, os.environ["_REDIS_PY_SCENARIOS_ONLY"].split(",")


if __name__ == "__main__":
    sys.exit(main())
