import { PassThrough } from 'node:stream';
import { Injectable, Logger, type OnApplicationShutdown, type OnModuleInit, Optional } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { z } from 'zod';
import type { Page } from '../../common/pagination/pagination.js';
import { canonicalHash } from '../../common/util/canonical-json.js';
import { DomainError } from '../../errors/domain-error.js';
import type { Prisma } from '../../gen/prisma/client.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import {
  type EventDto,
  type EventFilter,
  type EventRow,
  matchesFilter,
  toEventDto,
} from './event.schemas.js';
import { EventFeed } from './event-feed.js';
import { type EventsSettings, InjectEventsSettings } from './events.settings.js';

/** Paging of `GET /v1/events` (the shared query shape; ids instead of timestamps as positions). */
export interface EventPageRequest {
  readonly page_size: number;
  readonly page_token?: string | undefined;
  /** Cursor mode: ids above this one, oldest first, only up to the feed's horizon. */
  readonly after?: string | undefined;
}

const TokenSchema = z.strictObject({
  v: z.literal(1),
  i: z.string().regex(/^\d{1,19}$/),
  s: z.string().length(16),
});

/**
 * Events: the list (`GET /v1/events`) and the Server-Sent Events streams (`GET /v1/events/stream`)
 * over the append-only `events` table. Streams deliver in id order and only up to the
 * {@link EventFeed}'s horizon, so a client that reconnects with `Last-Event-ID` gets every later
 * event exactly once. Streams end when the client goes, and all of them when the server closes
 * (before it waits for open connections).
 */
@Injectable()
export class EventsService implements OnModuleInit, OnApplicationShutdown {
  private readonly log = new Logger('EventsService');
  private readonly streams = new Set<SseConnection>();
  private closing = false;

  constructor(
    private readonly prisma: PrismaService,
    private readonly feed: EventFeed,
    @InjectEventsSettings() private readonly settings: EventsSettings,
    @Optional() private readonly adapterHost?: HttpAdapterHost,
  ) {}

  /** Streams open now. */
  get openStreams(): number {
    return this.streams.size;
  }

  onModuleInit(): void {
    // The HTTP server waits for open connections when it closes, and a stream never ends by
    // itself: end them all as soon as closing starts (Fastify's preClose), not after.
    const instance = this.adapterHost?.httpAdapter?.getInstance?.() as
      | { addHook?: (name: 'preClose', hook: (done: () => void) => void) => void }
      | undefined;
    instance?.addHook?.('preClose', (done) => {
      this.closeAll();
      done();
    });
  }

  onApplicationShutdown(): void {
    this.closeAll();
  }

  /** One page of events the filter lets through, newest first, or oldest first after a cursor. */
  async list(filter: EventFilter, page: EventPageRequest): Promise<Page<EventDto>> {
    const ascending = page.after !== undefined;
    const scope = {
      list: 'events',
      projectId: filter.projectId,
      resourceType: filter.resourceType,
      resourceId: filter.resourceId,
      kind: filter.kind,
      since: filter.since?.toISOString(),
      after: page.after,
    };
    const position = page.page_token === undefined ? undefined : decodeToken(page.page_token, scope);
    let idRange: { gt?: bigint; lt?: bigint; lte?: bigint };
    if (ascending) {
      // Only settled ids: a later page (or poll) must not miss one that commits late.
      const horizon = await this.feed.fresh();
      idRange = { gt: position ?? BigInt(page.after ?? '0'), lte: horizon };
    } else {
      idRange = position === undefined ? {} : { lt: position };
    }
    const rows = await this.prisma.event.findMany({
      where: { AND: [whereOf(filter), { id: idRange }] },
      orderBy: { id: ascending ? 'asc' : 'desc' },
      take: page.page_size + 1,
    });
    const items = rows.slice(0, page.page_size);
    const last = items[items.length - 1];
    return {
      items: items.map(toEventDto),
      next_page_token: rows.length > page.page_size && last ? encodeToken(last.id, scope) : null,
    };
  }

  /**
   * Opens a stream of the events the filter lets through, after `after` (a Last-Event-ID) or,
   * without it, from the feed's horizon now on. The returned stream is the response body; it
   * ends when the server closes and stops its work when the client goes (the stream is destroyed).
   */
  async open(filter: EventFilter, after: bigint | undefined): Promise<PassThrough> {
    if (this.closing) throw new DomainError('SERVICE_UNAVAILABLE', 'the server is shutting down');
    const start = after ?? (await this.feed.fresh());
    const connection = new SseConnection(this.prisma, this.feed, this.settings, filter, start, this.log);
    this.streams.add(connection);
    connection.stream.once('close', () => this.streams.delete(connection));
    connection.run();
    return connection.stream;
  }

  private closeAll(): void {
    this.closing = true;
    for (const connection of this.streams) connection.end();
  }
}

/** One open stream: reads events after its cursor and writes them as SSE frames. */
class SseConnection {
  readonly stream = new PassThrough();
  private closed = false;
  private wake: (() => void) | undefined;

  constructor(
    private readonly prisma: PrismaService,
    private readonly feed: EventFeed,
    private readonly settings: EventsSettings,
    private readonly filter: EventFilter,
    private cursor: bigint,
    private readonly log: Logger,
  ) {
    // Destroyed by Fastify when the client goes, or ended at shutdown.
    this.stream.once('close', () => this.stop());
  }

  /** Ends the response cleanly (server shutdown); the client reconnects with its Last-Event-ID. */
  end(): void {
    if (this.closed) return;
    this.stop();
    this.stream.end();
  }

  run(): void {
    void this.loop().catch((error: unknown) => {
      // The database away, say: end cleanly; the client reconnects with its Last-Event-ID.
      this.log.warn(`event stream failed: ${error instanceof Error ? error.message : String(error)}`);
      this.end();
    });
  }

  private stop(): void {
    this.closed = true;
    this.wake?.();
  }

  private async loop(): Promise<void> {
    // The first bytes flush the headers, so the client knows at once that the stream is open.
    await this.write(`retry: ${this.settings.retryMs}\n: connected\n\n`);
    const unsubscribe = this.feed.subscribe(() => this.wake?.());
    try {
      let lastWrite = Date.now();
      while (!this.closed) {
        if (this.feed.horizon > this.cursor) {
          const { rows, upTo } = await this.next();
          let frames = '';
          for (const row of rows) {
            if (matchesFilter(this.filter, row)) frames += frame(row);
          }
          if (this.closed) break;
          this.cursor = upTo;
          if (frames) {
            await this.write(frames);
            lastWrite = Date.now();
          }
          continue;
        }
        const idle = this.settings.keepAliveMs - (Date.now() - lastWrite);
        if (idle <= 0) {
          await this.write(': keep-alive\n\n');
          lastWrite = Date.now();
          continue;
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, idle);
          function done(): void {
            clearTimeout(timer);
            resolve();
          }
          this.wake = done;
        });
        this.wake = undefined;
      }
    } finally {
      unsubscribe();
    }
  }

  /** The next rows after the cursor: from the feed's memory when it reaches back, else from SQL. */
  private async next(): Promise<{ rows: EventRow[]; upTo: bigint }> {
    const limit = this.settings.batchSize;
    const cached = this.feed.fromMemory(this.cursor, limit);
    if (cached) return cached;
    const horizon = this.feed.horizon;
    const rows = await this.prisma.event.findMany({
      where: { AND: [whereOf(this.filter), { id: { gt: this.cursor, lte: horizon } }] },
      orderBy: { id: 'asc' },
      take: limit,
    });
    const last = rows[rows.length - 1];
    return { rows, upTo: rows.length === limit && last ? last.id : horizon };
  }

  /** Writes, waiting while the client reads slower than events come (the rest stays in SQL). */
  private async write(text: string): Promise<void> {
    if (this.closed) return;
    if (this.stream.write(text)) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.stream.off('drain', done);
        this.stream.off('close', done);
        resolve();
      };
      this.stream.once('drain', done);
      this.stream.once('close', done);
    });
  }
}

/** One SSE frame: the id is the event row's (Last-Event-ID), the event name its kind. */
function frame(row: EventRow): string {
  return `id: ${row.id}\nevent: ${row.kind}\ndata: ${JSON.stringify(toEventDto(row))}\n\n`;
}

function whereOf(filter: EventFilter): Prisma.EventWhereInput {
  return {
    ...(filter.projectId !== undefined ? { projectId: filter.projectId } : {}),
    ...(filter.resourceType !== undefined ? { resourceType: filter.resourceType } : {}),
    ...(filter.resourceId !== undefined ? { resourceId: filter.resourceId } : {}),
    ...(filter.kind !== undefined ? { kind: filter.kind } : {}),
    ...(filter.since !== undefined ? { at: { gte: filter.since } } : {}),
  };
}

function scopeHash(scope: unknown): string {
  return canonicalHash(scope).slice(0, 16);
}

/** An opaque page token (as the other lists' ones): the last id of the page, bound to the query. */
function encodeToken(id: bigint, scope: unknown): string {
  return Buffer.from(JSON.stringify({ v: 1, i: id.toString(), s: scopeHash(scope) })).toString('base64url');
}

function decodeToken(token: string, scope: unknown): bigint {
  let parsed: z.infer<typeof TokenSchema> | undefined;
  if (/^[A-Za-z0-9_-]+$/.test(token)) {
    try {
      parsed = TokenSchema.parse(JSON.parse(Buffer.from(token, 'base64url').toString('utf8')));
    } catch {
      parsed = undefined;
    }
  }
  if (!parsed) {
    throw DomainError.invalid('page_token', 'query', 'is not a page token of this API', 'invalid_page_token');
  }
  if (parsed.s !== scopeHash(scope)) {
    throw DomainError.invalid(
      'page_token',
      'query',
      'belongs to another list or other filters; keep the query parameters of the first page',
      'invalid_page_token',
    );
  }
  return BigInt(parsed.i);
}
