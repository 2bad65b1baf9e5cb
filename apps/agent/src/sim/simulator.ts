import { access, mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { ChannelOptions } from '@grpc/grpc-js';
import { FakeFabric, type StoragePool } from '@hangar/vmm-core';
import { type AgentConfig, AgentConfigSchema } from '../config/agent-config.js';
import { createLogger, type Logger } from '../log.js';
import type { ControlSessionOptions } from '../session/control-session.js';
import { issueHostCert } from '../tls/certs.js';
import type { TlsFiles } from '../tls/credentials.js';
import { SimulatedAgent } from './simulated-agent.js';

/**
 * How simulated agents secure their gRPC: `insecure` (plaintext, loopback only — the config
 * schema refuses anything else), `shared` (every agent presents the same certificate: mTLS works
 * but host identity cannot be verified per agent), or `per-host` (the simulator issues each agent
 * its own certificate for `<prefix><i>` from the cluster CA in `caDir`, as an operator would with
 * scripts/gen-certs.sh, so the control plane can verify every simulated host's identity).
 */
export type SimulatorTls =
  | { mode: 'insecure' }
  | { mode: 'shared'; files: TlsFiles }
  | { mode: 'per-host'; caDir: string };

/** Options of {@link AgentSimulator.start}. */
export interface SimulatorOptions {
  /** How many agents to run. */
  count: number;
  /** host:port of the control plane's AgentGateway. */
  controlPlane: string;
  /** Agent `<prefix><i>` keeps its desired state, host id (and issued certificate) in `<stateDir>/<prefix><i>`. */
  stateDir: string;
  /** Runtime folders of the fake drivers (`<runtimeDir>/<prefix><i>`; nothing is written there). Default: `stateDir`. */
  runtimeDir?: string;
  /** Storage pools every simulated host reports (the same paths for all). Default: `local` and a shared `shared` under `stateDir`. */
  pools?: Record<string, StoragePool>;
  /** Host names are `<prefix><i>`. Default `sim-`. */
  namePrefix?: string;
  /** First `i`, so several simulator processes can run disjoint fleets. Default 0. */
  firstIndex?: number;
  /** Where every HostAgent server listens (port 0: the kernel picks one per agent). Default 127.0.0.1. */
  listenHost?: string;
  /** Host part of agent_address in Register when it differs from `listenHost`. */
  advertiseHost?: string;
  migrationAddress?: string;
  /** One join token for every agent (only useful with a gateway that accepts a token more than once). */
  joinToken?: string;
  /**
   * One join token per agent: `joinTokens[k]` goes to the k-th agent of this simulator (host
   * `<prefix><firstIndex + k>`), which presents it on every Register, as a real agent keeps its
   * configured token. The api's join tokens are single-use, so a fleet joining it needs one each.
   * Exactly `count` tokens; exclusive with `joinToken`.
   */
  joinTokens?: readonly string[];
  heartbeatIntervalMs?: number;
  metricsIntervalMs?: number;
  bufferLimit?: number;
  tls?: SimulatorTls;
  /**
   * Session start-up is spread evenly over this many ms (agent k of n waits k·staggerMs/n), so
   * heartbeats and metrics batches of a large fleet do not fire in the same tick. Default: the
   * heartbeat interval. 0 starts every session at once.
   */
  staggerMs?: number;
  /** Agents started at the same time (each binds a port, loads its state folder). Default 32. */
  startConcurrency?: number;
  /** Simulated time per FakeDriver lifecycle call. Default 0. */
  latencyMs?: number;
  reconnect?: ControlSessionOptions['reconnect'];
  channelOptions?: ChannelOptions;
  /** Root logger; each agent logs through a child with `host: <name>`. Default: stdout at `logLevel`. */
  logger?: Logger;
  /** Used when `logger` is not given. Default `warn`: 1,000 agents at `info` log a lot. */
  logLevel?: AgentConfig['logLevel'];
}

/** Which agents a hook applies to: indexes into {@link AgentSimulator.agents}, names, or the agents themselves. */
export type AgentSelector = ReadonlyArray<number | string | SimulatedAgent>;

/** What {@link AgentSimulator.summary} reports. */
export interface SimulatorSummary {
  agents: number;
  connected: number;
  silenced: number;
  /** Events + metrics batches buffered while disconnected, summed over all agents. */
  buffered: number;
  dropped: number;
}

const DEFAULT_PREFIX = 'sim-';
const CERT_CONCURRENCY = 4;

/**
 * Simulation mode for scale tests: N {@link SimulatedAgent}s in one process, each a real Agent
 * (own host name, state folder, HostAgent gRPC port, Session to the control plane) on vmm-core's
 * FakeDriver. All fake drivers share one FakeFabric, so a live migration between two simulated
 * hosts works as between real ones.
 *
 * Cost per agent: one gRPC server (one listening socket), one client channel (one TCP connection
 * to the gateway), two interval timers (heartbeat, metrics) and a state folder. Sessions start
 * staggered over one heartbeat interval so the fleet's timers are spread evenly.
 */
export class AgentSimulator {
  private list: SimulatedAgent[] = [];
  private readonly byName = new Map<string, SimulatedAgent>();
  private fabricInstance: FakeFabric | undefined;
  private state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';

  /** The simulated agents, in index order. */
  get agents(): readonly SimulatedAgent[] {
    return this.list;
  }

  /** The migration fabric every fake driver of this simulator shares. */
  get fabric(): FakeFabric {
    if (!this.fabricInstance) throw new Error('the simulator has not started');
    return this.fabricInstance;
  }

  /** The agent with this index (position in `agents`) or host name. */
  agent(which: number | string): SimulatedAgent {
    const found = typeof which === 'number' ? this.list[which] : this.byName.get(which);
    if (!found) throw new Error(`no simulated agent ${JSON.stringify(which)}`);
    return found;
  }

  /**
   * Starts `count` agents (bounded concurrency) and resolves once every HostAgent server listens.
   * Sessions open in the background, staggered; use {@link whenConnected} to wait for them. If any
   * agent fails to start, the ones already started are stopped and the error is thrown.
   */
  async start(options: SimulatorOptions): Promise<void> {
    if (this.state !== 'new') throw new Error(`the simulator cannot start while ${this.state}`);
    if (!Number.isInteger(options.count) || options.count < 1) {
      throw new RangeError(`count must be a positive integer, got ${options.count}`);
    }
    if (options.joinTokens !== undefined) {
      if (options.joinToken !== undefined) {
        throw new TypeError('give joinToken (one for every agent) or joinTokens (one per agent), not both');
      }
      if (options.joinTokens.length !== options.count) {
        throw new RangeError(
          `joinTokens must hold one token per agent: ${options.joinTokens.length} tokens for ${options.count} agents`,
        );
      }
    }
    this.state = 'starting';
    const logger =
      options.logger ?? createLogger({ level: options.logLevel ?? 'warn', base: { simulated: true } });
    const fabric = new FakeFabric();
    this.fabricInstance = fabric;
    try {
      const configs = await this.buildConfigs(options);
      const heartbeatMs = configs[0]?.heartbeatIntervalMs ?? 5_000;
      const staggerMs = Math.max(0, options.staggerMs ?? heartbeatMs);
      configs.forEach((config, k) => {
        const agent = new SimulatedAgent({
          index: (options.firstIndex ?? 0) + k,
          config,
          fabric,
          logger: logger.child({ host: config.hostName }),
          sessionDelayMs: Math.floor((k * staggerMs) / configs.length),
          ...(options.advertiseHost !== undefined ? { advertiseHost: options.advertiseHost } : {}),
          ...(options.latencyMs !== undefined ? { latencyMs: options.latencyMs } : {}),
          ...(options.reconnect ? { reconnect: options.reconnect } : {}),
          ...(options.channelOptions ? { channelOptions: options.channelOptions } : {}),
        });
        this.list.push(agent);
        this.byName.set(agent.name, agent);
      });
      await inBatches(this.list, options.startConcurrency ?? 32, (a) => a.start());
      this.state = 'running';
      logger.info(
        {
          agents: this.list.length,
          first: this.list[0]?.address,
          last: this.list.at(-1)?.address,
          controlPlane: options.controlPlane,
        },
        'simulated agents listening',
      );
    } catch (err) {
      // The start error is the one worth reporting; a failed stop of a half-started fleet is not.
      await this.stopAll().catch(() => undefined);
      this.state = 'stopped';
      throw err;
    }
  }

  /** Waits until every agent that is not silenced has an open Session. */
  async whenConnected(timeoutMs = 60_000): Promise<void> {
    await Promise.all(this.list.filter((a) => !a.silenced).map((a) => a.whenConnected(timeoutMs)));
  }

  /** Ends the Sessions of the selected agents; their HostAgent servers keep serving. */
  async silence(which: AgentSelector): Promise<SimulatedAgent[]> {
    const agents = this.select(which);
    await Promise.all(agents.map((a) => a.silence()));
    return agents;
  }

  /** Opens new Sessions for the selected silenced agents (same host ids). */
  async resume(which: AgentSelector): Promise<SimulatedAgent[]> {
    const agents = this.select(which);
    await Promise.all(agents.map((a) => a.resume()));
    return agents;
  }

  /** Counts over the fleet, for logs and scale tests. */
  summary(): SimulatorSummary {
    const out: SimulatorSummary = {
      agents: this.list.length,
      connected: 0,
      silenced: 0,
      buffered: 0,
      dropped: 0,
    };
    for (const a of this.list) {
      if (a.connected) out.connected++;
      if (a.silenced) out.silenced++;
      const s = a.stats();
      if (s) {
        out.buffered += s.buffered.events + s.buffered.metrics;
        out.dropped += s.dropped.events + s.dropped.metrics;
      }
    }
    return out;
  }

  /** Stops every Session and HostAgent server; leaves no timer, socket or channel behind. */
  async stop(): Promise<void> {
    if (this.state === 'new') this.state = 'stopped';
    if (this.state === 'stopped' || this.state === 'stopping') return;
    this.state = 'stopping';
    await this.stopAll();
    this.state = 'stopped';
  }

  private async stopAll(): Promise<void> {
    // Sessions end with a half-close each; all at once is fine (no CPU work, only waiting).
    const results = await Promise.allSettled(this.list.map((a) => a.stop()));
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0)
      throw new AggregateError(
        failed.map((f) => f.reason),
        `${failed.length} simulated agents failed to stop`,
      );
  }

  private select(which: AgentSelector): SimulatedAgent[] {
    return which.map((w) => (w instanceof SimulatedAgent ? w : this.agent(w)));
  }

  /** One validated AgentConfig per agent: the schema's loopback and TLS rules apply to each. */
  private async buildConfigs(options: SimulatorOptions): Promise<AgentConfig[]> {
    const prefix = options.namePrefix ?? DEFAULT_PREFIX;
    const first = options.firstIndex ?? 0;
    const listenHost = options.listenHost ?? '127.0.0.1';
    const tls = options.tls ?? { mode: 'insecure' };
    const pools = options.pools ?? {
      local: { path: path.join(options.stateDir, 'pools', 'local'), shared: false },
      shared: { path: path.join(options.stateDir, 'pools', 'shared'), shared: true },
    };
    if (!options.pools) {
      await Promise.all(Object.values(pools).map((p) => mkdir(p.path, { recursive: true })));
    }
    const names = Array.from({ length: options.count }, (_, k) => `${prefix}${first + k}`);
    const certs = new Map<string, TlsFiles>();
    if (tls.mode === 'per-host') {
      await inBatches(names, CERT_CONCURRENCY, async (name) => {
        certs.set(name, await hostCertFor(tls.caDir, name, path.join(options.stateDir, name, 'tls')));
      });
    }
    return names.map((hostName, k) => {
      const joinToken = options.joinTokens?.[k] ?? options.joinToken;
      const parsed = AgentConfigSchema.safeParse({
        controlPlane: options.controlPlane,
        hostName,
        listen: `${listenHost}:0`,
        migrationAddress: options.migrationAddress ?? listenHost,
        runtimeDir: path.join(options.runtimeDir ?? options.stateDir, hostName, 'run'),
        stateDir: path.join(options.stateDir, hostName),
        pools,
        driver: 'fake',
        ...(joinToken !== undefined ? { joinToken } : {}),
        ...(options.heartbeatIntervalMs !== undefined
          ? { heartbeatIntervalMs: options.heartbeatIntervalMs }
          : {}),
        ...(options.metricsIntervalMs !== undefined ? { metricsIntervalMs: options.metricsIntervalMs } : {}),
        ...(options.bufferLimit !== undefined ? { bufferLimit: options.bufferLimit } : {}),
        ...(tls.mode === 'insecure'
          ? { insecureLoopback: true }
          : { tls: tls.mode === 'shared' ? tls.files : certs.get(hostName) }),
      });
      if (!parsed.success) {
        const issues = parsed.error.issues
          .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
          .join('; ');
        throw new Error(`invalid simulated agent configuration for ${hostName}: ${issues}`);
      }
      return parsed.data;
    });
  }
}

/** Reuses a certificate issued by an earlier run (same state folder), else issues one. */
async function hostCertFor(caDir: string, name: string, outDir: string): Promise<TlsFiles> {
  const files = {
    ca: path.join(outDir, 'ca.crt'),
    cert: path.join(outDir, `${name}.crt`),
    key: path.join(outDir, `${name}.key`),
  };
  try {
    await Promise.all([access(files.ca), access(files.cert), access(files.key)]);
    return files;
  } catch {
    const issued = await issueHostCert(caDir, name, outDir);
    return { ca: issued.ca, cert: issued.cert, key: issued.key };
  }
}

/** Runs `fn` over `items`, at most `size` at a time; the first failure wins (after the batch settles). */
async function inBatches<T>(
  items: readonly T[],
  size: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  const width = Math.max(1, Math.floor(size));
  for (let i = 0; i < items.length; i += width) {
    const results = await Promise.allSettled(items.slice(i, i + width).map(fn));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}
