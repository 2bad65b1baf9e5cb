import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { killQemuUnder } from '../../../../packages/vmm-core/test/support/test-host.js';
import { controlPlaneSettingsEnv } from '../../src/modules/conductor/control-plane.settings.js';
import { createTestRedis, repoRoot, type TestRedis, testSettings } from './cluster.js';
import { createTestDatabase, type TestDatabase } from './db.js';

/*
 * A real multi-host cluster for tests, brought up by the very scripts the README's main job runs
 * (scripts/cluster/up.mjs --hosts N, down.mjs, hosts.mjs — docs/adr/0044): N agents with real
 * QEMU, each in a network namespace of its own, the api and a worker in the root namespace, mTLS
 * between them, one shared storage folder. Everything is per run: a data folder
 * `/tmp/hangar-mhtest-*` (owner pid inside), a database, a Redis prefix, ports, and the
 * namespace/bridge/veth names and subnet the scripts derive from the data folder. The scripts
 * mark the fabric with this process as its owner, so when a run is killed, the next run's
 * {@link sweepMultiHostLeftovers} removes what it left — and nothing of a run still going.
 * The scripts' build step is not run: the workspaces must be built (scripts/test.sh does).
 */

const execFileAsync = promisify(execFile);

const UP = path.join(repoRoot, 'scripts/cluster/up.mjs');
const DOWN = path.join(repoRoot, 'scripts/cluster/down.mjs');
const HOSTS = path.join(repoRoot, 'scripts/cluster/hosts.mjs');
/** Data folders of this harness; not `hangar-test-*`, whose sweep would delete them without stopping the cluster. */
const DIR_PREFIX = 'hangar-mhtest-';
const OWNER_FILE = '.owner-pid';
/** The environment mark every process of a cluster carries (scripts/cluster/lib.mjs). */
const CLUSTER_MARK = 'HANGAR_CLUSTER_DIR';

/** How a script ended and what it printed. */
export interface ScriptResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** A script still running, for tests that kill it on purpose. */
export interface RunningScript {
  readonly child: ChildProcess;
  readonly done: Promise<ScriptResult>;
}

/** One host of the cluster as a test needs it. */
export interface ClusterHost {
  /** The name it registered with (`host1` …). */
  readonly name: string;
  /** Its id in the api (`GET /v1/hosts`). */
  readonly hostId: string;
  /** Its network namespace (the agent, its guests, their bridge and taps are inside). */
  readonly namespace: string;
  /** Its namespace's address: the agent's gRPC and its migration address. */
  readonly address: string;
  readonly agentPid: number;
  /** vmm-core's runtime folder of the host (`vms/<vm id>/qemu.pid`, serial log …). */
  readonly runtimeDir: string;
  readonly agentLog: string;
}

/** The per-run parts of a cluster, before or without `up` having finished. */
export interface ClusterRun {
  readonly dataDir: string;
  readonly clusterDir: string;
  /** The scripts' tag: every namespace, veth and the bridge are named `<tag>-…`. */
  readonly tag: string;
  readonly db: TestDatabase;
  readonly redis: TestRedis;
  readonly httpPort: number;
  readonly grpcPort: number;
  /** The environment the scripts run with. */
  readonly env: Record<string, string>;
  /** Starts `up.mjs --hosts <hosts> --no-demo` and returns at once. */
  startUp(hosts: number): RunningScript;
  /** Runs `down.mjs` (extra arguments: `--sweep`, `--keep-guests`). */
  down(args?: string[]): Promise<ScriptResult>;
  /** A process of the cluster the scripts recorded (`api`, `worker`, `agent-host1` …). */
  recorded(role: string): { pid: number; startTime: string } | undefined;
  /** Stops whatever still runs (down, then the sweep's force), drops the database, Redis keys and folder. */
  dispose(): Promise<void>;
}

/** A cluster that is up. */
export interface MultiHostCluster {
  readonly run: ClusterRun;
  /** e.g. http://127.0.0.1:PORT */
  readonly url: string;
  /** The admin key the first `up` printed (default project). */
  readonly adminKey: string;
  /** The folder every host has as its `shared` pool. */
  readonly sharedPoolDir: string;
  /** The hosts, in order; `restartAgent` refreshes them. */
  readonly hosts: readonly ClusterHost[];
  host(name: string): ClusterHost;
  /** The REST api with the admin key. */
  api<T = Record<string, unknown>>(method: string, route: string, body?: unknown): Promise<ApiResponse<T>>;
  /** SIGKILLs one host's agent (its guests keep running) and waits until it is gone; returns its pid. */
  killAgent(name: string): Promise<number>;
  /** Runs `up.mjs` again, which starts the agents that do not run and waits until every host is UP. */
  restartAgent(name: string): Promise<ClusterHost>;
  /** `down.mjs` (guests stopped through the api, processes, namespaces), then `dispose()`. Idempotent. */
  teardown(): Promise<void>;
}

/** One REST answer; `T` is what the caller expects in the body (unchecked). */
export interface ApiResponse<T = Record<string, unknown>> {
  readonly status: number;
  readonly headers: Headers;
  readonly body: T;
}

/** What of a run is still on the machine: all empty once it is torn down. */
export interface ClusterLeftovers {
  readonly namespaces: string[];
  readonly links: string[];
  /** api, worker, agents and anything they started (QEMU too): by the environment mark. */
  readonly processes: { pid: number; argv0: string }[];
  /** QEMU processes whose argv names the run's data folder. */
  readonly qemu: number[];
}

const children = new Set<ChildProcess>();

/** Runs `node <script> <args>` in its own process group (killed whole on timeout). */
function startNode(script: string, args: string[], env: Record<string, string>): RunningScript {
  const child = spawn(process.execPath, [script, ...args], {
    cwd: repoRoot,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (c: Buffer) => {
    stdout += c.toString('utf8');
  });
  child.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString('utf8');
  });
  const done = new Promise<ScriptResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { child, done };
}

async function runNode(
  script: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs: number,
): Promise<ScriptResult> {
  const started = startNode(script, args, env);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      killGroup(started.child);
      reject(new Error(`${path.basename(script)} ${args.join(' ')} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([started.done, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** The start time of a live (non-zombie) process, or undefined. */
export function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' || fields[0] === 'X' ? undefined : fields[19];
  } catch {
    return undefined;
  }
}

function baseEnv(): Record<string, string> {
  return { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', HOME: process.env.HOME ?? '/root' };
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Pids of the processes inside a network namespace. */
export async function namespacePids(namespace: string): Promise<number[]> {
  const { stdout } = await execFileAsync('ip', ['netns', 'pids', namespace]).catch(() => ({ stdout: '' }));
  return stdout
    .split('\n')
    .map((l) => Number.parseInt(l, 10))
    .filter((n) => Number.isInteger(n) && n > 0);
}

/** Runs `argv` inside `namespace` to completion (`ip netns exec`). */
export async function execInNamespace(
  namespace: string,
  argv: string[],
  timeoutMs = 20_000,
): Promise<{ stdout: string; stderr: string }> {
  return execFileAsync('ip', ['netns', 'exec', namespace, ...argv], { timeout: timeoutMs });
}

/** Starts `argv` inside `namespace` and leaves it running (the caller kills it). */
export function spawnInNamespace(namespace: string, argv: string[]): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', namespace, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Processes whose environment carries the mark of `clusterDir`. */
async function markedProcesses(clusterDir: string): Promise<{ pid: number; argv0: string }[]> {
  const mark = Buffer.from(`${CLUSTER_MARK}=${clusterDir}\0`);
  const found: { pid: number; argv0: string }[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const environ = await readFile(`/proc/${entry}/environ`).catch(() => undefined);
    if (!environ) continue;
    const at = environ.indexOf(mark);
    if (at < 0 || (at > 0 && environ[at - 1] !== 0)) continue;
    if (startTimeOf(Number(entry)) === undefined) continue;
    const argv0 = await readFile(`/proc/${entry}/cmdline`, 'utf8').then(
      (s) => s.split('\0').slice(0, 2).join(' '),
      () => '?',
    );
    found.push({ pid: Number(entry), argv0 });
  }
  return found;
}

/** What of the run with this tag and folders is still on the machine. */
export async function leftoversOf(
  run: Pick<ClusterRun, 'tag' | 'clusterDir' | 'dataDir'>,
): Promise<ClusterLeftovers> {
  const ours = (name: string) => name.startsWith(`${run.tag}-`);
  const netns = (await execFileAsync('ip', ['-j', 'netns', 'list'])).stdout.trim();
  const namespaces = netns ? (JSON.parse(netns) as { name: string }[]).map((n) => n.name).filter(ours) : [];
  const links = (
    JSON.parse((await execFileAsync('ip', ['-j', 'link', 'show'])).stdout) as { ifname: string }[]
  )
    .map((l) => l.ifname)
    .filter(ours);
  const processes = await markedProcesses(run.clusterDir);
  const qemu: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = await readFile(`/proc/${entry}/cmdline`, 'utf8').then(
      (s) => s.split('\0'),
      () => [] as string[],
    );
    if ((argv[0] ?? '').includes('qemu-system') && argv.some((a) => a.includes(run.dataDir))) {
      if (startTimeOf(Number(entry)) !== undefined) qemu.push(Number(entry));
    }
  }
  return { namespaces, links, processes, qemu };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * `hosts.mjs sweep`: removes the fabrics (and their clusters' processes) whose owner process is
 * gone; returns what it removed.
 */
export async function sweepFabrics(): Promise<{ tag: string; reason: string; dir?: string }[]> {
  const res = await runNode(HOSTS, ['sweep'], baseEnv(), 120_000);
  if (res.code !== 0) throw new Error(`hosts.mjs sweep failed: ${res.stderr}`);
  return JSON.parse(res.stdout.trim() || '[]') as { tag: string; reason: string; dir?: string }[];
}

let swept: Promise<void> | undefined;

/**
 * Removes what killed runs of this harness left: fabrics whose owner process is gone (with the
 * processes of their clusters and everything in their namespaces: `hosts.mjs sweep`), then the
 * data folders of dead owners (`down.mjs --sweep` on each, then the folder). Runs once per process.
 */
export function sweepMultiHostLeftovers(): Promise<void> {
  swept ??= (async () => {
    const env = baseEnv();
    await sweepFabrics();
    const tmp = os.tmpdir();
    for (const entry of await readdir(tmp)) {
      if (!entry.startsWith(DIR_PREFIX)) continue;
      const dir = path.join(tmp, entry);
      const owner = Number.parseInt(await readFile(path.join(dir, OWNER_FILE), 'utf8').catch(() => ''), 10);
      if (Number.isInteger(owner) && owner > 0 && isAlive(owner)) continue;
      if (existsSync(path.join(dir, 'cluster'))) {
        await runNode(DOWN, ['--sweep'], { ...env, HANGAR_DATA_DIR: dir }, 120_000);
      }
      await killQemuUnder(dir);
      await rm(dir, { recursive: true, force: true });
    }
  })();
  return swept;
}

/** The scripts' tag of a cluster folder (`hosts.mjs tag`). */
async function tagOf(clusterDir: string): Promise<string> {
  const res = await runNode(HOSTS, ['tag', clusterDir], baseEnv(), 30_000);
  const tag = res.stdout.trim();
  if (res.code !== 0 || !/^hgc[0-9a-z]{4}$/.test(tag)) throw new Error(`hosts.mjs tag: ${res.stderr}`);
  return tag;
}

/**
 * The per-run parts of a cluster: data folder (the guest image linked in), database, Redis
 * prefix, ports and the scripts' environment. `ownerPid`: the process whose death makes the
 * cluster a leftover for the sweep (default: this test process).
 */
export async function createClusterRun(
  options: { ownerPid?: number; env?: Record<string, string> } = {},
): Promise<ClusterRun> {
  await sweepMultiHostLeftovers();
  const dataDir = await mkdtemp(path.join(os.tmpdir(), DIR_PREFIX));
  await writeFile(path.join(dataDir, OWNER_FILE), String(process.pid));
  let db: TestDatabase | undefined;
  let redis: TestRedis | undefined;
  try {
    // The guest image is built in the repository's data folder (vitest's global setup): reuse it.
    await symlink(path.join(repoRoot, '.data', 'images'), path.join(dataDir, 'images'));
    db = await createTestDatabase({ migrate: false });
    redis = await createTestRedis();
  } catch (error) {
    await db?.drop();
    await redis?.cleanup();
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
  const clusterDir = path.join(dataDir, 'cluster');
  const tag = await tagOf(clusterDir);
  const httpPort = await freePort();
  let grpcPort = await freePort();
  while (grpcPort === httpPort) grpcPort = await freePort();
  const env = {
    ...baseEnv(),
    HANGAR_DATA_DIR: dataDir,
    DATABASE_URL: db.url,
    REDIS_URL: redis.url,
    HANGAR_REDIS_PREFIX: redis.prefix,
    HANGAR_CLUSTER_OWNER: String(options.ownerPid ?? process.pid),
    ...controlPlaneSettingsEnv(testSettings({ heartbeatIntervalMs: 1_000, metricsIntervalMs: 2_000 })),
    ...options.env,
  };
  const testDb = db;
  const testRedis = redis;
  let disposed = false;
  const recorded = (role: string) => {
    try {
      const state = JSON.parse(readFileSync(path.join(clusterDir, 'state.json'), 'utf8')) as {
        processes?: Record<string, { pid: number; startTime: string } | undefined>;
      };
      return state.processes?.[role];
    } catch {
      return undefined;
    }
  };
  const clusterRun: ClusterRun = {
    dataDir,
    clusterDir,
    tag,
    db: testDb,
    redis: testRedis,
    httpPort,
    grpcPort,
    env,
    recorded,
    startUp: (hosts) =>
      startNode(
        UP,
        [
          '--hosts',
          String(hosts),
          '--no-demo',
          '--http-port',
          String(httpPort),
          '--grpc-port',
          String(grpcPort),
        ],
        env,
      ),
    down: (args = []) => runNode(DOWN, args, env, 180_000),
    async dispose() {
      if (disposed) return;
      disposed = true;
      for (const child of children) killGroup(child);
      // Whatever down.mjs did not get to (it failed, or was never run): no api calls, all of it goes.
      if (existsSync(clusterDir)) await runNode(DOWN, ['--sweep'], env, 120_000).catch(() => undefined);
      await killQemuUnder(dataDir);
      await testDb.drop().catch(() => undefined);
      await testRedis.cleanup();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  return clusterRun;
}

/**
 * Brings up an N-host cluster with the scripts and returns what a test needs. Always pair it with
 * `teardown()` (an `afterAll`); when bringing it up fails, everything it made is removed before
 * the error is thrown.
 */
export async function startMultiHostCluster(options: {
  hosts: number;
  env?: Record<string, string>;
  timeoutMs?: number;
}): Promise<MultiHostCluster> {
  const clusterRun = await createClusterRun(options.env ? { env: options.env } : {});
  try {
    return await bringUp(clusterRun, options.hosts, options.timeoutMs ?? 180_000);
  } catch (error) {
    await clusterRun.down().catch(() => undefined);
    await clusterRun.dispose();
    throw error;
  }
}

async function awaitScript(script: RunningScript, what: string, timeoutMs: number): Promise<ScriptResult> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      killGroup(script.child);
      reject(new Error(`${what} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    const res = await Promise.race([script.done, timeout]);
    if (res.code !== 0)
      throw new Error(`${what} failed (${res.signal ?? res.code}):\n${res.stdout}\n${res.stderr}`);
    return res;
  } finally {
    clearTimeout(timer);
  }
}

async function bringUp(
  clusterRun: ClusterRun,
  hostCount: number,
  timeoutMs: number,
): Promise<MultiHostCluster> {
  const first = await awaitScript(clusterRun.startUp(hostCount), `up.mjs --hosts ${hostCount}`, timeoutMs);
  const adminKey = /^ {2}export HANGAR_API_KEY=(hgr_\S+)$/m.exec(first.stdout)?.[1];
  if (!adminKey) throw new Error(`up.mjs printed no admin key:\n${first.stdout}`);
  const url = `http://127.0.0.1:${clusterRun.httpPort}`;

  const api = async <T = Record<string, unknown>>(
    method: string,
    route: string,
    body?: unknown,
  ): Promise<ApiResponse<T>> => {
    const res = await fetch(`${url}${route}`, {
      method,
      headers: {
        authorization: `Bearer ${adminKey}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(90_000),
    });
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = text;
    }
    return { status: res.status, headers: res.headers, body: parsed as T };
  };

  const fabric = JSON.parse(readFileSync(path.join(clusterRun.clusterDir, 'fabric.json'), 'utf8')) as {
    hosts: { name: string; namespace: string; address: string }[];
  };
  const readHosts = async (): Promise<ClusterHost[]> => {
    const res = await api<{ items: { id: string; name: string }[] }>('GET', '/v1/hosts?page_size=100');
    if (res.status !== 200) throw new Error(`GET /v1/hosts: ${res.status} ${JSON.stringify(res.body)}`);
    const rows = res.body.items;
    return fabric.hosts.map((h) => {
      const row = rows.find((r) => r.name === h.name);
      const record = clusterRun.recorded(`agent-${h.name}`);
      if (!row || !record) throw new Error(`host ${h.name} is not registered or its agent not recorded`);
      const config = JSON.parse(
        readFileSync(path.join(clusterRun.clusterDir, 'hosts', h.name, 'agent.json'), 'utf8'),
      ) as { runtimeDir: string };
      return {
        name: h.name,
        hostId: row.id,
        namespace: h.namespace,
        address: h.address,
        agentPid: record.pid,
        runtimeDir: config.runtimeDir,
        agentLog: path.join(clusterRun.clusterDir, 'logs', `agent-${h.name}.log`),
      };
    });
  };
  let hosts = await readHosts();
  let tornDown = false;

  const cluster: MultiHostCluster = {
    run: clusterRun,
    url,
    adminKey,
    sharedPoolDir: path.join(clusterRun.clusterDir, 'pools', 'shared'),
    get hosts() {
      return hosts;
    },
    host(name) {
      const host = hosts.find((h) => h.name === name);
      if (!host) throw new Error(`no host ${name} in this cluster`);
      return host;
    },
    api,
    async killAgent(name) {
      const record = clusterRun.recorded(`agent-${name}`);
      if (!record || startTimeOf(record.pid) !== record.startTime)
        throw new Error(`the agent of ${name} does not run`);
      process.kill(record.pid, 'SIGKILL');
      const deadline = Date.now() + 10_000;
      while (startTimeOf(record.pid) === record.startTime) {
        if (Date.now() > deadline) throw new Error(`agent pid ${record.pid} survived SIGKILL`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return record.pid;
    },
    async restartAgent(name) {
      await awaitScript(
        clusterRun.startUp(hostCount),
        `up.mjs --hosts ${hostCount} (restarting ${name})`,
        timeoutMs,
      );
      hosts = await readHosts();
      return cluster.host(name);
    },
    async teardown() {
      if (tornDown) return;
      tornDown = true;
      try {
        const down = await clusterRun.down();
        if (down.code !== 0) console.error(`down.mjs failed:\n${down.stderr}`);
      } finally {
        await clusterRun.dispose();
      }
    },
  };
  return cluster;
}
