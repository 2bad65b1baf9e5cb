import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { credentials } from '@grpc/grpc-js';
import { FakeDriver, FakeHost, type Hypervisor } from '@hangar/vmm-core';
import type { INestApplicationContext, Type } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { Redis } from 'ioredis';
import { makeTestHost, type TestHost } from '../../../../packages/vmm-core/test/support/test-host.js';
import { Agent } from '../../../agent/src/agent.js';
import type { AgentConfigInput } from '../../../agent/src/config/agent-config.js';
import { createLogger } from '../../../agent/src/log.js';
import { probeHostInfo } from '../../../agent/src/runtime/host-probe.js';
import { ControlSession } from '../../../agent/src/session/control-session.js';
import { testAgentConfig } from '../../../agent/test/support/agent-harness.js';
import { ConfigModule } from '../../src/config/config.module.js';
import { type HangarConfig, loadConfig } from '../../src/config/hangar-config.js';
import { AgentGatewayServer } from '../../src/infra/grpc/agent-gateway.server.js';
import { PrismaModule } from '../../src/infra/prisma/prisma.module.js';
import { deleteKeysWithPrefix } from '../../src/infra/redis/redis.service.js';
import { ConductorModule } from '../../src/modules/conductor/conductor.module.js';
import {
  CONTROL_PLANE_SETTINGS,
  type ControlPlaneSettings,
  controlPlaneSettings,
  controlPlaneSettingsEnv,
} from '../../src/modules/conductor/control-plane.settings.js';
import { generateJoinToken } from '../../src/modules/hosts/join-token.js';
import { VmsApiModule } from '../../src/modules/vms/vms-api.module.js';
import type { TestDatabase } from './db.js';

const run = promisify(execFile);

/** The Redis every test run shares (ENVIRONMENT.md); each run works under its own key prefix. */
export const TEST_REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

export const repoRoot = path.resolve(import.meta.dirname, '../../../..');
/** The api's built entry point; with HANGAR_ROLE=worker it runs the conductor only. */
export const apiMainJs = path.join(repoRoot, 'apps/api/dist/main.js');

/** Key prefixes are `hangar-test-<creation time, base 36 ms>-<random>`: a sweep can tell their age. */
const PREFIX_PATTERN = /^hangar-test-([0-9a-z]+)-[0-9a-f]{8}$/;
const SWEEP_AFTER_MS = 60 * 60 * 1000;

/** A Redis key prefix of its own for one test (BullMQ queues, metrics), deleted by `cleanup()`. */
export interface TestRedis {
  readonly url: string;
  readonly prefix: string;
  /** A plain client for assertions (closed by `cleanup()`). */
  readonly client: Redis;
  /** Deletes every key under the prefix, as a Redis flush would for this deployment. */
  flush(): Promise<number>;
  cleanup(): Promise<void>;
}

let swept: Promise<void> | undefined;

/** Deletes the keys of `hangar-test-*` prefixes that killed runs left more than an hour ago. */
async function sweepTestPrefixes(client: Redis): Promise<void> {
  const stale = new Set<string>();
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', 'hangar-test-*', 'COUNT', 1000);
    cursor = next;
    for (const key of keys) {
      const prefix = key.split(':')[0] ?? '';
      const created = PREFIX_PATTERN.exec(prefix)?.[1];
      if (created !== undefined && Date.now() - Number.parseInt(created, 36) > SWEEP_AFTER_MS)
        stale.add(prefix);
    }
  } while (cursor !== '0');
  for (const prefix of stale) await deleteKeysWithPrefix(client, prefix);
}

export async function createTestRedis(): Promise<TestRedis> {
  const client = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 3 });
  swept ??= sweepTestPrefixes(client).catch(() => undefined);
  await swept;
  const prefix = `hangar-test-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  return {
    url: TEST_REDIS_URL,
    prefix,
    client,
    flush: () => deleteKeysWithPrefix(client, prefix),
    async cleanup() {
      await deleteKeysWithPrefix(client, prefix).catch(() => undefined);
      await client.quit().catch(() => client.disconnect());
    },
  };
}

/** Test tuning: fast heartbeats, sweeps and retries, so failures show within seconds. */
export function testSettings(over: Partial<ControlPlaneSettings> = {}): ControlPlaneSettings {
  return controlPlaneSettings({
    heartbeatIntervalMs: 500,
    metricsIntervalMs: 500,
    livenessCheckMs: 250,
    workerConcurrency: 4,
    workerLockMs: 3_000,
    workerStalledCheckMs: 1_000,
    operationAttempts: 6,
    operationBackoffMs: 300,
    sweepIntervalMs: 500,
    sweepGraceMs: 1_000,
    metricsTtlMs: 60_000,
    ...over,
  });
}

/** The api's configuration for a test: its database, Redis prefix and plaintext gRPC on loopback. */
export function testConfig(
  db: TestDatabase,
  redis: TestRedis,
  role: HangarConfig['role'] = 'all',
): HangarConfig {
  return loadConfig({
    DATABASE_URL: db.url,
    REDIS_URL: redis.url,
    HANGAR_REDIS_PREFIX: redis.prefix,
    HANGAR_ROLE: role,
    HANGAR_GRPC_HOST: '127.0.0.1',
    HANGAR_GRPC_PORT: '0',
    HANGAR_GRPC_INSECURE: 'true',
    HANGAR_DATABASE_POOL_MAX: '20',
    HANGAR_LOG_LEVEL: 'warn',
  });
}

/** A control plane assembled from the production modules, inside the test process. */
export interface TestControlPlane {
  readonly app: INestApplicationContext;
  readonly config: HangarConfig;
  readonly settings: ControlPlaneSettings;
  /** host:port of the AgentGateway (when `api` runs). */
  readonly gatewayAddress: string;
  get<T>(type: Type<T>): T;
  close(): Promise<void>;
}

/**
 * Starts the VM backend like the api and/or worker roles do (VmsApiModule with the AgentGateway
 * on an ephemeral port, ConductorModule with its BullMQ worker), on the test's database and
 * Redis prefix, with `settings` instead of the environment's.
 */
export async function startControlPlane(options: {
  db: TestDatabase;
  redis: TestRedis;
  api?: boolean;
  worker?: boolean;
  settings?: ControlPlaneSettings;
}): Promise<TestControlPlane> {
  const api = options.api ?? true;
  const worker = options.worker ?? true;
  const config = testConfig(options.db, options.redis, api && worker ? 'all' : api ? 'api' : 'worker');
  const settings = options.settings ?? testSettings();
  const moduleRef = await Test.createTestingModule({
    imports: [
      ConfigModule.forRoot(config),
      PrismaModule.forRoot({ url: config.databaseUrl, poolMax: 20, applicationName: 'hangar-test-cp' }),
      ...(api ? [VmsApiModule] : []),
      ...(worker ? [ConductorModule] : []),
    ],
  })
    .overrideProvider(CONTROL_PLANE_SETTINGS)
    .useValue(settings)
    .setLogger(quietLogger)
    .compile();
  const app = moduleRef;
  app.enableShutdownHooks = () => app;
  await app.init();
  const gatewayAddress = api ? app.get(AgentGatewayServer).address : '';
  let closed = false;
  return {
    app,
    config,
    settings,
    gatewayAddress,
    get: <T>(type: Type<T>) => app.get(type, { strict: false }),
    async close() {
      if (closed) return;
      closed = true;
      await app.close();
    },
  };
}

/** Nest's own log lines stay out of the test output except warnings and errors. */
const quietLogger = {
  log: () => undefined,
  debug: () => undefined,
  verbose: () => undefined,
  warn: (message: unknown) => {
    if (process.env.HANGAR_TEST_VERBOSE) console.warn(message);
  },
  error: (message: unknown, ...rest: unknown[]) => console.error(message, ...rest),
};

/** An admin-issued, single-use join token (as `POST /v1/join-tokens` makes them), valid for `ttlMs`. */
export async function joinToken(db: TestDatabase, ttlMs = 3_600_000): Promise<string> {
  const { token, tokenHash } = generateJoinToken();
  await db.prisma.joinToken.create({
    data: { tokenHash, description: 'test', expiresAt: new Date(Date.now() + ttlMs) },
  });
  return token;
}

/** An agent running in the test process whose control-plane session the test can stop and resume. */
export interface TestAgent {
  readonly agent: Agent;
  readonly host: TestHost;
  readonly name: string;
  /** host:port of its HostAgent server. */
  readonly address: string;
  /** The in-memory hypervisor (fake driver) that survives an agent restart. */
  readonly fakeHost: FakeHost | undefined;
  /** The current session (undefined while stopped). */
  session(): ControlSession | undefined;
  /** Waits until the session is open (registered and first heartbeat sent). */
  whenConnected(timeoutMs?: number): Promise<void>;
  /** Stops the control-plane session only: the agent keeps serving and its VMs keep running. */
  stopSession(): Promise<void>;
  /** Opens a new session (as an agent reconnecting would). */
  resumeSession(): Promise<void>;
  stop(): Promise<void>;
}

/** Options of {@link startTestAgent}. */
export interface TestAgentOptions {
  readonly name: string;
  readonly gatewayAddress: string;
  readonly joinToken: string;
  /** `fake` (default): FakeDriver; `qemu`: real guests under TCG. */
  readonly driver?: 'fake' | 'qemu';
  /** Simulated time per fake lifecycle call. */
  readonly latencyMs?: number;
  /** Address the agent registers instead of its own (a proxy in front of it). */
  readonly advertise?: string;
  readonly host?: TestHost;
  readonly config?: Partial<AgentConfigInput>;
  /** The agent's log level (default warn; `fatal` for agents a test expects to be refused). */
  readonly logLevel?: 'fatal' | 'error' | 'warn' | 'info' | 'debug';
}

/**
 * Starts an agent in this process (HostAgent on an ephemeral loopback port, plaintext) that
 * registers with the test's AgentGateway and keeps a Session open, reconnecting fast.
 */
export async function startTestAgent(options: TestAgentOptions): Promise<TestAgent> {
  const host = options.host ?? (await makeTestHost({ label: `agent-${options.name}` }));
  const config = testAgentConfig(host, {
    hostName: options.name,
    controlPlane: options.gatewayAddress,
    joinToken: options.joinToken,
    driver: options.driver ?? 'fake',
    logLevel: 'warn',
    ...(options.advertise !== undefined ? { advertise: options.advertise } : {}),
    ...options.config,
  });
  await mkdir(config.stateDir, { recursive: true });
  const fakeHost = config.driver === 'fake' ? new FakeHost() : undefined;
  const hypervisor: Hypervisor | undefined = fakeHost
    ? new FakeDriver({
        runtimeDir: config.runtimeDir,
        pools: config.pools,
        host: fakeHost,
        ...(options.latencyMs !== undefined ? { latencyMs: options.latencyMs } : {}),
      })
    : undefined;
  const logger = createLogger({ level: options.logLevel ?? 'warn', base: { host: options.name } });
  let current: ControlSession | undefined;
  let context:
    | {
        grpcAddress: string;
        inventory: ConstructorParameters<typeof ControlSession>[0]['inventory'];
        hypervisor: Hypervisor;
      }
    | undefined;
  const newSession = (): ControlSession => {
    if (!context) throw new Error('the agent has not started its session yet');
    const ctx = context;
    return new ControlSession({
      address: config.controlPlane,
      credentials: credentials.createInsecure(),
      hostInfo: () =>
        probeHostInfo({
          hostName: config.hostName,
          agentAddress: config.advertise ?? ctx.grpcAddress,
          hypervisor: ctx.hypervisor,
          pools: config.pools,
        }),
      joinToken: options.joinToken,
      inventory: ctx.inventory,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      metricsIntervalMs: config.metricsIntervalMs,
      bufferLimit: config.bufferLimit,
      logger: logger.child({ component: 'session' }),
      stateFile: path.join(config.stateDir, 'host-id.json'),
      reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
      registerTimeoutMs: 5_000,
    });
  };
  const agent = new Agent({
    config,
    logger,
    ...(hypervisor ? { hypervisor } : {}),
    sessionFactory: (ctx) => {
      context = { grpcAddress: ctx.grpcAddress, inventory: ctx.inventory, hypervisor: ctx.hypervisor };
      return {
        async start() {
          current = newSession();
          await current.start();
        },
        async stop() {
          const session = current;
          current = undefined;
          await session?.stop();
        },
      };
    },
  });
  await agent.start();
  return {
    agent,
    host,
    name: options.name,
    address: agent.address,
    fakeHost,
    session: () => current,
    async whenConnected(timeoutMs = 15_000) {
      if (!current) throw new Error('the session is stopped');
      await current.whenConnected(timeoutMs);
    },
    async stopSession() {
      const session = current;
      current = undefined;
      await session?.stop();
    },
    async resumeSession() {
      if (current) return;
      current = newSession();
      await current.start();
    },
    async stop() {
      await agent.stop({ graceMs: 1_000 }).catch(() => undefined);
      if (!options.host) await host.cleanup();
    },
  };
}

/**
 * A loopback TCP forwarder the test can open and close: agents advertised behind it look
 * unreachable (connection refused → gRPC UNAVAILABLE) while it is closed, like a host behind a
 * broken link. The port is reserved up front so it stays the same across close/open.
 */
export class FlakyLink {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    readonly port: number,
    private target: string,
  ) {}

  /** Picks a free port; the link starts closed. */
  static async create(target = ''): Promise<FlakyLink> {
    const probe = net.createServer();
    const port = await new Promise<number>((resolve, reject) => {
      probe.once('error', reject);
      probe.listen(0, '127.0.0.1', () => resolve((probe.address() as net.AddressInfo).port));
    });
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    return new FlakyLink(port, target);
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts forwarding to `target` (host:port). */
  async open(target = this.target): Promise<void> {
    this.target = target;
    if (this.server) return;
    const [host, port] = [target.replace(/:\d+$/, ''), Number(target.split(':').pop())];
    const server = net.createServer((socket) => {
      const upstream = net.connect(port, host);
      this.sockets.add(socket).add(upstream);
      const drop = () => {
        socket.destroy();
        upstream.destroy();
        this.sockets.delete(socket);
        this.sockets.delete(upstream);
      };
      socket.pipe(upstream).pipe(socket);
      socket.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.server = server;
  }

  /** Stops forwarding and cuts every connection through it. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** Builds apps/api into dist (for the worker child process); type errors elsewhere do not stop the emit. */
export async function buildApi(): Promise<void> {
  try {
    await run(path.join(repoRoot, 'node_modules/.bin/tsc'), ['-b', path.join(repoRoot, 'apps/api')], {
      cwd: repoRoot,
      maxBuffer: 32 * 1024 * 1024,
    });
  } catch {
    // tsc exits 1 on type errors but still emits (build mode, no noEmitOnError); the worker
    // start below fails loudly if the entry point is missing.
  }
}

/**
 * A conductor worker as a child process: the api's own entry point (`node apps/api/dist/main.js`)
 * with HANGAR_ROLE=worker, configured by environment like production, so a test can SIGKILL it.
 */
export class WorkerProcess {
  readonly lines: string[] = [];
  stderr = '';
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(readonly child: ChildProcess) {
    let buffered = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      const parts = buffered.split('\n');
      buffered = parts.pop() ?? '';
      this.lines.push(...parts.filter((l) => l.trim()));
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString('utf8');
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('worker child has no pid');
    return this.child.pid;
  }

  /** Starts a worker and waits until its conductor consumes the queue. */
  static async start(options: {
    db: TestDatabase;
    redis: TestRedis;
    settings: ControlPlaneSettings;
    timeoutMs?: number;
  }): Promise<WorkerProcess> {
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(process.env)) {
      if (value !== undefined && !key.startsWith('HANGAR_')) env[key] = value;
    }
    Object.assign(env, controlPlaneSettingsEnv(options.settings), {
      DATABASE_URL: options.db.url,
      REDIS_URL: options.redis.url,
      HANGAR_REDIS_PREFIX: options.redis.prefix,
      HANGAR_GRPC_HOST: '127.0.0.1',
      HANGAR_GRPC_INSECURE: 'true',
      HANGAR_ROLE: 'worker',
      HANGAR_LOG_LEVEL: 'info',
    });
    const child = spawn(process.execPath, [apiMainJs], {
      cwd: repoRoot,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const worker = new WorkerProcess(child);
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    let exited = false;
    void worker.exited.then(() => {
      exited = true;
    });
    while (!worker.lines.some((l) => l.includes('conductor consuming'))) {
      if (exited || Date.now() > deadline) {
        worker.kill('SIGKILL');
        throw new Error(
          `worker ${exited ? 'exited' : 'did not start'}: ${worker.stderr.slice(-3000)} ${worker.lines.slice(-5).join('\n')}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return worker;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }

  /** Resolves with how the process ended, or rejects after `timeoutMs`. */
  async waitForExit(timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`worker ${this.pid} did not exit in ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILLs the worker if it still runs and waits for it (teardown). */
  async dispose(): Promise<void> {
    this.kill('SIGKILL');
    await this.waitForExit(10_000).catch(() => undefined);
  }
}

/** A flavor and the test guest image registered the way an operator would. */
export async function seedCatalog(
  db: TestDatabase,
  options: { quotaVms?: number; quotaVcpus?: number; quotaMemoryMib?: number } = {},
): Promise<{ projectId: string; flavorId: string; imageId: string }> {
  const project = await db.prisma.project.create({
    data: {
      name: `p-${randomBytes(3).toString('hex')}`,
      quotaVms: options.quotaVms ?? 20,
      quotaVcpus: options.quotaVcpus ?? 64,
      quotaMemoryMib: options.quotaMemoryMib ?? 65_536,
    },
  });
  const flavor = await db.prisma.flavor.upsert({
    where: { name: 'tiny' },
    update: {},
    create: { name: 'tiny', vcpus: 1, memoryMib: 256, diskGib: 1 },
  });
  const image = await db.prisma.image.upsert({
    where: { name: 'hangar-tiny' },
    update: {},
    create: {
      name: 'hangar-tiny',
      pool: 'images',
      kernelPath: 'vmlinuz',
      initrdPath: 'initrd.img',
      cmdline: 'console=ttyS0 panic=-1 quiet loglevel=3',
      diskPath: 'base.qcow2',
      format: 'qcow2',
    },
  });
  return { projectId: project.id, flavorId: flavor.id, imageId: image.id };
}

/**
 * Puts `settings` into this process's environment, where the control-plane settings are read
 * when an app starts (as a deployment would set them); returns a function that restores it.
 * Test files run in their own processes, so this does not leak into other files.
 */
export function useSettingsEnv(settings: ControlPlaneSettings): () => void {
  const values = controlPlaneSettingsEnv(settings);
  const previous = Object.fromEntries(Object.keys(values).map((k) => [k, process.env[k]]));
  Object.assign(process.env, values);
  return () => {
    for (const [key, value] of Object.entries(previous)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  };
}
