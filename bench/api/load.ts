/**
 * bench/api load generator: a child process forked by api.bench.ts (IPC, advanced serialization)
 * so that generating load never runs on the event loop of a server being measured.
 *
 * HTTP/1.1 over raw keep-alive sockets (`node:net`): each connection sends a request, reads the
 * whole response (Content-Length or chunked), records the time from the write to the last byte,
 * then sends the next one — a closed loop with `connections` requests in flight. Requests are
 * encoded once, up front; responses are parsed only as far as framing needs (status line, length),
 * which keeps the generator's own CPU per request well below an HTTP client library's.
 *
 * Two modes: `duration` repeats the request list until the time is up (in-flight requests finish
 * and count); `each` sends every request of the list exactly once (unique bodies and
 * Idempotency-Keys for creates).
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';

/** One HTTP request to send. */
export interface LoadRequest {
  readonly method: 'GET' | 'POST';
  readonly path: string;
  readonly headers: Readonly<Record<string, string>>;
  /** A JSON body (sent with Content-Type: application/json). */
  readonly body?: string;
}

/** What the parent asks for. */
export interface LoadCommand {
  readonly type: 'run';
  readonly id: number;
  readonly host: string;
  readonly port: number;
  readonly connections: number;
  readonly mode: 'duration' | 'each';
  /** `duration` mode: how long to keep sending. */
  readonly durationMs?: number;
  /**
   * `duration` mode, open loop: request k is due at start + k / ratePerS, whether or not an
   * earlier one was answered; its latency counts from when it was due (so time spent waiting for
   * a free connection is counted, not omitted). Without it: closed loop, as fast as answers come.
   */
  readonly ratePerS?: number;
  readonly requests: readonly LoadRequest[];
  /** Keep the bodies of the first N responses (for checks by the parent). */
  readonly keepBodies?: number;
  /** Give up on a request after this long (counted as an error, its connection replaced). */
  readonly timeoutMs?: number;
}

/** What the child answers. */
export interface LoadResult {
  readonly type: 'result';
  readonly id: number;
  /** Responses received, whatever their status. */
  readonly completed: number;
  /** Transport failures (connect errors, resets, timeouts, unparseable responses). */
  readonly errorCount: number;
  readonly errors: readonly string[];
  /** Responses per status code. */
  readonly statuses: Readonly<Record<string, number>>;
  /** Latency of every completed response, ms, in completion order. */
  readonly latenciesMs: Float64Array;
  /** Response start times relative to the first send, ms (same order as latencies). */
  readonly completedAtMs: Float64Array;
  /** First send → last response. */
  readonly elapsedMs: number;
  /** Response bytes received (head and body). */
  readonly bytes: number;
  readonly keptBodies: readonly string[];
  /** This process's CPU time during the run, ms. */
  readonly cpuMs: number;
}

const CRLF2 = Buffer.from('\r\n\r\n');

/** Encodes a request once; it is written as it is for every send. */
function encode(request: LoadRequest, host: string, port: number): Buffer {
  const lines = [`${request.method} ${request.path} HTTP/1.1`, `Host: ${host}:${port}`];
  for (const [name, value] of Object.entries(request.headers)) lines.push(`${name}: ${value}`);
  const body = request.body === undefined ? undefined : Buffer.from(request.body, 'utf8');
  if (body) lines.push('Content-Type: application/json', `Content-Length: ${body.length}`);
  const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
  return body ? Buffer.concat([head, body]) : head;
}

type Phase = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'chunk-crlf' | 'trailer' | 'done';

/** Frames one HTTP/1.1 response from the bytes of a connection (no pipelining: one at a time). */
class ResponseParser {
  status = 0;
  closeAfter = false;
  bytes = 0;
  private phase: Phase = 'head';
  private head: Buffer = Buffer.alloc(0);
  private remaining = 0;
  private line = '';
  private readonly body: Buffer[] = [];

  constructor(private readonly keepBody: boolean) {}

  get done(): boolean {
    return this.phase === 'done';
  }

  bodyText(): string {
    return Buffer.concat(this.body).toString('utf8');
  }

  /** Consumes `chunk`; true once the response is complete. Throws on a malformed response. */
  feed(chunk: Buffer): boolean {
    this.bytes += chunk.length;
    let data = chunk;
    if (this.phase === 'head') {
      this.head = this.head.length === 0 ? chunk : Buffer.concat([this.head, chunk]);
      const end = this.head.indexOf(CRLF2);
      if (end < 0) {
        if (this.head.length > 64 * 1024) throw new Error('response head larger than 64 KiB');
        return false;
      }
      const text = this.head.subarray(0, end).toString('latin1');
      data = this.head.subarray(end + 4);
      this.head = Buffer.alloc(0);
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      if (!status?.[1]) throw new Error(`not an HTTP response: ${text.slice(0, 40)}`);
      this.status = Number(status[1]);
      this.closeAfter = /\r\nconnection:[ \t]*close/i.test(text);
      const length = /\r\ncontent-length:[ \t]*(\d+)/i.exec(text);
      if (/\r\ntransfer-encoding:[ \t]*chunked/i.test(text)) this.phase = 'chunk-size';
      else if (length?.[1] !== undefined) {
        this.phase = 'length';
        this.remaining = Number(length[1]);
      } else if (this.status === 204 || this.status === 304) this.phase = 'done';
      else throw new Error('response without Content-Length or chunked encoding');
    }
    this.consume(data);
    return this.phase === 'done';
  }

  private consume(data: Buffer): void {
    let i = 0;
    while (i < data.length || this.phase === 'length') {
      switch (this.phase) {
        case 'length': {
          const take = Math.min(this.remaining, data.length - i);
          if (this.keepBody && take > 0) this.body.push(data.subarray(i, i + take));
          this.remaining -= take;
          i += take;
          if (this.remaining === 0) this.phase = 'done';
          else return;
          break;
        }
        case 'chunk-size':
        case 'trailer': {
          const nl = data.indexOf(10, i);
          const end = nl < 0 ? data.length : nl + 1;
          this.line += data.subarray(i, end).toString('latin1');
          i = end;
          if (nl < 0) return;
          const line = this.line.trim();
          this.line = '';
          if (this.phase === 'trailer') {
            if (line === '') this.phase = 'done';
            break;
          }
          const size = Number.parseInt(line.split(';')[0] ?? '', 16);
          if (!Number.isFinite(size)) throw new Error(`bad chunk size line ${JSON.stringify(line)}`);
          if (size === 0) this.phase = 'trailer';
          else {
            this.remaining = size;
            this.phase = 'chunk-data';
          }
          break;
        }
        case 'chunk-data': {
          const take = Math.min(this.remaining, data.length - i);
          if (this.keepBody) this.body.push(data.subarray(i, i + take));
          this.remaining -= take;
          i += take;
          if (this.remaining === 0) {
            this.phase = 'chunk-crlf';
            this.remaining = 2;
          }
          break;
        }
        case 'chunk-crlf': {
          const take = Math.min(this.remaining, data.length - i);
          this.remaining -= take;
          i += take;
          if (this.remaining === 0) this.phase = 'chunk-size';
          break;
        }
        case 'done':
          if (i < data.length) throw new Error(`${data.length - i} bytes after the end of a response`);
          return;
        case 'head':
          throw new Error('parser state error');
      }
    }
  }
}

/** Runs one load command to completion. */
export async function runLoad(cmd: LoadCommand): Promise<LoadResult> {
  const encoded = cmd.requests.map((r) => encode(r, cmd.host, cmd.port));
  if (encoded.length === 0) throw new Error('no requests to send');
  const latencies: number[] = [];
  const completedAt: number[] = [];
  const statuses: Record<string, number> = {};
  const errors: string[] = [];
  const kept: string[] = [];
  let errorCount = 0;
  let bytes = 0;
  let next = 0;
  const t0 = performance.now();
  const deadline = cmd.mode === 'duration' ? t0 + (cmd.durationMs ?? 10_000) : Number.POSITIVE_INFINITY;
  let lastDone = t0;
  const cpu0 = process.cpuUsage();
  const timeoutMs = cmd.timeoutMs ?? 60_000;

  const interval = cmd.mode === 'duration' && cmd.ratePerS ? 1_000 / cmd.ratePerS : 0;
  /** The next request and when it is due (undefined: send now). */
  const take = (): { buf: Buffer; due: number | undefined } | undefined => {
    if (cmd.mode === 'each') {
      const buf = next < encoded.length ? encoded[next++] : undefined;
      return buf ? { buf, due: undefined } : undefined;
    }
    const due = interval > 0 ? t0 + next * interval : undefined;
    if ((due ?? performance.now()) >= deadline) return undefined;
    const buf = encoded[next++ % encoded.length];
    return buf ? { buf, due } : undefined;
  };
  const fail = (message: string) => {
    errorCount += 1;
    if (errors.length < 10) errors.push(message);
  };

  /** One connection's loop; resolves when there is nothing left to send. */
  const drive = () =>
    new Promise<void>((resolve) => {
      let socket: net.Socket | undefined;
      let parser: ResponseParser | undefined;
      let sentAt = 0;
      let timer: NodeJS.Timeout | undefined;
      let consecutiveFailures = 0;
      let lastError: string | undefined;
      let finished = false;

      const finish = () => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        socket?.destroy();
        resolve();
      };
      const write = (s: net.Socket, request: { buf: Buffer; due: number | undefined }) => {
        parser = new ResponseParser(kept.length < (cmd.keepBodies ?? 0));
        sentAt = request.due ?? performance.now();
        clearTimeout(timer);
        timer = setTimeout(() => s.destroy(new Error(`timeout after ${timeoutMs} ms`)), timeoutMs);
        s.write(request.buf);
      };
      const send = () => {
        const request = take();
        if (!request) return finish();
        const wait = (request.due ?? 0) - performance.now();
        if (wait > 0.2) {
          setTimeout(() => dispatch(request), wait);
          return;
        }
        dispatch(request);
      };
      const dispatch = (request: { buf: Buffer; due: number | undefined }) => {
        if (finished) return;
        if (socket && !socket.destroyed) return write(socket, request);
        // A new connection; the request counts as in flight from now (a refused connect loses it).
        const s = net.connect({ host: cmd.host, port: cmd.port, noDelay: true });
        socket = s;
        parser = new ResponseParser(false);
        lastError = undefined;
        s.once('connect', () => {
          consecutiveFailures = 0;
          write(s, request);
        });
        s.on('data', (chunk: Buffer) => {
          if (!parser) return;
          let complete: boolean;
          try {
            complete = parser.feed(chunk);
          } catch (err) {
            s.destroy(err instanceof Error ? err : new Error(String(err)));
            return;
          }
          if (!complete) return;
          const now = performance.now();
          clearTimeout(timer);
          latencies.push(now - sentAt);
          completedAt.push(now - t0);
          lastDone = now;
          bytes += parser.bytes;
          statuses[parser.status] = (statuses[parser.status] ?? 0) + 1;
          if (kept.length < (cmd.keepBodies ?? 0)) kept.push(parser.bodyText());
          const close = parser.closeAfter;
          parser = undefined;
          if (close) {
            socket = undefined;
            s.destroy();
          }
          send();
        });
        s.on('error', (err) => {
          lastError = err.message;
        });
        s.on('close', () => {
          clearTimeout(timer);
          if (parser) {
            // Lost with a request in flight: counted once; the loop goes on with a new connection.
            fail(lastError ?? 'connection closed with a request in flight');
            parser = undefined;
            consecutiveFailures += 1;
          }
          if (socket !== s || finished) return;
          socket = undefined;
          if (consecutiveFailures > 50) {
            fail('gave up on a connection after 50 consecutive failures');
            return finish();
          }
          setTimeout(send, consecutiveFailures > 0 ? 10 : 0);
        });
      };
      send();
    });

  await Promise.all(Array.from({ length: Math.max(1, cmd.connections) }, () => drive()));
  const cpu = process.cpuUsage(cpu0);
  return {
    type: 'result',
    id: cmd.id,
    completed: latencies.length,
    errorCount,
    errors,
    statuses,
    latenciesMs: Float64Array.from(latencies),
    completedAtMs: Float64Array.from(completedAt),
    elapsedMs: lastDone - t0,
    bytes,
    keptBodies: kept,
    cpuMs: (cpu.user + cpu.system) / 1_000,
  };
}

// As a forked child: run each command the parent sends, answer with its result.
if (process.send) {
  process.on('message', (message: LoadCommand) => {
    if (message?.type !== 'run') return;
    runLoad(message).then(
      (result) => process.send?.(result),
      (err: unknown) =>
        process.send?.({
          type: 'error',
          id: message.id,
          message: err instanceof Error ? err.message : String(err),
        }),
    );
  });
  process.on('disconnect', () => process.exit(0));
}
