import { readFileSync } from 'node:fs';
import {
  Server,
  ServerCredentials,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type sendUnaryData,
  status,
} from '@grpc/grpc-js';
import { controlv1 } from '@hangar/proto';
import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import { DomainError } from '../../errors/domain-error.js';
import { grpcStatusOf } from '../../errors/error-codes.js';
import { GatewayService } from '../../modules/gateway/gateway.service.js';

/** Nest injection token for {@link AgentGatewayServerOptions}. */
export const AGENT_GATEWAY_SERVER_OPTIONS = Symbol('AGENT_GATEWAY_SERVER_OPTIONS');

/** Where the AgentGateway listens and how it is secured. */
export interface AgentGatewayServerOptions {
  /** Interface to bind (`127.0.0.1`, `0.0.0.0`, `::`). */
  readonly host: string;
  /** TCP port; 0 lets the kernel pick one (tests), read it back from {@link AgentGatewayServer.address}. */
  readonly port: number;
  /** mTLS: agents must present a certificate from the cluster CA. Plaintext without it. */
  readonly tls?: { readonly ca: string; readonly cert: string; readonly key: string } | undefined;
  /** Bind on application bootstrap (default true); false leaves it to `start()`. */
  readonly autoStart?: boolean;
}

type SessionCall = ServerDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>;

/** One agent's Session as the server tracks it. */
interface SessionState {
  readonly call: SessionCall;
  hostId: string | undefined;
  closed: boolean;
  /** Reports received and not yet handled: they are handled one after the other, in order. */
  queued: number;
  chain: Promise<void>;
}

/** Reports queued per Session before the server stops reading from it (backpressure). */
const PAUSE_AT = 64;
const RESUME_AT = 8;

/**
 * The gRPC server of `hangar.control.v1.AgentGateway`: Register, and one Session per agent whose
 * reports are handled in order and acknowledged one by one once handled (the agent re-sends
 * what was not acknowledged, so a crash between handling and the ack only repeats a report).
 * Domain errors travel as the gRPC status of their code (THE error table).
 */
@Injectable()
export class AgentGatewayServer implements OnApplicationBootstrap, OnApplicationShutdown {
  private server: Server | undefined;
  private boundPort: number | undefined;
  private readonly sessions = new Map<string, SessionState>();
  private readonly all = new Set<SessionState>();
  private readonly log = new Logger('AgentGatewayServer');

  constructor(
    private readonly gateway: GatewayService,
    @Inject(AGENT_GATEWAY_SERVER_OPTIONS) private readonly options: AgentGatewayServerOptions,
  ) {}

  /** host:port agents dial (the real port once bound, when `port` was 0). */
  get address(): string {
    if (this.boundPort === undefined) throw new Error('the AgentGateway is not listening');
    const host = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host;
    return `${host}:${this.boundPort}`;
  }

  /** Agents with an open Session right now. */
  get openSessions(): number {
    return this.sessions.size;
  }

  async onApplicationBootstrap(): Promise<void> {
    if (this.options.autoStart !== false) await this.start();
  }

  async onApplicationShutdown(): Promise<void> {
    await this.stop();
  }

  /** Binds the server and starts serving. */
  async start(): Promise<void> {
    if (this.server) return;
    const server = new Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
    server.addService(controlv1.AgentGatewayService, {
      register: (call: ServerUnaryCall<controlv1.RegisterRequest, controlv1.RegisterResponse>, callback) =>
        void this.onRegister(call, callback),
      session: (call: SessionCall) => this.onSession(call),
    } satisfies controlv1.AgentGatewayServer);
    const credentials = this.options.tls
      ? ServerCredentials.createSsl(
          readFileSync(this.options.tls.ca),
          [
            {
              cert_chain: readFileSync(this.options.tls.cert),
              private_key: readFileSync(this.options.tls.key),
            },
          ],
          true,
        )
      : ServerCredentials.createInsecure();
    const host = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host;
    this.boundPort = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${host}:${this.options.port}`, credentials, (error, port) =>
        error ? reject(error) : resolve(port),
      ),
    );
    this.server = server;
    this.log.log(`AgentGateway listening on ${this.address}${this.options.tls ? ' (mTLS)' : ' (plaintext)'}`);
  }

  /**
   * Stops serving: every Session is ended cleanly (agents reconnect to another replica or when
   * this one is back), then the server shuts down, forcibly after `graceMs`.
   */
  async stop(graceMs = 2_000): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.boundPort = undefined;
    for (const state of this.all) this.closeSession(state, undefined);
    this.all.clear();
    this.sessions.clear();
    if (!server) return;
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

  private async onRegister(
    call: ServerUnaryCall<controlv1.RegisterRequest, controlv1.RegisterResponse>,
    callback: sendUnaryData<controlv1.RegisterResponse>,
  ): Promise<void> {
    try {
      callback(null, await this.gateway.register(call.request));
    } catch (error) {
      const { code, details } = this.toStatus(error, 'Register');
      callback({ code, details });
    }
  }

  private onSession(call: SessionCall): void {
    const state: SessionState = {
      call,
      hostId: undefined,
      closed: false,
      queued: 0,
      chain: Promise.resolve(),
    };
    this.all.add(state);
    call.on('data', (request: controlv1.SessionRequest) => {
      state.queued += 1;
      if (state.queued >= PAUSE_AT) call.pause();
      state.chain = state.chain
        .then(() => this.handleReport(state, request))
        .catch((error: unknown) => this.failSession(state, error))
        .finally(() => {
          state.queued -= 1;
          if (state.queued <= RESUME_AT && call.isPaused()) call.resume();
        });
    });
    // The agent half-closed (a clean stop): finish what it sent, then answer OK.
    call.on('end', () => {
      void state.chain.then(() => this.closeSession(state, undefined));
    });
    const gone = () => {
      state.closed = true;
      this.forget(state);
    };
    call.on('cancelled', gone);
    call.on('error', gone);
  }

  private async handleReport(state: SessionState, request: controlv1.SessionRequest): Promise<void> {
    if (state.closed) return;
    const body = request.body;
    if (state.hostId === undefined) {
      if (body?.$case !== 'heartbeat') {
        throw new DomainError('VALIDATION_FAILED', 'the first report of a Session must be a heartbeat');
      }
      const host = await this.gateway.sessionHost(request.hostId);
      state.hostId = host.id;
      const previous = this.sessions.get(host.id);
      this.sessions.set(host.id, state);
      if (previous && previous !== state) {
        // The agent opened a new Session: the old one is a leftover of a broken connection.
        this.closeSession(previous, undefined);
      }
      this.log.log(`session open for host ${host.name} (${host.id})`);
    } else if (request.hostId !== state.hostId) {
      throw new DomainError(
        'VALIDATION_FAILED',
        `this Session belongs to host ${state.hostId}, not ${request.hostId}`,
      );
    }
    const hostId = state.hostId;
    switch (body?.$case) {
      case 'heartbeat':
        await this.gateway.heartbeat(hostId, body.value);
        break;
      case 'vmEvent':
        await this.gateway.vmEvent(hostId, body.value);
        break;
      case 'metrics':
        await this.gateway.metricsBatch(hostId, body.value);
        break;
      case 'dropped':
        await this.gateway.droppedReports(hostId, body.value);
        break;
      default:
        // A report type this version does not know: acknowledged, so the agent can forget it.
        break;
    }
    if (!state.closed) {
      state.call.write({ notice: { $case: 'ack', value: { upToSequence: request.sequence } } });
    }
  }

  /** A report could not be handled: end the Session with the error's status; the agent re-sends. */
  private failSession(state: SessionState, error: unknown): void {
    if (state.closed) return;
    const grpcStatus = this.toStatus(error, 'Session');
    this.closeSession(state, grpcStatus);
  }

  private closeSession(state: SessionState, error: { code: status; details: string } | undefined): void {
    if (state.closed) return;
    state.closed = true;
    this.forget(state);
    try {
      if (error) state.call.emit('error', error);
      else state.call.end();
    } catch {
      // The stream may already be gone; nothing to tell the agent then.
    }
  }

  private forget(state: SessionState): void {
    this.all.delete(state);
    if (state.hostId !== undefined && this.sessions.get(state.hostId) === state) {
      this.sessions.delete(state.hostId);
    }
  }

  private toStatus(error: unknown, what: string): { code: status; details: string } {
    if (error instanceof DomainError) return { code: grpcStatusOf(error.code), details: error.message };
    const code = (error as { code?: unknown } | undefined)?.code;
    if (code === 'HOST_NOT_FOUND' || code === 'VM_NOT_FOUND') {
      return { code: status.NOT_FOUND, details: (error as Error).message };
    }
    this.log.error(
      `${what} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
    );
    // Most likely the database is unreachable: the agent retries with backoff.
    return { code: status.UNAVAILABLE, details: `${what} could not be handled; retry later` };
  }
}
