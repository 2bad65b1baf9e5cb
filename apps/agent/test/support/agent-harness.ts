import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import {
  type CallOptions,
  type ChannelCredentials,
  type Client,
  credentials,
  Metadata,
  makeGenericClientConstructor,
  type ServiceError,
} from '@grpc/grpc-js';
import { agentv1 } from '@hangar/proto';
import { service as healthService } from 'grpc-health-check';
import type { TestHost } from '../../../../packages/vmm-core/test/support/test-host.js';
import { Agent, type AgentOptions } from '../../src/agent.js';
import { type AgentConfig, type AgentConfigInput, AgentConfigSchema } from '../../src/config/agent-config.js';
import { createLogger, type Logger } from '../../src/log.js';

const run = promisify(execFile);

export const repoRoot = path.resolve(import.meta.dirname, '../../../..');
/** The built entry point the child-process tests run. */
export const agentMainJs = path.join(repoRoot, 'apps/agent/dist/main.js');

/**
 * A loopback, plaintext agent configuration over a vmm-core TestHost: its runtime folder and
 * pools, desired state in `<root>/state`, gRPC on an ephemeral port, TCG (no KVM here).
 */
export function testAgentConfig(host: TestHost, over: Partial<AgentConfigInput> = {}): AgentConfig {
  return AgentConfigSchema.parse({
    controlPlane: '127.0.0.1:1',
    hostName: 'agent-test',
    listen: '127.0.0.1:0',
    runtimeDir: host.runtimeDir,
    stateDir: path.join(host.root, 'state'),
    pools: host.pools,
    driver: 'qemu',
    accelerator: 'tcg',
    insecureLoopback: true,
    logLevel: 'warn',
    ...over,
  });
}

/** Log lines kept in memory (pino JSON, one object per line). */
export class LogCapture {
  readonly lines: Array<Record<string, unknown>> = [];
  readonly logger: Logger;

  constructor(level: 'debug' | 'info' | 'warn' = 'info') {
    const lines = this.lines;
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString('utf8').split('\n')) {
          if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
        }
        done();
      },
    });
    this.logger = createLogger({ level, destination });
  }

  /** Lines whose `msg` contains `text`. */
  find(text: string): Array<Record<string, unknown>> {
    return this.lines.filter((l) => typeof l.msg === 'string' && l.msg.includes(text));
  }
}

/** An agent running inside the test process, with a client bound to it. */
export interface InProcessAgent {
  agent: Agent;
  client: agentv1.HostAgentClient;
  address: string;
  stop(): Promise<void>;
}

/** Starts an {@link Agent} in this process (no control plane unless `sessionFactory` is given). */
export async function startInProcessAgent(
  config: AgentConfig,
  options: Omit<AgentOptions, 'config'> = {},
): Promise<InProcessAgent> {
  const agent = new Agent({ config, ...options });
  await agent.start();
  const client = hostAgentClient(agent.address);
  return {
    agent,
    client,
    address: agent.address,
    async stop() {
      client.close();
      await agent.stop();
    },
  };
}

/** A generated HostAgent client (plaintext unless credentials are given). */
export function hostAgentClient(
  address: string,
  creds: ChannelCredentials = credentials.createInsecure(),
): agentv1.HostAgentClient {
  return new agentv1.HostAgentClient(address, creds);
}

type UnaryFn<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (err: ServiceError | null, response: Res) => void,
) => unknown;

/**
 * Calls one unary RPC as a promise: `rpc(client, client.getVm, { vmId })`. `timeoutMs` sets the
 * call's deadline.
 */
export function rpc<Req, Res>(
  client: Client,
  method: UnaryFn<Req, Res>,
  request: Req,
  options: { timeoutMs?: number } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(
      client,
      request,
      new Metadata(),
      { deadline: Date.now() + (options.timeoutMs ?? 120_000) },
      (err, response) => (err ? reject(err) : resolve(response)),
    );
  });
}

/** Awaits a call that must fail and returns its gRPC error (code, details, trailer metadata). */
export async function rpcError(promise: Promise<unknown>): Promise<ServiceError> {
  try {
    await promise;
  } catch (err) {
    if (err && typeof err === 'object' && 'code' in err) return err as ServiceError;
    throw err;
  }
  throw new Error('expected the call to fail, it succeeded');
}

/** The `hangar-error-code` trailer of a failed call. */
export function errorCodeOf(err: ServiceError): string | undefined {
  const v = err.metadata?.get('hangar-error-code')[0];
  return v === undefined ? undefined : String(v);
}

interface HealthClient extends Client {
  check(
    req: { service: string },
    md: Metadata,
    opts: Partial<CallOptions>,
    cb: (err: ServiceError | null, res: { status: string | number }) => void,
  ): void;
}

/** grpc.health.v1 Check against `address`; resolves to the status name (`SERVING`, ...). */
export async function healthCheck(address: string, service = ''): Promise<string> {
  const Ctor = makeGenericClientConstructor(
    healthService as never,
    'grpc.health.v1.Health',
  ) as unknown as new (
    address: string,
    creds: ChannelCredentials,
  ) => HealthClient;
  const client = new Ctor(address, credentials.createInsecure());
  try {
    const res = await rpc(client, client.check, { service }, { timeoutMs: 5_000 });
    return typeof res.status === 'number'
      ? ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'][res.status]!
      : res.status;
  } finally {
    client.close();
  }
}

/** Builds apps/agent (and what it references) so `dist/main.js` matches the sources. */
export async function buildAgent(): Promise<void> {
  await run(path.join(repoRoot, 'node_modules/.bin/tsc'), ['-b', path.join(repoRoot, 'apps/agent')], {
    cwd: repoRoot,
    maxBuffer: 16 * 1024 * 1024,
  });
}

/**
 * `hangar-agent` as a child process (`node apps/agent/dist/main.js --config FILE`), with its JSON
 * log lines collected so tests can wait for what an operator would read.
 */
export class ChildAgent {
  readonly lines: Array<Record<string, unknown>> = [];
  stderr = '';
  private exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(readonly child: ChildProcess) {
    let buffered = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      let nl = buffered.indexOf('\n');
      while (nl >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (line) {
          try {
            this.lines.push(JSON.parse(line) as Record<string, unknown>);
          } catch {
            this.lines.push({ msg: line, unparsed: true });
          }
        }
        nl = buffered.indexOf('\n');
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString('utf8');
    });
    this.exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('agent child has no pid');
    return this.child.pid;
  }

  /** Writes `config` to `configFile` and starts the agent on it; resolves once it listens. */
  static async start(config: AgentConfigInput, configFile: string, timeoutMs = 30_000): Promise<ChildAgent> {
    await writeFile(configFile, JSON.stringify(config, null, 2));
    const env = { ...process.env };
    // The agent reads HANGAR_AGENT_* variables as configuration: the child gets only the file.
    for (const k of Object.keys(env)) if (k.startsWith('HANGAR_AGENT_')) delete env[k];
    const child = spawn(process.execPath, [agentMainJs, '--config', configFile], {
      cwd: repoRoot,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const agent = new ChildAgent(child);
    try {
      await agent.waitForLog((l) => l.msg === 'agent listening', timeoutMs);
    } catch (err) {
      agent.kill('SIGKILL');
      throw err;
    }
    return agent;
  }

  /** host:port from the agent's "agent listening" line. */
  get address(): string {
    const line = this.lines.find((l) => l.msg === 'agent listening');
    if (!line || typeof line.address !== 'string') throw new Error('agent has not logged its address');
    return line.address;
  }

  /** Waits for a log line matching `predicate`; fails early if the agent exits. */
  async waitForLog(
    predicate: (line: Record<string, unknown>) => boolean,
    timeoutMs = 30_000,
  ): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void this.exit.then(() => {
      exited = true;
    });
    for (;;) {
      const hit = this.lines.find(predicate);
      if (hit) return hit;
      if (exited || Date.now() > deadline) {
        throw new Error(
          `agent ${exited ? 'exited' : 'timed out'} before the expected log line; stderr: ${this.stderr.slice(-2000)}; last lines: ${JSON.stringify(this.lines.slice(-5))}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  kill(signal: NodeJS.Signals): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }

  /** Resolves with the exit code/signal, or rejects after `timeoutMs`. */
  async waitForExit(timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`agent ${this.pid} did not exit within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.exit, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILLs the agent if it still runs and waits for it to be gone (teardown). */
  async dispose(): Promise<void> {
    this.kill('SIGKILL');
    await this.waitForExit(10_000).catch(() => undefined);
  }
}

/**
 * Pids of QEMU processes running the VM `vmId` of the runtime folder `runtimeDir` (found by the
 * pidfile path on their command line), so a test can prove there is exactly one per guest.
 */
export async function qemuPidsOf(runtimeDir: string, vmId: string): Promise<number[]> {
  const pidfile = path.join(runtimeDir, 'vms', vmId, 'qemu.pid');
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0');
    } catch {
      continue;
    }
    if ((argv[0] ?? '').includes('qemu-system') && argv.includes(pidfile)) pids.push(Number(entry));
  }
  return pids.sort((a, b) => a - b);
}

/** Reads the agent's persisted record of one VM (desired state, operations). */
export async function readVmRecord(
  stateDir: string,
  vmId: string,
): Promise<Record<string, unknown> | undefined> {
  try {
    return JSON.parse(await readFile(path.join(stateDir, 'vms', `${vmId}.json`), 'utf8')) as Record<
      string,
      unknown
    >;
  } catch {
    return undefined;
  }
}
