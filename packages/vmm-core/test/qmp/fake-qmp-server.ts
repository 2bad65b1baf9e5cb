import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** A command as the fake server received it. */
export interface ReceivedCommand {
  command: string;
  args: Record<string, unknown> | undefined;
  id: unknown;
}

/** Return this from a handler that answers later (via `ctx.reply`) or never. */
export const NO_REPLY: unique symbol = Symbol('no-reply');

/** Throw from a handler to answer with `{"error": {"class", "desc"}}`. */
export class FakeQmpError extends Error {
  constructor(
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`${errorClass}: ${desc}`);
  }
}

/** What a handler gets besides the arguments. */
export interface FakeCommandContext {
  readonly command: ReceivedCommand;
  readonly connection: FakeQmpConnection;
  /** Answers this command now (for handlers returning NO_REPLY). */
  reply(value: unknown): Promise<void>;
  replyError(errorClass: string, desc: string): Promise<void>;
}

/** Answers one command: the return value is the `return`, FakeQmpError becomes an error reply. */
export type FakeQmpHandler = (
  args: Record<string, unknown> | undefined,
  ctx: FakeCommandContext,
) => unknown | typeof NO_REPLY | Promise<unknown>;

export interface FakeQmpServerOptions {
  /** The greeting object, a raw line (sent as is, plus CRLF), or null for none. Default: QEMU 7.2's. */
  greeting?: Record<string, unknown> | string | null;
  /** Extra or replacing handlers; `qmp_capabilities` and `quit` have defaults. */
  handlers?: Record<string, FakeQmpHandler>;
  /** Split everything sent into chunks of this many bytes, each written separately. */
  chunkSize?: number;
  /** Start listening at once (default); false to test clients that connect before the socket exists. */
  listen?: boolean;
}

export const DEFAULT_GREETING = {
  QMP: {
    version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'Debian 1:7.2+dfsg-7+deb12u18' },
    capabilities: ['oob'],
  },
};

/** One client connection to the fake server, scriptable from tests. */
export class FakeQmpConnection {
  readonly received: ReceivedCommand[] = [];
  readonly closed: Promise<void>;
  private sendQueue: Promise<void> = Promise.resolve();
  private buffer = '';

  constructor(
    private readonly socket: Socket,
    private readonly server: FakeQmpServer,
  ) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', () => {});
  }

  /** Sends text exactly as given (no newline added), honouring the chunk size. */
  sendRaw(text: string): Promise<void> {
    const data = Buffer.from(text, 'utf8');
    const chunkSize = this.server.chunkSize;
    this.sendQueue = this.sendQueue.then(async () => {
      if (this.socket.destroyed) return;
      if (chunkSize === undefined) {
        this.socket.write(data);
        return;
      }
      for (let offset = 0; offset < data.length; offset += chunkSize) {
        if (this.socket.destroyed) return;
        this.socket.write(data.subarray(offset, offset + chunkSize));
        // A pause between chunks so the client really sees them as separate reads.
        await sleep(1);
      }
    });
    return this.sendQueue;
  }

  sendJson(message: unknown): Promise<void> {
    return this.sendRaw(`${JSON.stringify(message)}\r\n`);
  }

  sendEvent(event: string, data?: Record<string, unknown>): Promise<void> {
    const now = Date.now();
    return this.sendJson({
      event,
      ...(data === undefined ? {} : { data }),
      timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 },
    });
  }

  reply(id: unknown, value: unknown): Promise<void> {
    return this.sendJson({ return: value, id });
  }

  replyError(id: unknown, errorClass: string, desc: string): Promise<void> {
    return this.sendJson({ error: { class: errorClass, desc }, id });
  }

  /** Closes after everything queued has been sent, as QEMU does when it exits. */
  async end(): Promise<void> {
    await this.sendQueue;
    this.socket.end();
    await this.closed;
  }

  /** Drops the connection at once. */
  destroy(): void {
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline = this.buffer.indexOf('\n');
    while (newline !== -1) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line !== '') void this.onCommand(line);
      newline = this.buffer.indexOf('\n');
    }
  }

  private async onCommand(line: string): Promise<void> {
    const message = JSON.parse(line) as {
      execute: string;
      arguments?: Record<string, unknown>;
      id?: unknown;
    };
    const command: ReceivedCommand = { command: message.execute, args: message.arguments, id: message.id };
    this.received.push(command);
    this.server.notifyCommand(command);
    const handler = this.server.handlers[command.command];
    if (handler === undefined) {
      await this.replyError(
        command.id,
        'CommandNotFound',
        `The command ${command.command} has not been found`,
      );
      return;
    }
    const ctx: FakeCommandContext = {
      command,
      connection: this,
      reply: (value) => this.reply(command.id, value),
      replyError: (errorClass, desc) => this.replyError(command.id, errorClass, desc),
    };
    try {
      const result = await handler(command.args, ctx);
      if (result !== NO_REPLY) await this.reply(command.id, result ?? {});
    } catch (err) {
      if (err instanceof FakeQmpError) await this.replyError(command.id, err.errorClass, err.desc);
      else await this.replyError(command.id, 'GenericError', String(err));
    }
  }
}

/**
 * A scriptable stand-in for QEMU's QMP server on a unix socket in a fresh `hangar-test-` temp dir.
 * `close()` closes every connection and removes the directory.
 */
export class FakeQmpServer {
  readonly connections: FakeQmpConnection[] = [];
  readonly handlers: Record<string, FakeQmpHandler>;
  readonly chunkSize: number | undefined;
  private readonly server: Server;
  private readonly greeting: Record<string, unknown> | string | null;
  private readonly connectionWaiters: ((connection: FakeQmpConnection) => void)[] = [];
  private readonly commandWaiters: { name: string; resolve: (command: ReceivedCommand) => void }[] = [];

  private constructor(
    readonly dir: string,
    options: FakeQmpServerOptions,
  ) {
    this.greeting = options.greeting === undefined ? DEFAULT_GREETING : options.greeting;
    this.chunkSize = options.chunkSize;
    this.handlers = {
      qmp_capabilities: () => ({}),
      quit: async (_args, ctx) => {
        await ctx.reply({});
        await ctx.connection.end();
        return NO_REPLY;
      },
      ...options.handlers,
    };
    this.server = createServer((socket) => this.onConnection(socket));
  }

  static async start(options: FakeQmpServerOptions = {}): Promise<FakeQmpServer> {
    const dir = await mkdtemp(join(tmpdir(), 'hangar-test-qmp-'));
    const server = new FakeQmpServer(dir, options);
    if (options.listen ?? true) await server.listen();
    return server;
  }

  get socketPath(): string {
    return join(this.dir, 'qmp.sock');
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.socketPath, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  /** The next connection (or the first one, if it is already there and nobody took it). */
  connection(index = 0): Promise<FakeQmpConnection> {
    const existing = this.connections[index];
    if (existing !== undefined) return Promise.resolve(existing);
    return new Promise((resolve) => {
      this.connectionWaiters.push((connection) => {
        if (this.connections.indexOf(connection) === index) resolve(connection);
      });
    });
  }

  /** Resolves when a command named `name` has been received (also if it already was). */
  waitForCommand(name: string): Promise<ReceivedCommand> {
    for (const connection of this.connections) {
      const seen = connection.received.find((c) => c.command === name);
      if (seen !== undefined) return Promise.resolve(seen);
    }
    return new Promise((resolve) => this.commandWaiters.push({ name, resolve }));
  }

  /** Every command received on every connection, in order per connection. */
  received(): ReceivedCommand[] {
    return this.connections.flatMap((c) => c.received);
  }

  notifyCommand(command: ReceivedCommand): void {
    for (const waiter of [...this.commandWaiters]) {
      if (waiter.name !== command.command) continue;
      this.commandWaiters.splice(this.commandWaiters.indexOf(waiter), 1);
      waiter.resolve(command);
    }
  }

  async close(): Promise<void> {
    for (const connection of this.connections) connection.destroy();
    await new Promise<void>((resolve) => {
      if (!this.server.listening) {
        resolve();
        return;
      }
      this.server.close(() => resolve());
    });
    await rm(this.dir, { recursive: true, force: true });
  }

  private onConnection(socket: Socket): void {
    const connection = new FakeQmpConnection(socket, this);
    this.connections.push(connection);
    for (const waiter of [...this.connectionWaiters]) waiter(connection);
    if (this.greeting === null) return;
    void (typeof this.greeting === 'string'
      ? connection.sendRaw(`${this.greeting}\r\n`)
      : connection.sendJson(this.greeting));
  }
}
