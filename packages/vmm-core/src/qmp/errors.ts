import { VmmError } from '../errors.js';

/**
 * QEMU answered a command with `{"error": {"class", "desc"}}`. The connection stays usable.
 *
 * `errorClass` is QEMU's machine-readable class (`GenericError`, `CommandNotFound`,
 * `DeviceNotFound`, `DeviceNotActive`, `KVMMissingCap`); branch on it, never on `desc`.
 */
export class QmpCommandError extends VmmError {
  readonly errorClass: string;
  readonly desc: string;
  readonly command: string;

  constructor(command: string, errorClass: string, desc: string) {
    super('QMP_ERROR', `QMP command '${command}' failed: ${errorClass}: ${desc}`, {
      details: { command, errorClass, desc },
    });
    this.name = 'QmpCommandError';
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/**
 * Why a QMP connection ended:
 * - `client-closed`: this process called `close()`;
 * - `remote-closed`: QEMU closed the socket (it exited, or `quit`);
 * - `protocol-error`: QEMU sent something that is not QMP, so the stream cannot be trusted;
 * - `socket-error`: the socket failed (ECONNRESET, EPIPE).
 */
export type QmpDisconnectReason = 'client-closed' | 'remote-closed' | 'protocol-error' | 'socket-error';

/**
 * The QMP connection is gone. Commands pending when it closed reject with this error (with
 * `command` set), as do commands issued afterwards. `cause` carries the underlying socket or
 * protocol error, if any.
 */
export class QmpDisconnectedError extends VmmError {
  readonly reason: QmpDisconnectReason;
  readonly command: string | undefined;

  constructor(
    message: string,
    options: { reason: QmpDisconnectReason; command?: string | undefined; cause?: unknown },
  ) {
    super('QMP_DISCONNECTED', message, {
      cause: options.cause,
      details: {
        reason: options.reason,
        ...(options.command === undefined ? {} : { command: options.command }),
      },
    });
    this.name = 'QmpDisconnectedError';
    this.reason = options.reason;
    this.command = options.command;
  }

  /** The same disconnect, attributed to one command that was pending or issued after it. */
  forCommand(command: string): QmpDisconnectedError {
    return new QmpDisconnectedError(`QMP command '${command}' failed: ${this.message}`, {
      reason: this.reason,
      command,
      cause: this.cause,
    });
  }
}

/**
 * Something did not happen within its time limit: a command's reply (`command` set), an event
 * (`event` set, and `command` when the wait belongs to one, as for `device_del`), or the greeting
 * (neither set). A timed-out command may still run inside QEMU; its late reply is ignored.
 */
export class QmpTimeoutError extends VmmError {
  readonly command: string | undefined;
  readonly event: string | undefined;
  readonly timeoutMs: number;

  constructor(message: string, options: { timeoutMs: number; command?: string; event?: string }) {
    super('QMP_TIMEOUT', message, {
      details: {
        timeoutMs: options.timeoutMs,
        ...(options.command === undefined ? {} : { command: options.command }),
        ...(options.event === undefined ? {} : { event: options.event }),
      },
    });
    this.name = 'QmpTimeoutError';
    this.command = options.command;
    this.event = options.event;
    this.timeoutMs = options.timeoutMs;
  }
}

/**
 * QEMU sent something this client cannot interpret: a malformed greeting, a line that is not
 * JSON, a reply whose id matches no command, or a reply whose shape does not match the schema.
 * `line` holds (a prefix of) the offending text when there is one.
 */
export class QmpProtocolError extends VmmError {
  readonly line: string | undefined;

  constructor(message: string, options?: { line?: string; cause?: unknown }) {
    const line = options?.line === undefined ? undefined : truncateForMessage(options.line);
    super('QMP_PROTOCOL', message, {
      cause: options?.cause,
      details: line === undefined ? undefined : { line },
    });
    this.name = 'QmpProtocolError';
    this.line = line;
  }
}

/**
 * The QMP socket could not be connected to within the connect timeout (QEMU never created it,
 * or exited before listening), or connecting failed with an error that retrying cannot fix
 * (EACCES, ENOTSOCK). Uses code `QMP_DISCONNECTED`: to a caller, "never connected" and "no
 * longer connected" both mean the monitor is unavailable.
 */
export class QmpConnectError extends VmmError {
  readonly socketPath: string;
  readonly timeoutMs: number;
  readonly attempts: number;

  constructor(
    message: string,
    options: { socketPath: string; timeoutMs: number; attempts: number; cause?: unknown },
  ) {
    super('QMP_DISCONNECTED', message, {
      cause: options.cause,
      details: { socketPath: options.socketPath, timeoutMs: options.timeoutMs, attempts: options.attempts },
    });
    this.name = 'QmpConnectError';
    this.socketPath = options.socketPath;
    this.timeoutMs = options.timeoutMs;
    this.attempts = options.attempts;
  }
}

// Error messages and details end up in logs and API responses; a runaway line must not.
function truncateForMessage(text: string, max = 200): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}
