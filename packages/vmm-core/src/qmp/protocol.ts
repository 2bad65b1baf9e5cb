import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { QmpCommandError, QmpDisconnectedError, QmpProtocolError, QmpTimeoutError } from './errors.js';

/** QEMU's version triple, as in the greeting and `query-version`. */
export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

/** The first message QEMU sends on a new QMP connection. */
export interface QmpGreeting {
  version: { qemu: QemuVersion; package: string };
  /** Optional protocol features QEMU offers (e.g. `oob`); this client enables none. */
  capabilities: string[];
}

/** An asynchronous event, e.g. `STOP`, `SHUTDOWN`, `DEVICE_DELETED`, `MIGRATION`. */
export interface QmpEvent<TData extends Record<string, unknown> = Record<string, unknown>> {
  event: string;
  /** `{}` for events QEMU sends without data (`STOP`, `RESUME`). */
  data: TData;
  /** QEMU's wall clock when the event was raised. */
  timestamp: { seconds: number; microseconds: number };
}

/** Options for {@link QmpProtocol.open}. */
export interface QmpOpenOptions {
  /** How long to wait for the greeting. QEMU greets at once unless another client holds the monitor. */
  greetingTimeoutMs?: number;
  /** How long to wait for the reply to `qmp_capabilities`. */
  capabilitiesTimeoutMs?: number;
  /**
   * Receives events from the moment capabilities are negotiated. Events can arrive in the same
   * chunk as the `qmp_capabilities` reply, i.e. before `open()` resolves and a caller could
   * subscribe to `'event'`; without this they would be lost.
   */
  onEvent?: (event: QmpEvent) => void;
}

/** Options for {@link QmpProtocol.execute}. */
export interface QmpExecuteOptions {
  /** Reject with {@link QmpTimeoutError} when no reply arrives in time. Omitted: wait until reply or disconnect. */
  timeoutMs?: number;
}

/** Events of {@link QmpProtocol}. */
export interface QmpProtocolEvents {
  /** An asynchronous QEMU event. */
  event: [event: QmpEvent];
  /**
   * QEMU sent something unintelligible. Emitted only when someone listens (an unheard `'error'`
   * would crash the process); the same error is also the `cause` of the `'close'` reason when it
   * was fatal.
   */
  error: [error: QmpProtocolError];
  /** The connection ended, once, for the given reason. */
  close: [reason: QmpDisconnectedError];
}

interface PendingCommand {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

// A line longer than this is not a QMP message we can use (the schema reply is ~200 KiB); refusing
// it keeps a broken peer from growing our buffer without bound.
const MAX_LINE_CHARS = 16 * 1024 * 1024;
// Ids of timed-out commands whose replies may still come; bounded so a hung QEMU cannot make it grow forever.
const MAX_ABANDONED_IDS = 1024;

/**
 * The QMP wire protocol over one connected stream (a unix socket to QEMU's `-qmp` chardev):
 * greeting, capability negotiation, line-delimited JSON framing, id-matched replies and events.
 *
 * Behaviour on bad input, chosen so that the failure is always visible and never misattributed:
 * - a line that is not a JSON object, or an object that is neither reply nor event: the framing
 *   can no longer be trusted, so the connection is closed; `'error'` is emitted with a
 *   {@link QmpProtocolError} and pending commands reject with {@link QmpDisconnectedError}
 *   (reason `protocol-error`, `cause` the protocol error);
 * - a reply whose id matches no pending command, or that has no id: framing is intact and the
 *   other commands are still matched correctly, so only `'error'` is emitted and the reply dropped;
 * - a late reply to a command that already timed out: ignored silently;
 * - the connection ending in the middle of a line: pending commands reject with
 *   {@link QmpDisconnectedError} (reason `remote-closed`, `cause` a protocol error holding the tail).
 *
 * Replies are not validated here; the typed layer (`QmpCommands`) checks their shape.
 */
export class QmpProtocol extends EventEmitter<QmpProtocolEvents> {
  private readonly stream: Duplex;
  private readonly decoder = new StringDecoder('utf8');
  private readonly pending = new Map<number, PendingCommand>();
  private readonly abandonedIds = new Set<number>();
  private readonly streamClosed: Promise<void>;
  private buffer = '';
  private nextId = 1;
  private greetingValue: QmpGreeting | undefined;
  private greetingWaiter:
    | { resolve: (greeting: QmpGreeting) => void; reject: (error: Error) => void }
    | undefined;
  private closeReasonValue: QmpDisconnectedError | undefined;

  private constructor(stream: Duplex) {
    super();
    this.stream = stream;
    this.streamClosed = stream.closed
      ? Promise.resolve()
      : new Promise((resolve) => stream.once('close', resolve));
    stream.on('data', (chunk: Buffer | string) => this.onData(chunk));
    stream.on('end', () => this.onEnd());
    stream.on('error', (err: Error) =>
      this.teardown(
        new QmpDisconnectedError(`QMP socket error: ${err.message}`, { reason: 'socket-error', cause: err }),
      ),
    );
    stream.on('close', () =>
      this.teardown(new QmpDisconnectedError('QEMU closed the QMP connection', { reason: 'remote-closed' })),
    );
  }

  /**
   * Reads the greeting, negotiates capabilities and resolves to a ready connection. Takes
   * ownership of `stream`: on failure the stream is destroyed and the promise rejects with
   * {@link QmpTimeoutError} (no greeting or no capabilities reply in time),
   * {@link QmpProtocolError} (malformed greeting) or {@link QmpDisconnectedError}.
   */
  static async open(stream: Duplex, options: QmpOpenOptions = {}): Promise<QmpProtocol> {
    const protocol = new QmpProtocol(stream);
    if (options.onEvent !== undefined) protocol.on('event', options.onEvent);
    try {
      await protocol.waitForGreeting(options.greetingTimeoutMs ?? 10_000);
      await protocol.execute('qmp_capabilities', undefined, {
        timeoutMs: options.capabilitiesTimeoutMs ?? 10_000,
      });
    } catch (err) {
      protocol.teardown(
        new QmpDisconnectedError('QMP handshake failed', { reason: 'client-closed', cause: err }),
      );
      throw err;
    }
    return protocol;
  }

  /** The greeting QEMU sent on this connection. */
  get greeting(): QmpGreeting {
    if (this.greetingValue === undefined) {
      throw new Error('unreachable: a QmpProtocol is handed out only after its greeting');
    }
    return this.greetingValue;
  }

  /** QEMU's version from the greeting. */
  get qemuVersion(): QemuVersion {
    return this.greeting.version.qemu;
  }

  /** True once the connection has ended, for whatever reason. */
  get closed(): boolean {
    return this.closeReasonValue !== undefined;
  }

  /** Why the connection ended; undefined while it is open. */
  get closeReason(): QmpDisconnectedError | undefined {
    return this.closeReasonValue;
  }

  /**
   * Sends one command and resolves to its `return` value. The type parameter is not checked
   * at runtime. Rejects with {@link QmpCommandError} (QEMU refused), {@link QmpTimeoutError}
   * or {@link QmpDisconnectedError}.
   */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    options: QmpExecuteOptions = {},
  ): Promise<T> {
    if (this.closeReasonValue !== undefined) return Promise.reject(this.closeReasonValue.forCommand(command));
    const id = this.nextId++;
    const line = `${JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id })}\n`;
    return new Promise<T>((resolve, reject) => {
      const pending: PendingCommand = {
        command,
        resolve: (value) => resolve(value as T),
        reject,
        timer: undefined,
      };
      const { timeoutMs } = options;
      if (timeoutMs !== undefined) {
        pending.timer = setTimeout(() => this.onCommandTimeout(id, timeoutMs), timeoutMs);
      }
      this.pending.set(id, pending);
      // A failed write surfaces as the stream's 'error' event, which rejects every pending command.
      this.stream.write(line);
    });
  }

  /** Closes the connection; pending commands reject with {@link QmpDisconnectedError} (`client-closed`). */
  async close(): Promise<void> {
    this.teardown(new QmpDisconnectedError('QMP connection closed by client', { reason: 'client-closed' }));
    await this.streamClosed;
  }

  private waitForGreeting(timeoutMs: number): Promise<QmpGreeting> {
    if (this.greetingValue !== undefined) return Promise.resolve(this.greetingValue);
    if (this.closeReasonValue !== undefined) return Promise.reject(this.closeReasonValue);
    return new Promise<QmpGreeting>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        reject(
          new QmpTimeoutError(
            `no QMP greeting within ${timeoutMs} ms (QEMU serves one client at a time: is another connected?)`,
            { timeoutMs },
          ),
        );
      }, timeoutMs);
      this.greetingWaiter = {
        resolve: (greeting) => {
          clearTimeout(timer);
          resolve(greeting);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
    });
  }

  private onData(chunk: Buffer | string): void {
    if (this.closeReasonValue !== undefined) return;
    this.buffer += typeof chunk === 'string' ? chunk : this.decoder.write(chunk);
    let newline = this.buffer.indexOf('\n');
    while (newline !== -1 && this.closeReasonValue === undefined) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line !== '') this.onLine(line);
      newline = this.buffer.indexOf('\n');
    }
    if (this.closeReasonValue === undefined && this.buffer.length > MAX_LINE_CHARS) {
      this.failProtocol(
        new QmpProtocolError(`QMP message longer than ${MAX_LINE_CHARS} characters`, { line: this.buffer }),
      );
    }
  }

  private onEnd(): void {
    const tail = (this.buffer + this.decoder.end()).trim();
    this.buffer = '';
    if (tail === '') {
      this.teardown(new QmpDisconnectedError('QEMU closed the QMP connection', { reason: 'remote-closed' }));
      return;
    }
    this.teardown(
      new QmpDisconnectedError('QEMU closed the QMP connection in the middle of a message', {
        reason: 'remote-closed',
        cause: new QmpProtocolError('truncated QMP message at end of stream', { line: tail }),
      }),
    );
  }

  private onLine(line: string): void {
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch (err) {
      this.failProtocol(new QmpProtocolError('QEMU sent a line that is not JSON', { line, cause: err }));
      return;
    }
    if (!isRecord(message)) {
      this.failProtocol(new QmpProtocolError('QEMU sent JSON that is not an object', { line }));
      return;
    }
    if (this.greetingValue === undefined) {
      this.onGreeting(message, line);
    } else if (typeof message.event === 'string') {
      this.dispatchEvent(toEvent(message.event, message));
    } else if ('return' in message || 'error' in message) {
      this.onReply(message, line);
    } else {
      this.failProtocol(
        new QmpProtocolError('QEMU sent a message that is neither a reply nor an event', { line }),
      );
    }
  }

  private onGreeting(message: Record<string, unknown>, line: string): void {
    const greeting = parseGreeting(message);
    if (greeting === undefined) {
      this.failProtocol(new QmpProtocolError('malformed QMP greeting', { line }));
      return;
    }
    this.greetingValue = greeting;
    const waiter = this.greetingWaiter;
    this.greetingWaiter = undefined;
    waiter?.resolve(greeting);
  }

  private onReply(message: Record<string, unknown>, line: string): void {
    const { id } = message;
    if (typeof id !== 'number') {
      // QEMU omits the id only when it could not parse the request; we cannot tell whose it was.
      this.reportProtocolError(new QmpProtocolError('QMP reply without a usable id', { line }));
      return;
    }
    const pending = this.pending.get(id);
    if (pending === undefined) {
      if (this.abandonedIds.delete(id)) return;
      this.reportProtocolError(new QmpProtocolError(`QMP reply for unknown id ${id}`, { line }));
      return;
    }
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ('return' in message) {
      pending.resolve(message.return);
      return;
    }
    const error = message.error;
    if (isRecord(error) && typeof error.class === 'string' && typeof error.desc === 'string') {
      pending.reject(new QmpCommandError(pending.command, error.class, error.desc));
    } else {
      pending.reject(new QmpProtocolError(`malformed QMP error reply to '${pending.command}'`, { line }));
    }
  }

  private onCommandTimeout(id: number, timeoutMs: number): void {
    const pending = this.pending.get(id);
    if (pending === undefined) return;
    this.pending.delete(id);
    this.abandonedIds.add(id);
    if (this.abandonedIds.size > MAX_ABANDONED_IDS) {
      const oldest = this.abandonedIds.values().next();
      if (oldest.done !== true) this.abandonedIds.delete(oldest.value);
    }
    pending.reject(
      new QmpTimeoutError(`QMP command '${pending.command}' got no reply within ${timeoutMs} ms`, {
        command: pending.command,
        timeoutMs,
      }),
    );
  }

  private dispatchEvent(event: QmpEvent): void {
    try {
      this.emit('event', event);
    } catch (err) {
      // A throwing listener is a bug to surface, but it must not abort parsing of the rest of the chunk.
      queueMicrotask(() => {
        throw err;
      });
    }
  }

  private reportProtocolError(error: QmpProtocolError): void {
    if (this.listenerCount('error') === 0) return;
    try {
      this.emit('error', error);
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }

  private failProtocol(error: QmpProtocolError): void {
    const waiter = this.greetingWaiter;
    this.greetingWaiter = undefined;
    waiter?.reject(error);
    this.reportProtocolError(error);
    this.teardown(
      new QmpDisconnectedError(`QMP connection closed after a protocol error: ${error.message}`, {
        reason: 'protocol-error',
        cause: error,
      }),
    );
  }

  private teardown(reason: QmpDisconnectedError): void {
    if (this.closeReasonValue !== undefined) return;
    this.closeReasonValue = reason;
    this.buffer = '';
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.abandonedIds.clear();
    for (const command of pending) {
      clearTimeout(command.timer);
      command.reject(reason.forCommand(command.command));
    }
    const waiter = this.greetingWaiter;
    this.greetingWaiter = undefined;
    waiter?.reject(reason);
    this.stream.destroy();
    try {
      this.emit('close', reason);
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

function parseGreeting(message: Record<string, unknown>): QmpGreeting | undefined {
  const qmp = message.QMP;
  if (!isRecord(qmp) || !isRecord(qmp.version) || !isRecord(qmp.version.qemu)) return undefined;
  const { major, minor, micro } = qmp.version.qemu;
  if (!isCount(major) || !isCount(minor) || !isCount(micro)) return undefined;
  const capabilities = qmp.capabilities;
  if (!Array.isArray(capabilities) || !capabilities.every((c) => typeof c === 'string')) return undefined;
  const pkg = qmp.version.package;
  return {
    version: { qemu: { major, minor, micro }, package: typeof pkg === 'string' ? pkg : '' },
    capabilities,
  };
}

// Lenient on purpose: a missing timestamp or data must not cost us the event itself.
function toEvent(name: string, message: Record<string, unknown>): QmpEvent {
  const data = isRecord(message.data) ? message.data : {};
  const ts = message.timestamp;
  if (isRecord(ts) && typeof ts.seconds === 'number' && typeof ts.microseconds === 'number') {
    return { event: name, data, timestamp: { seconds: ts.seconds, microseconds: ts.microseconds } };
  }
  const now = Date.now();
  return {
    event: name,
    data,
    timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 },
  };
}
