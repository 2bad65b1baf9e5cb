/**
 * bench/api: the control plane's REST api against bare baselines, in one run (issue 4).
 *
 * 1. `GET /v1/vms` — a page of 100 of the 10,000 VMs of a project (rows inserted with SQL) through
 *    Hangar's api (`node apps/api/dist/main.js`, role api, production defaults: info logs with
 *    the access log, auth cache, pool of 10; a member API key) against a baseline: a bare Fastify
 *    + pg server (`baseline-server.ts`) running the very SQL Prisma sends for that list and
 *    answering the same JSON. Both get the same load from a generator in its own process
 *    (`load.ts`: 32 keep-alive connections, closed loop), in rounds A, B, B, A, … after a warm-up
 *    of each. Throughput, latency p50/p99 and CPU per request of each process. Then the same
 *    paced (open-loop) rate for both, for latency below saturation, and the list's layers (the
 *    query through node-postgres and through Prisma, DTO mapping, JSON) timed alone.
 * 2. `POST /v1/vms` against 100 simulated hosts: a fresh api (role api, serving the AgentGateway),
 *    a worker (role worker) and `hangar-agent --simulate 100` (fake driver, one single-use join
 *    token per agent, issued through `POST /v1/join-tokens`). N creates, each with its own
 *    Idempotency-Key, from the generator at 32 connections: accept latency and accepted/s; then
 *    (informational) how long until every VM is RUNNING.
 * 3. Placement: `decidePlacement` over 10,000 in-memory hosts against a plain linear scan with the
 *    same capacity filter, interleaved in blocks; and (informational) what reading 10,000 host
 *    rows costs the way PlacementService reads them.
 *
 * Process placement (2 cores here): no pinning. Only one server is under load at a time (the other
 * idles); it is one Node process, so it saturates about one core, and PostgreSQL's backends and the
 * load generator (5–10 % of a core: raw sockets, requests encoded once) share the other. The
 * report's CPU columns show each one's share, so a starved side would be visible.
 *
 * Everything lives in a fresh database `hangar_bench_<time>_<random>` on the running PostgreSQL,
 * a Redis key prefix `hangar-bench-<time>-<random>` and a temp folder; all three, and every child
 * process (by pid), are removed at the end, on failure and on SIGINT/SIGTERM.
 *
 * Run: `npm run bench:api -- [--rounds 4] [--round-s 10] [--creates 1000] [--json]` (bench/README.md).
 */
import { type ChildProcess, execFile, fork, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { PrismaClient, type Vm } from '@hangar/api/dist/gen/prisma/client.js';
import { migrate } from '@hangar/api/dist/infra/prisma/migrator.js';
import { generateApiKey } from '@hangar/api/dist/modules/auth/api-key-secret.js';
import {
  HOST_COLUMNS,
  type HostRowLike,
  toHostCandidate,
} from '@hangar/api/dist/modules/placement/claim-allocation.js';
import { decidePlacement } from '@hangar/api/dist/modules/placement/decide-placement.js';
import type { HostCandidate, PlacementRequest } from '@hangar/api/dist/modules/placement/placement.types.js';
import { PrismaPg } from '@prisma/adapter-pg';
import { Redis } from 'ioredis';
import pg from 'pg';
import { LIST_VMS_SQL } from './list-query.js';
import type { LoadCommand, LoadRequest, LoadResult } from './load.js';

const execFileAsync = promisify(execFile);
const repoRoot = path.resolve(import.meta.dirname, '../../..');
const apiMainJs = path.join(repoRoot, 'apps/api/dist/main.js');
const agentMainJs = path.join(repoRoot, 'apps/agent/dist/main.js');
const baselineJs = path.join(import.meta.dirname, 'baseline-server.js');
const loadJs = path.join(import.meta.dirname, 'load.js');
const countQueriesJs = path.join(import.meta.dirname, 'count-queries.js');
const whatIfListJs = path.join(import.meta.dirname, 'what-if-list.js');
const ADMIN_DATABASE_URL = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
/** Leftovers of killed runs older than this are removed at start (names carry their creation time). */
const STALE_AFTER_MS = 60 * 60 * 1000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const progress = (msg: string) => process.stderr.write(`[bench:api] ${msg}\n`);

const USAGE = `Usage: node bench/api/dist/api.bench.js [options]

  --rounds N               measured GET rounds per server, order A B B A … (default 4)
  --round-s S              length of a GET round (default 10)
  --warmup-s S             unmeasured GET load on each server first (default 5)
  --connections N          concurrent keep-alive connections for GET (default 32)
  --paced-rps N            open-loop rate for the below-saturation latency rounds (default: half of
                           Hangar's closed-loop throughput, the same rate for both servers)
  --rows N                 VMs in the listed project (default 10000)
  --page-size N            page_size of the GET (default 100)
  --creates N              POST /v1/vms requests (default 1000)
  --post-connections N     concurrent connections for the creates (default 32)
  --hosts N                simulated hosts for the creates (default 100)
  --running-timeout-s S    how long to wait for every created VM to be RUNNING (default 300)
  --placement-hosts N      hosts in memory for the placement decision (default 10000)
  --placement-iterations N decisions of each kind (default 2000)
  --skip-get | --skip-post | --skip-placement
  --api-env K=V            extra environment for the api processes (repeatable), e.g. HANGAR_HTTP_ACCESS_LOG=false
  --cpu-prof               profile the api processes and the worker (node --cpu-prof) and summarise where
                           their CPU went during the load; a profiled run's figures are not the reported ones
  --count-queries          count the SQL statements of the api and worker processes by kind (a preload
                           patches node-postgres) and report them per request / per create
  --what-if-list V         an experiment, not Hangar as shipped: the api of part 1 lists with
                           V = select (findMany with a select) or raw ($queryRaw), see what-if-list.ts
  --logs DIR               copy the logs of the api, worker, simulator and baseline to DIR at the end
  --json                   the whole report as JSON instead of markdown
`;

// ---------------------------------------------------------------------------------------------
// Statistics and /proc

interface Stats {
  n: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** Nearest-rank percentiles. */
function stats(values: ArrayLike<number>): Stats {
  const sorted = Float64Array.from(values).sort();
  const n = sorted.length;
  const at = (p: number) =>
    n === 0 ? Number.NaN : (sorted[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))] ?? Number.NaN);
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    n,
    mean: n ? sum / n : Number.NaN,
    p50: at(50),
    p90: at(90),
    p99: at(99),
    max: n ? (sorted[n - 1] ?? 0) : Number.NaN,
  };
}

function concat(arrays: readonly Float64Array[]): Float64Array {
  const out = new Float64Array(arrays.reduce((s, a) => s + a.length, 0));
  let at = 0;
  for (const a of arrays) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}

let clkTck = 100;

/** utime + stime of a process, in clock ticks (0 when it is gone). */
async function cpuTicks(pid: number): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}

/** CPU ticks of every `postgres` process on the machine (the server's backends, all databases), by pid. */
async function postgresTicks(): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8');
      if (!stat.includes('(postgres)')) continue;
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(entry), Number(fields[11]) + Number(fields[12]));
    } catch {
      // The process ended between readdir and readFile.
    }
  }
  return out;
}

/**
 * PostgreSQL's CPU ticks between two samples: processes alive at both ends count their growth,
 * processes started in between count whole (backends that ended in between are not seen).
 */
function postgresDelta(before: Map<number, number>, after: Map<number, number>): number {
  let total = 0;
  for (const [pid, ticks] of after) total += ticks - (before.get(pid) ?? 0);
  return total;
}

/** Pids of the processes this bench started (the servers under test, the generator, the fleet). */
const ownPids = new Set<number>([process.pid]);

/**
 * How busy the rest of the machine was: every `interval` it reads every `/proc/<pid>/stat` and
 * adds up the CPU of processes that are neither this bench's nor PostgreSQL's or Redis's (those
 * serve the bench). Processes that start and end between two samples are not seen.
 */
class ForeignCpu {
  private last = new Map<number, number>();
  private readonly byComm = new Map<string, number>();
  private totalTicks = 0;
  private maxPct = 0;
  private timer: NodeJS.Timeout | undefined;
  private startedAt = 0;
  private lastAt = 0;

  async start(intervalMs = 2_000): Promise<void> {
    this.startedAt = performance.now();
    await this.sample(true);
    this.timer = setInterval(() => void this.sample(false), intervalMs);
  }

  stop(): { avgPct: number; maxPct: number; top: string[] } {
    clearInterval(this.timer);
    const wallS = (performance.now() - this.startedAt) / 1_000 || 1;
    return {
      avgPct: round1((this.totalTicks / clkTck / wallS) * 100),
      maxPct: round1(this.maxPct),
      top: [...this.byComm.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 4)
        .filter(([, t]) => t > 0)
        .map(([comm, t]) => `${comm} ${round1((t / clkTck / wallS) * 100)} %`),
    };
  }

  private async sample(first: boolean): Promise<void> {
    const now = performance.now();
    const seen = new Map<number, number>();
    let foreign = 0;
    for (const entry of await readdir('/proc').catch(() => [] as string[])) {
      if (!/^\d+$/.test(entry)) continue;
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
      if (!stat) continue;
      const pid = Number(entry);
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ticks = Number(fields[11]) + Number(fields[12]);
      seen.set(pid, ticks);
      if (first || ownPids.has(pid) || comm === 'postgres' || comm === 'redis-server') continue;
      const delta = ticks - (this.last.get(pid) ?? 0);
      if (delta <= 0) continue;
      foreign += delta;
      this.totalTicks += delta;
      this.byComm.set(comm, (this.byComm.get(comm) ?? 0) + delta);
    }
    this.last = seen;
    if (!first) {
      const spanS = (now - this.lastAt) / 1_000 || 1;
      this.maxPct = Math.max(this.maxPct, (foreign / clkTck / spanS) * 100);
    }
    this.lastAt = now;
  }
}

const round1 = (x: number) => Math.round(x * 10) / 10;
const round2 = (x: number) => Math.round(x * 100) / 100;
const round3 = (x: number) => Math.round(x * 1000) / 1000;

// ---------------------------------------------------------------------------------------------
// Cleanup, processes, ports

const cleanups: Array<{ what: string; fn: () => Promise<void> }> = [];

/** Runs every registered cleanup, newest first; a failing one does not stop the others. */
async function runCleanups(): Promise<void> {
  while (cleanups.length > 0) {
    const { what, fn } = cleanups.pop()!;
    try {
      await fn();
    } catch (err) {
      progress(`cleanup of ${what} failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}

/** A child process whose stdout and stderr go to a log file (nothing of it runs in this process). */
class Proc {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  static start(name: string, args: string[], env: NodeJS.ProcessEnv, logFile: string): Proc {
    const fd = openSync(logFile, 'a');
    try {
      const child = spawn(process.execPath, args, { cwd: repoRoot, env, stdio: ['ignore', fd, fd] });
      if (child.pid !== undefined) ownPids.add(child.pid);
      const proc = new Proc(name, child, logFile);
      cleanups.push({ what: name, fn: () => proc.stop() });
      return proc;
    } finally {
      closeSync(fd);
    }
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} has no pid`);
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async tail(chars = 2_000): Promise<string> {
    return (await readFile(this.logFile, 'utf8').catch(() => '')).slice(-chars);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it is gone. Idempotent. */
  async stop(graceMs = 15_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), graceMs);
    });
    const outcome = await Promise.race([this.exited, killed]);
    clearTimeout(timer);
    if (outcome === 'timeout' && this.running) {
      progress(`${this.name} did not stop within ${graceMs} ms of SIGTERM: SIGKILL`);
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Polls `fn` until it returns a value; throws after `timeoutMs`, or when `alive()` turns false. */
async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  options: { timeoutMs: number; intervalMs?: number; alive?: () => Promise<string | undefined> },
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value !== undefined) return value;
    const dead = await options.alive?.();
    if (dead !== undefined) throw new Error(`${what}: ${dead}`);
    if (Date.now() > deadline) throw new Error(`${what}: not within ${options.timeoutMs} ms`);
    await sleep(options.intervalMs ?? 100);
  }
}

const exitedOf = (proc: Proc) => async () =>
  proc.running
    ? undefined
    : `${proc.name} exited (${proc.child.exitCode ?? proc.child.signalCode}): ${await proc.tail()}`;

/** The load generator, in its own process (forked, IPC). */
class LoadClient {
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (r: LoadResult) => void; reject: (e: Error) => void }
  >();

  private constructor(readonly child: ChildProcess) {
    child.on('message', (message: LoadResult | { type: 'error'; id: number; message: string }) => {
      const waiter = this.waiting.get(message.id);
      if (!waiter) return;
      this.waiting.delete(message.id);
      if (message.type === 'result') waiter.resolve(message);
      else waiter.reject(new Error(`load generator: ${message.message}`));
    });
    child.once('exit', (code) => {
      for (const w of this.waiting.values()) w.reject(new Error(`the load generator exited (${code})`));
      this.waiting.clear();
    });
  }

  static start(): LoadClient {
    const child = fork(loadJs, [], {
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    if (child.pid !== undefined) ownPids.add(child.pid);
    const client = new LoadClient(child);
    cleanups.push({
      what: 'load generator',
      fn: async () => {
        if (child.exitCode === null && child.signalCode === null) {
          const gone = new Promise((r) => child.once('exit', r));
          child.kill('SIGKILL');
          await gone;
        }
      },
    });
    return client;
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  run(cmd: Omit<LoadCommand, 'type' | 'id'>): Promise<LoadResult> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.child.send({ ...cmd, type: 'run', id } satisfies LoadCommand);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Database and Redis

function databaseUrl(name: string): string {
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({
    connectionString: ADMIN_DATABASE_URL,
    application_name: 'hangar-bench-admin',
  });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Drops `hangar_bench_*` databases and deletes `hangar-bench-*` Redis prefixes that killed runs left over an hour ago. */
async function sweepStale(redis: Redis): Promise<void> {
  await withAdmin(async (admin) => {
    const { rows } = await admin.query<{ datname: string }>(
      `SELECT datname FROM pg_database WHERE datname LIKE 'hangar\\_bench\\_%'`,
    );
    for (const { datname } of rows) {
      const created = /^hangar_bench_([0-9a-z]+)_[0-9a-f]{8}$/.exec(datname)?.[1];
      if (created === undefined || Date.now() - Number.parseInt(created, 36) < STALE_AFTER_MS) continue;
      progress(`dropping ${datname}, left by a killed run`);
      await admin.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
    }
  });
  const stale = new Set<string>();
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', 'hangar-bench-*', 'COUNT', 1000);
    cursor = next;
    for (const key of keys) {
      const prefix = key.split(':')[0] ?? '';
      const created = /^hangar-bench-([0-9a-z]+)-[0-9a-f]{8}$/.exec(prefix)?.[1];
      if (created !== undefined && Date.now() - Number.parseInt(created, 36) > STALE_AFTER_MS)
        stale.add(prefix);
    }
  } while (cursor !== '0');
  for (const prefix of stale) await deleteKeysWithPrefix(redis, prefix);
}

/** Deletes every key `<prefix>:*` (SCAN + UNLINK), as the api's own helper does. */
async function deleteKeysWithPrefix(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await redis.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}

interface Seeded {
  listProjectId: string;
  createProjectId: string;
  listKey: string;
  createKey: string;
  adminKey: string;
}

async function insertKey(db: pg.Client, projectId: string, role: 'admin' | 'member'): Promise<string> {
  const key = generateApiKey();
  await db.query(
    'INSERT INTO api_keys (project_id, name, role, prefix, secret_hash) VALUES ($1, $2, $3::api_key_role, $4, $5)',
    [projectId, `bench-${role}`, role, key.prefix, key.secretHash],
  );
  return key.token;
}

/** Projects, keys, the flavor and image the creates use, and `rows` VMs in the listed project. */
async function seed(db: pg.Client, rows: number): Promise<Seeded> {
  const one = async (sql: string, params: unknown[] = []) =>
    ((await db.query<{ id: string }>(sql, params)).rows[0] as { id: string }).id;
  const adminProject = await one(`INSERT INTO projects (name) VALUES ('bench-admin') RETURNING id`);
  const listProjectId = await one(`INSERT INTO projects (name) VALUES ('bench-list') RETURNING id`);
  const createProjectId = await one(
    `INSERT INTO projects (name, quota_vcpus, quota_memory_mib, quota_vms)
     VALUES ('bench-create', 1000000, 1000000000, 1000000) RETURNING id`,
  );
  const flavorId = await one(
    `INSERT INTO flavors (name, vcpus, memory_mib, disk_gib) VALUES ('tiny', 1, 256, 1) RETURNING id`,
  );
  const imageId = await one(
    `INSERT INTO images (name, pool, kernel_path, initrd_path, cmdline, disk_path, format)
     VALUES ('hangar-tiny', 'images', 'hangar-tiny/vmlinuz', 'hangar-tiny/initrd.img',
             'console=ttyS0 panic=-1 quiet', 'hangar-tiny/base.qcow2', 'qcow2') RETURNING id`,
  );
  // One second apart, so the keyset order is the insertion order; two label sets, as users tag VMs.
  await db.query(
    `INSERT INTO vms (project_id, name, flavor_id, image_id, vcpus, memory_mib, disk_gib,
                      desired_state, observed_state, labels, created_at, updated_at)
     SELECT $1::uuid, 'vm-' || lpad(g::text, 6, '0'), $2::uuid, $3::uuid, 1, 256, 1, 'RUNNING', 'RUNNING',
            jsonb_build_object('env', 'bench', 'tier', CASE WHEN g % 3 = 0 THEN 'db' ELSE 'web' END),
            now() - make_interval(secs => $4::int - g), now() - make_interval(secs => $4::int - g)
       FROM generate_series(1, $4::int) AS g`,
    [listProjectId, flavorId, imageId, rows],
  );
  await db.query('VACUUM ANALYZE');
  return {
    listProjectId,
    createProjectId,
    listKey: await insertKey(db, listProjectId, 'member'),
    createKey: await insertKey(db, createProjectId, 'member'),
    adminKey: await insertKey(db, adminProject, 'admin'),
  };
}

/** The list query's plan and PostgreSQL's own execution time for it (median of 7). */
async function explainList(
  db: pg.Client,
  projectId: string,
  pageSize: number,
): Promise<{ plan: string; executionMs: number }> {
  const times: number[] = [];
  let plan = '';
  for (let i = 0; i < 7; i++) {
    const { rows } = await db.query<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS) ${LIST_VMS_SQL}`, [
      projectId,
      pageSize + 1,
      0,
    ]);
    const lines = rows.map((r) => r['QUERY PLAN']);
    plan = lines
      .filter((l) => /->|Limit|Index|Scan|Sort/.test(l))
      .map((l) => l.trim().replace(/\s+\(cost=.*$/, ''))
      .join(' / ');
    const exec = lines.find((l) => l.startsWith('Execution Time'));
    times.push(Number(/([\d.]+) ms/.exec(exec ?? '')?.[1] ?? Number.NaN));
  }
  return { plan, executionMs: stats(times).p50 };
}

// ---------------------------------------------------------------------------------------------
// The api processes

interface Env {
  dbUrl: string;
  redisPrefix: string;
  tmp: string;
  apiEnv: Record<string, string>;
}

/** Environment without the caller's HANGAR_* settings, so the figures are the product's defaults. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('HANGAR_')) env[key] = value;
  }
  return env;
}

/** Node arguments and environment of a process under `--profile`/`--count-queries`. */
async function instrument(
  ctx: Env,
  opts: Options,
  name: string,
): Promise<{ nodeArgs: string[]; env: Record<string, string> }> {
  const nodeArgs = opts.cpuProf ? await profileArgs(ctx, name) : [];
  const env: Record<string, string> = {};
  if (opts.countQueries) {
    nodeArgs.push(`--import=${pathToFileURL(countQueriesJs).href}`);
    env.BENCH_QUERY_COUNTS_FILE = path.join(ctx.tmp, `queries-${name}.json`);
  }
  if (opts.whatIfList !== undefined && name === 'api-get') {
    nodeArgs.push(`--import=${pathToFileURL(whatIfListJs).href}`);
    env.BENCH_WHAT_IF_LIST = opts.whatIfList;
  }
  return { nodeArgs, env };
}

/** The statements a stopped process counted (see count-queries.ts), most frequent first. */
async function readQueryCounts(ctx: Env, name: string): Promise<Array<{ kind: string; count: number }>> {
  const text = await readFile(path.join(ctx.tmp, `queries-${name}.json`), 'utf8').catch(() => '{}');
  return Object.entries(JSON.parse(text) as Record<string, number>)
    .map(([kind, count]) => ({ kind, count }))
    .sort((a, b) => b.count - a.count);
}

async function startApi(
  ctx: Env,
  name: string,
  role: 'api' | 'worker',
  options: { httpPort?: number; grpcPort: number; nodeArgs?: string[]; env?: Record<string, string> },
): Promise<Proc> {
  const env = {
    ...cleanEnv(),
    DATABASE_URL: ctx.dbUrl,
    REDIS_URL,
    HANGAR_REDIS_PREFIX: ctx.redisPrefix,
    HANGAR_ROLE: role,
    HANGAR_HTTP_HOST: '127.0.0.1',
    HANGAR_HTTP_PORT: String(options.httpPort ?? 0),
    HANGAR_GRPC_HOST: '127.0.0.1',
    HANGAR_GRPC_PORT: String(options.grpcPort),
    HANGAR_GRPC_INSECURE: 'true',
    ...ctx.apiEnv,
    ...options.env,
  };
  const proc = Proc.start(
    name,
    [...(options.nodeArgs ?? []), apiMainJs],
    env,
    path.join(ctx.tmp, `${name}.log`),
  );
  if (role === 'api') {
    await waitFor(
      `${name} ready`,
      async () => ((await fetch(`http://127.0.0.1:${options.httpPort}/readyz`)).ok ? true : undefined),
      { timeoutMs: 60_000, alive: exitedOf(proc) },
    );
  } else {
    await waitFor(
      `${name} consuming`,
      async () => ((await proc.tail(1_000_000)).includes('conductor consuming') ? true : undefined),
      { timeoutMs: 60_000, alive: exitedOf(proc) },
    );
  }
  return proc;
}

// ---------------------------------------------------------------------------------------------
// Part 1: GET /v1/vms

interface CpuShare {
  /** CPU ms per request. */
  serverMsPerReq: number;
  postgresMsPerReq: number;
  loadgenMsPerReq: number;
  /** % of one core over the round. */
  serverPct: number;
  postgresPct: number;
  loadgenPct: number;
}

interface GetSide {
  name: string;
  rounds: Array<{ rps: number; p50: number; p99: number; cpu: CpuShare }>;
  requests: number;
  errors: number;
  non200: number;
  rps: number;
  latency: Stats;
  bytesPerResponse: number;
  cpu: CpuShare;
}

interface GetResult {
  connections: number;
  pageSize: number;
  rows: number;
  roundS: number;
  rounds: number;
  warmupS: number;
  explain: { plan: string; executionMs: number };
  sameBody: boolean;
  bodyNote: string;
  hangar: GetSide;
  baseline: GetSide;
  throughputRatio: number;
  p99Ms: number;
  pass: { throughput: boolean; p99: boolean };
  /** The same open-loop arrival rate for both (default: half of Hangar's closed-loop throughput). */
  paced: { rps: number; hangar: GetSide; baseline: GetSide };
  layers: Layers;
  profile?: ProfileSummary;
  /** With --count-queries: the api's statements over its life, and how many requests it answered. */
  queries?: { requests: number; api: Array<{ kind: string; count: number }> };
}

interface RoundSample {
  result: LoadResult;
  cpu: { server: number; pg: number; loadgen: number; wallMs: number };
}

function cpuOf(list: readonly RoundSample[]): CpuShare {
  const n = list.reduce((s, x) => s + x.result.completed, 0) || 1;
  const wall = list.reduce((s, x) => s + x.cpu.wallMs, 0) || 1;
  const sum = (k: 'server' | 'pg' | 'loadgen') => list.reduce((s, x) => s + x.cpu[k], 0);
  return {
    serverMsPerReq: round3(sum('server') / n),
    postgresMsPerReq: round3(sum('pg') / n),
    loadgenMsPerReq: round3(sum('loadgen') / n),
    serverPct: round1((sum('server') / wall) * 100),
    postgresPct: round1((sum('pg') / wall) * 100),
    loadgenPct: round1((sum('loadgen') / wall) * 100),
  };
}

/** One server's rounds put together: throughput over the summed time, percentiles over every sample. */
function toSide(name: string, list: readonly RoundSample[]): GetSide {
  const completed = list.reduce((s, x) => s + x.result.completed, 0);
  const elapsed = list.reduce((s, x) => s + x.result.elapsedMs, 0);
  const statuses: Record<string, number> = {};
  for (const x of list)
    for (const [k, v] of Object.entries(x.result.statuses)) statuses[k] = (statuses[k] ?? 0) + v;
  return {
    name,
    rounds: list.map((x) => {
      const st = stats(x.result.latenciesMs);
      return {
        rps: Math.round((x.result.completed / x.result.elapsedMs) * 1000),
        p50: round2(st.p50),
        p99: round2(st.p99),
        cpu: cpuOf([x]),
      };
    }),
    requests: completed,
    errors: list.reduce((s, x) => s + x.result.errorCount, 0),
    non200: completed - (statuses['200'] ?? 0),
    rps: Math.round((completed / elapsed) * 1000),
    latency: stats(concat(list.map((x) => x.result.latenciesMs))),
    bytesPerResponse: Math.round(list.reduce((s, x) => s + x.result.bytes, 0) / (completed || 1)),
    cpu: cpuOf(list),
  };
}

async function partGet(
  ctx: Env,
  seeded: Seeded,
  db: pg.Client,
  load: LoadClient,
  opts: Options,
): Promise<GetResult> {
  const explain = await explainList(db, seeded.listProjectId, opts.pageSize);
  progress(`list query plan: ${explain.plan}; PostgreSQL execution ${explain.executionMs} ms`);

  const apiPort = await freePort();
  const api = await startApi(ctx, 'api-get', 'api', {
    httpPort: apiPort,
    grpcPort: await freePort(),
    ...(await instrument(ctx, opts, 'api-get')),
  });
  const baselinePort = await freePort();
  const baseline = Proc.start(
    'baseline',
    [baselineJs],
    {
      ...cleanEnv(),
      BASELINE_DATABASE_URL: ctx.dbUrl,
      BASELINE_PROJECT_ID: seeded.listProjectId,
      BASELINE_PORT: String(baselinePort),
      BASELINE_POOL_MAX: '10',
    },
    path.join(ctx.tmp, 'baseline.log'),
  );
  await waitFor(
    'baseline ready',
    async () => ((await fetch(`http://127.0.0.1:${baselinePort}/v1/vms?page_size=1`)).ok ? true : undefined),
    { timeoutMs: 30_000, alive: exitedOf(baseline) },
  );

  const request: LoadRequest = {
    method: 'GET',
    path: `/v1/vms?page_size=${opts.pageSize}`,
    headers: { Authorization: `Bearer ${seeded.listKey}` },
  };
  // Same request, same answer: the baseline must return the api's body byte for byte.
  const bodies = await Promise.all(
    [apiPort, baselinePort].map(async (port) => {
      const res = await fetch(`http://127.0.0.1:${port}${request.path}`, { headers: request.headers });
      if (res.status !== 200) throw new Error(`GET on port ${port}: ${res.status} ${await res.text()}`);
      return res.text();
    }),
  );
  const [apiBody, baseBody] = bodies as [string, string];
  const apiItems = (JSON.parse(apiBody) as { items: unknown[] }).items.length;
  const sameBody = apiBody === baseBody;
  const bodyNote = sameBody
    ? `identical bodies, ${apiBody.length} bytes, ${apiItems} items`
    : `bodies differ: api ${apiBody.length} bytes, baseline ${baseBody.length} bytes`;
  progress(bodyNote);
  if (apiItems !== opts.pageSize)
    throw new Error(`the api listed ${apiItems} VMs, expected ${opts.pageSize}`);

  // Every request the api answered (for statements per request under --count-queries).
  let served = 1;
  const servers = [
    { name: 'hangar', port: apiPort, pid: api.pid },
    { name: 'baseline', port: baselinePort, pid: baseline.pid },
  ] as const;
  for (const s of servers) {
    progress(`warm-up ${s.name}: ${opts.warmupS} s`);
    const warm = await load.run({
      host: '127.0.0.1',
      port: s.port,
      connections: opts.connections,
      mode: 'duration',
      durationMs: opts.warmupS * 1_000,
      requests: [request],
    });
    if (s.name === 'hangar') served += warm.completed;
  }

  const runRounds = async (what: string, rounds: number, ratePerS?: number) => {
    const samples = new Map<string, RoundSample[]>(servers.map((s) => [s.name, []]));
    for (let r = 0; r < rounds; r++) {
      // A B, B A, A B, …: a drift in machine load hits both alike.
      const order = r % 2 === 0 ? servers : [...servers].reverse();
      for (const s of order) {
        const [c0, p0, l0] = await Promise.all([cpuTicks(s.pid), postgresTicks(), cpuTicks(load.pid)]);
        const w0 = performance.now();
        const result = await load.run({
          host: '127.0.0.1',
          port: s.port,
          connections: opts.connections,
          mode: 'duration',
          durationMs: opts.roundS * 1_000,
          requests: [request],
          ...(ratePerS !== undefined ? { ratePerS } : {}),
        });
        const wallMs = performance.now() - w0;
        if (s.name === 'hangar') served += result.completed;
        const [c1, p1, l1] = await Promise.all([cpuTicks(s.pid), postgresTicks(), cpuTicks(load.pid)]);
        const tick = 1_000 / clkTck;
        samples.get(s.name)?.push({
          result,
          cpu: {
            server: (c1 - c0) * tick,
            pg: postgresDelta(p0, p1) * tick,
            loadgen: (l1 - l0) * tick,
            wallMs,
          },
        });
        const st = stats(result.latenciesMs);
        progress(
          `${what} round ${r + 1} ${s.name}: ${Math.round((result.completed / result.elapsedMs) * 1000)} req/s, p50 ${round2(st.p50)} ms, p99 ${round2(st.p99)} ms, ${result.errorCount} errors`,
        );
      }
    }
    return samples;
  };
  const closedFrom = monotonicUs();
  const closed = await runRounds('closed loop', opts.rounds);
  const closedWindow = { fromUs: closedFrom, toUs: monotonicUs() };
  const hangar = toSide('hangar', closed.get('hangar') ?? []);
  const base = toSide('baseline', closed.get('baseline') ?? []);
  // Latency below saturation: both servers get the same paced (open-loop) arrival rate.
  const pacedRps = opts.pacedRps ?? Math.max(10, Math.round((hangar.rps * 0.5) / 10) * 10);
  const paced = await runRounds(`paced ${pacedRps} req/s`, 2, pacedRps);
  const pacedHangar = toSide('hangar', paced.get('hangar') ?? []);
  const pacedBase = toSide('baseline', paced.get('baseline') ?? []);

  await baseline.stop();
  await api.stop();
  progress('timing the layers of the list in this process');
  const layers = await layerCosts(ctx, seeded.listProjectId, opts.pageSize);
  // Only the closed-loop rounds: both servers' rounds alternate, so about half of it is idle.
  const profile = opts.cpuProf ? await readProfile(ctx, 'api-get', closedWindow) : undefined;
  const queries = opts.countQueries
    ? { requests: served, api: await readQueryCounts(ctx, 'api-get') }
    : undefined;
  const throughputRatio = round3(hangar.rps / base.rps);
  return {
    connections: opts.connections,
    pageSize: opts.pageSize,
    rows: opts.rows,
    roundS: opts.roundS,
    rounds: opts.rounds,
    warmupS: opts.warmupS,
    explain,
    sameBody,
    bodyNote,
    hangar,
    baseline: base,
    throughputRatio,
    p99Ms: round2(hangar.latency.p99),
    pass: { throughput: throughputRatio >= 0.6, p99: hangar.latency.p99 <= 25 },
    paced: { rps: pacedRps, hangar: pacedHangar, baseline: pacedBase },
    layers,
    ...(profile ? { profile } : {}),
    ...(queries ? { queries } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// The layers of the list, timed one by one in this process

interface Layer {
  what: string;
  /** CPU of this process per call, ms. */
  cpuMs: number;
  /** Wall time per call (sequential), ms. */
  wallMs: number;
}

interface Layers {
  iterations: number;
  layers: Layer[];
}

/** The api's VM representation (toVmDto in apps/api/src/modules/vms/vm.schemas.ts), from a Prisma row. */
function vmDto(row: Vm) {
  return {
    id: row.id,
    project_id: row.projectId,
    name: row.name,
    flavor_id: row.flavorId,
    image_id: row.imageId,
    host_id: row.hostId,
    vcpus: row.vcpus,
    memory_mib: row.memoryMib,
    disk_gib: row.diskGib,
    status: row.observedState,
    desired_state: row.desiredState,
    labels: (row.labels ?? {}) as Record<string, string>,
    anti_affinity_group: row.antiAffinityGroup,
    cpu_model: row.cpuModel,
    machine_type: row.machineType,
    error_message: row.errorMessage,
    created_at: row.createdAt.toISOString(),
    updated_at: row.updatedAt.toISOString(),
    etag: String(row.version),
  };
}

/**
 * Where a list request's CPU goes below HTTP: the query through node-postgres (the baseline's
 * path) and through Prisma (the api's: same SQL, plus its result mapping), the DTO mapping and
 * JSON serialisation, each timed alone (sequential calls, CPU of this process per call).
 */
async function layerCosts(ctx: Env, projectId: string, pageSize: number, iterations = 400): Promise<Layers> {
  const pool = new pg.Pool({ connectionString: ctx.dbUrl, max: 1 });
  const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: ctx.dbUrl, max: 1 }) });
  try {
    const measure = async (what: string, fn: () => unknown, n = iterations): Promise<Layer> => {
      for (let i = 0; i < Math.min(100, n); i++) await fn();
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await fn();
      const wall = performance.now() - t0;
      const c = process.cpuUsage(c0);
      return { what, cpuMs: round3((c.user + c.system) / 1_000 / n), wallMs: round3(wall / n) };
    };
    const params = [projectId, pageSize + 1, 0];
    // What VmsService.list asks Prisma for a first page (pageClauses + the member's project).
    const findPage = () =>
      prisma.vm.findMany({
        where: { AND: [{ deletedAt: null, projectId }, {}] },
        orderBy: [{ createdAt: 'asc' }, { id: 'asc' }],
        take: pageSize + 1,
      });
    const rows = await findPage();
    const page = { items: rows.slice(0, pageSize).map(vmDto), next_page_token: 'x'.repeat(120) };
    return {
      iterations,
      layers: [
        await measure('node-postgres: the list query, rows parsed (the baseline; the api since ADR 15)', () =>
          pool.query(LIST_VMS_SQL, params),
        ),
        await measure(
          'Prisma `vm.findMany`: the same SQL and its result mapping (the api before ADR 15)',
          findPage,
        ),
        await measure(`toVmDto × ${pageSize}`, () => rows.slice(0, pageSize).map(vmDto), iterations * 5),
        await measure('JSON.stringify of the page', () => JSON.stringify(page), iterations * 5),
      ],
    };
  } finally {
    await prisma.$disconnect();
    await pool.end();
  }
}

// ---------------------------------------------------------------------------------------------
// CPU profile summary (node --cpu-prof)

interface CpuProfile {
  nodes: Array<{
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    children?: number[];
  }>;
  /** µs on the system's monotonic clock (CLOCK_MONOTONIC on Linux, as process.hrtime here). */
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Now on the clock V8's profiles use, µs. */
const monotonicUs = () => Number(process.hrtime.bigint() / 1_000n);

/** A time window on that clock: only samples inside it are summarised (no start-up, no idle tail). */
interface ProfileWindow {
  fromUs: number;
  toUs: number;
}

/** `node --cpu-prof` arguments that write the process's profile into `<tmp>/prof/<name>`. */
async function profileArgs(ctx: Env, name: string): Promise<string[]> {
  const dir = path.join(ctx.tmp, 'prof', name);
  await mkdir(dir, { recursive: true });
  return ['--cpu-prof', `--cpu-prof-dir=${dir}`];
}

/** The summary of the profile a stopped process wrote (see {@link profileArgs}). */
async function readProfile(
  ctx: Env,
  name: string,
  window: ProfileWindow,
): Promise<ProfileSummary | undefined> {
  const dir = path.join(ctx.tmp, 'prof', name);
  const file = (await readdir(dir).catch(() => [] as string[])).find((f) => f.endsWith('.cpuprofile'));
  if (!file) return undefined;
  return summariseProfile(JSON.parse(await readFile(path.join(dir, file), 'utf8')) as CpuProfile, window);
}

interface ProfileSummary {
  /** Length of the window summarised, ms. */
  windowMs: number;
  /** ms of samples in the window that were not idle. */
  busyMs: number;
  /** Self time by where the code lives, % of busy time. */
  byOrigin: Array<{ origin: string; pct: number }>;
  /** The functions with the most self time. */
  topFunctions: Array<{ fn: string; pct: number }>;
}

/** Where a profiled function lives: a package of node_modules, Hangar's own code, Node, GC. */
function originOf(url: string, fn: string): string {
  if (url === '') return fn.startsWith('(') ? fn : '(native)';
  if (url.startsWith('node:')) return 'node core';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1];
  if (pkg) return pkg;
  const own = /\/(apps\/[^/]+|packages\/[^/]+)\//.exec(url)?.[1];
  if (own) return own;
  return url;
}

function summariseProfile(profile: CpuProfile, window: ProfileWindow): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let at = profile.startTime;
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0;
    at += delta;
    if (at >= window.fromUs && at <= window.toUs) self.set(id, (self.get(id) ?? 0) + delta);
  });
  const origins = new Map<string, number>();
  const fns = new Map<string, number>();
  let busy = 0;
  for (const [id, us] of self) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === '(idle)') continue;
    busy += us;
    const origin = originOf(url, functionName);
    origins.set(origin, (origins.get(origin) ?? 0) + us);
    // Hangar's own functions are named by file; packages by package (their files are bundles).
    const file = /\/(?:apps|packages)\/[^/]+\/dist\/(.+)$/.exec(url)?.[1];
    const where = file ? `${origin}/${file}` : origin;
    const key = `${functionName || '(anonymous)'} ${where}${url && !url.startsWith('node:') ? `:${lineNumber + 1}` : ''}`;
    fns.set(key, (fns.get(key) ?? 0) + us);
  }
  const top = (m: Map<string, number>, n: number) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, v]) => ({ k, pct: round1((v / busy) * 100) }));
  return {
    windowMs: Math.round((window.toUs - window.fromUs) / 1_000),
    busyMs: Math.round(busy / 1_000),
    byOrigin: top(origins, 15).map(({ k, pct }) => ({ origin: k, pct })),
    topFunctions: top(fns, 20).map(({ k, pct }) => ({ fn: k, pct })),
  };
}

// ---------------------------------------------------------------------------------------------
// Part 2: POST /v1/vms against simulated hosts

interface PostResult {
  hosts: number;
  hostsUpAfterS: number;
  creates: number;
  connections: number;
  statuses: Record<string, number>;
  errors: number;
  acceptedPerS: number;
  latency: Stats;
  allRunningAfterS: number | null;
  runningAfterLastAcceptS: number | null;
  finalStates: Record<string, number>;
  operations: Record<string, number>;
  perHost: { used: number; min: number; max: number };
  replays: { sent: number; replayed: number; sameVm: number };
  cpuPct: { api: number; worker: number; simulator: number; postgres: number; loadgen: number };
  /** With --cpu-prof: the api while it accepted the creates, the worker until every VM ran. */
  profiles?: { api: ProfileSummary | undefined; worker: ProfileSummary | undefined };
  /** With --count-queries: statements of the api and the worker over their lives (all creates, the join tokens, agent reports). */
  queries?: { api: Array<{ kind: string; count: number }>; worker: Array<{ kind: string; count: number }> };
}

async function partPost(
  ctx: Env,
  seeded: Seeded,
  db: pg.Client,
  load: LoadClient,
  opts: Options,
): Promise<PostResult> {
  const httpPort = await freePort();
  const grpcPort = await freePort();
  const api = await startApi(ctx, 'api-post', 'api', {
    httpPort,
    grpcPort,
    ...(await instrument(ctx, opts, 'api-post')),
  });
  const worker = await startApi(ctx, 'worker', 'worker', {
    grpcPort: await freePort(),
    ...(await instrument(ctx, opts, 'worker')),
  });
  const base = `http://127.0.0.1:${httpPort}`;

  // One single-use join token per simulated host, issued the way an operator does.
  const tokens: string[] = [];
  for (let i = 0; i < opts.hosts; i++) {
    const res = await fetch(`${base}/v1/join-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${seeded.adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ description: `bench sim-${i}` }),
    });
    if (res.status !== 201) throw new Error(`POST /v1/join-tokens: ${res.status} ${await res.text()}`);
    tokens.push(((await res.json()) as { token: string }).token);
  }
  const simDir = path.join(ctx.tmp, 'sim');
  const pools = Object.fromEntries(
    ['images', 'local', 'shared'].map((p) => [
      p,
      { path: path.join(simDir, 'pools', p), shared: p !== 'local' },
    ]),
  );
  for (const p of Object.values(pools)) await mkdir(p.path, { recursive: true });
  const runtimeDir = await mkdtemp(path.join(os.tmpdir(), 'hbr-'));
  cleanups.push({ what: `folder ${runtimeDir}`, fn: () => rm(runtimeDir, { recursive: true, force: true }) });
  const configFile = path.join(simDir, 'agent.json');
  const tokensFile = path.join(simDir, 'join-tokens.txt');
  await writeFile(
    configFile,
    JSON.stringify({
      controlPlane: `127.0.0.1:${grpcPort}`,
      listen: '127.0.0.1:0',
      stateDir: path.join(simDir, 'state'),
      // The fake driver checks VM socket paths against the 107-byte unix socket limit like QEMU's
      // driver does: the runtime folder gets a short path of its own.
      runtimeDir,
      pools,
      insecureLoopback: true,
      logLevel: 'warn',
    }),
  );
  await writeFile(tokensFile, `${tokens.join('\n')}\n`, { mode: 0o600 });
  const simEnv = cleanEnv();
  const t0 = performance.now();
  const sim = Proc.start(
    'simulator',
    [agentMainJs, '--simulate', String(opts.hosts), '--config', configFile, '--sim-join-tokens', tokensFile],
    simEnv,
    path.join(ctx.tmp, 'simulator.log'),
  );
  await waitFor(
    `${opts.hosts} hosts UP`,
    async () => {
      const { rows } = await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM hosts WHERE state = 'UP'`,
      );
      return rows[0]?.n === opts.hosts ? true : undefined;
    },
    { timeoutMs: 120_000, intervalMs: 250, alive: exitedOf(sim) },
  );
  const hostsUpAfterS = round1((performance.now() - t0) / 1_000);
  progress(`${opts.hosts} simulated hosts UP after ${hostsUpAfterS} s`);
  await sleep(2_000);

  const requests: LoadRequest[] = Array.from({ length: opts.creates }, (_, i) => ({
    method: 'POST',
    path: '/v1/vms',
    headers: { Authorization: `Bearer ${seeded.createKey}`, 'Idempotency-Key': randomUUID() },
    body: JSON.stringify({
      name: `bench-${String(i).padStart(5, '0')}`,
      flavor: 'tiny',
      image: 'hangar-tiny',
    }),
  }));

  // Counts every 200 ms from the first send, to tell when the last VM is RUNNING.
  const pids = { api: api.pid, worker: worker.pid, simulator: sim.pid, loadgen: load.pid };
  const cpu0 = await Promise.all(Object.values(pids).map((p) => cpuTicks(p)));
  const pg0 = await postgresTicks();
  const startedAt = Date.now();
  const postFrom = monotonicUs();
  let allRunningAt: number | undefined;
  let loadDone = false;
  let settled = false;
  let polling = true;
  const poller = (async () => {
    while (polling) {
      const { rows } = await db.query<{ running: number; active: number }>(
        `SELECT (SELECT count(*)::int FROM vms WHERE project_id = $1 AND observed_state = 'RUNNING') AS running,
                (SELECT count(*)::int FROM operations WHERE project_id = $1 AND status IN ('PENDING', 'RUNNING')) AS active`,
        [seeded.createProjectId],
      );
      if ((rows[0]?.running ?? 0) >= opts.creates) {
        allRunningAt = Date.now();
        return;
      }
      // Every operation finished but some VM is not RUNNING: waiting longer would not change it.
      if (loadDone && rows[0]?.active === 0) {
        settled = true;
        return;
      }
      await sleep(200);
    }
  })();
  progress(`${opts.creates} creates at ${opts.postConnections} connections`);
  const result = await load.run({
    host: '127.0.0.1',
    port: httpPort,
    connections: opts.postConnections,
    mode: 'each',
    requests,
    timeoutMs: 60_000,
  });
  const cpuWall = Date.now() - startedAt;
  const acceptWindow = { fromUs: postFrom, toUs: monotonicUs() };
  const cpu1 = await Promise.all(Object.values(pids).map((p) => cpuTicks(p)));
  const pgTicks = postgresDelta(pg0, await postgresTicks());
  const pct = (ticks: number) => round1((ticks * (1_000 / clkTck) * 100) / cpuWall);
  const pctOf = (i: number) => pct((cpu1[i] ?? 0) - (cpu0[i] ?? 0));
  const accepted = result.statuses['202'] ?? 0;
  const lastAcceptAt = startedAt + result.elapsedMs;
  progress(`accepted ${accepted}/${opts.creates} in ${Math.round(result.elapsedMs)} ms; waiting for RUNNING`);
  loadDone = true;
  const deadline = Date.now() + opts.runningTimeoutS * 1_000;
  while (allRunningAt === undefined && !settled && Date.now() < deadline) await sleep(200);
  polling = false;
  await poller;
  const runWindow = { fromUs: postFrom, toUs: monotonicUs() };

  const group = async (sql: string) =>
    Object.fromEntries(
      (await db.query<{ k: string; n: number }>(sql, [seeded.createProjectId])).rows.map((r) => [r.k, r.n]),
    );
  const finalStates = await group(
    `SELECT observed_state::text AS k, count(*)::int AS n FROM vms WHERE project_id = $1 GROUP BY 1`,
  );
  const operations = await group(
    `SELECT kind || ' ' || status::text AS k, count(*)::int AS n FROM operations WHERE project_id = $1 GROUP BY 1`,
  );
  const spread = (
    await db.query<{ used: number; min: number; max: number }>(
      `SELECT count(*)::int AS used, min(n)::int AS min, max(n)::int AS max
         FROM (SELECT count(*) AS n FROM vms WHERE project_id = $1 AND host_id IS NOT NULL GROUP BY host_id) s`,
      [seeded.createProjectId],
    )
  ).rows[0] ?? { used: 0, min: 0, max: 0 };

  // Replays: the same key and body again must answer the first response, not create a VM.
  const replays = { sent: 0, replayed: 0, sameVm: 0 };
  for (const r of requests.slice(0, 20)) {
    const res = await fetch(`${base}${r.path}`, {
      method: 'POST',
      headers: { ...r.headers, 'content-type': 'application/json' },
      body: r.body ?? null,
    });
    const body = (await res.json()) as { vm?: { name?: string } };
    replays.sent += 1;
    if (res.status === 202 && res.headers.get('idempotent-replayed') === 'true') replays.replayed += 1;
    if (body.vm?.name === (JSON.parse(r.body ?? '{}') as { name: string }).name) replays.sameVm += 1;
  }
  const vmCount = (
    await db.query<{ n: number }>('SELECT count(*)::int AS n FROM vms WHERE project_id = $1', [
      seeded.createProjectId,
    ])
  ).rows[0]?.n;
  if (vmCount !== accepted) progress(`warning: ${vmCount} VM rows for ${accepted} accepted creates`);

  await sim.stop();
  await worker.stop();
  await api.stop();
  const queries = opts.countQueries
    ? { api: await readQueryCounts(ctx, 'api-post'), worker: await readQueryCounts(ctx, 'worker') }
    : undefined;
  const profiles = opts.cpuProf
    ? {
        api: await readProfile(ctx, 'api-post', acceptWindow),
        worker: await readProfile(ctx, 'worker', runWindow),
      }
    : undefined;
  const accepts = new Float64Array(result.latenciesMs.length);
  accepts.set(result.latenciesMs);
  return {
    hosts: opts.hosts,
    hostsUpAfterS,
    creates: opts.creates,
    connections: opts.postConnections,
    statuses: { ...result.statuses },
    errors: result.errorCount,
    acceptedPerS: round1((accepted / result.elapsedMs) * 1_000),
    latency: stats(accepts),
    allRunningAfterS: allRunningAt === undefined ? null : round1((allRunningAt - startedAt) / 1_000),
    runningAfterLastAcceptS:
      allRunningAt === undefined ? null : round1((allRunningAt - lastAcceptAt) / 1_000),
    finalStates,
    operations,
    perHost: spread,
    replays,
    cpuPct: {
      api: pctOf(0),
      worker: pctOf(1),
      simulator: pctOf(2),
      loadgen: pctOf(3),
      postgres: pct(pgTicks),
    },
    ...(profiles ? { profiles } : {}),
    ...(queries ? { queries } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// Part 3: placement

/** A deterministic PRNG (mulberry32), so every run places over the same fleet. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A fleet of `n` hosts as placement sees them: 97 % UP (2 % DOWN, 1 % MAINTENANCE), 1 % cordoned,
 * sizes 32..128 cores with 4 or 8 GiB per core, allocation ratios 4 and 1, a third of them nearly
 * full and the rest used at random, 5 % without the `shared` pool.
 */
function makeFleet(n: number): HostCandidate[] {
  const rand = prng(42);
  const sizes = [32, 48, 64, 96, 128];
  return Array.from({ length: n }, (_, i) => {
    const cores = sizes[Math.floor(rand() * sizes.length)] ?? 64;
    const memoryMib = cores * (rand() < 0.5 ? 4096 : 8192);
    const vcpus = cores * 4;
    const full = rand() < 0.33;
    const usedShare = full ? 0.97 + rand() * 0.03 : rand() * 0.9;
    const r = rand();
    return {
      id: `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`,
      name: `host-${String(i).padStart(5, '0')}`,
      state: r < 0.97 ? 'UP' : r < 0.99 ? 'DOWN' : 'MAINTENANCE',
      cordoned: rand() < 0.01,
      cores,
      memoryMib,
      cpuAllocationRatio: 4,
      ramAllocationRatio: 1,
      usedVcpus: Math.floor(vcpus * usedShare),
      usedMemoryMib: Math.floor(memoryMib * usedShare),
      accelerator: 'kvm',
      cpuModels: ['qemu64', 'Haswell', 'EPYC'],
      machineTypes: ['pc', 'q35'],
      pools: rand() < 0.05 ? ['images', 'local'] : ['images', 'local', 'shared'],
    };
  });
}

/**
 * The baseline: one plain pass over the hosts with the capacity check of `fitsOnHost` written out
 * (used + asked ≤ ⌊size × ratio⌋ for vCPUs and memory), keeping the emptiest host that fits.
 */
function linearScan(
  hosts: readonly HostCandidate[],
  vcpus: number,
  memoryMib: number,
): HostCandidate | undefined {
  let best: HostCandidate | undefined;
  let bestFree = Number.NEGATIVE_INFINITY;
  for (const h of hosts) {
    const capV = Math.floor(h.cores * h.cpuAllocationRatio);
    const capM = Math.floor(h.memoryMib * h.ramAllocationRatio);
    if (h.usedVcpus + vcpus > capV || h.usedMemoryMib + memoryMib > capM) continue;
    const free = (capV - h.usedVcpus - vcpus) / capV + (capM - h.usedMemoryMib - memoryMib) / capM;
    if (free > bestFree) {
      bestFree = free;
      best = h;
    }
  }
  return best;
}

interface PlacementResult {
  hosts: number;
  passed: number;
  iterations: number;
  decide: Stats;
  scan: Stats;
  ratioP50: number;
  /** decidePlacement with maxCandidates = every host (PlacementService's last attempt). */
  decideAllCandidates: Stats;
  pass: boolean;
  dbRead?: { hosts: number; reads: number; nodePg: Stats; findMany: Stats; toCandidates: Stats };
}

function partPlacement(opts: Options): PlacementResult {
  const hosts = makeFleet(opts.placementHosts);
  const request: PlacementRequest = {
    vcpus: 2,
    memoryMib: 4096,
    cpuModel: 'qemu64',
    machineType: 'pc',
    storagePool: 'shared',
    antiAffinityGroup: null,
  };
  let sink = 0;
  const first = decidePlacement(request, hosts);
  if (!first.ok) throw new Error(`no host in the generated fleet fits: ${first.error.detail}`);
  const time = (fn: () => void) => {
    const t = performance.now();
    fn();
    return performance.now() - t;
  };
  const decide = () => {
    const d = decidePlacement(request, hosts);
    if (d.ok) sink += d.candidates.length;
  };
  const scan = () => {
    if (linearScan(hosts, request.vcpus, request.memoryMib)) sink += 1;
  };
  for (let i = 0; i < 200; i++) {
    decide();
    scan();
  }
  const a: number[] = [];
  const b: number[] = [];
  const block = 100;
  for (let done = 0; done < opts.placementIterations; done += block) {
    const n = Math.min(block, opts.placementIterations - done);
    const first = (done / block) % 2 === 0;
    for (const kind of first ? ['a', 'b'] : ['b', 'a']) {
      for (let i = 0; i < n; i++) (kind === 'a' ? a : b).push(time(kind === 'a' ? decide : scan));
    }
  }
  const all: number[] = [];
  for (let i = 0; i < 20; i++) {
    all.push(
      time(() => {
        const d = decidePlacement(request, hosts, { maxCandidates: hosts.length });
        if (d.ok) sink += d.candidates.length;
      }),
    );
  }
  if (sink === 0) throw new Error('placement found nothing');
  const decideStats = stats(a);
  const scanStats = stats(b);
  return {
    hosts: hosts.length,
    passed: first.passed,
    iterations: opts.placementIterations,
    decide: decideStats,
    scan: scanStats,
    ratioP50: round2(decideStats.p50 / scanStats.p50),
    decideAllCandidates: stats(all),
    pass: decideStats.p50 <= 5,
  };
}

/**
 * What PlacementService pays before deciding: every host row through node-postgres (`HOST_COLUMNS`,
 * as it reads them since ADR 15), then toHostCandidate; and, for comparison, through Prisma's
 * findMany as it read them before.
 */
async function placementDbRead(
  ctx: Env,
  db: pg.Client,
  count: number,
  reads: number,
): Promise<NonNullable<PlacementResult['dbRead']>> {
  // The creates' hosts, VMs and allocations are done with: every table that points at hosts goes too.
  await db.query('TRUNCATE hosts CASCADE');
  await db.query(
    `INSERT INTO hosts (name, agent_address, state, cores, memory_mib, used_vcpus, used_memory_mib, accelerator,
                        machine_types, cpu_models, pools)
     SELECT 'host-' || lpad(g::text, 6, '0'), '10.0.' || (g / 250) || '.' || (g % 250) || ':7443', 'UP', 64, 262144,
            g % 200, (g % 200) * 1024, 'kvm', ARRAY['pc','q35'], ARRAY['qemu64','Haswell'],
            '[{"name":"images","shared":true},{"name":"local","shared":false},{"name":"shared","shared":true}]'::jsonb
       FROM generate_series(1, $1::int) AS g`,
    [count],
  );
  await db.query('VACUUM ANALYZE hosts');
  const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: ctx.dbUrl, max: 2 }) });
  try {
    const read = () =>
      prisma.host.findMany({
        select: {
          id: true,
          name: true,
          state: true,
          cordoned: true,
          cores: true,
          memoryMib: true,
          cpuAllocationRatio: true,
          ramAllocationRatio: true,
          usedVcpus: true,
          usedMemoryMib: true,
          accelerator: true,
          cpuModels: true,
          machineTypes: true,
          pools: true,
        },
      });
    const pool = new pg.Pool({ connectionString: ctx.dbUrl, max: 2 });
    const readRaw = async () => (await pool.query<HostRowLike>(`SELECT ${HOST_COLUMNS} FROM hosts`)).rows;
    try {
      for (let i = 0; i < 3; i++) await Promise.all([read(), readRaw()]);
      const f: number[] = [];
      const r: number[] = [];
      const m: number[] = [];
      for (let i = 0; i < reads; i++) {
        const t0 = performance.now();
        await read();
        const t1 = performance.now();
        const rows = await readRaw();
        const t2 = performance.now();
        const candidates = rows.map(toHostCandidate);
        m.push(performance.now() - t2);
        f.push(t1 - t0);
        r.push(t2 - t1);
        if (candidates.length !== count)
          throw new Error(`read ${candidates.length} hosts, expected ${count}`);
      }
      return { hosts: count, reads, nodePg: stats(r), findMany: stats(f), toCandidates: stats(m) };
    } finally {
      await pool.end();
    }
  } finally {
    await prisma.$disconnect();
  }
}

// ---------------------------------------------------------------------------------------------
// Main

interface Options {
  rounds: number;
  roundS: number;
  warmupS: number;
  connections: number;
  pacedRps: number | undefined;
  rows: number;
  pageSize: number;
  creates: number;
  postConnections: number;
  hosts: number;
  runningTimeoutS: number;
  placementHosts: number;
  placementIterations: number;
  skipGet: boolean;
  skipPost: boolean;
  skipPlacement: boolean;
  cpuProf: boolean;
  countQueries: boolean;
  whatIfList: 'select' | 'raw' | undefined;
  apiEnv: Record<string, string>;
  logsDir: string | undefined;
  json: boolean;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      rounds: { type: 'string', default: '4' },
      'round-s': { type: 'string', default: '10' },
      'warmup-s': { type: 'string', default: '5' },
      connections: { type: 'string', default: '32' },
      'paced-rps': { type: 'string' },
      rows: { type: 'string', default: '10000' },
      'page-size': { type: 'string', default: '100' },
      creates: { type: 'string', default: '1000' },
      'post-connections': { type: 'string', default: '32' },
      hosts: { type: 'string', default: '100' },
      'running-timeout-s': { type: 'string', default: '300' },
      'placement-hosts': { type: 'string', default: '10000' },
      'placement-iterations': { type: 'string', default: '2000' },
      'skip-get': { type: 'boolean', default: false },
      'skip-post': { type: 'boolean', default: false },
      'skip-placement': { type: 'boolean', default: false },
      'cpu-prof': { type: 'boolean', default: false },
      'api-env': { type: 'string', multiple: true, default: [] },
      logs: { type: 'string' },
      'count-queries': { type: 'boolean', default: false },
      'what-if-list': { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return undefined;
  }
  const int = (name: keyof typeof values, min: number): number => {
    const raw = values[name];
    const n = Number(raw);
    if (typeof raw !== 'string' || !Number.isInteger(n) || n < min)
      throw new Error(`--${name} must be an integer ≥ ${min}`);
    return n;
  };
  const whatIf = values['what-if-list'];
  if (whatIf !== undefined && whatIf !== 'select' && whatIf !== 'raw') {
    throw new Error(`--what-if-list takes select or raw, got ${whatIf}`);
  }
  const apiEnv: Record<string, string> = {};
  for (const kv of values['api-env']) {
    const m = /^(HANGAR_[A-Z0-9_]+)=(.*)$/.exec(kv);
    if (!m?.[1]) throw new Error(`--api-env takes HANGAR_NAME=value, got ${kv}`);
    apiEnv[m[1]] = m[2] ?? '';
  }
  return {
    rounds: int('rounds', 1),
    roundS: int('round-s', 1),
    warmupS: int('warmup-s', 0),
    connections: int('connections', 1),
    pacedRps: values['paced-rps'] === undefined ? undefined : int('paced-rps', 1),
    rows: int('rows', 1),
    pageSize: int('page-size', 1),
    creates: int('creates', 1),
    postConnections: int('post-connections', 1),
    hosts: int('hosts', 1),
    runningTimeoutS: int('running-timeout-s', 1),
    placementHosts: int('placement-hosts', 1),
    placementIterations: int('placement-iterations', 100),
    skipGet: values['skip-get'],
    skipPost: values['skip-post'],
    skipPlacement: values['skip-placement'],
    cpuProf: values['cpu-prof'],
    countQueries: values['count-queries'],
    whatIfList: whatIf,
    apiEnv,
    logsDir: values.logs,
    json: values.json,
  };
}

interface Machine {
  cores: number;
  memoryGiB: number;
  os: string;
  kernel: string;
  node: string;
  postgres: string;
  redis: string;
}

async function machineInfo(db: pg.Client, redis: Redis): Promise<Machine> {
  const osName =
    /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(await readFile('/etc/os-release', 'utf8').catch(() => ''))?.[1] ??
    os.type();
  const pgVersion =
    (await db.query<{ server_version: string }>('SHOW server_version')).rows[0]?.server_version ?? '?';
  const redisVersion = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1] ?? '?';
  return {
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    os: osName,
    kernel: os.release(),
    node: process.version,
    postgres: pgVersion,
    redis: redisVersion,
  };
}

interface Report {
  date: string;
  command: string;
  machine: Machine;
  load: { start: string; end: string; maxDuring: number };
  /** CPU of everything else on the machine during the run, % of one core. */
  others: { avgPct: number; maxPct: number; top: string[] };
  get?: GetResult;
  post?: PostResult;
  placement?: PlacementResult;
}

const f2 = (x: number) => x.toFixed(2);

function queriesMarkdown(
  what: string,
  per: number,
  label: string,
  counts: ReadonlyArray<{ kind: string; count: number }>,
): string[] {
  const total = counts.reduce((s, c) => s + c.count, 0);
  return [
    `SQL statements of ${what}: ${total} in all, ${f2(total / (per || 1))} ${label}:`,
    '',
    `| statement | count | ${label} |`,
    '| --- | ---: | ---: |',
    ...counts.slice(0, 25).map((c) => `| ${c.kind} | ${c.count} | ${f2(c.count / (per || 1))} |`),
    '',
  ];
}

function profileMarkdown(what: string, p: ProfileSummary): string[] {
  return [
    `CPU profile of ${what} (self time over ${p.windowMs} ms, ${p.busyMs} ms of it busy; % of busy):`,
    '',
    '| where | % |',
    '| --- | ---: |',
    ...p.byOrigin.map((o) => `| ${o.origin} | ${o.pct} |`),
    '',
    '| function | % |',
    '| --- | ---: |',
    ...p.topFunctions.map((o) => `| \`${o.fn}\` | ${o.pct} |`),
    '',
  ];
}
const verdict = (ok: boolean) => (ok ? '**PASS**' : '**FAIL**');

function markdown(r: Report): string {
  const out: string[] = [];
  const m = r.machine;
  out.push(
    `### bench/api — ${r.date}`,
    '',
    `${m.cores} cores, ${m.memoryGiB} GiB, ${m.os} (kernel ${m.kernel}), Node ${m.node}, PostgreSQL ${m.postgres}, Redis ${m.redis}.`,
    `Load average at start ${r.load.start}, at end ${r.load.end} (1-min max seen during the run: ${r.load.maxDuring}; the bench itself keeps about two cores busy).`,
    `Other processes (not the bench's, PostgreSQL's or Redis's) used ${r.others.avgPct} % of one core on average during the run, ${r.others.maxPct} % in the busiest 2 s${r.others.top.length ? `; most: ${r.others.top.join(', ')}` : ''}.`,
    `Command: \`${r.command}\``,
    ...(r.command.includes('--what-if-list')
      ? ['', '**What-if run**: the api of part 1 lists through `bench/api/what-if-list.ts`, not as shipped.']
      : []),
    '',
  );
  if (r.get) {
    const g = r.get;
    const row = (s: GetSide) =>
      `| ${s.name} | ${s.rps} | ${f2(s.latency.p50)} | ${f2(s.latency.p90)} | ${f2(s.latency.p99)} | ${f2(s.latency.max)} | ${s.requests} | ${s.errors + s.non200} | ${s.cpu.serverMsPerReq} | ${s.cpu.postgresMsPerReq} | ${s.cpu.serverPct} / ${s.cpu.postgresPct} / ${s.cpu.loadgenPct} |`;
    out.push(
      `#### GET /v1/vms?page_size=${g.pageSize} (${g.rows} VMs in the project), ${g.connections} connections`,
      '',
      `${g.rounds} rounds of ${g.roundS} s per server (A B B A …) after ${g.warmupS} s of warm-up each. ${g.bodyNote}. Plan: ${g.explain.plan}; PostgreSQL's execution time ${g.explain.executionMs} ms.`,
      '',
      '| server | req/s | p50 ms | p90 ms | p99 ms | max ms | requests | errors | server CPU ms/req | postgres CPU ms/req | CPU % of a core: server / postgres / load gen |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
      row(g.hangar),
      row(g.baseline),
      '',
      `Per round (req/s): hangar ${g.hangar.rounds.map((x) => x.rps).join(', ')}; baseline ${g.baseline.rounds.map((x) => x.rps).join(', ')}.`,
      '',
      `- Throughput ratio hangar / baseline: **${g.throughputRatio}** (target ≥ 0.6): ${verdict(g.pass.throughput)}`,
      `- Hangar p99: **${g.p99Ms} ms** (target ≤ 25 ms): ${verdict(g.pass.p99)}`,
      `- p50 ratio: ${f2(g.hangar.latency.p50 / g.baseline.latency.p50)}; server CPU per request ratio: ${f2(g.hangar.cpu.serverMsPerReq / g.baseline.cpu.serverMsPerReq)}`,
      `- A closed loop keeps ${g.connections} requests in flight, so its mean latency is ${g.connections} ÷ throughput (Little's law): a p99 ≤ 25 ms there needs more than ${Math.round(g.connections / 0.025)} req/s. Below saturation (paced, next table) Hangar's p99 is ${f2(g.paced.hangar.latency.p99)} ms: ${g.paced.hangar.latency.p99 <= 25 ? 'within' : 'above'} 25 ms.`,
      '',
      `Below saturation: the same paced (open-loop) arrival rate of ${g.paced.rps} req/s for both, ${g.connections} connections, 2 rounds of ${g.roundS} s each; latency counted from when each request was due.`,
      '',
      '| server | req/s | p50 ms | p90 ms | p99 ms | max ms | server CPU ms/req | CPU % of a core: server / postgres |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
      ...[g.paced.hangar, g.paced.baseline].map(
        (s) =>
          `| ${s.name} | ${s.rps} | ${f2(s.latency.p50)} | ${f2(s.latency.p90)} | ${f2(s.latency.p99)} | ${f2(s.latency.max)} | ${s.cpu.serverMsPerReq} | ${s.cpu.serverPct} / ${s.cpu.postgresPct} |`,
      ),
      '',
      `Layers of the list, timed alone in the bench process (${g.layers.iterations} sequential calls each):`,
      '',
      '| layer | CPU ms/call | wall ms/call |',
      '| --- | ---: | ---: |',
      ...g.layers.layers.map((l) => `| ${l.what} | ${l.cpuMs} | ${l.wallMs} |`),
      '',
    );
    if (g.profile) out.push(...profileMarkdown('the api during the closed-loop rounds', g.profile));
    if (g.queries) {
      out.push(
        ...queriesMarkdown(
          `the api over its life (${g.queries.requests} list requests)`,
          g.queries.requests,
          'per request',
          g.queries.api,
        ),
      );
    }
  }
  if (r.post) {
    const p = r.post;
    out.push(
      `#### POST /v1/vms, ${p.creates} creates with Idempotency-Keys, ${p.connections} connections, ${p.hosts} simulated hosts`,
      '',
      `Hosts UP ${p.hostsUpAfterS} s after the simulator started. Statuses: ${JSON.stringify(p.statuses)}, transport errors ${p.errors}.`,
      '',
      '| accepted/s | accept p50 ms | p90 ms | p99 ms | max ms | all RUNNING after (from first POST) | after the last accept |',
      '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      `| ${p.acceptedPerS} | ${f2(p.latency.p50)} | ${f2(p.latency.p90)} | ${f2(p.latency.p99)} | ${f2(p.latency.max)} | ${p.allRunningAfterS === null ? `not all RUNNING (${p.finalStates.RUNNING ?? 0}/${p.creates})` : `${p.allRunningAfterS} s`} | ${p.runningAfterLastAcceptS ?? '—'} s |`,
      '',
      `Final VM states: ${JSON.stringify(p.finalStates)}; operations: ${JSON.stringify(p.operations)}. VMs per host: ${p.perHost.min}..${p.perHost.max} over ${p.perHost.used} hosts. Replays: ${p.replays.replayed}/${p.replays.sent} answered as replays, ${p.replays.sameVm} with the same VM.`,
      `CPU during the creates (% of one core): api ${p.cpuPct.api}, worker ${p.cpuPct.worker}, simulator ${p.cpuPct.simulator}, postgres ${p.cpuPct.postgres}, load gen ${p.cpuPct.loadgen}.`,
      '',
    );
    if (p.profiles?.api)
      out.push(...profileMarkdown('the api while it accepted the creates', p.profiles.api));
    if (p.profiles?.worker) out.push(...profileMarkdown('the worker until every VM ran', p.profiles.worker));
    if (p.queries) {
      out.push(
        ...queriesMarkdown(
          `the api over its life (${p.creates} creates, ${p.hosts} join tokens and registrations, 20 replays, the agents' reports)`,
          p.creates,
          'per create',
          p.queries.api,
        ),
        ...queriesMarkdown(
          `the worker over its life (${p.creates} create operations)`,
          p.creates,
          'per create',
          p.queries.worker,
        ),
      );
    }
  }
  if (r.placement) {
    const p = r.placement;
    out.push(
      `#### Placement over ${p.hosts} hosts in memory (${p.passed} pass every filter), ${p.iterations} decisions of each kind`,
      '',
      '| | p50 ms | p90 ms | p99 ms | max ms |',
      '| --- | ---: | ---: | ---: | ---: |',
      `| \`decidePlacement\` (7 filters, spread weigher, best 5) | ${round3(p.decide.p50)} | ${round3(p.decide.p90)} | ${round3(p.decide.p99)} | ${round3(p.decide.max)} |`,
      `| baseline: linear scan, capacity check only | ${round3(p.scan.p50)} | ${round3(p.scan.p90)} | ${round3(p.scan.p99)} | ${round3(p.scan.max)} |`,
      `| \`decidePlacement\` with maxCandidates = all hosts (PlacementService's last attempt), 20 runs | ${round3(p.decideAllCandidates.p50)} | ${round3(p.decideAllCandidates.p90)} | ${round3(p.decideAllCandidates.p99)} | ${round3(p.decideAllCandidates.max)} |`,
      '',
      `- decidePlacement p50 **${round3(p.decide.p50)} ms** (target ≤ 5 ms): ${verdict(p.pass)}; ${p.ratioP50}× the linear scan.`,
    );
    if (p.dbRead) {
      out.push(
        `- Informational: reading ${p.dbRead.hosts} host rows as PlacementService does (node-postgres, 14 columns): p50 ${round1(p.dbRead.nodePg.p50)} ms, p99 ${round1(p.dbRead.nodePg.p99)} ms; through Prisma findMany as before ADR 15: p50 ${round1(p.dbRead.findMany.p50)} ms, p99 ${round1(p.dbRead.findMany.p99)} ms; toHostCandidate over them p50 ${round2(p.dbRead.toCandidates.p50)} ms (${p.dbRead.reads} reads).`,
      );
    }
    out.push('');
  }
  return out.join('\n');
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (!opts) return 0;
  clkTck = Number((await execFileAsync('getconf', ['CLK_TCK'])).stdout.trim()) || 100;
  const loadStart = os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
  let maxLoad = os.loadavg()[0] ?? 0;
  const loadTimer = setInterval(() => {
    maxLoad = Math.max(maxLoad, os.loadavg()[0] ?? 0);
  }, 5_000);
  cleanups.push({ what: 'load sampler', fn: async () => clearInterval(loadTimer) });
  progress(`load average at start: ${loadStart}`);
  if ((os.loadavg()[0] ?? 0) > 1) {
    progress(
      'warning: the 1-minute load average is above 1: other work shares the cores, figures will be noisy',
    );
  }

  const tmp = await mkdtemp(path.join(os.tmpdir(), 'hangar-bench-api-'));
  cleanups.push({ what: `temp folder ${tmp}`, fn: () => rm(tmp, { recursive: true, force: true }) });
  const logsDir = opts.logsDir;
  if (logsDir !== undefined) {
    // Runs before the folder is removed (cleanups run newest first), also after a failure.
    cleanups.push({
      what: `copying logs to ${logsDir}`,
      fn: async () => {
        await mkdir(logsDir, { recursive: true });
        for (const f of (await readdir(tmp)).filter((n) => n.endsWith('.log'))) {
          await copyFile(path.join(tmp, f), path.join(logsDir, f));
        }
      },
    });
  }
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 3, lazyConnect: true });
  await redis.connect();
  cleanups.push({
    what: 'redis client',
    fn: async () => void (await redis.quit().catch(() => redis.disconnect())),
  });
  await sweepStale(redis);

  const stamp = Date.now().toString(36);
  const suffix = randomBytes(4).toString('hex');
  const dbName = `hangar_bench_${stamp}_${suffix}`;
  const redisPrefix = `hangar-bench-${stamp}-${suffix}`;
  await withAdmin((admin) => admin.query(`CREATE DATABASE "${dbName}"`));
  cleanups.push({
    what: `database ${dbName}`,
    fn: () =>
      withAdmin((admin) => admin.query(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`)).then(
        () => undefined,
      ),
  });
  cleanups.push({
    what: `redis prefix ${redisPrefix}`,
    fn: async () => void (await deleteKeysWithPrefix(redis, redisPrefix)),
  });
  const ctx: Env = { dbUrl: databaseUrl(dbName), redisPrefix, tmp, apiEnv: opts.apiEnv };
  progress(`database ${dbName}, redis prefix ${redisPrefix}, folder ${tmp}`);

  await migrate({ databaseUrl: ctx.dbUrl });
  const db = new pg.Client({ connectionString: ctx.dbUrl, application_name: 'hangar-bench' });
  await db.connect();
  cleanups.push({ what: 'database client', fn: () => db.end() });
  const machine = await machineInfo(db, redis);

  const others = new ForeignCpu();
  await others.start();
  cleanups.push({ what: 'cpu sampler', fn: async () => void others.stop() });
  const report: Report = {
    date: new Date().toISOString(),
    command: `node bench/api/dist/api.bench.js ${process.argv.slice(2).join(' ')}`.trim(),
    machine,
    load: { start: loadStart, end: '', maxDuring: 0 },
    others: { avgPct: 0, maxPct: 0, top: [] },
  };

  // Placement first: pure CPU in this process, while nothing else of the bench runs.
  if (!opts.skipPlacement) {
    progress(`placement over ${opts.placementHosts} hosts`);
    report.placement = partPlacement(opts);
  }

  progress(`seeding ${opts.rows} VMs`);
  const seeded = await seed(db, opts.rows);
  const load = LoadClient.start();
  if (!opts.skipGet) report.get = await partGet(ctx, seeded, db, load, opts);
  if (!opts.skipPost) report.post = await partPost(ctx, seeded, db, load, opts);
  if (report.placement && !opts.skipPlacement) {
    progress(`reading ${opts.placementHosts} host rows (informational)`);
    try {
      report.placement.dbRead = await placementDbRead(ctx, db, opts.placementHosts, 20);
    } catch (err) {
      // Informational only: the measured parts are reported anyway.
      progress(`reading the host rows failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  report.others = others.stop();
  report.load = {
    start: loadStart,
    end: os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
    maxDuring: round2(Math.max(maxLoad, os.loadavg()[0] ?? 0)),
  };
  process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : `${markdown(report)}\n`);
  return 0;
}

let signalled = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (signalled) process.exit(130);
    signalled = true;
    progress(`${signal}: cleaning up`);
    void runCleanups().finally(() => process.exit(130));
  });
}

main().then(
  async (code) => {
    await runCleanups();
    process.exitCode = code;
  },
  async (err: unknown) => {
    progress(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    await runCleanups();
    process.exitCode = 1;
  },
);
