import path from 'node:path';
import { type ChannelCredentials, type ChannelOptions, credentials } from '@grpc/grpc-js';
import { FakeDriver, type FakeFabric } from '@hangar/vmm-core';
import { Agent, type AgentSession, type SessionContext } from '../agent.js';
import type { AgentConfig } from '../config/agent-config.js';
import type { Logger } from '../log.js';
import { probeHostInfo } from '../runtime/host-probe.js';
import {
  ControlSession,
  type ControlSessionOptions,
  type ControlSessionStats,
} from '../session/control-session.js';
import { agentChannelCredentials, readTlsFiles } from '../tls/credentials.js';

/** Options of one {@link SimulatedAgent}; {@link AgentSimulator} fills them in. */
export interface SimulatedAgentOptions {
  /** Position in the simulation (its host name ends with it). */
  index: number;
  /** This agent's own, validated configuration: host name, state folder, listen address, TLS. */
  config: AgentConfig;
  /** Shared by every simulated agent of a process, so live migrations between them work. */
  fabric: FakeFabric;
  logger: Logger;
  /** Host part of the address put in Register's agent_address (the bound port is appended). */
  advertiseHost?: string;
  /** Delay before the first Session opens, so a fleet's heartbeats do not tick in lockstep. */
  sessionDelayMs?: number;
  /** Simulated time per FakeDriver lifecycle call. */
  latencyMs?: number;
  reconnect?: ControlSessionOptions['reconnect'];
  /** Extra gRPC channel options of the Session's channel. */
  channelOptions?: ChannelOptions;
}

/** Labels every simulated host carries in Register, so the control plane can tell them apart. */
export const SIMULATED_HOST_LABELS: Readonly<Record<string, string>> = { 'hangar.io/simulated': 'true' };

/**
 * One simulated host: a real {@link Agent} (desired state on disk, HostAgent gRPC server with
 * health, idempotency and validation) on vmm-core's FakeDriver, with its own ControlSession to
 * the control plane. On the wire it is indistinguishable from a real agent except for the
 * `hangar.io/simulated` label and the fake driver/accelerator in its HostInfo.
 *
 * `silence()` ends the Session (clean half-close) while the HostAgent server keeps serving; the
 * control plane sees a host that stopped reporting. `resume()` opens a new Session that
 * re-registers with the same host id (kept in the state folder). A silenced agent does not
 * buffer: VM events that happen while silent are lost, and the first heartbeat after `resume()`
 * carries the full inventory, which is what the control plane reconciles from.
 */
export class SimulatedAgent {
  readonly index: number;
  readonly name: string;
  readonly config: AgentConfig;
  readonly driver: FakeDriver;
  readonly agent: Agent;
  private readonly log: Logger;
  private context: SessionContext | undefined;
  private channel: ChannelCredentials | undefined;
  private session: ControlSession | undefined;
  private lastHostId: string | undefined;
  private delayTimer: NodeJS.Timeout | undefined;
  private isSilenced = false;
  private stopped = false;

  constructor(private readonly options: SimulatedAgentOptions) {
    this.index = options.index;
    this.config = options.config;
    this.name = options.config.hostName;
    this.log = options.logger;
    this.driver = new FakeDriver({
      runtimeDir: options.config.runtimeDir,
      pools: options.config.pools,
      fabric: options.fabric,
      latencyMs: options.latencyMs ?? 0,
    });
    this.agent = new Agent({
      config: options.config,
      logger: options.logger,
      hypervisor: this.driver,
      sessionFactory: (ctx) => this.sessionFor(ctx),
    });
  }

  /** Starts the agent: HostAgent server first, then (after the stagger delay) the Session. */
  async start(): Promise<void> {
    await this.agent.start();
  }

  /** Stops the Session and the HostAgent server. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.agent.stop({ graceMs: 1_000 });
  }

  /** host:port of this agent's HostAgent server (the bound port). */
  get address(): string {
    return this.agent.address;
  }

  /** What Register advertises as agent_address. */
  get advertisedAddress(): string {
    const port = this.address.slice(this.address.lastIndexOf(':') + 1);
    return this.options.advertiseHost ? `${this.options.advertiseHost}:${port}` : this.address;
  }

  /** The host id the control plane assigned (kept across silence/resume). */
  get hostId(): string | undefined {
    return this.session?.stats().hostId ?? this.lastHostId;
  }

  get silenced(): boolean {
    return this.isSilenced;
  }

  /** Whether a Session is open right now. */
  get connected(): boolean {
    return this.session?.stats().connected ?? false;
  }

  /** The current Session's stats; undefined while silenced or before it was created. */
  stats(): ControlSessionStats | undefined {
    return this.session?.stats();
  }

  /** Resolves once a Session is open; rejects after `timeoutMs`. */
  async whenConnected(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    // The session may not exist yet (stagger delay): poll for it, then wait on it.
    while (!this.session) {
      if (this.stopped || this.isSilenced) throw new Error(`${this.name} is not reporting`);
      if (Date.now() >= deadline) throw new Error(`${this.name}: no session within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await this.session.whenConnected(Math.max(1, deadline - Date.now()));
  }

  /** Ends the Session; the HostAgent server keeps answering. No-op when already silent. */
  async silence(): Promise<void> {
    if (this.isSilenced || this.stopped) return;
    this.isSilenced = true;
    this.log.info('simulated agent silenced');
    await this.closeSession();
  }

  /** Opens a new Session at once (same host id). No-op unless silenced. */
  async resume(): Promise<void> {
    if (!this.isSilenced || this.stopped) return;
    this.isSilenced = false;
    this.log.info('simulated agent resumed');
    await this.openSession();
  }

  private sessionFor(ctx: SessionContext): AgentSession {
    return {
      start: async () => {
        this.context = ctx;
        const tls = this.config.insecureLoopback ? undefined : this.config.tls;
        // Read once per agent: resume() must not depend on the files still being there.
        this.channel = tls ? agentChannelCredentials(await readTlsFiles(tls)) : credentials.createInsecure();
        const delay = this.options.sessionDelayMs ?? 0;
        if (delay <= 0) {
          await this.openSession();
          return;
        }
        this.delayTimer = setTimeout(() => {
          this.delayTimer = undefined;
          void this.openSession().catch((err: unknown) =>
            this.log.error({ err }, 'simulated session failed to start'),
          );
        }, delay);
      },
      stop: () => this.closeSession(),
    };
  }

  private async openSession(): Promise<void> {
    const ctx = this.context;
    const channel = this.channel;
    if (!ctx || !channel || this.session || this.isSilenced || this.stopped) return;
    const config = this.config;
    const session = new ControlSession({
      address: config.controlPlane,
      credentials: channel,
      hostInfo: async () => {
        const info = await probeHostInfo({
          hostName: config.hostName,
          agentAddress: this.advertisedAddress,
          hypervisor: ctx.hypervisor,
          pools: config.pools,
          labels: { ...SIMULATED_HOST_LABELS },
        });
        // Capacity as the fake driver reports it in metrics, not this machine's: a simulated
        // fleet must look like a fleet of hypervisors to placement.
        const host = await ctx.hypervisor.sampleHost();
        return { ...info, cores: host.cpuCount, memoryBytes: host.memoryTotalBytes };
      },
      ...(config.joinToken !== undefined ? { joinToken: config.joinToken } : {}),
      inventory: ctx.inventory,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      metricsIntervalMs: config.metricsIntervalMs,
      bufferLimit: config.bufferLimit,
      logger: ctx.logger.child({ component: 'session' }),
      stateFile: path.join(config.stateDir, 'host-id.json'),
      ...(this.options.reconnect ? { reconnect: this.options.reconnect } : {}),
      channelOptions: {
        // grpc-js shares one TCP connection between channels with equal target, options and
        // credentials (always so for plaintext). Real agents each have their own connection.
        'grpc.use_local_subchannel_pool': 1,
        ...this.options.channelOptions,
      },
    });
    this.session = session;
    await session.start();
  }

  private async closeSession(): Promise<void> {
    if (this.delayTimer) clearTimeout(this.delayTimer);
    this.delayTimer = undefined;
    const session = this.session;
    this.session = undefined;
    if (!session) return;
    this.lastHostId = session.stats().hostId ?? this.lastHostId;
    await session.stop();
  }
}
