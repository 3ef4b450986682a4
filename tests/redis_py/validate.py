#!/usr/bin/env python3
"""Acceptance check of redis-maint-sim against a real client: redis-py.

redis-py (6.x and later) implements the maintenance notifications of Redis
Enterprise / Redis Cloud: with RESP3 and `MaintNotificationsConfig` it sends
`CLIENT MAINT_NOTIFICATIONS ON moving-endpoint-type <type>` on every new
connection and, on `MOVING seq time host:port`, moves its connections to the
new host. This script starts a redis-server and `redis-maint-sim` in front
of it, and shows that

  (a) redis-py sends the opt-in handshake and accepts the simulator's reply
      (SIM.CLIENTS shows the connection opted in, internal-ip);
  (b) after SIM.MOVING, redis-py reconnects to the new endpoint before the
      deadline (SIM.CLIENTS shows its connection there, none on the old
      one), and its commands keep working across the deadline, with the
      same data.

redis-py keeps the port it was configured with and takes only the host from
MOVING (see `_build_moving_connection_kwargs` in redis/maint_notifications.py),
so the move uses `SIM.MOVING <secs> SAME-PORT`: the new endpoint is the same
port on another loopback IP (127.0.0.2).

It installs redis-py into a venv (default: $CARGO_TARGET_DIR/redis-py-venv,
else target/redis-py-venv) with pip, then re-runs itself there. Exit status 0
when every check passes, 1 otherwise; bounded by --timeout (default 60 s,
not counting the one-time pip install).

Usage:
    cargo build --features sim --bin redis-maint-sim
    python3 tests/redis_py/validate.py --sim-bin target/debug/redis-maint-sim
"""

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REDIS_PY_VERSION = os.environ.get("REDIS_PY_VERSION", "8.1.0")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
IN_VENV = "_REDIS_PY_VALIDATE_IN_VENV"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sim-bin", default=os.path.join(ROOT, "target", "debug", "redis-maint-sim"))
    p.add_argument("--redis-server", default=os.environ.get("REDIS_SERVER", "redis-server"))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    p.add_argument("--venv", default=os.path.join(target, "redis-py-venv"))
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--moving-secs", type=int, default=3)
    p.add_argument("--new-port", action="store_true",
                   help="move to a new port instead (SIM.MOVING without SAME-PORT): shows that "
                        "redis-py ignores the port in MOVING; expected to FAIL")
    return p.parse_args()


def bootstrap(args, script=None):
    """Creates the venv and installs redis-py into it, then re-runs `script`
    (default: this file) there."""
    if os.environ.get(IN_VENV) == "1":
        return
    py = os.path.join(args.venv, "bin", "python")
    if not os.path.exists(py):
        print(f"creating venv {args.venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", args.venv], check=True, timeout=180)
    have = subprocess.run(
        [py, "-c", f"import redis, sys; sys.exit(redis.__version__ != {REDIS_PY_VERSION!r})"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if have.returncode != 0:
        print(f"pip install redis=={REDIS_PY_VERSION}", flush=True)
        subprocess.run(
            [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             f"redis=={REDIS_PY_VERSION}"],
            check=True,
            timeout=300,
        )
    env = dict(os.environ, **{IN_VENV: "1"})
    os.execve(py, [py, os.path.abspath(script or __file__)] + sys.argv[1:], env)


class Failed(Exception):
    pass


CHILDREN = []
PASSED = []


def cleanup():
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=5)
        except Exception:
            pass


def watchdog(limit):
    def fire():
        print(f"FAIL: did not finish within {limit} s", flush=True)
        cleanup()
        os._exit(1)

    t = threading.Timer(limit, fire)
    t.daemon = True
    t.start()


def check(cond, what):
    if not cond:
        raise Failed(what)
    PASSED.append(what)
    print(f"ok: {what}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(binary, tmp, extra=()):
    port = free_port()
    p = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tmp, "--logfile", os.path.join(tmp, f"redis-{port}.log"), *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    CHILDREN.append(p)
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return port
        except OSError:
            time.sleep(0.02)
    raise Failed(f"redis-server on port {port} did not start")


def start_sim(binary, backend_port, log):
    p = subprocess.Popen(
        [binary, "--backend", f"127.0.0.1:{backend_port}",
         "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    CHILDREN.append(p)
    addrs = {}
    while len(addrs) < 3:
        line = p.stdout.readline()
        if not line:
            raise Failed(f"redis-maint-sim exited ({p.wait()}) before printing its addresses")
        key, _, value = line.strip().partition(" ")
        addrs[key] = value
    host, _, port = addrs["listen"].rpartition(":")
    ahost, _, aport = addrs["admin"].rpartition(":")
    return p, (host, int(port)), (ahost, int(aport))


def as_entries(reply):
    """SIM.CLIENTS / SIM.ENDPOINTS over RESP2: flat [k, v, k, v, ...] lists."""
    return [dict(zip(e[0::2], e[1::2])) for e in reply]


def main():
    args = parse_args()
    bootstrap(args)

    import redis
    from redis.maint_notifications import MaintNotificationsConfig

    watchdog(args.timeout)
    print(f"redis-py {redis.__version__} at {os.path.dirname(redis.__file__)}", flush=True)

    # Every command redis-py sends, with the address it sends it to.
    sent = []
    orig_send = redis.connection.Connection.send_command

    def recording_send(self, *a, **k):
        sent.append((self.host, self.port, tuple(str(x) for x in a)))
        return orig_send(self, *a, **k)

    redis.connection.Connection.send_command = recording_send

    # redis-py's own record of handling MOVING.
    handled = []

    class Grab(logging.Handler):
        def emit(self, record):
            handled.append(record.getMessage())

    lg = logging.getLogger("redis.maint_notifications")
    lg.setLevel(logging.DEBUG)
    lg.addHandler(Grab())

    tmp = tempfile.mkdtemp(prefix="redis-py-validate-")
    sim_log = open(os.path.join(tmp, "sim.log"), "w")
    try:
        backend = start_redis(args.redis_server, tmp)
        _, listen, admin_addr = start_sim(args.sim_bin, backend, sim_log)
        print(f"redis-server 127.0.0.1:{backend}, simulator {listen[0]}:{listen[1]}, "
              f"admin {admin_addr[0]}:{admin_addr[1]}", flush=True)
        admin = redis.Redis(host=admin_addr[0], port=admin_addr[1], protocol=2,
                            decode_responses=True, socket_timeout=5)

        def clients(name="redis-py-validate"):
            return [c for c in as_entries(admin.execute_command("SIM.CLIENTS"))
                    if c.get("name") == name]

        r = redis.Redis(
            host=listen[0], port=listen[1], protocol=3, decode_responses=True,
            client_name="redis-py-validate", socket_timeout=5, socket_connect_timeout=5,
            maint_notifications_config=MaintNotificationsConfig(enabled=True),
        )

        # (a) the handshake
        check(r.ping() is True, "redis-py (RESP3, maintenance notifications enabled=True) connects through the simulator")
        r.set("validate:key", "before")
        hs = [a for (_, _, a) in sent if a[:2] == ("CLIENT", "MAINT_NOTIFICATIONS")]
        print(f"   redis-py sent: {' '.join(hs[0]) if hs else None}", flush=True)
        check(hs[:1] == [("CLIENT", "MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "internal-ip")],
              "redis-py sends CLIENT MAINT_NOTIFICATIONS ON moving-endpoint-type internal-ip and accepts the reply")
        cs = clients()
        print(f"   SIM.CLIENTS: {cs}", flush=True)
        check(len(cs) == 1 and cs[0]["maint"] == "internal-ip" and cs[0]["resp3"] == 1
              and cs[0]["endpoint"] == f"{listen[0]}:{listen[1]}",
              "SIM.CLIENTS shows the redis-py connection opted in (internal-ip, RESP3) on the first endpoint")
        old_peer = cs[0]["peer"]

        # (b) MOVING
        t0 = time.monotonic()
        how = [] if args.new_port else ["SAME-PORT"]
        seq, to = admin.execute_command("SIM.MOVING", args.moving_secs, *how)
        deadline = t0 + args.moving_secs
        to_host, _, to_port = to.rpartition(":")
        print(f"   SIM.MOVING {args.moving_secs} {' '.join(how)} -> seq {seq}, new endpoint {to}",
              flush=True)
        if not args.new_port:
            check(int(to_port) == listen[1] and to_host != listen[0],
                  "the new endpoint keeps the port (redis-py takes only the host from MOVING)")
        errors, n, moved_at = [], 0, None
        while time.monotonic() < deadline + 2.0:
            try:
                r.set(f"validate:{n}", n)
                if r.get(f"validate:{n}") != str(n):
                    errors.append(f"validate:{n} read back wrong")
            except Exception as e:  # any failure is what this check is about
                errors.append(f"{type(e).__name__}: {e}")
            if moved_at is None:
                cs = clients()
                if cs and all(c["endpoint"] == to for c in cs):
                    moved_at = time.monotonic()
                    print(f"   {moved_at - t0:.2f} s after SIM.MOVING: SIM.CLIENTS {cs}", flush=True)
            n += 1
            time.sleep(0.05)
        moving_msgs = [m for m in handled if "MOVING" in m or "NodeMoving" in m]
        print(f"   redis-py log: {moving_msgs[0][:160] if moving_msgs else None}", flush=True)
        check(any(f"id={seq}" in m for m in moving_msgs),
              f"redis-py handled MOVING seq {seq} (its own debug log says so)")
        check(moved_at is not None and moved_at < deadline,
              f"redis-py moved its connection to {to} before the {args.moving_secs} s deadline")
        to_new = [a for (h, p, a) in sent if h == to_host and a[:2] == ("CLIENT", "MAINT_NOTIFICATIONS")]
        check(len(to_new) >= 1, f"redis-py opted in again on the new endpoint ({to_host})")
        check(not errors, f"{n} SET/GET pairs across the move and the deadline, {len(errors)} errors "
                          f"{errors[:3] if errors else ''}")
        cs = clients()
        eps = {e["endpoint"]: e for e in as_entries(admin.execute_command("SIM.ENDPOINTS"))}
        check(cs and all(c["endpoint"] == to and c["peer"] != old_peer for c in cs)
              and eps[f"{listen[0]}:{listen[1]}"]["state"] == "closed",
              "after the deadline: the old endpoint is closed, redis-py is connected to the new one only")
        check(r.get("validate:key") == "before", "data written before the move reads back after it")
    except Exception as e:  # a failed check, or anything that broke the run
        what = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
        print(f"FAIL: {what}", flush=True)
        print(f"redis-py: {len(PASSED)} passed, 1 failed", flush=True)
        return 1
    finally:
        cleanup()
        sim_log.close()
        if os.environ.get("KEEP_LOGS"):
            print(f"logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"redis-py: {len(PASSED)} passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), os._exit(1)))
    sys.exit(main())
