import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import type { Exchange } from './app.js';

/** One Server-Sent Events message as a client parses it. */
export interface SseMessage {
  readonly id: string | undefined;
  readonly event: string | undefined;
  readonly data: string;
}

/**
 * A minimal SSE client over a real HTTP connection (WHATWG parsing rules for `id:`, `event:`, `data:`,
 * `retry:` and `:` comments), that keeps everything it read and, when it closes, records the
 * exchange for the OpenAPI validation like the other test clients do.
 */
export class SseClient {
  readonly messages: SseMessage[] = [];
  readonly comments: string[] = [];
  retryMs: number | undefined;
  text = '';
  ended = false;
  private buffer = '';
  private readonly waiters = new Set<() => void>();
  private readonly pump: Promise<void>;
  private closed = false;

  private constructor(
    /** Status and headers of the response. */
    readonly response: { status: number; headers: Headers },
    body: IncomingMessage,
    private readonly request: ClientRequest,
    private readonly record: (text: string) => void,
  ) {
    body.setEncoding('utf8');
    this.pump = new Promise<void>((resolve) => {
      const done = (): void => {
        this.ended = true;
        this.notify();
        resolve();
      };
      body.on('data', (chunk: string) => this.feed(chunk));
      body.once('end', done);
      body.once('close', done);
      body.once('error', done);
    });
  }

  /**
   * Opens `url` with `token` over a connection of its own (no keep-alive pool: closing the client
   * closes its connection, as a browser tab going away does); resolves once the response headers
   * arrived. `exchanges` receives the exchange when the client closes.
   */
  static async open(
    baseUrl: string,
    url: string,
    options: { token?: string; headers?: Record<string, string>; exchanges?: Exchange[] } = {},
  ): Promise<SseClient> {
    const headers: Record<string, string> = { accept: 'text/event-stream', ...options.headers };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    const request = http.get(new URL(url, baseUrl), { headers, agent: false });
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const timer = setTimeout(() => request.destroy(new Error(`no answer to GET ${url} in 15 s`)), 15_000);
      request.once('response', (res) => {
        clearTimeout(timer);
        resolve(res);
      });
      request.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    const responseHeaders = new Headers();
    for (const [name, value] of Object.entries(response.headers)) {
      if (value !== undefined) responseHeaders.set(name, Array.isArray(value) ? value.join(', ') : value);
    }
    const status = response.statusCode ?? 0;
    const record = (text: string): void => {
      const contentType = responseHeaders.get('content-type') ?? '';
      options.exchanges?.push({
        method: 'GET',
        url,
        status,
        contentType,
        headers: responseHeaders,
        body: /json/.test(contentType) ? (JSON.parse(text) as unknown) : text,
      });
    };
    return new SseClient({ status, headers: responseHeaders }, response, request, record);
  }

  /** Waits until `predicate` holds for what was read so far, or fails after `timeoutMs`. */
  async waitFor<T>(
    predicate: (client: SseClient) => T | undefined | false,
    timeoutMs = 20_000,
    what = 'stream messages',
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = predicate(this);
      if (value !== undefined && value !== false) return value;
      if (this.ended) throw new Error(`the stream ended while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `timed out after ${timeoutMs} ms waiting for ${what}; read: ${this.messages.map((m) => `${m.id}:${m.event}`).join(' ')}`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, Math.min(left, 250));
        const waiters = this.waiters;
        function done(): void {
          clearTimeout(timer);
          waiters.delete(done);
          resolve();
        }
        waiters.add(done);
      });
    }
  }

  /** Waits until the server ends the stream; false if it did not within `timeoutMs`. */
  async waitForEnd(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const ended = await Promise.race([
      this.pump.then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    return ended;
  }

  /** The data of every message, parsed as JSON. */
  json<T>(): T[] {
    return this.messages.map((m) => JSON.parse(m.data) as T);
  }

  /** Disconnects (as a client going away would) and records the exchange. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.request.destroy();
    await this.pump;
    this.record(this.text);
  }

  private notify(): void {
    for (const wake of [...this.waiters]) wake();
  }

  private feed(chunk: string): void {
    this.text += chunk;
    this.buffer += chunk.replace(/\r\n?/g, '\n');
    let end = this.buffer.indexOf('\n\n');
    while (end >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      this.block(block);
      end = this.buffer.indexOf('\n\n');
    }
    this.notify();
  }

  private block(block: string): void {
    let id: string | undefined;
    let event: string | undefined;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) {
        this.comments.push(line.slice(1).trim());
        continue;
      }
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      else if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'retry' && /^\d+$/.test(value)) this.retryMs = Number(value);
    }
    if (data.length > 0) this.messages.push({ id, event, data: data.join('\n') });
  }
}
