// Acceptance of redis-maint-sim with a third-party client: node-redis (npm
// `redis`, pinned in package.json / package-lock.json; `npm ci` installs it
// into the gitignored node_modules). Run by .ci/run:
//
//   cargo build --features sim --bin redis-maint-sim
//   (cd tests/node_redis && npm ci) && node tests/node_redis/accept.mjs --sim-bin target/debug/redis-maint-sim
//
// Scenarios (each with its own redis-server(s) and simulator):
//   window   MIGRATING and FAILING_OVER with every reply held 700 ms, past the
//            250 ms command timeout: 0 timeouts with notifications on; the
//            control run with notifications off must time out. Started through
//            the HTTP control API (`migrate`, `failover` actions).
//   moving   MOVING to a new port, 8 concurrent loops, each opening a new
//            connection after the deadline (client.duplicate(), which follows
//            the move): 0 failed commands.
//   stay     MOVING SAME-PORT STAY-OPEN, 8 loops, each opening a new client to
//            its configured address after the deadline: 0 failed.
//   cluster  SIM.SLOT-MIGRATE of 100 slots under 8 loops of a cluster client:
//            0 failed commands and 0 MOVED forwarded by the simulator.
// Exit status 0 when every check passes. Bounded by a watchdog (--timeout).

import { createClient, createCluster } from 'redis';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const SIM_BIN = args['sim-bin'] ?? 'target/debug/redis-maint-sim';
const REDIS = args['redis-server'] ?? 'redis-server';
const ONLY = args.only ? args.only.split(',') : ['window', 'moving', 'stay', 'cluster'];
const TIMEOUT_S = Number(args.timeout ?? 120);

const children = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'node-redis-accept-'));
const results = [];
let failed = false;

function cleanup() {
  for (const c of children) {
    try { c.kill('SIGKILL'); } catch { /* gone */ }
  }
}
process.on('exit', cleanup);
setTimeout(() => {
  console.log(`FAIL: did not finish within ${TIMEOUT_S} s`);
  cleanup();
  process.exit(1);
}, TIMEOUT_S * 1000).unref();

function check(cond, what) {
  console.log(`${cond ? 'ok' : 'FAIL'}: ${what}`);
  results.push([cond, what]);
  if (!cond) failed = true;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function ping(port) {
  for (let i = 0; i < 500; i++) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
      s.on('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')); });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(20);
  }
  throw new Error(`redis-server on ${port} did not start`);
}

async function startRedis(extra = []) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(tmp, 'r'));
  const p = spawn(REDIS, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--dir', dir, '--logfile', path.join(dir, 'redis.log'), ...extra], { stdio: 'ignore' });
  children.push(p);
  await ping(port);
  return port;
}

// Starts redis-maint-sim; resolves with the `key value` lines it prints
// (all of them: the `http` line comes last).
async function startSim(simArgs) {
  const log = fs.openSync(path.join(tmp, `sim-${children.length}.log`), 'w');
  const p = spawn(SIM_BIN, [...simArgs, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--http', '127.0.0.1:0'],
    { stdio: ['ignore', 'pipe', log] });
  children.push(p);
  const lines = [];
  const rl = readline.createInterface({ input: p.stdout });
  for await (const line of rl) {
    lines.push(line.trim().split(' '));
    if (lines.at(-1)[0] === 'http') break;
  }
  const get = (k) => lines.find((l) => l[0] === k)?.[1];
  const admin = createClient({ socket: { host: '127.0.0.1', port: Number(get('admin').split(':')[1]) } });
  await admin.connect();
  return { proc: p, lines, get, admin };
}

// The HTTP control API, as Redis's client suites speak to their fault
// injector: POST /action, then GET /action/{id} until it is done.
async function faultInjector(sim, type, parameters) {
  const base = `http://${sim.get('http')}`;
  const r = await fetch(`${base}/action`, { method: 'POST', body: JSON.stringify({ type, parameters }), headers: { 'Content-Type': 'application/json' } });
  if (r.status !== 200) throw new Error(`POST /action ${type}: ${r.status} ${await r.text()}`);
  const { action_id: id } = await r.json();
  return async () => {
    for (let i = 0; i < 600; i++) {
      const status = await (await fetch(`${base}/action/${id}`)).json();
      if (status.status !== 'running' && status.status !== 'pending') return status;
      await sleep(100);
    }
    throw new Error(`action ${id} (${type}) still running after 60 s`);
  };
}

const hostPort = (s) => ({ host: s.slice(0, s.lastIndexOf(':')), port: Number(s.slice(s.lastIndexOf(':') + 1)) });

// Admin maps as objects (node-redis may hand them over as flat [k, v, ...]).
const asObject = (e) => (Array.isArray(e) ? Object.fromEntries(e.reduce((a, v, i) => (i % 2 ? a : [...a, [v, e[i + 1]]]), [])) : e);
const entries = (reply) => reply.map(asObject);
const stats = async (admin) => asObject(await admin.sendCommand(['SIM.STATS']));

function client(addr, notifications, extra = {}) {
  const c = createClient({
    socket: { ...hostPort(addr), reconnectStrategy: false },
    RESP: 3,
    maintNotifications: notifications ? 'enabled' : 'disabled',
    maintEndpointType: 'internal-ip',
    maintRelaxedCommandTimeout: 5000,
    ...extra,
  });
  c.on('error', () => {});
  return c;
}

// ---- window: MIGRATING / FAILING_OVER, replies held past the timeout ----
// Started through the HTTP control API (the fault injector's `migrate` and
// `failover` actions); the action must report success.
async function windowScenario() {
  const backend = await startRedis();
  for (const kind of ['migrate', 'failover']) {
    for (const notifications of [true, false]) {
      const sim = await startSim(['--backend', `127.0.0.1:${backend}`]);
      const c = client(sim.get('listen'), notifications, { commandOptions: { timeout: 250, rejectInFlight: true } });
      await c.connect();
      await c.set('w', '0');
      const result = await faultInjector(sim, kind, { bdb_id: '1', duration_ms: 3000, delay_ms: 700 });
      // The notification is on the wire before the admin's reply; give the
      // client's socket a turn to read it before the first held command.
      await sleep(200);
      let ok = 0; let timeouts = 0;
      const end = Date.now() + 2000;
      while (Date.now() < end) {
        try { await c.get('w'); ok++; } catch (e) { timeouts++; }
      }
      const status = await result();
      c.destroy();
      sim.admin.destroy();
      sim.proc.kill();
      const label = kind === 'migrate' ? 'MIGRATING' : 'FAILING_OVER';
      check(status.status === 'success', `window: ${kind} over HTTP reported ${JSON.stringify(status)}`);
      if (notifications) {
        check(ok > 0 && timeouts === 0, `window: ${label}, replies held 700 ms > 250 ms timeout, notifications on: ${ok} ok, ${timeouts} timeouts`);
      } else {
        check(timeouts > 0, `window: control run, ${label} with notifications off times out: ${ok} ok, ${timeouts} timeouts`);
      }
    }
  }
}

// ---- moving / stay: 8 loops across MOVING, new connections after it ----
async function movingScenario(stayOpen) {
  const backend = await startRedis();
  const sim = await startSim(['--backend', `127.0.0.1:${backend}`]);
  const listen = sim.get('listen');
  const clients = [];
  for (let i = 0; i < 8; i++) {
    const c = client(listen, true);
    await c.connect();
    clients.push(c);
  }
  const counts = { ok: 0, failed: 0, newConns: 0, errors: [] };
  const cmd = async (c, i, n) => {
    try {
      await c.set(`m:${i}`, String(n));
      const v = await c.get(`m:${i}`);
      if (v !== String(n)) throw new Error(`read ${v}, wrote ${n}`);
      counts.ok++;
    } catch (e) {
      counts.failed++;
      if (counts.errors.length < 5) counts.errors.push(String(e));
    }
  };
  const movingArgs = ['SIM.MOVING', '2', ...(stayOpen ? ['SAME-PORT', 'STAY-OPEN'] : [])];
  const [, to] = await sim.admin.sendCommand(movingArgs);
  const deadline = Date.now() + 2000;
  await Promise.all(clients.map(async (c, i) => {
    let n = 0;
    while (Date.now() < deadline + 500) await cmd(c, i, n++);
    // A new connection after the deadline: to where the client was moved
    // (duplicate() takes the moved options), or, STAY-OPEN, to the address
    // it was configured with, which leads to the new node now.
    const fresh = stayOpen ? client(listen, true) : c.duplicate();
    fresh.on('error', () => {});
    try {
      await fresh.connect();
      counts.newConns++;
      for (let k = 0; k < 20; k++) await cmd(fresh, i, n++);
      fresh.destroy();
    } catch (e) {
      counts.failed++;
      counts.errors.push(`new connection: ${e}`);
    }
  }));
  const cs = entries(await sim.admin.sendCommand(['SIM.CLIENTS']));
  const onOld = cs.filter((c) => c.endpoint === listen && Number(c.id) <= 9).length;
  for (const c of clients) c.destroy();
  sim.admin.destroy();
  sim.proc.kill();
  const label = stayOpen ? `stay: MOVING SAME-PORT STAY-OPEN (to ${to})` : `moving: MOVING to a new port (${to})`;
  check(counts.failed === 0 && counts.ok > 0 && counts.newConns === 8,
    `${label}, 8 loops, ${counts.newConns} new connections after the deadline: ${counts.ok} ok, ${counts.failed} failed ${counts.errors.join('; ')}`);
  check(onOld === 0, `${label}: no connection from before the MOVING left on the old endpoint (${onOld})`);
}

// ---- cluster: SIM.SLOT-MIGRATE under load ----
function crc16(buf) {
  let crc = 0;
  for (const b of buf) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}
const slotOf = (k) => crc16(Buffer.from(k)) % 16384;

async function clusterScenario() {
  const ports = [];
  // The bus port explicitly: the default (port + 10000) is above 65535 for
  // ports over 55535, and the node would not start.
  for (let i = 0; i < 3; i++) {
    const bus = await freePort();
    ports.push(await startRedis(['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${i}.conf`, '--cluster-port', String(bus)]));
  }
  execFileSync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-yes'], { stdio: 'ignore' });
  for (let i = 0; i < 500; i++) {
    const ok = ports.every((p) => execFileSync('redis-cli', ['-p', String(p), 'CLUSTER', 'INFO']).toString().includes('cluster_state:ok'));
    if (ok) break;
    await sleep(50);
  }
  const sim = await startSim(['--cluster-seed', `127.0.0.1:${ports[0]}`]);
  const nodes = sim.lines.filter((l) => l[0] === 'node').map((l) => [l[1], l[3]]);
  const ep = (p) => nodes.find(([server]) => server === `127.0.0.1:${p}`)[1];
  // 100 slots of node 0 move to node 1; one key in each, and keys elsewhere.
  const keys = [];
  for (let i = 0; keys.length < 100 + 50; i++) {
    const k = `c${i}`;
    const s = slotOf(k);
    if ((s < 100 && !keys.some((x) => slotOf(x) === s)) || (s >= 100 && i % 7 === 0 && keys.length >= 100)) keys.push(k);
  }
  const cluster = createCluster({
    rootNodes: [{ socket: hostPort(ep(ports[0])) }],
    RESP: 3,
    maintNotifications: 'enabled',
    maintEndpointType: 'internal-ip',
    defaults: { socket: { reconnectStrategy: false } },
  });
  cluster.on('error', () => {});
  await cluster.connect();
  const before = await stats(sim.admin);
  const counts = { ok: 0, failed: 0, errors: [] };
  let stop = false;
  const loops = [...Array(8).keys()].map(async (l) => {
    let n = 0;
    while (!stop) {
      // Each loop its own keys, in the same slots (hash tags).
      const k = `{${keys[(l * 17 + n) % keys.length]}}:${l}`;
      try {
        await cluster.set(k, String(n));
        if ((await cluster.get(k)) !== String(n)) throw new Error(`${k}: lost write`);
        counts.ok++;
      } catch (e) {
        counts.failed++;
        if (counts.errors.length < 5) counts.errors.push(String(e));
      }
      n++;
    }
  });
  await sleep(500);
  await sim.admin.sendCommand(['SIM.SLOT-MIGRATE', '0-99', ep(ports[0]), ep(ports[1])]);
  let after = before;
  for (let i = 0; i < 600 && Number(after['migrations-done']) + Number(after['migrations-failed']) < 1; i++) {
    await sleep(50);
    after = await stats(sim.admin);
  }
  await sleep(1000);
  stop = true;
  await Promise.all(loops);
  after = await stats(sim.admin);
  await cluster.close();
  sim.admin.destroy();
  sim.proc.kill();
  check(Number(after['migrations-done']) === 1, `cluster: SIM.SLOT-MIGRATE 0-99 done (${JSON.stringify(after)})`);
  const moved = Number(after.moved) - Number(before.moved);
  check(counts.failed === 0 && counts.ok > 0 && moved === 0,
    `cluster: 8 loops across the migration: ${counts.ok} ok, ${counts.failed} failed, ${moved} MOVED forwarded ${counts.errors.join('; ')}`);
}

const { version } = JSON.parse(fs.readFileSync(new URL('./node_modules/redis/package.json', import.meta.url)));
console.log(`node-redis ${version}, node ${process.version}`);
try {
  if (ONLY.includes('window')) await windowScenario();
  if (ONLY.includes('moving')) await movingScenario(false);
  if (ONLY.includes('stay')) await movingScenario(true);
  if (ONLY.includes('cluster')) await clusterScenario();
} catch (e) {
  check(false, `unexpected: ${e.stack ?? e}`);
}
console.log(`${results.filter((r) => r[0]).length}/${results.length} checks passed (logs in ${tmp})`);
cleanup();
process.exit(failed ? 1 : 0);
