// The second half of `scripts/up.sh` (the README's main job), once everything is built and
// DATABASE_URL / REDIS_URL answer: migrations, bootstrap (default project, admin key, flavors,
// image), then api + worker + one local agent as background processes under
// $HANGAR_DATA_DIR/cluster/, a demo VM through the REST api, and the summary on stdout.
// With --hosts N (N > 1) the agents are N hosts, each in a network namespace of its own joined to
// a bridge of the root namespace (hosts.mjs, docs/adr/0044), talking mTLS with the api and
// worker (pki.mjs, docs/adr/0045); every host sees the same shared storage folder.
// Idempotent: processes that still run what this run would start are reused, others restarted.
// Usage: node scripts/cluster/up.mjs [--hosts N] [--http-port N] [--grpc-port N] [--agent-port N]
//                                     [--new-admin-key] [--no-demo]
// HANGAR_CLUSTER_OWNER=<pid> (tests) makes the namespaces a leftover once that process is gone.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, realpathSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ensureFabric, MAX_HOSTS, readFabric, withFabricLock } from './hosts.mjs';
import {
  agentRole,
  apiClient,
  baseEnv,
  buildId,
  CLUSTER_MARK,
  clusterDir,
  describeProblem,
  digest,
  entryPointOf,
  hostRuntimeDir,
  isAgentRole,
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
  runningGuests,
  shown,
  sleep,
  socketPathsFit,
  stopPid,
  waitOperation,
  withSetupKey,
  writePrivate,
  writeState,
} from './lib.mjs';
import { ensurePki } from './pki.mjs';

const DEFAULT_PORTS = { http: 8080, grpc: 7440, agent: 7443 };
const DEMO_VM = 'hangar-demo';
const HOST_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$/;

class SetupError extends Error {}

/** The admin key this run created: shown in the summary, or by the error handler if the run fails later. */
let newAdminKey;
/** Whether this run started a process or made namespaces (the error handler then says how to stop them). */
let startedAny = false;

const { values: opts } = parseArgs({
  options: {
    'http-port': { type: 'string' },
    'grpc-port': { type: 'string' },
    'agent-port': { type: 'string' },
    hosts: { type: 'string', default: '1' },
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

/** The number of hosts from --hosts. */
function hostCountOption(value) {
  const count = Number(value);
  if (!/^\d+$/.test(value) || count < 1 || count > MAX_HOSTS)
    throw new SetupError(`--hosts: a number from 1 to ${MAX_HOSTS}, not ${value}`);
  return count;
}

/** Whether nothing listens on `host`:`port` (we can bind it). */
function portFree(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/** A port the kernel says is free now. */
function anyFreePort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = /** @type {net.AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

/**
 * The port of one listener: the one asked for; else the one it had, while our process still
 * holds it or it is free; else the default when free; else any free one.
 */
async function choosePort(name, requested, previous, ours, fallback, host = '127.0.0.1') {
  if (requested !== undefined) {
    if ((requested === previous && ours) || (await portFree(requested, host))) return requested;
    throw new SetupError(`the ${name} ${requested} is in use by another program; choose another one`);
  }
  if (previous !== undefined && (ours || (await portFree(previous, host)))) return previous;
  if (await portFree(fallback, host)) return fallback;
  return anyFreePort(host);
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
 * exited, if it did. With `netns` it runs inside that network namespace (`ip netns exec` execs
 * the program in place: the pid recorded is the program's).
 */
async function startProcess(state, role, args, env, fingerprint, netns) {
  await mkdir(paths.logs, { recursive: true });
  const logFile = paths.log(role);
  const fd = openSync(logFile, 'a');
  const logOffset = fstatSync(fd).size;
  const argv = [process.execPath, entryPointOf(role), ...args];
  const [file, ...rest] = netns === undefined ? argv : ['ip', 'netns', 'exec', netns, ...argv];
  const child = spawn(file, rest, {
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
  startedAny = true;
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

/** A single-use join token for an agent, as `POST /v1/join-tokens` issues them. */
async function issueJoinToken(prisma, description) {
  const { generateJoinToken } = await import('../../apps/api/dist/modules/hosts/join-token.js');
  const { token, tokenHash } = generateJoinToken();
  await prisma.joinToken.create({
    data: {
      tokenHash,
      description,
      expiresAt: new Date(Date.now() + 3_600_000),
    },
  });
  return token;
}

/** The local agent's runtime folder: under the data folder unless socket paths would be too long there. */
function runtimeDirFor(state) {
  if (socketPathsFit(paths.runtime)) return paths.runtime;
  if (state.runtimeDir && socketPathsFit(state.runtimeDir)) return state.runtimeDir;
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

/** The process that owns a test's cluster (HANGAR_CLUSTER_OWNER), if any. */
function ownerOption() {
  const value = process.env.HANGAR_CLUSTER_OWNER;
  if (value === undefined || value === '') return undefined;
  const pid = Number(value);
  if (!Number.isInteger(pid) || pid <= 0) throw new SetupError(`HANGAR_CLUSTER_OWNER: not a pid: ${value}`);
  return pid;
}

/**
 * Refuses to turn a running cluster into another shape: the number of hosts only changes through
 * scripts/down.sh, so no agent, guest or namespace is ever orphaned by a switch.
 */
async function refuseModeSwitch(state, hostCount) {
  const fabric = await readFabric(paths.fabric);
  const where = shown(clusterDir);
  if (hostCount === 1 && fabric) {
    throw new SetupError(
      `a ${fabric.hosts.length}-host cluster is set up under ${where} (namespaces ${fabric.tag}-h*): ` +
        `run with --hosts ${fabric.hosts.length}, or stop it with bash scripts/down.sh first`,
    );
  }
  if (hostCount === 1) return;
  if (fabric && fabric.hosts.length !== hostCount) {
    throw new SetupError(
      `a ${fabric.hosts.length}-host cluster is set up under ${where}: bash scripts/down.sh first to change the number of hosts`,
    );
  }
  if (isRunning('agent', state.processes.agent)) {
    throw new SetupError(
      `the single-host agent (pid ${state.processes.agent?.pid}) runs under ${where}: bash scripts/down.sh first`,
    );
  }
  const guests = runningGuests(state.runtimeDir ?? paths.runtime);
  if (guests.length > 0) {
    throw new SetupError(
      `${guests.length} guest(s) of the single-host cluster still run under ${where}: bash scripts/down.sh first`,
    );
  }
}

/** A digest of the contents of some files (TLS material: a re-issued certificate restarts its users). */
function filesDigest(files) {
  const hash = createHash('sha256');
  for (const file of Object.values(files)) hash.update(existsSync(file) ? readFileSync(file) : 'missing');
  return hash.digest('hex').slice(0, 16);
}

/** The join token saved in an agent's configuration while it still admits it, else a new one. */
async function agentJoinToken(prisma, configFile, description) {
  try {
    const saved = JSON.parse(await readFile(configFile, 'utf8'));
    if (typeof saved.joinToken === 'string' && (await joinTokenUsable(prisma, saved.joinToken)))
      return { token: saved.joinToken, fresh: false };
  } catch {
    // No agent configuration yet.
  }
  return { token: await issueJoinToken(prisma, description), fresh: true };
}

/**
 * Boots one guest through the REST api, prints its marker line and status, stops it gracefully
 * and deletes it: the proof that the whole path works (REST → conductor → agent → QEMU → console).
 * `hostLabel` names the host of a host id.
 */
async function demoVm(api, projectId, hostLabel) {
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
    `demo VM status: ${vm.status} on host ${hostLabel(vm.host_id)}`,
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
  const hostCount = hostCountOption(opts.hosts ?? '1');
  await mkdir(clusterDir, { recursive: true });
  const state = await readState();
  await refuseModeSwitch(state, hostCount);

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

  // --- several hosts: their network namespaces, bridge and certificates ----------------------
  /** @type {import('./hosts.mjs').Fabric | undefined} */
  let fabric;
  if (hostCount > 1) {
    state.hostCount = hostCount;
    await writeState(state);
    log(`setting up ${hostCount} hosts: one network namespace each, joined by a bridge (docs/adr/0044)`);
    const ownerPid = ownerOption();
    startedAny = true; // the namespaces, even when no process gets started
    fabric = await withFabricLock(() =>
      ensureFabric({ clusterDir, fabricFile: paths.fabric, count: hostCount, ownerPid }),
    );
    log(`  bridge ${fabric.bridge} with ${fabric.gateway}/24 in the root namespace (api and worker)`);
    for (const h of fabric.hosts) log(`  ${h.name}: namespace ${h.namespace}, address ${h.address}`);
  }

  // --- ports and configuration ---------------------------------------------------------------
  const agentRoles = fabric ? fabric.hosts.map((h) => agentRole(h.name)) : ['agent'];
  const alive = Object.fromEntries(
    ['api', 'worker', ...agentRoles].map((role) => [role, isRunning(role, state.processes[role])]),
  );
  // The AgentGateway listens where the agents reach it: loopback, or the bridge's address.
  const grpcHost = fabric?.gateway ?? '127.0.0.1';
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
    grpcHost,
  );
  // Each host's agent listens in its own namespace, where no other program holds the port.
  const agentPort = fabric
    ? (portOption(opts['agent-port'], 'agent port') ?? state.agentPort ?? DEFAULT_PORTS.agent)
    : await choosePort(
        'agent port',
        portOption(opts['agent-port'], 'agent port'),
        state.agentPort,
        alive.agent,
        DEFAULT_PORTS.agent,
      );
  if (!fabric && new Set([httpPort, grpcPort, agentPort]).size !== 3) {
    throw new SetupError(
      `the HTTP, gRPC and agent ports must differ (${httpPort}, ${grpcPort}, ${agentPort})`,
    );
  }
  if (fabric && httpPort === grpcPort) {
    throw new SetupError(`the HTTP and gRPC ports must differ (${httpPort})`);
  }
  const redisPrefix = process.env.HANGAR_REDIS_PREFIX || state.redisPrefix || 'hangar';
  const url = `http://127.0.0.1:${httpPort}`;
  const hostName = fabric ? undefined : localHostName(state);
  const runtimeDir = fabric ? undefined : runtimeDirFor(state);
  Object.assign(state, {
    databaseUrl,
    redisUrl,
    redisPrefix,
    httpPort,
    grpcPort,
    agentPort,
    url,
    ...(fabric ? {} : { hostName, runtimeDir }),
  });
  if (fabric && state.processes.agent) {
    // The single-host agent of an earlier run (refuseModeSwitch made sure it no longer runs).
    state.processes.agent = undefined;
    await removePidFile('agent');
  }
  await writeState(state);

  const pki = fabric ? await ensurePki(paths.pki, fabric) : undefined;
  if (pki) log(`mTLS between the namespaces: cluster CA and certificates in ${shown(paths.pki)}`);
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
    // One host: plaintext gRPC (AgentGateway, and the worker's calls to agents), which is allowed
    // on loopback only: the whole cluster is on this machine. Several hosts: the agents are in
    // other network namespaces, so mTLS with the cluster's certificates (docs/adr/0045).
    HANGAR_GRPC_HOST: grpcHost,
    ...(pki
      ? {
          HANGAR_GRPC_TLS_CA: pki.controlPlane.ca,
          HANGAR_GRPC_TLS_CERT: pki.controlPlane.cert,
          HANGAR_GRPC_TLS_KEY: pki.controlPlane.key,
        }
      : { HANGAR_GRPC_INSECURE: 'true' }),
    [CLUSTER_MARK]: clusterDir,
  });

  const prisma = await openDatabase(databaseUrl);
  try {
    await mkdir(paths.sharedPool, { recursive: true });
    const pools = {
      // Paths the api registers images with are relative to this pool: the guest image folder.
      images: { path: realpathSync(paths.imageDir), shared: true },
      // The same folder on every host: what live migration needs (and proves) of shared storage.
      shared: { path: paths.sharedPool, shared: true },
    };
    /** @type {{ role: string, name: string, configFile: string, config: Record<string, unknown>, netns?: string, tls?: object }[]} */
    const agents = [];
    if (!fabric) {
      const { token, fresh } = await agentJoinToken(
        prisma,
        paths.agentConfig,
        'local agent of scripts/up.sh',
      );
      if (fresh) {
        log(`issued a join token for the local agent (kept in ${shown(paths.agentConfig)}, mode 0600)`);
      }
      await mkdir(paths.agentState, { recursive: true });
      await mkdir(runtimeDir, { recursive: true });
      const agentConfig = {
        controlPlane: `127.0.0.1:${grpcPort}`,
        joinToken: token,
        hostName,
        listen: `127.0.0.1:${agentPort}`,
        runtimeDir,
        stateDir: paths.agentState,
        pools,
        accelerator: 'auto',
        driver: 'qemu',
        insecureLoopback: true,
        logLevel: 'info',
      };
      agents.push({ role: 'agent', name: hostName, configFile: paths.agentConfig, config: agentConfig });
    } else {
      for (const host of fabric.hosts) {
        const dir = paths.hostDir(host.name);
        const configFile = path.join(dir, 'agent.json');
        const { token, fresh } = await agentJoinToken(
          prisma,
          configFile,
          `agent ${host.name} of scripts/up.sh`,
        );
        if (fresh) log(`issued a join token for ${host.name} (kept in ${shown(configFile)}, mode 0600)`);
        const hostRuntime = hostRuntimeDir(host.name);
        const stateDir = path.join(dir, 'state');
        await mkdir(stateDir, { recursive: true });
        await mkdir(hostRuntime, { recursive: true });
        const tls = /** @type {import('./pki.mjs').ClusterPki} */ (pki).hosts[host.name];
        const config = {
          controlPlane: `${fabric.gateway}:${grpcPort}`,
          joinToken: token,
          hostName: host.name,
          listen: `${host.address}:${agentPort}`,
          // Other hosts' QEMU reach this one's incoming migrations at its namespace address.
          migrationAddress: host.address,
          runtimeDir: hostRuntime,
          stateDir,
          pools,
          accelerator: 'auto',
          driver: 'qemu',
          tls,
          logLevel: 'info',
        };
        agents.push({
          role: agentRole(host.name),
          name: host.name,
          configFile,
          config,
          netns: host.namespace,
          tls,
        });
      }
    }
    for (const agent of agents) {
      await writePrivate(agent.configFile, `${JSON.stringify(agent.config, null, 2)}\n`);
    }

    // --- processes ---------------------------------------------------------------------------
    const cpTls = pki ? filesDigest(pki.controlPlane) : undefined;
    const wanted = {
      api: { args: [], env: { ...baseEnv(), ...controlPlaneEnv('api') } },
      worker: { args: [], env: { ...baseEnv(), ...controlPlaneEnv('worker') } },
    };
    const fingerprints = {
      api: digest({ env: controlPlaneEnv('api'), build: buildId('api'), tls: cpTls }),
      worker: digest({ env: controlPlaneEnv('worker'), build: buildId('worker'), tls: cpTls }),
    };
    for (const agent of agents) {
      wanted[agent.role] = {
        args: ['--config', agent.configFile],
        env: { ...baseEnv(), [CLUSTER_MARK]: clusterDir },
        netns: agent.netns,
      };
      fingerprints[agent.role] = digest({
        config: agent.config,
        build: buildId('agent'),
        tls: agent.tls ? filesDigest(agent.tls) : undefined,
      });
    }
    /** @type {Record<string, {record: {startedAt: number}, logOffset: number, exited: () => string | undefined} | undefined>} */
    const started = {};
    const startedNow = [];
    for (const role of ['api', 'worker', ...agents.map((a) => a.role)]) {
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
      if (isAgentRole(role)) {
        // The agent needs the gateway: the api must be ready first.
        await waitForApi(started.api, url);
      }
      started[role] = await startProcess(
        state,
        role,
        wanted[role].args,
        wanted[role].env,
        fingerprints[role],
        wanted[role].netns,
      );
      startedNow.push(role);
    }
    await waitForApi(started.api, url);
    if (started.worker && ['warn', 'error', 'fatal'].includes(passThrough.HANGAR_LOG_LEVEL ?? 'info')) {
      log(
        `HANGAR_LOG_LEVEL=${passThrough.HANGAR_LOG_LEVEL} hides the worker's ready line: not waiting for it`,
      );
    } else if (started.worker) {
      await waitReady('worker', started.worker, 'conductor consuming jobs', 90_000, () =>
        logHas('worker', started.worker?.logOffset ?? 0, 'conductor consuming'),
      );
      log('the worker consumes operations');
    }

    // --- the hosts ---------------------------------------------------------------------------
    const heartbeatMs = Number(passThrough.HANGAR_HEARTBEAT_INTERVAL_MS ?? 5_000);
    const since = Math.max(
      Date.now() - 4 * heartbeatMs,
      ...startedNow.map((role) => state.processes[role]?.startedAt ?? 0),
    );
    const hosts = await Promise.all(
      agents.map(async ({ role, name }) => {
        log(`waiting for host ${name} to register and heartbeat`);
        const host = await waitReady(role, started[role], `host ${name} UP`, 90_000, async () => {
          if (!started[role] && !isRunning(role, state.processes[role])) {
            throw new SetupError(
              `the ${fabric ? `agent of ${name}` : 'agent'} (pid ${state.processes[role]?.pid}) stopped; see ${shown(paths.log(role))}`,
            );
          }
          const row = await prisma.host.findUnique({ where: { name } });
          return row?.state === 'UP' && (row.lastHeartbeatAt?.getTime() ?? 0) >= since ? row : undefined;
        });
        log(
          `host ${host.name} is UP (${host.cores} cores, ${host.memoryMib} MiB, QEMU ${host.qemuVersion}, ${host.accelerator})`,
        );
        return host;
      }),
    );

    // --- a demo VM through the api ------------------------------------------------------------
    const hostLabel = (hostId) => {
      const row = hosts.find((h) => h.id === hostId);
      const fh = fabric?.hosts.find((h) => h.name === row?.name);
      if (!fh) return row?.name ?? String(hostId);
      return `${fh.name} (namespace ${fh.namespace}, ${fh.address})`;
    };
    let demo = [];
    if (!opts['no-demo']) {
      demo = await withSetupKey(prisma, bootstrap.project_id, (key) =>
        demoVm(apiClient(url, key), bootstrap.project_id, hostLabel),
      );
      for (const line of demo) log(line);
    }

    printSummary({ url, bootstrap, hosts, fabric, grpcPort, agentPort, demo });
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

/** The summary on stdout: URL, the key (only when new), the hosts, the lines to paste, where things are. */
function printSummary({ url, bootstrap, hosts, fabric, grpcPort, agentPort, demo }) {
  const auth = '-H "Authorization: Bearer $HANGAR_API_KEY"';
  const host = hosts[0];
  const out = [
    '',
    fabric
      ? `Hangar is up: api ${url}, one worker, ${hosts.length} hosts, each an agent in a network namespace of its own (${host.accelerator}).`
      : `Hangar is up: api ${url}, one worker, one agent on host ${host.name} (${host.accelerator}).`,
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
  if (fabric) {
    const width = Math.max(...fabric.hosts.map((h) => h.name.length));
    fabric.hosts.forEach((fh, i) => {
      const row = hosts.find((h) => h.name === fh.name);
      out.push(
        `  ${i === 0 ? 'Hosts:    ' : '          '} ${fh.name.padEnd(width)}  ${row?.state ?? '?'}  agent ${fh.address}:${agentPort}  namespace ${fh.namespace}`,
      );
    });
    out.push(
      `  Network:   bridge ${fabric.bridge} ${fabric.gateway}/24 in the root namespace; agents reach the api at ${fabric.gateway}:${grpcPort} (mTLS)`,
      `  Storage:   ${shown(paths.sharedPool)} is the shared pool of every host`,
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
    fabric
      ? `Its console: GET $HANGAR_URL/v1/vms/<vm id>/console. Logs: ${shown(paths.logs)}/. Stop everything (and remove the namespaces): bash scripts/down.sh`
      : `Its console: GET $HANGAR_URL/v1/vms/<vm id>/console. Logs: ${shown(paths.logs)}/. Stop everything: bash scripts/down.sh`,
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
  if (startedAny)
    process.stderr.write('Processes started so far keep running; bash scripts/down.sh stops them.\n');
  if (newAdminKey) {
    process.stdout.write(`The admin key this run created (shown this once, stored hashed): ${newAdminKey}\n`);
  }
  process.exitCode = 1;
}
