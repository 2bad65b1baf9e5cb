import { createConnection, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  QmpConnectError,
  type QmpDisconnectedError,
  type QmpProtocolError,
  QmpTimeoutError,
} from './errors.js';
import { type QemuVersion, type QmpEvent, type QmpGreeting, QmpProtocol } from './protocol.js';

/**
 * Reply timeouts per command, in milliseconds. They bound how long QEMU may take to *answer*, not
 * how long the work takes: `migrate` and `device_del` return once started, progress and completion
 * come as events. `query-*` commands not listed here get {@link QMP_QUERY_TIMEOUT_MS}.
 */
export const QMP_COMMAND_TIMEOUTS_MS: Readonly<Record<string, number>> = Object.freeze({
  qmp_capabilities: 5_000,
  stop: 5_000,
  cont: 5_000,
  system_powerdown: 5_000,
  system_reset: 5_000,
  quit: 10_000,
  migrate: 10_000,
  'migrate-incoming': 10_000,
  migrate_cancel: 10_000,
  'migrate-set-capabilities': 5_000,
  'migrate-set-parameters': 5_000,
  device_add: 10_000,
  device_del: 10_000,
  netdev_add: 10_000,
  netdev_del: 10_000,
  // Opening an image on network storage (NFS, Ceph) can stall for a while before failing.
  'blockdev-add': 30_000,
  'blockdev-del': 30_000,
  // Creates and opens the overlay file, then drains in-flight guest I/O before switching.
  'blockdev-snapshot-sync': 60_000,
  // HMP commands such as `savevm` or `info mtree` can be slow and are used for diagnostics only.
  'human-monitor-command': 60_000,
});

/** Reply timeout for `query-*` commands absent from {@link QMP_COMMAND_TIMEOUTS_MS}. */
export const QMP_QUERY_TIMEOUT_MS = 5_000;

/** Options shared by {@link QmpMonitor.connect} and the constructor. */
export interface QmpMonitorOptions {
  /** Reply timeout for commands with no entry in the table. Default 10 s. */
  defaultTimeoutMs?: number;
  /** Per-command overrides, taking precedence over {@link QMP_COMMAND_TIMEOUTS_MS}. */
  commandTimeoutsMs?: Readonly<Record<string, number>>;
  /** The socket path, for messages; set by `connect`. */
  socketPath?: string;
}

/** Options for {@link QmpMonitor.connect}. */
export interface QmpConnectOptions extends QmpMonitorOptions {
  /** How long to keep retrying while the socket does not exist or refuses. Default 10 s. */
  connectTimeoutMs?: number;
  /** Pause between connection attempts. Default 50 ms. */
  retryIntervalMs?: number;
  /** How long to wait for the greeting once connected. Default 10 s. */
  greetingTimeoutMs?: number;
}

/** Per-call options of {@link QmpMonitor.execute}. */
export interface QmpCallOptions {
  /** Overrides the table timeout for this call only. */
  timeoutMs?: number;
}

/** Options for {@link QmpMonitor.waitForEvent}. */
export interface QmpWaitForEventOptions {
  /** Only an event for which this returns true resolves the wait (e.g. matching a device id). */
  predicate?: (event: QmpEvent) => boolean;
  timeoutMs: number;
  /** Aborting rejects the wait with the signal's reason. */
  signal?: AbortSignal;
  /** The command the wait belongs to, reported in the {@link QmpTimeoutError}. */
  command?: string;
}

/** A wait for an event created before the command that triggers it; see {@link QmpMonitor.expectEvent}. */
export interface QmpEventExpectation {
  /** Resolves with the event; rejects on timeout, disconnect or `cancel()`. */
  readonly promise: Promise<QmpEvent>;
  /** Stops waiting (the promise rejects with an `AbortError`); call it when the triggering command failed. */
  cancel(): void;
}

/** Receives events; a handler that throws is a bug and surfaces as an uncaught exception. */
export type QmpEventHandler = (event: QmpEvent) => void;

/** Receives the reason once the connection is gone. */
export type QmpDisconnectHandler = (reason: QmpDisconnectedError) => void;

/** Receives protocol errors, fatal (followed by the disconnect) or not (a reply for an unknown id). */
export type QmpProtocolErrorHandler = (error: QmpProtocolError) => void;

const RETRYABLE_CONNECT_ERRORS = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

/**
 * One QMP connection to one QEMU process: connects (waiting for QEMU to create the socket),
 * applies per-command timeouts, routes events to subscribers and reports the disconnect.
 *
 * There is no reconnect: QEMU serves one monitor client at a time and a lost connection usually
 * means QEMU exited. Callers that want to re-attach (an agent restart) call `connect` again and
 * then read the state from QEMU rather than relying on events missed in between.
 */
export class QmpMonitor {
  /** The socket this monitor is connected to, when known. */
  readonly socketPath: string | undefined;
  /**
   * Resolves (never rejects) with the reason once the connection is gone, whoever closed it.
   */
  readonly disconnected: Promise<QmpDisconnectedError>;

  private readonly protocol: QmpProtocol;
  private readonly defaultTimeoutMs: number;
  private readonly commandTimeoutsMs: Readonly<Record<string, number>>;
  private readonly eventHandlers = new Map<string, Set<QmpEventHandler>>();
  private readonly disconnectHandlers = new Set<QmpDisconnectHandler>();
  private readonly protocolErrorHandlers = new Set<QmpProtocolErrorHandler>();

  /**
   * Wraps an open protocol connection. Most callers want {@link QmpMonitor.connect}; this exists
   * for streams that are not a unix socket path (e.g. a socket pair or a test double).
   */
  constructor(protocol: QmpProtocol, options: QmpMonitorOptions = {}) {
    this.protocol = protocol;
    this.socketPath = options.socketPath;
    this.defaultTimeoutMs = options.defaultTimeoutMs ?? 10_000;
    this.commandTimeoutsMs = { ...QMP_COMMAND_TIMEOUTS_MS, ...options.commandTimeoutsMs };
    protocol.on('event', (event) => this.dispatchEvent(event));
    protocol.on('error', (error) => {
      for (const handler of [...this.protocolErrorHandlers]) callIsolated(() => handler(error));
    });
    this.disconnected = new Promise((resolve) => {
      const alreadyClosed = protocol.closeReason;
      if (alreadyClosed !== undefined) {
        resolve(alreadyClosed);
        return;
      }
      protocol.once('close', (reason) => {
        resolve(reason);
        for (const handler of [...this.disconnectHandlers]) callIsolated(() => handler(reason));
        this.disconnectHandlers.clear();
      });
    });
  }

  /**
   * Connects to QEMU's QMP unix socket and negotiates capabilities. While the socket does not
   * exist yet or refuses connections (QEMU creates it a moment after spawn), retries every
   * `retryIntervalMs` until `connectTimeoutMs` has passed, then rejects with {@link QmpConnectError}.
   */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpMonitor> {
    const socket = await connectWithRetry(
      socketPath,
      options.connectTimeoutMs ?? 10_000,
      options.retryIntervalMs ?? 50,
    );
    const protocol = await QmpProtocol.open(socket, {
      greetingTimeoutMs: options.greetingTimeoutMs ?? 10_000,
      capabilitiesTimeoutMs:
        options.commandTimeoutsMs?.qmp_capabilities ?? QMP_COMMAND_TIMEOUTS_MS.qmp_capabilities,
    });
    return new QmpMonitor(protocol, { ...options, socketPath });
  }

  /** QEMU's version, from the greeting. */
  get qemuVersion(): QemuVersion {
    return this.protocol.qemuVersion;
  }

  /** The greeting QEMU sent. */
  get greeting(): QmpGreeting {
    return this.protocol.greeting;
  }

  /** True once the connection is gone. */
  get closed(): boolean {
    return this.protocol.closed;
  }

  /** The reply timeout `execute` applies to `command` when the call gives none. */
  timeoutFor(command: string): number {
    const listed = this.commandTimeoutsMs[command];
    if (listed !== undefined) return listed;
    return command.startsWith('query-') ? QMP_QUERY_TIMEOUT_MS : this.defaultTimeoutMs;
  }

  /**
   * Runs one command with its table timeout (or `options.timeoutMs`). The type parameter is
   * unchecked; prefer the typed methods of `QmpCommands`.
   */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    options: QmpCallOptions = {},
  ): Promise<T> {
    return this.protocol.execute<T>(command, args, {
      timeoutMs: options.timeoutMs ?? this.timeoutFor(command),
    });
  }

  /** Calls `handler` for every event named `name` (or every event for `'*'`); returns the unsubscribe function. */
  onEvent(name: string, handler: QmpEventHandler): () => void {
    let handlers = this.eventHandlers.get(name);
    if (handlers === undefined) {
      handlers = new Set();
      this.eventHandlers.set(name, handlers);
    }
    // A wrapper per subscription, so subscribing the same function twice needs two unsubscribes.
    const subscription: QmpEventHandler = (event) => handler(event);
    handlers.add(subscription);
    return () => {
      handlers.delete(subscription);
      if (handlers.size === 0 && this.eventHandlers.get(name) === handlers) this.eventHandlers.delete(name);
    };
  }

  /**
   * Calls `handler` once when the connection is gone (on a microtask if it already is); returns
   * the unsubscribe function.
   */
  onDisconnect(handler: QmpDisconnectHandler): () => void {
    const reason = this.protocol.closeReason;
    if (reason !== undefined) {
      let cancelled = false;
      queueMicrotask(() => {
        if (!cancelled) handler(reason);
      });
      return () => {
        cancelled = true;
      };
    }
    const subscription: QmpDisconnectHandler = (r) => handler(r);
    this.disconnectHandlers.add(subscription);
    return () => {
      this.disconnectHandlers.delete(subscription);
    };
  }

  /**
   * Calls `handler` whenever QEMU sends something this client cannot interpret; for logging, as
   * fatal errors also end the connection (see `onDisconnect`). Returns the unsubscribe function.
   */
  onProtocolError(handler: QmpProtocolErrorHandler): () => void {
    const subscription: QmpProtocolErrorHandler = (error) => handler(error);
    this.protocolErrorHandlers.add(subscription);
    return () => {
      this.protocolErrorHandlers.delete(subscription);
    };
  }

  /**
   * Waits for the next event named `name` that passes `predicate`. The subscription starts when
   * this is called, so call it BEFORE sending the command that causes the event: QEMU may send the
   * event before the command's reply (e.g. `RESUME` before the reply to `cont`). Rejects with
   * {@link QmpTimeoutError}, with {@link QmpDisconnectedError} when the connection goes, or with
   * the abort reason. If the triggering command can fail, prefer {@link QmpMonitor.expectEvent}.
   */
  waitForEvent(name: string, options: QmpWaitForEventOptions): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      const closeReason = this.protocol.closeReason;
      if (closeReason !== undefined) {
        reject(closeReason);
        return;
      }
      const { signal, predicate, timeoutMs, command } = options;
      if (signal?.aborted === true) {
        reject(signal.reason);
        return;
      }
      const cleanup = (): void => {
        clearTimeout(timer);
        unsubscribe();
        offDisconnect();
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        cleanup();
        reject(signal?.reason);
      };
      const unsubscribe = this.onEvent(name, (event) => {
        let matches: boolean;
        try {
          matches = predicate === undefined || predicate(event);
        } catch (err) {
          cleanup();
          reject(err);
          return;
        }
        if (!matches) return;
        cleanup();
        resolve(event);
      });
      const offDisconnect = this.onDisconnect((reason) => {
        cleanup();
        reject(reason);
      });
      const timer = setTimeout(() => {
        cleanup();
        const forCommand = command === undefined ? '' : ` after '${command}'`;
        reject(
          new QmpTimeoutError(`no QMP event ${name}${forCommand} within ${timeoutMs} ms`, {
            event: name,
            timeoutMs,
            ...(command === undefined ? {} : { command }),
          }),
        );
      }, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Starts waiting for an event before the command that triggers it is sent:
   *
   * ```ts
   * const deleted = monitor.expectEvent('DEVICE_DELETED', { predicate: (e) => e.data.device === id, timeoutMs });
   * try {
   *   await monitor.execute('device_del', { id });
   * } catch (err) {
   *   deleted.cancel();
   *   throw err;
   * }
   * await deleted.promise;
   * ```
   *
   * Unlike a bare {@link QmpMonitor.waitForEvent} promise, an expectation that is cancelled or
   * never awaited does not cause an unhandled rejection.
   */
  expectEvent(name: string, options: Omit<QmpWaitForEventOptions, 'signal'>): QmpEventExpectation {
    const controller = new AbortController();
    const promise = this.waitForEvent(name, { ...options, signal: controller.signal });
    promise.catch(() => {});
    return { promise, cancel: () => controller.abort() };
  }

  /** Closes the connection (QEMU keeps running); resolves once the socket is closed. */
  close(): Promise<void> {
    return this.protocol.close();
  }

  private dispatchEvent(event: QmpEvent): void {
    for (const key of [event.event, '*']) {
      const handlers = this.eventHandlers.get(key);
      if (handlers === undefined) continue;
      for (const handler of [...handlers]) callIsolated(() => handler(event));
    }
  }
}

// One subscriber's bug must not keep the others from their event; it still surfaces, like a throwing
// EventEmitter listener would.
function callIsolated(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
}

async function connectWithRetry(
  socketPath: string,
  timeoutMs: number,
  retryIntervalMs: number,
): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  let attempts = 0;
  for (;;) {
    attempts += 1;
    try {
      return await connectOnce(socketPath);
    } catch (err) {
      const code = errnoCode(err);
      if (code === undefined || !RETRYABLE_CONNECT_ERRORS.has(code)) {
        throw new QmpConnectError(`cannot connect to QMP socket ${socketPath}: ${describe(err)}`, {
          socketPath,
          timeoutMs,
          attempts,
          cause: err,
        });
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new QmpConnectError(
          `QMP socket ${socketPath} not available after ${timeoutMs} ms (${attempts} attempts, last error ${code})`,
          { socketPath, timeoutMs, attempts, cause: err },
        );
      }
      await sleep(Math.min(retryIntervalMs, remaining));
    }
  }
}

function connectOnce(socketPath: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    const onError = (err: Error): void => reject(err);
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

function errnoCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null || !('code' in err)) return undefined;
  return typeof err.code === 'string' ? err.code : undefined;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
