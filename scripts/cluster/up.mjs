// The second half of `scripts/up.sh` (the README's main job), once everything is built and
// DATABASE_URL / REDIS_URL answer: migrations, bootstrap (default project, admin key, flavors,
// image), then api + worker + one local agent as background processes under
// $HANGAR_DATA_DIR/cluster/, a demo VM through the REST api, and the summary on stdout.
// Idempotent: processes that still run what this run would start are reused, others restarted.
// Usage: node scripts/cluster/up.mjs [--http-port N] [--grpc-port N] [--agent-port N]
//                                     [--new-admin-key] [--no-demo]
import { spawn } from 'node:child_process';
import { closeSync, fstatSync, openSync, readFileSync, realpathSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  apiClient,
  baseEnv,
  buildId,
  clusterDir,
  describeProblem,
  digest,
  ENTRY_POINTS,
  isRunning,
  listAll,
  log,
  logTail,
  openDatabase,
  paths,
  procStartTime,
  readState,
  removePidFile,
  repoRoot,
  runNode,
  shown,
  sleep,
  stopPid,
  waitOperation,
  withSetupKey,
  writePrivate,
  writeState,
} from './lib.mjs';

const DEFAULT_PORTS = { http: 8080, grpc: 7440, agent: 7443 };
const DEMO_VM = 'hangar-demo';
const HOST_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$/;
/** Linux's limit for unix socket paths; vmm-core puts `console.sock` in `<runtime>/vms/<uuid>/`. */
const MAX_SOCKET_PATH = 107;

class SetupError extends Error {}

/** The admin key this run created: shown in the summary, or by the error handler if the run fails later. */
let newAdminKey;

const { values: opts } = parseArgs({
  options: {
    'http-port': { type: 'string' },
    'grpc-port': { type: 'string' },
    'agent-port': { type: 'string' },
    'new-admin-key': { type: 'boolean', default: false },
    'no-demo': { type: 'boolean', default: false },
  },
  strict: true,
});

/** A port from a flag or variable; undefined when unset. */
function portOption(value, name) {
  if (value === undefined || value === '') return undefined;
  const port = Number(value);
  if (!Number.isInteger(port) || port < 1 || port > 65_535)
    throw new SetupError(`${name}: not a TCP port: ${value}`);
  return port;
}

/** Whether nothing listens on 127.0.0.1:`port` (we can bind it). */
function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** A port the kernel says is free now. */
function anyFreePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

/**
 * The port of one listener: the one asked for; else the one it had, while our process still
 * holds it or it is free; else the default when free; else any free one.
 */
async function choosePort(name, requested, previous, ours, fallback) {
  if (requested !== undefined) {
    if ((requested === previous && ours) || (await portFree(requested))) return requested;
    throw new SetupError(`the ${name} ${requested} is in use by another program; choose another one`);
  }
  if (previous !== undefined && (ours || (await portFree(previous)))) return previous;
  if (await portFree(fallback)) return fallback;
  return anyFreePort();
}

/** Known api variables (the operator's own tuning, such as HANGAR_LOG_LEVEL) pass through to api and worker. */
async function apiPassThroughEnv() {
  const { HangarEnvSchema } = await import('../../apps/api/dist/config/hangar-config.js');
  const { ControlPlaneEnvSchema } = await import(
    '../../apps/api/dist/modules/conductor/control-plane.settings.js'
  );
  /** Set by this script, or meaningless with plaintext gRPC on loopback. */
  const owned = new Set([
    'DATABASE_URL',
    'REDIS_URL',
    'HANGAR_ROLE',
    'HANGAR_HTTP_HOST',
    'HANGAR_HTTP_PORT',
    'HANGAR_GRPC_HOST',
    'HANGAR_GRPC_PORT',
    'HANGAR_GRPC_INSECURE',
    'HANGAR_GRPC_TLS_CA',
    'HANGAR_GRPC_TLS_CERT',
    'HANGAR_GRPC_TLS_KEY',
    'HANGAR_REDIS_PREFIX',
  ]);
  /** @type {Record<string, string>} */
  const env = {};
  for (const key of [...Object.keys(HangarEnvSchema.shape), ...Object.keys(ControlPlaneEnvSchema.shape)]) {
    const value = process.env[key];
    if (!owned.has(key) && value !== undefined && value !== '') env[key] = value;
  }
  return env;
}

/**
 * Starts `role` detached (its own session: Ctrl-C on the set-up does not reach it), with stdout
 * and stderr appended to its log, and records it. Returns the record and a getter of how it
 * exited, if it did.
 */
async function startProcess(state, role, args, env, fingerprint) {
  await mkdir(paths.logs, { recursive: true });
  const logFile = paths.log(role);
  const fd = openSync(logFile, 'a');
  const logOffset = fstatSync(fd).size;
  const child = spawn(process.execPath, [ENTRY_POINTS[role], ...args], {
    cwd: repoRoot,
    env,
    detached: true,
    stdio: ['ignore', fd, fd],
  });
  closeSync(fd);
  /** @type {string | undefined} */
  let exited;
  child.once('exit', (code, signal) => {
    exited = signal ?? `exit code ${code}`;
  });
  child.once('error', (error) => {
    exited = error.message;
  });
  child.unref();
  const pid = child.pid;
  const startTime = pid === undefined ? undefined : procStartTime(pid);
  if (pid === undefined || startTime === undefined) {
    throw new SetupError(`${role} did not start (${exited ?? 'no pid'}); see ${shown(logFile)}`);
  }
  const record = { pid, startTime, fingerprint, startedAt: Date.now() };
  state.processes[role] = record;
  await writePrivate(paths.pidFile(role), `${pid}\n`);
  await writeState(state);
  log(`started ${role} (pid ${pid}, log ${shown(logFile)})`);
  return { record, logOffset, exited: () => exited };
}

/** Waits until `ready()` gives a value, failing early when the process exits. */
async function waitReady(role, started, what, timeoutMs, ready) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await Promise.resolve()
      .then(ready)
      .catch((error) => {
        if (error instanceof SetupError) throw error;
        return undefined; // not ready yet (connection refused, …)
      });
    if (value !== undefined) return value;
    const exited = started?.exited();
    if (exited !== undefined) {
      throw new SetupError(
        `${role} exited (${exited}) before ${what}; the end of ${shown(paths.log(role))}:\n${logTail(paths.log(role))}`,
      );
    }
    if (Date.now() > deadline) {
      throw new SetupError(
        `${role}: no ${what} within ${timeoutMs / 1000} s; the end of ${shown(paths.log(role))}:\n${logTail(paths.log(role))}`,
      );
    }
    await sleep(200);
  }
}

/** Whether the log of `role` has a line containing `text` after `offset`. */
function logHas(role, offset, text) {
  const content = readFileSync(paths.log(role));
  return content.subarray(offset).toString('utf8').includes(text) ? true : undefined;
}

/** Whether the agent's saved join token still admits it (docs/adr/0030). */
async function joinTokenUsable(prisma, token) {
  const { hashJoinToken } = await import('../../apps/api/dist/modules/hosts/join-token.js');
  const row = await prisma.joinToken.findUnique({ where: { tokenHash: hashJoinToken(token) } });
  if (!row || row.revokedAt !== null) return false;
  if (row.hostId !== null) return true; // the token its host joined with
  return row.usedAt === null && row.expiresAt.getTime() > Date.now() + 60_000;
}

/** A single-use join token for the local agent, as `POST /v1/join-tokens` issues them. */
async function issueJoinToken(prisma) {
  const { generateJoinToken } = await import('../../apps/api/dist/modules/hosts/join-token.js');
  const { token, tokenHash } = generateJoinToken();
  await prisma.joinToken.create({
    data: {
      tokenHash,
      description: 'local agent of scripts/up.sh',
      expiresAt: new Date(Date.now() + 3_600_000),
    },
  });
  return token;
}

/** The local agent's runtime folder: under the data folder unless socket paths would be too long there. */
function runtimeDirFor(state) {
  const fits = (dir) => path.join(dir, 'vms', '0'.repeat(36), 'console.sock').length <= MAX_SOCKET_PATH;
  if (fits(paths.runtime)) return paths.runtime;
  if (state.runtimeDir && fits(state.runtimeDir)) return state.runtimeDir;
  const short = path.join(os.tmpdir(), `hangar-run-${digest(clusterDir).slice(0, 8)}`);
  log(`${shown(paths.runtime)} is too deep for QEMU's socket paths; guests' runtime folders go to ${short}`);
  return short;
}

/** The host name the local agent registers: this machine's, when it is a valid one. */
function localHostName(state) {
  if (state.hostName) return state.hostName;
  const name = os.hostname().split('.')[0] ?? '';
  return HOST_NAME.test(name) ? name : 'hangar-local';
}

/**
 * Boots one guest through the REST api, prints its marker line and status, stops it gracefully
 * and deletes it: the proof that the whole path works (REST → conductor → agent → QEMU → console).
 */
async function demoVm(api, projectId, hostName) {
  const leftovers = await listAll(api, `/v1/vms?name=${DEMO_VM}&project_id=${projectId}`);
  for (const vm of leftovers) {
    log(`removing the demo VM an earlier run left (${vm.id}, ${vm.status})`);
    if (vm.status !== 'STOPPED' && vm.status !== 'ERROR') {
      const stop = await api('POST', `/v1/vms/${vm.id}/stop`, { force: true });
      if (stop.status === 202) await waitOperation(api, stop.headers.get('location'), 60_000);
    }
    const del = await api('DELETE', `/v1/vms/${vm.id}`);
    if (del.status !== 202) throw new SetupError(`deleting the old demo VM: ${describeProblem(del)}`);
    await waitOperation(api, del.headers.get('location'), 60_000);
  }

  log(`booting a demo VM through the api (${DEMO_VM}: flavor tiny, image hangar-tiny)`);
  const started = Date.now();
  const created = await api('POST', '/v1/vms', {
    name: DEMO_VM,
    flavor: 'tiny',
    image: 'hangar-tiny',
    user_data: '#!/bin/sh\necho "hello from user-data on $(hostname)"\n',
  });
  if (created.status !== 202) throw new SetupError(`creating the demo VM: ${describeProblem(created)}`);
  const vmId = created.body.vm.id;
  const op = await waitOperation(api, created.headers.get('location'), 120_000);
  if (op.status !== 'SUCCEEDED') {
    throw new SetupError(`the demo VM's create operation is ${op.status}: ${JSON.stringify(op.error)}`);
  }
  const deadline = Date.now() + 120_000;
  let marker;
  while (!marker) {
    const res = await api('GET', `/v1/vms/${vmId}/console`);
    if (res.status === 200) marker = res.body.text.split('\n').find((l) => l.startsWith('HANGAR-READY'));
    if (marker) break;
    if (Date.now() > deadline) throw new SetupError('the demo VM printed no HANGAR-READY within 120 s');
    await sleep(250);
  }
  const vm = (await api('GET', `/v1/vms/${vmId}`)).body;
  const lines = [
    `demo VM ${vmId}: ${marker.trim()}  (${Date.now() - started} ms after the create request)`,
    `demo VM status: ${vm.status} on host ${hostName}`,
  ];
  const stop = await api('POST', `/v1/vms/${vmId}/stop`, { force: false });
  if (stop.status !== 202) throw new SetupError(`stopping the demo VM: ${describeProblem(stop)}`);
  const stopped = await waitOperation(api, stop.headers.get('location'), 90_000);
  const after = (await api('GET', `/v1/vms/${vmId}`)).body;
  lines.push(`demo VM stopped by ACPI power-off: operation ${stopped.status}, status ${after.status}`);
  const del = await api('DELETE', `/v1/vms/${vmId}`);
  if (del.status === 202) await waitOperation(api, del.headers.get('location'), 60_000);
  return lines;
}

async function main() {
  const databaseUrl = process.env.DATABASE_URL;
  const redisUrl = process.env.REDIS_URL;
  if (!databaseUrl || !redisUrl)
    throw new SetupError('DATABASE_URL and REDIS_URL must be set (scripts/up.sh does)');
  await mkdir(clusterDir, { recursive: true });
  const state = await readState();

  // --- database: migrations and the things a fresh cluster needs ----------------------------
  log('applying database migrations');
  const dbEnv = { ...baseEnv(), DATABASE_URL: databaseUrl };
  const migrated = await runNode(path.join(repoRoot, 'apps/api/dist/infra/prisma/migrate-cli.js'), [], dbEnv);
  for (const line of migrated.trim().split('\n')) if (line) log(`  ${line}`);
  const image = JSON.parse(await readFile(path.join(paths.imageDir, 'image.json'), 'utf8'));
  log('creating the default project, an admin API key, flavors and the default image when missing');
  const bootstrap = JSON.parse(
    await runNode(
      path.join(repoRoot, 'apps/api/dist/modules/projects/bootstrap-cli.js'),
      [
        '--image-name',
        image.name,
        '--image-pool',
        'images',
        '--image-kernel',
        image.kernel,
        '--image-initrd',
        image.initrd,
        '--image-cmdline',
        image.cmdline,
        '--image-disk',
        image.baseDisk,
        '--image-format',
        'qcow2',
        ...(opts['new-admin-key'] ? ['--new-admin-key'] : []),
      ],
      dbEnv,
    ),
  );

  newAdminKey = bootstrap.admin_key ?? undefined;

  // --- ports and configuration ---------------------------------------------------------------
  const alive = Object.fromEntries(
    ['api', 'worker', 'agent'].map((role) => [role, isRunning(role, state.processes[role])]),
  );
  const httpPort = await choosePort(
    'HTTP port',
    portOption(opts['http-port'] ?? process.env.HANGAR_HTTP_PORT, 'HTTP port'),
    state.httpPort,
    alive.api,
    DEFAULT_PORTS.http,
  );
  const grpcPort = await choosePort(
    'gRPC port',
    portOption(opts['grpc-port'] ?? process.env.HANGAR_GRPC_PORT, 'gRPC port'),
    state.grpcPort,
    alive.api,
    DEFAULT_PORTS.grpc,
  );
  const agentPort = await choosePort(
    'agent port',
    portOption(opts['agent-port'], 'agent port'),
    state.agentPort,
    alive.agent,
    DEFAULT_PORTS.agent,
  );
  if (new Set([httpPort, grpcPort, agentPort]).size !== 3) {
    throw new SetupError(
      `the HTTP, gRPC and agent ports must differ (${httpPort}, ${grpcPort}, ${agentPort})`,
    );
  }
  const redisPrefix = process.env.HANGAR_REDIS_PREFIX || state.redisPrefix || 'hangar';
  const url = `http://127.0.0.1:${httpPort}`;
  const hostName = localHostName(state);
  const runtimeDir = runtimeDirFor(state);
  Object.assign(state, {
    databaseUrl,
    redisUrl,
    redisPrefix,
    httpPort,
    grpcPort,
    agentPort,
    url,
    hostName,
    runtimeDir,
  });
  await writeState(state);

  const passThrough = await apiPassThroughEnv();
  // The worker gets no listener settings: it serves nothing, so a port change leaves it running.
  const controlPlaneEnv = (role) => ({
    ...passThrough,
    DATABASE_URL: databaseUrl,
    REDIS_URL: redisUrl,
    HANGAR_REDIS_PREFIX: redisPrefix,
    HANGAR_ROLE: role,
    ...(role === 'api'
      ? {
          HANGAR_HTTP_HOST: '127.0.0.1',
          HANGAR_HTTP_PORT: String(httpPort),
          HANGAR_GRPC_PORT: String(grpcPort),
        }
      : {}),
    // Plaintext gRPC (AgentGateway, and the worker's calls to agents) is allowed on loopback only:
    // the whole cluster is on this machine.
    HANGAR_GRPC_HOST: '127.0.0.1',
    HANGAR_GRPC_INSECURE: 'true',
  });

  const prisma = await openDatabase(databaseUrl);
  try {
    let token;
    try {
      const saved = JSON.parse(await readFile(paths.agentConfig, 'utf8'));
      if (typeof saved.joinToken === 'string' && (await joinTokenUsable(prisma, saved.joinToken)))
        token = saved.joinToken;
    } catch {
      // No agent configuration yet.
    }
    if (!token) {
      token = await issueJoinToken(prisma);
      log(`issued a join token for the local agent (kept in ${shown(paths.agentConfig)}, mode 0600)`);
    }
    await mkdir(paths.sharedPool, { recursive: true });
    await mkdir(paths.agentState, { recursive: true });
    await mkdir(runtimeDir, { recursive: true });
    const agentConfig = {
      controlPlane: `127.0.0.1:${grpcPort}`,
      joinToken: token,
      hostName,
      listen: `127.0.0.1:${agentPort}`,
      runtimeDir,
      stateDir: paths.agentState,
      pools: {
        // Paths the api registers images with are relative to this pool: the guest image folder.
        images: { path: realpathSync(paths.imageDir), shared: true },
        shared: { path: paths.sharedPool, shared: true },
      },
      accelerator: 'auto',
      driver: 'qemu',
      insecureLoopback: true,
      logLevel: 'info',
    };
    await writePrivate(paths.agentConfig, `${JSON.stringify(agentConfig, null, 2)}\n`);

    // --- processes ---------------------------------------------------------------------------
    const wanted = {
      api: { args: [], env: { ...baseEnv(), ...controlPlaneEnv('api') } },
      worker: { args: [], env: { ...baseEnv(), ...controlPlaneEnv('worker') } },
      agent: { args: ['--config', paths.agentConfig], env: baseEnv() },
    };
    const fingerprints = {
      api: digest({ env: controlPlaneEnv('api'), build: buildId('api') }),
      worker: digest({ env: controlPlaneEnv('worker'), build: buildId('worker') }),
      agent: digest({ config: agentConfig, build: buildId('agent') }),
    };
    /** @type {Record<string, {record: {startedAt: number}, logOffset: number, exited: () => string | undefined} | undefined>} */
    const started = {};
    const startedNow = [];
    for (const role of /** @type {const} */ (['api', 'worker', 'agent'])) {
      const record = state.processes[role];
      if (alive[role] && record?.fingerprint === fingerprints[role]) {
        log(`reusing the running ${role} (pid ${record.pid})`);
        continue;
      }
      if (alive[role] && record) {
        log(`restarting ${role} (pid ${record.pid}): its build or configuration changed`);
        // The agent leaves its guests running; the next one re-adopts them.
        const how = await stopPid(record.pid, record.startTime, 20_000);
        if (how === 'kill') log(`${role} (pid ${record.pid}) did not stop on SIGTERM within 20 s: killed`);
      }
      state.processes[role] = undefined;
      await removePidFile(role);
      if (role === 'agent') {
        // The agent needs the gateway: the api must be ready first.
        await waitForApi(started.api, url);
      }
      started[role] = await startProcess(
        state,
        role,
        wanted[role].args,
        wanted[role].env,
        fingerprints[role],
      );
      startedNow.push(role);
    }
    await waitForApi(started.api, url);
    if (started.worker) {
      await waitReady('worker', started.worker, 'conductor consuming jobs', 90_000, () =>
        logHas('worker', started.worker?.logOffset ?? 0, 'conductor consuming'),
      );
      log('the worker consumes operations');
    }

    // --- the host ----------------------------------------------------------------------------
    const heartbeatMs = Number(passThrough.HANGAR_HEARTBEAT_INTERVAL_MS ?? 5_000);
    const since = Math.max(
      Date.now() - 4 * heartbeatMs,
      ...startedNow.map((role) => state.processes[role]?.startedAt ?? 0),
    );
    log(`waiting for host ${hostName} to register and heartbeat`);
    const host = await waitReady('agent', started.agent, `host ${hostName} UP`, 90_000, async () => {
      if (!started.agent && !isRunning('agent', state.processes.agent)) {
        throw new SetupError(
          `the agent (pid ${state.processes.agent?.pid}) stopped; see ${shown(paths.log('agent'))}`,
        );
      }
      const row = await prisma.host.findUnique({ where: { name: hostName } });
      return row?.state === 'UP' && (row.lastHeartbeatAt?.getTime() ?? 0) >= since ? row : undefined;
    });
    log(
      `host ${host.name} is UP (${host.cores} cores, ${host.memoryMib} MiB, QEMU ${host.qemuVersion}, ${host.accelerator})`,
    );

    // --- a demo VM through the api ------------------------------------------------------------
    let demo = [];
    if (!opts['no-demo']) {
      demo = await withSetupKey(prisma, bootstrap.project_id, (key) =>
        demoVm(apiClient(url, key), bootstrap.project_id, host.name),
      );
      for (const line of demo) log(line);
    }

    printSummary({ url, bootstrap, host, demo });
  } finally {
    await prisma.$disconnect();
  }
}

/** Waits until the api answers /readyz (its database answers too). */
async function waitForApi(started, url) {
  await waitReady('api', started, `an answer on ${url}/readyz`, 90_000, async () => {
    const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2_000) });
    return res.status === 200 ? true : undefined;
  });
}

/** The summary on stdout: URL, the key (only when new), the lines to paste, where things are. */
function printSummary({ url, bootstrap, host, demo }) {
  const auth = '-H "Authorization: Bearer $HANGAR_API_KEY"';
  const out = [
    '',
    `Hangar is up: api ${url}, one worker, one agent on host ${host.name} (${host.accelerator}).`,
    `  API:       ${url}   (OpenAPI: ${url}/openapi.json, docs: ${url}/docs)`,
  ];
  if (bootstrap.admin_key) {
    out.push(
      `  Admin key: ${bootstrap.admin_key}`,
      '             shown this once: only its hash is stored. Keep it somewhere safe.',
    );
  } else {
    out.push(
      `  Admin key: one exists (${bootstrap.admin_key_prefix}_…); its secret was shown once, by the run that made it.`,
      '             A new one: bash scripts/demo.sh --new-admin-key (the old one stays valid until revoked).',
    );
  }
  if (demo.length > 0) out.push(`  Demo VM:   booted, printed its marker, stopped and deleted (see above).`);
  out.push(
    '',
    'Create a VM and wait until it runs (paste into a shell):',
    '',
    `  export HANGAR_URL=${url}`,
    bootstrap.admin_key
      ? `  export HANGAR_API_KEY=${bootstrap.admin_key}`
      : '  export HANGAR_API_KEY=...   # your admin key',
    // The VM's JSON goes to the terminal; OP captures the write-out (the operation's Location),
    // which %{stderr} sends to stderr and the redirections swap onto the captured stdout. No
    // /dev/stderr: it cannot be opened when stderr is a socket.
    `  OP=$(curl -sS --fail-with-body -w '%{stderr}%header{location}' -X POST "$HANGAR_URL/v1/vms" ${auth} -H 'Content-Type: application/json' -d '{"name":"vm-'$(date +%s)'","flavor":"tiny","image":"hangar-tiny"}' 3>&1 1>&2 2>&3)`,
    `  curl -sS --fail-with-body -w '\\n' "$HANGAR_URL$OP/wait?timeout=60s" ${auth}`,
    '',
    `Its console: GET $HANGAR_URL/v1/vms/<vm id>/console. Logs: ${shown(paths.logs)}/. Stop everything: bash scripts/down.sh`,
    '',
  );
  process.stdout.write(out.join('\n'));
}

try {
  await main();
} catch (error) {
  process.stderr.write(
    `\nup: ${error instanceof SetupError ? error.message : error instanceof Error ? error.stack : String(error)}\n`,
  );
  process.stderr.write('Processes started so far keep running; bash scripts/down.sh stops them.\n');
  if (newAdminKey) {
    process.stdout.write(`The admin key this run created (shown this once, stored hashed): ${newAdminKey}\n`);
  }
  process.exitCode = 1;
}
