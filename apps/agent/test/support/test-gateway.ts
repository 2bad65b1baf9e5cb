import {
  Server,
  ServerCredentials,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type sendUnaryData,
  status,
} from '@grpc/grpc-js';
import { controlv1, PROTOCOL_VERSION } from '@hangar/proto';
import { mtlsServerCredentials, type TlsMaterial } from '../../src/tls/credentials.js';
import { type PeerIdentityCheck, verifyPeerHostName } from '../../src/tls/peer-identity.js';

type ReportBody = NonNullable<controlv1.SessionRequest['body']>;
type ReportValue<K extends ReportBody['$case']> = Extract<ReportBody, { $case: K }>['value'];

/** One Register call as the gateway saw it. */
export interface RecordedRegister {
  at: number;
  request: controlv1.RegisterRequest;
  /** With TLS: whether the client certificate names the host the request claims. */
  identity: PeerIdentityCheck | undefined;
  /** The error the gateway answered with, if it refused. */
  refused: string | undefined;
  hostId: string | undefined;
}

/** One SessionRequest as the gateway received it. */
export interface RecordedReport {
  at: number;
  /** 1 for the first Session the gateway accepted, 2 for the next, ... */
  session: number;
  request: controlv1.SessionRequest;
}

/** Options of {@link TestGateway.start}. */
export interface TestGatewayOptions {
  /** mTLS (client certificates required); plaintext without it. */
  tls?: TlsMaterial;
  /** Sent in RegisterResponse. */
  settings?: controlv1.AgentSettings;
  /** Refuse (PERMISSION_DENIED) a Register whose host name the client certificate does not carry. */
  requireVerifiedIdentity?: boolean;
  /** Acknowledge every report at once (default true). */
  ack?: boolean;
}

/**
 * An in-test AgentGateway: a real grpc-js server on 127.0.0.1 that records every Register and
 * report, acknowledges reports, and can cut sessions or refuse connections for a while. It also
 * records protocol violations (first report not a heartbeat, sequences not 1, 2, 3, ...).
 */
export class TestGateway {
  readonly registers: RecordedRegister[] = [];
  readonly reports: RecordedReport[] = [];
  readonly violations: string[] = [];
  /** Sessions whose client half-closed cleanly (agent stop). */
  cleanEnds = 0;
  private server: Server | undefined;
  private readonly streams = new Set<
    ServerDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>
  >();
  private sessions = 0;
  private hostIds = 0;
  private refusing: Promise<void> | undefined;
  private closed = false;

  private constructor(
    private readonly options: TestGatewayOptions,
    private port: number,
  ) {}

  static async start(options: TestGatewayOptions = {}): Promise<TestGateway> {
    const gw = new TestGateway(options, 0);
    gw.port = await gw.listen(0);
    return gw;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Number of Sessions opened so far. */
  get sessionCount(): number {
    return this.sessions;
  }

  /** Sessions open right now. */
  get openSessions(): number {
    return this.streams.size;
  }

  heartbeats(): Array<RecordedReport & { heartbeat: controlv1.Heartbeat }> {
    return this.bodies('heartbeat').map(([r, heartbeat]) => ({ ...r, heartbeat }));
  }

  events(): Array<RecordedReport & { event: controlv1.VmEvent }> {
    return this.bodies('vmEvent').map(([r, event]) => ({ ...r, event }));
  }

  metrics(): Array<RecordedReport & { metrics: controlv1.MetricsBatch }> {
    return this.bodies('metrics').map(([r, metrics]) => ({ ...r, metrics }));
  }

  dropped(): Array<RecordedReport & { dropped: controlv1.DroppedReport }> {
    return this.bodies('dropped').map(([r, dropped]) => ({ ...r, dropped }));
  }

  /** Ends every open Session with UNAVAILABLE, as a gateway restart or a load balancer would. */
  cutSessions(): number {
    const n = this.streams.size;
    for (const call of this.streams)
      call.emit('error', { code: status.UNAVAILABLE, details: 'cut by the test gateway' });
    this.streams.clear();
    return n;
  }

  /**
   * Shuts the listener down (open sessions break, new connections are refused at the TCP level)
   * and listens on the same port again after `ms`. Resolves once it listens again.
   */
  refuseConnections(ms: number): Promise<void> {
    if (this.refusing) throw new Error('already refusing connections');
    this.streams.clear();
    this.server?.forceShutdown();
    this.server = undefined;
    this.refusing = (async () => {
      await new Promise((r) => setTimeout(r, ms));
      if (!this.closed) await this.listen(this.port);
    })().finally(() => {
      this.refusing = undefined;
    });
    return this.refusing;
  }

  /** Pushes new settings down every open Session. */
  pushSettings(settings: controlv1.AgentSettings): void {
    for (const call of this.streams) call.write({ notice: { $case: 'settingsUpdate', value: { settings } } });
  }

  /** Pings every open Session (agents answer with a heartbeat). */
  ping(): void {
    for (const call of this.streams) call.write({ notice: { $case: 'ping', value: { sentAt: new Date() } } });
  }

  /** Polls `fn` until it returns something other than undefined; throws after `timeoutMs`. */
  async waitFor<T>(fn: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = fn();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`test gateway: timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.refusing?.catch(() => undefined);
    this.server?.forceShutdown();
    this.server = undefined;
    this.streams.clear();
  }

  private bodies<K extends ReportBody['$case']>(kind: K): Array<[RecordedReport, ReportValue<K>]> {
    const out: Array<[RecordedReport, ReportValue<K>]> = [];
    for (const r of this.reports) {
      const body = r.request.body;
      if (body?.$case === kind) out.push([r, body.value as ReportValue<K>]);
    }
    return out;
  }

  private async listen(port: number): Promise<number> {
    const server = new Server();
    server.addService(controlv1.AgentGatewayService, {
      register: (call: ServerUnaryCall<controlv1.RegisterRequest, controlv1.RegisterResponse>, cb) =>
        this.onRegister(call, cb),
      session: (call: ServerDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>) =>
        this.onSession(call),
    } satisfies controlv1.AgentGatewayServer);
    const creds = this.options.tls
      ? mtlsServerCredentials(this.options.tls)
      : ServerCredentials.createInsecure();
    const bound = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${port}`, creds, (err, p) => (err ? reject(err) : resolve(p))),
    );
    this.server = server;
    return bound;
  }

  private onRegister(
    call: ServerUnaryCall<controlv1.RegisterRequest, controlv1.RegisterResponse>,
    cb: sendUnaryData<controlv1.RegisterResponse>,
  ): void {
    const request = call.request;
    const hostName = request.host?.hostname ?? '';
    const identity = this.options.tls ? verifyPeerHostName(call, hostName) : undefined;
    const record: RecordedRegister = {
      at: Date.now(),
      request,
      identity,
      refused: undefined,
      hostId: undefined,
    };
    this.registers.push(record);
    if (request.protocolVersion !== PROTOCOL_VERSION) {
      record.refused = `protocol ${request.protocolVersion}`;
      cb({
        code: status.FAILED_PRECONDITION,
        details: `unsupported protocol version ${request.protocolVersion}`,
      });
      return;
    }
    if (this.options.requireVerifiedIdentity && !identity?.verified) {
      record.refused = identity?.verified === false ? identity.reason : 'no identity';
      cb({ code: status.PERMISSION_DENIED, details: `host identity not verified: ${record.refused}` });
      return;
    }
    record.hostId = request.hostId || `host-${++this.hostIds}`;
    cb(null, {
      hostId: record.hostId,
      settings: this.options.settings,
      protocolVersion: PROTOCOL_VERSION,
    });
  }

  private onSession(call: ServerDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>): void {
    const session = ++this.sessions;
    this.streams.add(call);
    let expected = 1;
    call.on('data', (request: controlv1.SessionRequest) => {
      this.reports.push({ at: Date.now(), session, request });
      if (request.sequence !== expected) {
        this.violations.push(`session ${session}: sequence ${request.sequence}, expected ${expected}`);
      }
      if (expected === 1 && request.body?.$case !== 'heartbeat') {
        this.violations.push(`session ${session}: first report is ${request.body?.$case}, not a heartbeat`);
      }
      expected = request.sequence + 1;
      if (this.options.ack !== false && this.streams.has(call)) {
        call.write({ notice: { $case: 'ack', value: { upToSequence: request.sequence } } });
      }
    });
    call.on('end', () => {
      // The agent half-closed: a clean stop. Answer with OK, as the real gateway should.
      if (this.streams.delete(call)) {
        this.cleanEnds++;
        call.end();
      }
    });
    call.on('error', () => this.streams.delete(call));
    call.on('cancelled', () => this.streams.delete(call));
  }
}
