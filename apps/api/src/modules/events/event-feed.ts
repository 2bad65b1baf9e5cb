import { Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import type { EventRow } from './event.schemas.js';
import { type EventsSettings, InjectEventsSettings } from './events.settings.js';

/** Ids below the last ones read that have not been seen yet: maybe not committed yet, maybe never. */
interface Gap {
  lo: bigint;
  hi: bigint;
  /** When the gap was first seen (ms). */
  readonly since: number;
  /** The snapshot's xmax of the first read at least the grace time after `since`. */
  xmax?: bigint;
}

/** One read: the snapshot's bounds and the rows it saw, in one statement (one snapshot). */
interface ReadResult {
  xmin: string;
  xmax: string;
  rows: unknown;
}

/** Rows one read takes at most; more are read at once by the next one. */
const READ_LIMIT = 2_000;
/** How far back (in events) the feed looks for gaps when it starts. */
const START_WINDOW = 1_000;

/**
 * The settled end of the `events` table, for cursors that must neither skip nor repeat (ADR 0041).
 *
 * Event ids come from a sequence when the row is inserted, not when its transaction commits, so
 * id 41 can become visible after id 42: a reader that moved its cursor past 42 would never see
 * 41. The feed therefore reads new rows by short polling and only declares ids up to the first
 * unexplained gap *settled*. A gap closes when its row appears, or when it cannot appear any
 * more: once the grace time has passed, every transaction running at that moment (the snapshot's
 * xmax) has ended — it was rolled back (sequences never reuse a number). A gap still open after
 * the maximum wait is given up with a warning. Readers deliver only ids up to {@link horizon}, so
 * `Last-Event-ID` and `after` cursors lose nothing.
 *
 * Recent settled rows stay in memory, so streams that are caught up read them without a query.
 * Polling runs only while someone subscribes (an open stream); `fresh()` reads on demand.
 */
@Injectable()
export class EventFeed implements OnApplicationShutdown {
  private readonly log = new Logger('EventFeed');
  private settled = -1n;
  private maxSeen = -1n;
  /** The memory holds every settled row with an id in (floor, settled]. */
  private floor = -1n;
  private memory: EventRow[] = [];
  private gaps: Gap[] = [];
  /** Committed rows above the first gap, waiting for it to close. */
  private readonly above = new Map<bigint, EventRow>();
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private inflight: Promise<void> | undefined;
  private lastReadAt = 0;
  private moreWaiting = false;
  private lastError = 0;
  private closed = false;

  constructor(
    private readonly prisma: PrismaService,
    @InjectEventsSettings() private readonly settings: EventsSettings,
  ) {}

  /** Every event with an id up to this one is visible or will never exist (-1: not read yet). */
  get horizon(): bigint {
    return this.settled;
  }

  /** Ids the feed waits for (tests and diagnostics). */
  get openGaps(): number {
    return this.gaps.length;
  }

  /** Calls `listener` whenever the horizon moves; polling runs while anyone listens. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    this.schedule(0);
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0 && this.timer) {
        clearTimeout(this.timer);
        this.timer = undefined;
      }
    };
  }

  /** Reads now unless a read ran within the poll interval; returns the horizon after it. */
  async fresh(): Promise<bigint> {
    if (this.settled < 0n || Date.now() - this.lastReadAt >= this.settings.pollMs) await this.read();
    return this.settled;
  }

  /**
   * Settled rows with an id above `after`, oldest first, at most `limit`, from memory; `upTo` is
   * where the caller's cursor may move (the last row when the limit cut, else the horizon).
   * Undefined when the memory does not reach back to `after` (read the table instead).
   */
  fromMemory(after: bigint, limit: number): { rows: EventRow[]; upTo: bigint } | undefined {
    if (this.settled < 0n || after < this.floor) return undefined;
    if (after >= this.settled) return { rows: [], upTo: after };
    let lo = 0;
    let hi = this.memory.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.memory[mid]?.id ?? 0n) <= after) lo = mid + 1;
      else hi = mid;
    }
    const rows = this.memory.slice(lo, lo + limit);
    const last = rows[rows.length - 1];
    return { rows, upTo: rows.length === limit && last ? last.id : this.settled };
  }

  onApplicationShutdown(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.listeners.clear();
  }

  /** One read at a time; concurrent callers share it. */
  private read(): Promise<void> {
    this.inflight ??= this.readOnce().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private schedule(delayMs: number): void {
    if (this.closed || this.listeners.size === 0 || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.read()
        .catch((error: unknown) => {
          // The database away: streams stay open and catch up once it answers again.
          if (Date.now() - this.lastError > 10_000) {
            this.lastError = Date.now();
            this.log.warn(
              `reading new events failed: ${error instanceof Error ? error.message : String(error)}`,
            );
          }
        })
        .finally(() => this.schedule(this.moreWaiting ? 0 : this.settings.pollMs));
    }, delayMs);
  }

  private async start(): Promise<void> {
    // Old gaps are rollbacks; the window only has to cover transactions still running.
    const rows = await this.prisma.$queryRaw<{ base: string }[]>`
      SELECT CASE WHEN count(*) < ${START_WINDOW} THEN 0 ELSE min(id) - 1 END::text AS base
        FROM (SELECT id FROM events ORDER BY id DESC LIMIT ${START_WINDOW}) t`;
    const base = BigInt(rows[0]?.base ?? '0');
    this.settled = base;
    this.maxSeen = base;
    this.floor = base;
  }

  private async readOnce(): Promise<void> {
    if (this.settled < 0n) await this.start();
    const now = Date.now();
    const exclude = `{${[...this.above.keys()].join(',')}}`;
    // One statement, one snapshot: the rows it sees and the transactions it saw running.
    const result = await this.prisma.$queryRaw<ReadResult[]>`
      SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin,
             pg_snapshot_xmax(pg_current_snapshot())::text AS xmax,
             coalesce((
               SELECT json_agg(json_build_object(
                        'id', r.id::text, 'resourceType', r.resource_type,
                        'resourceId', r.resource_id::text, 'projectId', r.project_id::text,
                        'kind', r.kind, 'data', r.data, 'at', r.at) ORDER BY r.id)
                 FROM (SELECT * FROM events
                        WHERE id > ${this.settled.toString()}::bigint AND id <> ALL(${exclude}::bigint[])
                        ORDER BY id LIMIT ${READ_LIMIT}) r), '[]'::json) AS rows`;
    const read = result[0];
    if (!read) return;
    this.lastReadAt = now;
    const xmin = BigInt(read.xmin);
    const xmax = BigInt(read.xmax);
    const rows = parseRows(read.rows);
    this.moreWaiting = rows.length >= READ_LIMIT;

    for (const row of rows) {
      this.above.set(row.id, row);
      if (row.id > this.maxSeen) {
        if (row.id > this.maxSeen + 1n)
          this.gaps.push({ lo: this.maxSeen + 1n, hi: row.id - 1n, since: now });
        this.maxSeen = row.id;
      } else {
        this.fill(row.id);
      }
    }

    const open: Gap[] = [];
    for (const gap of this.gaps) {
      // After the grace time its transaction (if any) has an xid below this snapshot's xmax:
      // once no transaction below that xmax runs any more, the id is never coming.
      if (gap.xmax === undefined && now - gap.since >= this.settings.gapGraceMs) gap.xmax = xmax;
      if (gap.xmax !== undefined && xmin >= gap.xmax) continue;
      if (now - gap.since >= this.settings.gapMaxWaitMs) {
        this.log.warn(
          `event ids ${gap.lo}..${gap.hi} still missing after ${this.settings.gapMaxWaitMs} ms; ` +
            'streams move on (a transaction that commits them later is not streamed)',
        );
        continue;
      }
      open.push(gap);
    }
    this.gaps = open.sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));

    const first = this.gaps[0];
    const settled = first ? first.lo - 1n : this.maxSeen;
    if (settled <= this.settled) return;
    const ids = [...this.above.keys()].filter((id) => id <= settled).sort((a, b) => (a < b ? -1 : 1));
    for (const id of ids) {
      const row = this.above.get(id);
      if (row) this.memory.push(row);
      this.above.delete(id);
    }
    this.settled = settled;
    const excess = this.memory.length - this.settings.memoryEvents;
    if (excess > 0) {
      this.floor = this.memory[excess - 1]?.id ?? this.floor;
      this.memory = this.memory.slice(excess);
    }
    for (const listener of this.listeners) listener();
  }

  /** A row inside a gap arrived: split the gap around it. */
  private fill(id: bigint): void {
    const index = this.gaps.findIndex((g) => g.lo <= id && id <= g.hi);
    const gap = this.gaps[index];
    if (!gap) return;
    const parts: Gap[] = [];
    if (gap.lo < id) parts.push({ ...gap, hi: id - 1n });
    if (id < gap.hi) parts.push({ ...gap, lo: id + 1n });
    this.gaps.splice(index, 1, ...parts);
  }
}

/** The JSON rows of a read (the driver may hand json columns over parsed or as text). */
function parseRows(value: unknown): EventRow[] {
  const list = typeof value === 'string' ? (JSON.parse(value) as unknown) : value;
  if (!Array.isArray(list)) return [];
  return list.map((raw) => {
    const r = raw as {
      id: string;
      resourceType: string;
      resourceId: string;
      projectId: string | null;
      kind: string;
      data: unknown;
      at: string;
    };
    return {
      id: BigInt(r.id),
      resourceType: r.resourceType,
      resourceId: r.resourceId,
      projectId: r.projectId,
      kind: r.kind,
      data: r.data,
      at: new Date(r.at),
    };
  });
}
