// Shared helpers of the cluster scripts (scripts/up.sh → up.mjs, scripts/down.sh → down.mjs,
// hosts.mjs for the multi-host network): where things live under $HANGAR_DATA_DIR/cluster/, the
// state file, the processes they start (pid files, identity checks, stopping by pid), the
// database and the REST api.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** The repository's root folder. */
export const repoRoot = path.resolve(import.meta.dirname, '../..');
/** Hangar's data folder (the same default as scripts/lib.sh). */
export const dataDir = path.resolve(process.env.HANGAR_DATA_DIR || path.join(repoRoot, '.data'));
/** Everything the cluster scripts create lives here. */
export const clusterDir = path.join(dataDir, 'cluster');

/** Files and folders of the cluster. */
export const paths = {
  /** Ports, URLs, host name and the processes started (pid, start time, fingerprint); mode 0600. */
  state: path.join(clusterDir, 'state.json'),
  /** The local agent's configuration, with its join token; mode 0600. */
  agentConfig: path.join(clusterDir, 'agent.json'),
  logs: path.join(clusterDir, 'logs'),
  /** vmm-core's runtime folder (one folder per guest). */
  runtime: path.join(clusterDir, 'run'),
  /** The agent's desired state and host id. */
  agentState: path.join(clusterDir, 'state'),
  sharedPool: path.join(clusterDir, 'pools', 'shared'),
  imageDir: path.join(dataDir, 'images', 'hangar-tiny'),
  /** The multi-host network (hosts.mjs): tag, subnet, namespaces, addresses. */
  fabric: path.join(clusterDir, 'fabric.json'),
  /** The multi-host cluster's CA and certificates (pki.mjs). */
  pki: path.join(clusterDir, 'pki'),
  /**
   * One host of a multi-host cluster: its agent configuration (`agent.json`, mode 0600), desired
   * state and, when the path is short enough, its runtime folder.
   * @param {string} name
   */
  hostDir: (name) => path.join(clusterDir, 'hosts', name),
  /** @param {string} role */
  pidFile: (role) => path.join(clusterDir, `${role}.pid`),
  /** @param {string} role */
  log: (role) => path.join(clusterDir, 'logs', `${role}.log`),
};

/** Linux's limit for unix socket paths; vmm-core puts `console.sock` in `<runtime>/vms/<uuid>/`. */
export const MAX_SOCKET_PATH = 107;

/** Whether QEMU's socket paths fit under the runtime folder `dir`. */
export function socketPathsFit(dir) {
  return path.join(dir, 'vms', '0'.repeat(36), 'console.sock').length <= MAX_SOCKET_PATH;
}

/**
 * The runtime folder of one host of a multi-host cluster: inside its host folder, or in the temp
 * folder when QEMU's socket paths would be too long there. Derived from the names only, so
 * down.mjs finds it without any record.
 */
export function hostRuntimeDir(name) {
  const inside = path.join(paths.hostDir(name), 'run');
  if (socketPathsFit(inside)) return inside;
  return path.join(os.tmpdir(), `hangar-run-${digest(clusterDir).slice(0, 8)}-${name}`);
}

/** The processes of a single-host cluster, in start order. */
export const ROLES = /** @type {const} */ (['api', 'worker', 'agent']);

/** The role of one host's agent in a multi-host cluster (pid file `agent-<host>.pid`). */
export const agentRole = (hostName) => `agent-${hostName}`;

/** Whether `role` is an agent: `agent` (single host) or `agent-<host>`. */
export const isAgentRole = (role) => role === 'agent' || role.startsWith('agent-');

/** The entry point each role runs (api and worker are the same program with another HANGAR_ROLE). */
export const ENTRY_POINTS = {
  api: path.join(repoRoot, 'apps/api/dist/main.js'),
  worker: path.join(repoRoot, 'apps/api/dist/main.js'),
  agent: path.join(repoRoot, 'apps/agent/dist/main.js'),
};

/** The entry point `role` runs (`agent-<host>` roles run the agent). */
export function entryPointOf(role) {
  return isAgentRole(role) ? ENTRY_POINTS.agent : ENTRY_POINTS[role];
}

/**
 * Every process the scripts start carries `HANGAR_CLUSTER_DIR=<cluster folder>` in its environment
 * (the programs ignore it). A process started by a run that was killed before it recorded the pid
 * is still found by it, and only processes of this very cluster ever are.
 */
export const CLUSTER_MARK = 'HANGAR_CLUSTER_DIR';

/** Name of the short-lived admin keys the scripts use to drive the api (revoked after each run). */
export const SETUP_KEY_NAME = 'hangar-setup';

/** Progress on stderr, in the style of scripts/lib.sh; stdout is kept for the summary. */
export function log(message) {
  process.stderr.write(`\u001b[1m==>\u001b[0m ${message}\n`);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A path relative to the current folder when it is inside it (shorter messages). */
export function shown(file) {
  const relative = path.relative(process.cwd(), file);
  return relative && !relative.startsWith('..') ? relative : file;
}

// --- state file ------------------------------------------------------------------------------

/**
 * @typedef {{ pid: number, startTime: string, fingerprint: string, startedAt: number }} ProcessRecord
 * @typedef {{
 *   version: 1,
 *   databaseUrl?: string, redisUrl?: string, redisPrefix?: string,
 *   httpPort?: number, grpcPort?: number, agentPort?: number,
 *   url?: string, hostName?: string, runtimeDir?: string,
 *   hostCount?: number,
 *   processes: Record<string, ProcessRecord | undefined>,
 * }} ClusterState
 */

/** @returns {Promise<ClusterState>} */
export async function readState() {
  try {
    const parsed = JSON.parse(await readFile(paths.state, 'utf8'));
    if (parsed && typeof parsed === 'object' && parsed.version === 1) {
      return { ...parsed, processes: parsed.processes ?? {} };
    }
  } catch {
    // No state yet (or an unreadable one): start afresh.
  }
  return { version: 1, processes: {} };
}

/** Writes a file atomically, readable by its owner only (it may hold a secret or a database URL). */
export async function writePrivate(file, text) {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, file);
}

/** @param {ClusterState} state */
export async function writeState(state) {
  await writePrivate(paths.state, `${JSON.stringify(state, null, 2)}\n`);
}

// --- processes -------------------------------------------------------------------------------

/**
 * The kernel's start time of `pid` (clock ticks since boot, /proc/<pid>/stat field 22), or
 * undefined when no such process runs (zombies count as gone). Together with the pid it names a
 * process exactly: a pid reused by another process has another start time.
 */
export function procStartTime(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
    return fields[19];
  } catch {
    return undefined;
  }
}

/** The argv of `pid`, or [] when it is gone. */
export function procArgv(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

/** Whether `record` still names the process the scripts started for `role` (same pid, start time and program). */
export function isRunning(role, record) {
  if (!record || !Number.isInteger(record.pid) || record.pid <= 0) return false;
  const startTime = procStartTime(record.pid);
  if (startTime === undefined || startTime !== record.startTime) return false;
  return procArgv(record.pid).includes(entryPointOf(role));
}

/**
 * Live processes of the cluster in `dir` that run one of the scripts' entry points (api, worker,
 * agent), found by {@link CLUSTER_MARK} in their environment whether or not a pid was recorded.
 * QEMU guests inherit the mark from their agent but are never listed here.
 * @returns {{ pid: number, startTime: string, entryPoint: string }[]}
 */
export function markedProcesses(dir) {
  const mark = Buffer.from(`${CLUSTER_MARK}=${dir}\0`);
  const entryPoints = new Set(Object.values(ENTRY_POINTS));
  const found = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    const entryPoint = procArgv(pid).find((arg) => entryPoints.has(arg));
    if (entryPoint === undefined) continue;
    let environ;
    try {
      environ = readFileSync(`/proc/${pid}/environ`);
    } catch {
      continue;
    }
    // Each variable ends with a NUL; the first one has nothing before it.
    const at = environ.indexOf(mark);
    if (at < 0 || (at > 0 && environ[at - 1] !== 0)) continue;
    const startTime = procStartTime(pid);
    if (startTime !== undefined) found.push({ pid, startTime, entryPoint });
  }
  return found;
}

/**
 * Stops one process by its pid: SIGTERM, then SIGKILL when it is still there after `graceMs`.
 * Returns how it went: `term` (exited on SIGTERM), `kill` or `gone` (it was not running).
 */
export async function stopPid(pid, startTime, graceMs) {
  const alive = () => procStartTime(pid) === startTime;
  if (!alive()) return 'gone';
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return 'gone';
  }
  const deadline = Date.now() + graceMs;
  while (alive() && Date.now() < deadline) await sleep(100);
  if (!alive()) return 'term';
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return 'term';
  }
  const killDeadline = Date.now() + 5_000;
  while (alive() && Date.now() < killDeadline) await sleep(50);
  if (alive()) throw new Error(`process ${pid} survived SIGKILL`);
  return 'kill';
}

/** Removes the pid file of `role`. */
export async function removePidFile(role) {
  await rm(paths.pidFile(role), { force: true });
}

/**
 * Live QEMU processes of the local agent's guests: `qemu.pid` files in the runtime folder whose
 * process is a QEMU started with that very pid file (vmm-core's own re-adoption rule).
 * @returns {{ vmId: string, pid: number }[]}
 */
export function runningGuests(runtimeDir) {
  const vmsDir = path.join(runtimeDir, 'vms');
  if (!existsSync(vmsDir)) return [];
  const guests = [];
  for (const vmId of readdirSync(vmsDir)) {
    const pidFile = path.join(vmsDir, vmId, 'qemu.pid');
    let pid;
    try {
      pid = Number.parseInt(readFileSync(pidFile, 'utf8').trim(), 10);
    } catch {
      continue;
    }
    if (!Number.isInteger(pid) || pid <= 0 || procStartTime(pid) === undefined) continue;
    const argv = procArgv(pid);
    if ((argv[0] ?? '').includes('qemu-system') && argv.includes(pidFile)) guests.push({ vmId, pid });
  }
  return guests;
}

/** The last `count` lines of a log file (for error messages). */
export function logTail(file, count = 25) {
  try {
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
    return lines.slice(-count).join('\n');
  } catch {
    return '(no log)';
  }
}

/** A stable digest of a JSON-able value (keys sorted), to tell whether a process runs what we want. */
export function digest(value) {
  const canonical = (v) =>
    Array.isArray(v)
      ? v.map(canonical)
      : v && typeof v === 'object'
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, canonical(v[k])]),
          )
        : v;
  return createHash('sha256')
    .update(JSON.stringify(canonical(value)))
    .digest('hex')
    .slice(0, 16);
}

/**
 * What a build of `role` is: the digest of the TypeScript build-info files of its workspaces. They
 * change when (and only when) tsc emitted something new, so a process started before a rebuild
 * that changed its code is restarted, and one whose code is unchanged is reused.
 */
export function buildId(role) {
  const workspaces = isAgentRole(role)
    ? ['packages/vmm-core', 'packages/proto', 'apps/agent']
    : ['packages/vmm-core', 'packages/proto', 'apps/api'];
  const hash = createHash('sha256');
  for (const workspace of workspaces) {
    const file = path.join(repoRoot, workspace, 'dist', '.tsbuildinfo');
    hash.update(workspace);
    hash.update(existsSync(file) ? readFileSync(file) : 'missing');
  }
  return hash.digest('hex').slice(0, 16);
}

/**
 * Runs `node <script> <args>` to completion and returns its stdout; its stderr goes to ours.
 * @param {string} script
 * @param {string[]} args
 * @param {Record<string, string>} env
 */
export function runNode(script, args, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], {
      cwd: repoRoot,
      env,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk.toString('utf8');
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) resolve(out);
      else
        reject(
          new Error(`${path.relative(repoRoot, script)} failed (${signal ?? `exit ${code}`}): ${out.trim()}`),
        );
    });
  });
}

/** `process.env` without Hangar's own variables and the service URLs (children get them explicitly). */
export function baseEnv() {
  /** @type {Record<string, string>} */
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key.startsWith('HANGAR_') || key === 'DATABASE_URL' || key === 'REDIS_URL')
      continue;
    env[key] = value;
  }
  return env;
}

// --- database --------------------------------------------------------------------------------

/** A Prisma client of the api (its dist) on `databaseUrl`; `$disconnect()` it when done. */
export async function openDatabase(databaseUrl) {
  const { PrismaService } = await import('../../apps/api/dist/infra/prisma/prisma.service.js');
  return new PrismaService({ url: databaseUrl, poolMax: 2, applicationName: 'hangar-setup' });
}

/**
 * Runs `fn` with a fresh admin API key of `projectId`, revoked when `fn` is done. The scripts
 * drive the cluster through its REST api like a user would, but the operator's admin key is only
 * ever shown once (docs/adr/0027), so they make a short-lived one of their own (docs/adr/0040).
 * Keys of earlier runs that were killed before revoking theirs are revoked first.
 */
export async function withSetupKey(prisma, projectId, fn) {
  const { generateApiKey } = await import('../../apps/api/dist/modules/auth/api-key-secret.js');
  await prisma.apiKey.updateMany({
    where: { name: SETUP_KEY_NAME, revokedAt: null, createdAt: { lt: new Date(Date.now() - 3_600_000) } },
    data: { revokedAt: new Date() },
  });
  const key = generateApiKey();
  const row = await prisma.apiKey.create({
    data: { projectId, role: 'admin', name: SETUP_KEY_NAME, prefix: key.prefix, secretHash: key.secretHash },
  });
  try {
    return await fn(key.token);
  } finally {
    await prisma.apiKey.update({ where: { id: row.id }, data: { revokedAt: new Date() } });
  }
}

// --- REST api --------------------------------------------------------------------------------

/**
 * A minimal client of the REST api with one bearer key.
 * @returns {(method: string, route: string, body?: unknown) => Promise<{status: number, headers: Headers, body: any}>}
 */
export function apiClient(baseUrl, token) {
  return async (method, route, body) => {
    const res = await fetch(`${baseUrl}${route}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(90_000),
    });
    const text = await res.text();
    let parsed;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = text;
    }
    return { status: res.status, headers: res.headers, body: parsed };
  };
}

/** A problem+json answer as one line. */
export function describeProblem(res) {
  const b = res.body;
  return b && typeof b === 'object'
    ? `${res.status} ${b.code ?? ''}: ${b.detail ?? b.title ?? ''}`
    : `${res.status}`;
}

/**
 * Follows an operation (`Location` of a 202) until it is SUCCEEDED, FAILED or CANCELLED, or
 * `timeoutMs` runs out; returns its last representation.
 */
export async function waitOperation(api, location, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = Math.max(1, Math.min(60, Math.ceil((deadline - Date.now()) / 1000)));
    const res = await api('GET', `${location}/wait?timeout=${left}s`);
    if (res.status !== 200) throw new Error(`waiting on ${location}: ${describeProblem(res)}`);
    if (['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(res.body.status) || Date.now() >= deadline)
      return res.body;
  }
}

/** Every page of a list endpoint. */
export async function listAll(api, route) {
  const items = [];
  let token;
  for (let pages = 0; pages < 1000; pages++) {
    const sep = route.includes('?') ? '&' : '?';
    const res = await api('GET', `${route}${token ? `${sep}page_token=${encodeURIComponent(token)}` : ''}`);
    if (res.status !== 200) throw new Error(`GET ${route}: ${describeProblem(res)}`);
    items.push(...res.body.items);
    token = res.body.next_page_token;
    if (!token) break;
  }
  return items;
}
