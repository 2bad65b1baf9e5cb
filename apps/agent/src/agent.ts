import path from 'node:path';
import { credentials, Server } from '@grpc/grpc-js';
import { FakeDriver, type Hypervisor, LinuxHostNetwork, QemuDriver } from '@hangar/vmm-core';
import { HealthImplementation } from 'grpc-health-check';
import type { AgentConfig } from './config/agent-config.js';
import { HostAgentService } from './grpc/host-agent.service.js';
import { serverCredentials } from './grpc/server-credentials.js';
import { createLogger, type Logger } from './log.js';
import { type HostNetwork, NoopHostNetwork } from './runtime/host-network.js';
import { probeHostInfo } from './runtime/host-probe.js';
import { type StartupReport, VmRuntime } from './runtime/vm-runtime.js';
import { ControlSession } from './session/control-session.js';
import type { AgentInventory } from './session/inventory.js';
import { agentChannelCredentials, readTlsFiles } from './tls/credentials.js';

/** The gRPC service name health checks ask about (the empty name means the whole server). */
export const HOST_AGENT_SERVICE_NAME = 'hangar.agent.v1.HostAgent';

/** What a control-plane session gets from the agent that runs it. */
export interface SessionContext {
  config: AgentConfig;
  inventory: AgentInventory;
  hypervisor: Hypervisor;
  logger: Logger;
  /** host:port the HostAgent server actually listens on (the real port when `listen` asked for :0). */
  grpcAddress: string;
}

/** A running control-plane session (register, heartbeats, events, metrics). */
export interface AgentSession {
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** Builds the session; tests pass none to run an agent without a control plane. */
export type SessionFactory = (context: SessionContext) => AgentSession;

export interface AgentOptions {
  config: AgentConfig;
  logger?: Logger;
  /** Control-plane session; none: the agent only serves HostAgent. */
  sessionFactory?: SessionFactory;
  /** Overrides the driver built from `config.driver` (simulation mode shares FakeHosts). */
  hypervisor?: Hypervisor;
  /** Host networking for NICs that ask for a tap; {@link buildHostNetwork} of the config when unset. */
  hostNetwork?: HostNetwork;
}

/**
 * One host agent: config → driver → runtime (desired state, re-adoption) → HostAgent gRPC server
 * with grpc.health.v1 → control-plane session. `stop()` shuts the agent down and leaves every
 * guest running: QEMU processes are daemons that outlive the agent by design.
 */
export class Agent {
  readonly config: AgentConfig;
  readonly logger: Logger;
  readonly hypervisor: Hypervisor;
  readonly runtime: VmRuntime;
  private readonly health: HealthImplementation;
  private server: Server | undefined;
  private session: AgentSession | undefined;
  private boundAddress: string | undefined;
  private state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';

  constructor(private readonly options: AgentOptions) {
    this.config = options.config;
    this.logger =
      options.logger ??
      createLogger({ level: options.config.logLevel, base: { host: options.config.hostName } });
    this.hypervisor = options.hypervisor ?? buildHypervisor(options.config);
    this.runtime = new VmRuntime({
      hypervisor: this.hypervisor,
      stateDir: options.config.stateDir,
      pools: options.config.pools,
      hostNetwork: options.hostNetwork ?? buildHostNetwork(options.config, this.hypervisor),
      logger: this.logger,
    });
    this.health = new HealthImplementation({ '': 'NOT_SERVING', [HOST_AGENT_SERVICE_NAME]: 'NOT_SERVING' });
  }

  /** host:port the HostAgent server listens on; set once `start()` resolved. */
  get address(): string {
    if (!this.boundAddress) throw new Error('the agent is not listening yet');
    return this.boundAddress;
  }

  /** Re-adopts guests, starts serving HostAgent, then opens the control-plane session. */
  async start(): Promise<StartupReport> {
    if (this.state !== 'new') throw new Error(`agent cannot start while ${this.state}`);
    this.state = 'starting';
    try {
      const report = await this.runtime.start();
      const server = new Server({ 'grpc.max_receive_message_length': 8 * 1024 * 1024 });
      new HostAgentService(this.runtime, this.logger).addTo(server);
      this.health.addToServer(server);
      this.server = server;
      const port = await new Promise<number>((resolve, reject) => {
        void serverCredentials(this.config).then(
          (creds) =>
            server.bindAsync(this.config.listen, creds, (err, p) => (err ? reject(err) : resolve(p))),
          reject,
        );
      });
      this.boundAddress = `${this.config.listen.replace(/:\d+$/, '')}:${port}`;
      this.health.setStatus('', 'SERVING');
      this.health.setStatus(HOST_AGENT_SERVICE_NAME, 'SERVING');
      this.logger.info(
        {
          address: this.boundAddress,
          driver: this.hypervisor.driver,
          tls: !this.config.insecureLoopback,
          vms: report.vms.length,
          orphans: report.orphans.length,
          drifting: report.drifting,
        },
        'agent listening',
      );
      if (this.options.sessionFactory) {
        this.session = this.options.sessionFactory({
          config: this.config,
          inventory: this.runtime,
          hypervisor: this.hypervisor,
          logger: this.logger,
          grpcAddress: this.boundAddress,
        });
        await this.session.start();
      }
      this.state = 'running';
      return report;
    } catch (err) {
      this.logger.error({ err }, 'agent failed to start');
      await this.teardown();
      this.state = 'stopped';
      throw err;
    }
  }

  /**
   * Stops serving and disconnects from QEMU monitors. Guests are not touched: no powerdown, no
   * quit, no signal. In-flight calls get a few seconds to finish before the server is closed.
   */
  async stop(options: { graceMs?: number } = {}): Promise<void> {
    if (this.state === 'stopped' || this.state === 'stopping') return;
    this.state = 'stopping';
    this.logger.info('agent stopping; guests keep running');
    await this.teardown(options.graceMs ?? 5_000);
    this.state = 'stopped';
    this.logger.info('agent stopped');
  }

  private async teardown(graceMs = 0): Promise<void> {
    this.health.setStatus('', 'NOT_SERVING');
    this.health.setStatus(HOST_AGENT_SERVICE_NAME, 'NOT_SERVING');
    if (this.session) {
      await this.session.stop().catch((err: unknown) => this.logger.error({ err }, 'session stop failed'));
      this.session = undefined;
    }
    const server = this.server;
    this.server = undefined;
    if (server) {
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    }
    await this.runtime.close().catch((err: unknown) => this.logger.error({ err }, 'runtime close failed'));
  }
}

/** The hypervisor driver `config.driver` names (QEMU inside `config.netns` when set). */
export function buildHypervisor(config: AgentConfig): Hypervisor {
  if (config.driver === 'fake') return new FakeDriver({ runtimeDir: config.runtimeDir, pools: config.pools });
  return new QemuDriver({
    runtimeDir: config.runtimeDir,
    pools: config.pools,
    accelerator: config.accelerator,
    ...(config.netns !== undefined ? { netns: config.netns } : {}),
  });
}

/**
 * Host networking for a driver: the Linux bridge `config.bridge` with one tap per NIC (inside
 * `config.netns` when set) for QEMU; made-up tap names for the fake driver, which runs no guest.
 * Nothing touches the host until the first NIC asks for a tap.
 */
export function buildHostNetwork(config: AgentConfig, hypervisor: Hypervisor): HostNetwork {
  if (hypervisor.driver === 'fake') return new NoopHostNetwork({ fakeTaps: true });
  return new LinuxHostNetwork({
    bridge: config.bridge,
    ...(config.netns !== undefined ? { netns: config.netns } : {}),
  });
}

/**
 * The production session: {@link ControlSession} to `config.controlPlane` with mTLS (plaintext
 * only with `insecureLoopback`), re-probing the host on every Register and keeping the host id
 * under `config.stateDir`.
 */
export const controlSessionFactory: SessionFactory = (ctx) => {
  let session: ControlSession | undefined;
  const { config } = ctx;
  return {
    async start() {
      const channel = config.insecureLoopback
        ? credentials.createInsecure()
        : agentChannelCredentials(await readTlsFiles(requireTls(config)));
      session = new ControlSession({
        address: config.controlPlane,
        credentials: channel,
        hostInfo: () =>
          probeHostInfo({
            hostName: config.hostName,
            agentAddress: config.advertise ?? ctx.grpcAddress,
            hypervisor: ctx.hypervisor,
            pools: config.pools,
          }),
        ...(config.joinToken !== undefined ? { joinToken: config.joinToken } : {}),
        inventory: ctx.inventory,
        heartbeatIntervalMs: config.heartbeatIntervalMs,
        metricsIntervalMs: config.metricsIntervalMs,
        bufferLimit: config.bufferLimit,
        logger: ctx.logger.child({ component: 'session' }),
        stateFile: path.join(config.stateDir, 'host-id.json'),
      });
      await session.start();
    },
    async stop() {
      await session?.stop();
    },
  };
};

function requireTls(config: AgentConfig): NonNullable<AgentConfig['tls']> {
  if (!config.tls) throw new Error('TLS files are required unless insecureLoopback is set');
  return config.tls;
}
