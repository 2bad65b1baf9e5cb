import {
  type ChannelCredentials,
  type ChannelOptions,
  type ClientDuplexStream,
  type ClientUnaryCall,
  Metadata,
  type ServiceError,
  type StatusObject,
  status,
} from '@grpc/grpc-js';
import { controlv1, PROTOCOL_VERSION } from '@hangar/proto';
import type { VmEvent } from '@hangar/vmm-core';
import { loadHostId, saveHostId } from './host-id-store.js';
import type { AgentInventory } from './inventory.js';
import { toHeartbeat, toMetricsBatch, toProtoVmEvent } from './reports.js';

/** The pino-like logger the session writes to (pino's `Logger` fits). */
export interface SessionLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** How the agent joins the control plane and keeps reporting to it. */
export interface ControlSessionOptions {
  /** host:port of the control plane's AgentGateway. */
  address: string;
  /** mTLS credentials from `agentChannelCredentials`, or `credentials.createInsecure()` on loopback. */
  credentials: ChannelCredentials;
  /** Probed again on every Register, so a re-join reports current capacity and pools. */
  hostInfo: () => Promise<controlv1.HostInfo>;
  joinToken?: string;
  inventory: AgentInventory;
  /** Used until the gateway sends its own settings (RegisterResponse / SettingsUpdate). */
  heartbeatIntervalMs: number;
  metricsIntervalMs: number;
  /** Most events + metrics batches kept unacknowledged; beyond it the oldest metrics go first, then the oldest events. */
  bufferLimit: number;
  logger: SessionLogger;
  /** Where the host id the gateway assigned is kept, so a restarted agent re-joins as the same host. */
  stateFile?: string;
  /** Reconnect backoff: exponential from `initialDelayMs`, capped at `maxDelayMs`, with jitter. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number };
  /** Deadline of one Register call (default 10 s). */
  registerTimeoutMs?: number;
  /**
   * The stream is treated as dead when the gateway has said nothing (no ack, ping or settings)
   * for this long although heartbeats went out: a half-open TCP connection would otherwise keep
   * the agent "connected" forever. Default: 3 heartbeat intervals + 2 s. 0 disables the check.
   */
  silenceTimeoutMs?: number;
  /** How long `stop()` waits for the gateway to close the stream after the agent half-closes it (default 2 s). */
  stopGraceMs?: number;
  /** Extra gRPC channel options (e.g. `grpc.ssl_target_name_override`). */
  channelOptions?: ChannelOptions;
}

/** Counts of buffered or dropped reports, split by kind. */
export interface ReportCounts {
  events: number;
  metrics: number;
}

/** What `ControlSession.stats()` reports. */
export interface ControlSessionStats {
  connected: boolean;
  hostId: string | undefined;
  /** Sessions that got as far as their first heartbeat. */
  sessionsOpened: number;
  /** Sessions opened after the first one, i.e. successful reconnects. */
  reconnects: number;
  /** Register or Session attempts that failed. */
  failedAttempts: number;
  /** Reports kept until the gateway acknowledges them (sent-but-unacked included). */
  buffered: ReportCounts;
  /** Reports lost to the buffer limit since start. */
  dropped: ReportCounts;
  /** Of `dropped`, how many the gateway has not yet acknowledged a DroppedReport for. */
  unreportedDropped: ReportCounts;
  lastAck: { sequence: number; at: Date } | undefined;
  lastError: string | undefined;
  heartbeatIntervalMs: number;
  metricsIntervalMs: number;
}

type ReportBody = NonNullable<controlv1.SessionRequest['body']>;
type SessionStream = ClientDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>;

/** An event or metrics batch kept until an Ack covers it. */
interface PendingReport {
  kind: 'event' | 'metrics';
  body: ReportBody;
  /** The stream it went out on and its sequence there; undefined until sent on the current stream. */
  sentOn: Link | undefined;
  sequence: number;
}

/** One Session stream. Sequences restart at 1 on every stream (control.proto). */
interface Link {
  id: number;
  stream: SessionStream;
  sequence: number;
  /** The first heartbeat went out: reports may follow. */
  open: boolean;
  closed: boolean;
  closedPromise: Promise<void>;
  inbound: number;
  lastInboundAt: number;
  heartbeatInFlight: boolean;
  droppedInFlight: { sequence: number; events: number; metrics: number } | undefined;
}

const MIN_INTERVAL_MS = 100;
const MAX_INTERVAL_MS = 3_600_000;
/** Register errors that retrying soon cannot fix (bad token, unsupported protocol): retry at the slowest pace. */
const PERMANENT_CODES = new Set<number>([
  status.UNAUTHENTICATED,
  status.PERMISSION_DENIED,
  status.FAILED_PRECONDITION,
  status.INVALID_ARGUMENT,
  status.UNIMPLEMENTED,
]);

/** A Register the agent cannot use (no host id, another protocol version). */
class RegistrationRejected extends Error {
  override readonly name = 'RegistrationRejected';
}

/**
 * The agent's side of `hangar.control.v1.AgentGateway`: Register, then one long-lived Session
 * carrying heartbeats (the full inventory), VM events as they happen and metrics batches.
 *
 * Delivery is at-least-once: events and metrics stay in a bounded buffer until the gateway
 * acknowledges them, are re-sent in order on the next Session after a break, and whatever the
 * buffer limit forced out is counted and reported in a DroppedReport — nothing vanishes
 * silently. Heartbeats are never buffered: the next one supersedes a lost one.
 */
export class ControlSession {
  private readonly log: SessionLogger;
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly registerTimeoutMs: number;
  private readonly stopGraceMs: number;
  private heartbeatIntervalMs: number;
  private metricsIntervalMs: number;

  private client: controlv1.AgentGatewayClient | undefined;
  private hostId: string | undefined;
  private started = false;
  private stopping = false;
  private stopPromise: Promise<void> | undefined;
  private loop: Promise<void> | undefined;
  private unsubscribe: (() => void) | undefined;
  private registerCall: ClientUnaryCall | undefined;
  private wakeUp: (() => void) | undefined;

  private link: Link | undefined;
  private linkCount = 0;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private metricsTimer: NodeJS.Timeout | undefined;
  private metricsInFlight = false;
  private connectWaiters: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];

  private pending: PendingReport[] = [];
  private readonly droppedTotal: ReportCounts = { events: 0, metrics: 0 };
  private readonly droppedUnreported: ReportCounts = { events: 0, metrics: 0 };
  private sessionsOpened = 0;
  private failedAttempts = 0;
  private lastAck: { sequence: number; at: Date } | undefined;
  private lastError: string | undefined;

  constructor(private readonly options: ControlSessionOptions) {
    if (!Number.isInteger(options.bufferLimit) || options.bufferLimit < 1) {
      throw new RangeError(`bufferLimit must be a positive integer, got ${options.bufferLimit}`);
    }
    this.log = options.logger;
    this.initialDelayMs = Math.max(10, options.reconnect?.initialDelayMs ?? 250);
    this.maxDelayMs = Math.max(this.initialDelayMs, options.reconnect?.maxDelayMs ?? 10_000);
    this.registerTimeoutMs = options.registerTimeoutMs ?? 10_000;
    this.stopGraceMs = options.stopGraceMs ?? 2_000;
    this.heartbeatIntervalMs = clampInterval(options.heartbeatIntervalMs);
    this.metricsIntervalMs = clampInterval(options.metricsIntervalMs);
  }

  /**
   * Starts reporting: subscribes to VM events and metrics at once (so nothing from before the
   * first connection is lost), then registers and keeps the Session open in the background,
   * reconnecting with backoff. Resolves without waiting for the gateway: an agent must serve its
   * guests even while the control plane is away. Use `whenConnected()` to wait.
   */
  async start(): Promise<void> {
    if (this.started) throw new Error('ControlSession already started');
    this.started = true;
    if (this.options.stateFile) {
      this.hostId = await loadHostId(this.options.stateFile, (err) =>
        this.log.warn(
          { err: describe(err), file: this.options.stateFile },
          'ignoring unreadable host id file',
        ),
      );
    }
    this.client = new controlv1.AgentGatewayClient(this.options.address, this.options.credentials, {
      // grpc-js keeps its own connection backoff (up to 120 s by default); keep it in step with ours
      // so a gateway that comes back is found within maxDelayMs.
      'grpc.initial_reconnect_backoff_ms': this.initialDelayMs,
      'grpc.max_reconnect_backoff_ms': this.maxDelayMs,
      ...this.options.channelOptions,
    });
    this.unsubscribe = this.options.inventory.onEvent((event) => this.onVmEvent(event));
    this.startMetricsTimer();
    this.loop = this.runLoop().catch((err: unknown) => {
      this.log.error({ err: describe(err) }, 'control-plane session loop failed');
    });
  }

  /**
   * Ends the Session cleanly (half-close, then wait up to `stopGraceMs` for the gateway's status),
   * stops every timer and closes the channel. Unacknowledged reports are logged, not kept.
   */
  stop(): Promise<void> {
    if (!this.started) return Promise.resolve();
    this.stopPromise ??= this.shutdown();
    return this.stopPromise;
  }

  /** Resolves once a Session is open (at once if it is); rejects after `timeoutMs` or on stop. */
  whenConnected(timeoutMs = 30_000): Promise<void> {
    if (this.link?.open && !this.link.closed) return Promise.resolve();
    if (this.stopping) return Promise.reject(new Error('control session stopped'));
    return new Promise<void>((resolve, reject) => {
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err: Error) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      const timer = setTimeout(() => {
        this.connectWaiters = this.connectWaiters.filter((w) => w !== waiter);
        reject(
          new Error(`no control-plane session within ${timeoutMs} ms (${this.lastError ?? 'no error yet'})`),
        );
      }, timeoutMs);
      this.connectWaiters.push(waiter);
    });
  }

  /** A snapshot of the session's health for logs, health checks and tests. */
  stats(): ControlSessionStats {
    const buffered: ReportCounts = { events: 0, metrics: 0 };
    for (const p of this.pending) buffered[p.kind === 'event' ? 'events' : 'metrics']++;
    return {
      connected: Boolean(this.link?.open && !this.link.closed),
      hostId: this.hostId,
      sessionsOpened: this.sessionsOpened,
      reconnects: Math.max(0, this.sessionsOpened - 1),
      failedAttempts: this.failedAttempts,
      buffered,
      dropped: { ...this.droppedTotal },
      unreportedDropped: { ...this.droppedUnreported },
      lastAck: this.lastAck ? { ...this.lastAck } : undefined,
      lastError: this.lastError,
      heartbeatIntervalMs: this.heartbeatIntervalMs,
      metricsIntervalMs: this.metricsIntervalMs,
    };
  }

  // --- connection loop ---

  private async runLoop(): Promise<void> {
    let attempt = 0;
    while (!this.stopping) {
      let healthy = false;
      let permanent = false;
      try {
        const response = await this.register();
        await this.adoptRegistration(response);
        healthy = await this.runSession();
      } catch (err) {
        if (this.stopping) break;
        this.failedAttempts++;
        this.lastError = describe(err);
        permanent = isPermanent(err);
        const fields = { err: this.lastError, address: this.options.address, attempt: attempt + 1 };
        if (permanent) this.log.error(fields, 'the control plane refused this agent');
        else this.log.warn(fields, 'cannot reach the control plane');
      }
      if (this.stopping) break;
      // A session that carried traffic resets the backoff; a refused or silent one does not.
      attempt = healthy ? 0 : attempt + 1;
      const delayMs = permanent ? this.maxDelayMs : this.backoffDelay(attempt);
      this.log.debug({ delayMs, attempt }, 'reconnecting to the control plane');
      await this.pause(delayMs);
    }
  }

  /** Exponential backoff with jitter: a fleet of agents must not reconnect in lockstep. */
  private backoffDelay(attempt: number): number {
    const base = Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** Math.max(0, attempt - 1));
    return Math.round(base / 2 + Math.random() * (base / 2));
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakeUp = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeUp = done;
    });
  }

  private async register(): Promise<controlv1.RegisterResponse> {
    const host = await this.options.hostInfo();
    const client = this.client;
    if (this.stopping || !client) throw new Error('control session stopped');
    const request: controlv1.RegisterRequest = {
      protocolVersion: PROTOCOL_VERSION,
      joinToken: this.options.joinToken ?? '',
      host,
      hostId: this.hostId ?? '',
    };
    return new Promise<controlv1.RegisterResponse>((resolve, reject) => {
      this.registerCall = client.register(
        request,
        new Metadata(),
        { deadline: Date.now() + this.registerTimeoutMs },
        (err, response) => {
          this.registerCall = undefined;
          if (err) reject(err);
          else resolve(response);
        },
      );
    });
  }

  private async adoptRegistration(response: controlv1.RegisterResponse): Promise<void> {
    if (response.protocolVersion !== 0 && response.protocolVersion !== PROTOCOL_VERSION) {
      throw new RegistrationRejected(
        `the control plane speaks protocol ${response.protocolVersion}, this agent ${PROTOCOL_VERSION}`,
      );
    }
    if (!response.hostId) throw new RegistrationRejected('the control plane returned no host id');
    if (response.hostId !== this.hostId) {
      if (this.hostId) {
        this.log.warn(
          { previous: this.hostId, hostId: response.hostId },
          'the control plane assigned a new host id',
        );
      }
      this.hostId = response.hostId;
      if (this.options.stateFile) {
        // A failed write costs a new id after the next restart, not the session: log and go on.
        await saveHostId(this.options.stateFile, response.hostId).catch((err: unknown) =>
          this.log.error({ err: describe(err), file: this.options.stateFile }, 'cannot persist the host id'),
        );
      }
    }
    this.log.info(
      { hostId: this.hostId, address: this.options.address },
      'registered with the control plane',
    );
    this.applySettings(response.settings, 'register');
  }

  /** Opens one Session and resolves when it ends; true when it carried traffic both ways. */
  private async runSession(): Promise<boolean> {
    const client = this.client;
    if (this.stopping || !client) return false;
    const stream = client.session();
    let markClosed!: () => void;
    const link: Link = {
      id: ++this.linkCount,
      stream,
      sequence: 0,
      open: false,
      closed: false,
      closedPromise: new Promise<void>((resolve) => {
        markClosed = resolve;
      }),
      inbound: 0,
      lastInboundAt: Date.now(),
      heartbeatInFlight: false,
      droppedInFlight: undefined,
    };
    const close = (reason: string) => {
      if (link.closed) return;
      link.closed = true;
      this.onLinkClosed(link, reason);
      markClosed();
    };
    stream.on('data', (notice: controlv1.SessionResponse) => this.onNotice(link, notice));
    stream.on('error', (err: ServiceError) => close(describe(err)));
    stream.on('status', (s: StatusObject) => close(`stream ended: ${status[s.code] ?? s.code} ${s.details}`));
    this.link = link;

    try {
      // Never an empty stand-in: a heartbeat without the VMs would tell the api they are gone.
      const heartbeat = toHeartbeat(await this.options.inventory.snapshot());
      if (!link.closed && !this.stopping) {
        this.write(link, { $case: 'heartbeat', value: heartbeat });
        link.open = true;
        link.lastInboundAt = Date.now();
        this.sessionsOpened++;
        this.log.info(
          { hostId: this.hostId, session: link.id, resending: this.pending.length },
          this.sessionsOpened > 1 ? 'control-plane session restored' : 'control-plane session open',
        );
        this.flush(link);
        this.startHeartbeatTimer(link);
        for (const w of this.connectWaiters.splice(0)) w.resolve();
      } else if (!link.closed) {
        stream.cancel();
      }
    } catch (err) {
      this.lastError = describe(err);
      this.log.warn({ err: this.lastError }, 'cannot take the inventory for the first heartbeat');
      stream.cancel();
    }
    await link.closedPromise;
    if (!link.open && !this.stopping) {
      this.failedAttempts++;
      this.lastError ??= 'session closed before it opened';
    }
    return link.open && link.inbound > 0;
  }

  private onLinkClosed(link: Link, reason: string): void {
    if (this.link === link) {
      this.link = undefined;
      this.stopHeartbeatTimer();
    }
    let unsent = 0;
    for (const p of this.pending) {
      if (p.sentOn === link) {
        p.sentOn = undefined;
        p.sequence = 0;
        unsent++;
      }
    }
    link.droppedInFlight = undefined;
    if (link.open) {
      this.lastError = reason;
      const fields = { session: link.id, reason, unacknowledged: unsent, buffered: this.pending.length };
      if (this.stopping) this.log.info(fields, 'control-plane session closed');
      else this.log.warn(fields, 'control-plane session lost; buffering reports until it is back');
    }
  }

  // --- sending ---

  private write(link: Link, body: ReportBody): number | undefined {
    if (link.closed) return undefined;
    const sequence = ++link.sequence;
    try {
      link.stream.write({ hostId: this.hostId ?? '', sequence, body });
    } catch (err) {
      // A write racing the stream's end: the report stays pending and goes out on the next session.
      this.log.debug({ err: describe(err) }, 'write on a closing session');
      return undefined;
    }
    return sequence;
  }

  /** Sends every report not yet on this stream, in arrival order, then a DroppedReport if one is owed. */
  private flush(link: Link): void {
    if (!link.open || link.closed) return;
    for (const p of this.pending) {
      if (p.sentOn === link) continue;
      const sequence = this.write(link, p.body);
      if (sequence === undefined) return;
      p.sentOn = link;
      p.sequence = sequence;
    }
    const { events, metrics } = this.droppedUnreported;
    if ((events > 0 || metrics > 0) && !link.droppedInFlight) {
      const sequence = this.write(link, {
        $case: 'dropped',
        value: { eventsDropped: events, metricsDropped: metrics },
      });
      if (sequence !== undefined) {
        link.droppedInFlight = { sequence, events, metrics };
        this.log.warn(
          { eventsDropped: events, metricsDropped: metrics },
          'reported reports lost to the buffer limit',
        );
      }
    }
  }

  private enqueue(kind: PendingReport['kind'], body: ReportBody): void {
    if (this.stopping) return;
    this.pending.push({ kind, body, sentOn: undefined, sequence: 0 });
    while (this.pending.length > this.options.bufferLimit) this.evictOne();
    const link = this.link;
    if (link?.open) this.flush(link);
  }

  /** Metrics are cheaper to lose than events (the next batch carries cumulative counters). */
  private evictOne(): void {
    let index = this.pending.findIndex((p) => p.kind === 'metrics');
    if (index < 0) index = 0;
    const [evicted] = this.pending.splice(index, 1);
    if (!evicted) return;
    const key = evicted.kind === 'event' ? 'events' : 'metrics';
    this.droppedTotal[key]++;
    this.droppedUnreported[key]++;
  }

  private onVmEvent(event: VmEvent): void {
    try {
      this.enqueue('event', { $case: 'vmEvent', value: toProtoVmEvent(event) });
    } catch (err) {
      this.log.error({ err: describe(err), vmId: event.vmId }, 'cannot queue a VM event');
    }
  }

  // --- receiving ---

  private onNotice(link: Link, notice: controlv1.SessionResponse): void {
    link.inbound++;
    link.lastInboundAt = Date.now();
    const body = notice.notice;
    switch (body?.$case) {
      case 'ack':
        this.onAck(link, body.value.upToSequence);
        break;
      case 'settingsUpdate':
        this.applySettings(body.value.settings, 'gateway');
        break;
      case 'ping':
        void this.sendHeartbeat(link);
        break;
      default:
        this.log.debug({ session: link.id }, 'ignoring an unknown notice from the control plane');
    }
  }

  private onAck(link: Link, upTo: number): void {
    this.lastAck = { sequence: upTo, at: new Date() };
    this.pending = this.pending.filter((p) => !(p.sentOn === link && p.sequence <= upTo));
    const inFlight = link.droppedInFlight;
    if (inFlight && inFlight.sequence <= upTo) {
      this.droppedUnreported.events -= inFlight.events;
      this.droppedUnreported.metrics -= inFlight.metrics;
      link.droppedInFlight = undefined;
      // Drops that happened after that report was sent are owed in a new one.
      this.flush(link);
    }
  }

  private applySettings(settings: controlv1.AgentSettings | undefined, source: 'register' | 'gateway'): void {
    if (!settings) return;
    const heartbeat = settings.heartbeatIntervalMs ? clampInterval(settings.heartbeatIntervalMs) : undefined;
    const metrics = settings.metricsIntervalMs ? clampInterval(settings.metricsIntervalMs) : undefined;
    let changed = false;
    if (heartbeat !== undefined && heartbeat !== this.heartbeatIntervalMs) {
      this.heartbeatIntervalMs = heartbeat;
      changed = true;
      if (this.link?.open && this.heartbeatTimer) this.startHeartbeatTimer(this.link);
    }
    if (metrics !== undefined && metrics !== this.metricsIntervalMs) {
      this.metricsIntervalMs = metrics;
      changed = true;
      if (this.metricsTimer) this.startMetricsTimer();
    }
    if (changed) {
      this.log.info(
        { source, heartbeatIntervalMs: this.heartbeatIntervalMs, metricsIntervalMs: this.metricsIntervalMs },
        'adopted settings from the control plane',
      );
    }
  }

  // --- timers ---

  private startHeartbeatTimer(link: Link): void {
    this.stopHeartbeatTimer();
    this.heartbeatTimer = setInterval(() => this.onHeartbeatTick(link), this.heartbeatIntervalMs);
  }

  private stopHeartbeatTimer(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  private onHeartbeatTick(link: Link): void {
    if (link.closed || !link.open) return;
    const silenceMs = this.options.silenceTimeoutMs ?? 3 * this.heartbeatIntervalMs + 2_000;
    const silentFor = Date.now() - link.lastInboundAt;
    if (silenceMs > 0 && silentFor > silenceMs) {
      this.log.warn(
        { session: link.id, silentForMs: silentFor },
        'the control plane stopped answering; reconnecting',
      );
      link.stream.cancel();
      return;
    }
    void this.sendHeartbeat(link);
  }

  private async sendHeartbeat(link: Link): Promise<void> {
    // One snapshot at a time: a slow inventory must not pile up heartbeats (a Ping during one is answered by it).
    if (link.heartbeatInFlight) return;
    link.heartbeatInFlight = true;
    try {
      const heartbeat = toHeartbeat(await this.options.inventory.snapshot());
      if (link.open && !link.closed) this.write(link, { $case: 'heartbeat', value: heartbeat });
    } catch (err) {
      this.log.warn({ err: describe(err) }, 'skipping a heartbeat: cannot take the inventory');
    } finally {
      link.heartbeatInFlight = false;
    }
  }

  private startMetricsTimer(): void {
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    this.metricsTimer = setInterval(() => void this.sampleMetrics(), this.metricsIntervalMs);
  }

  private async sampleMetrics(): Promise<void> {
    if (this.metricsInFlight || this.stopping) return;
    this.metricsInFlight = true;
    try {
      const sample = await this.options.inventory.sampleMetrics();
      this.enqueue('metrics', { $case: 'metrics', value: toMetricsBatch(sample) });
    } catch (err) {
      this.log.warn({ err: describe(err) }, 'skipping a metrics batch: sampling failed');
    } finally {
      this.metricsInFlight = false;
    }
  }

  // --- shutdown ---

  private async shutdown(): Promise<void> {
    this.stopping = true;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    this.metricsTimer = undefined;
    this.stopHeartbeatTimer();
    this.wakeUp?.();
    this.registerCall?.cancel();
    const link = this.link;
    if (link && !link.closed) {
      if (link.open) {
        // Half-close so the gateway sees a clean end (it answers with OK), not a cancelled call.
        link.stream.end();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          link.closedPromise,
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, this.stopGraceMs);
          }),
        ]);
        clearTimeout(timer);
      }
      if (!link.closed) link.stream.cancel();
    }
    await this.loop;
    for (const w of this.connectWaiters.splice(0)) w.reject(new Error('control session stopped'));
    if (this.pending.length > 0) {
      this.log.info({ unacknowledged: this.pending.length }, 'stopping with unacknowledged reports');
    }
    this.client?.close();
    this.client = undefined;
  }
}

function clampInterval(ms: number): number {
  if (!Number.isFinite(ms)) return MIN_INTERVAL_MS;
  return Math.min(MAX_INTERVAL_MS, Math.max(MIN_INTERVAL_MS, Math.round(ms)));
}

function isPermanent(err: unknown): boolean {
  if (err instanceof RegistrationRejected) return true;
  const code = (err as Partial<ServiceError> | undefined)?.code;
  return typeof code === 'number' && PERMANENT_CODES.has(code);
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as Partial<ServiceError>).code;
    return typeof code === 'number'
      ? `${status[code] ?? code}: ${(err as ServiceError).details ?? err.message}`
      : err.message;
  }
  return String(err);
}
