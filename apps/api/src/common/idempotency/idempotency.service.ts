import { Injectable, Logger, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import { type HangarConfig, InjectConfig } from '../../config/index.js';
import { DomainError } from '../../errors/domain-error.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';

/** The first response to a request, as it is replayed. */
export interface StoredResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  /** The JSON text of the body, byte for byte as first sent; null for an empty one (204). */
  readonly body: string | null;
}

/** What to do with a request that carries an Idempotency-Key. */
export type IdempotencyOutcome =
  | { readonly kind: 'execute'; readonly recordId: string }
  | { readonly kind: 'replay'; readonly response: StoredResponse };

/** The request an Idempotency-Key belongs to. */
export interface IdempotentRequest {
  readonly projectId: string;
  readonly key: string;
  readonly method: string;
  readonly path: string;
  /** SHA-256 of method, path and canonical body: "the same request". */
  readonly requestHash: string;
}

/**
 * A record still in flight after this long is taken over by the next request with its key: its
 * request died with its process (no request of this api runs for minutes).
 */
export const ABANDONED_AFTER_MS = 120_000;
const PURGE_EVERY_MS = 10 * 60_000;

interface RecordRow {
  id: string;
  request_hash: string;
  response_status: number | null;
  response_body: unknown;
  expired: boolean;
  abandoned: boolean;
}

/**
 * The `idempotency_records` table: claims a key for a request, stores its first successful
 * response, replays it. The unique (project_id, key) index arbitrates between concurrent
 * requests with the same key; times are the database's, so replicas' clocks do not matter.
 * See docs/adr/0023.
 */
@Injectable()
export class IdempotencyService implements OnModuleInit, OnModuleDestroy {
  private readonly logger = new Logger(IdempotencyService.name);
  private purgeTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly prisma: PrismaService,
    @InjectConfig() private readonly config: HangarConfig,
  ) {}

  onModuleInit(): void {
    this.purgeTimer = setInterval(() => {
      this.purgeExpired().catch((error: unknown) =>
        this.logger.warn(`purging idempotency records failed: ${String(error)}`),
      );
    }, PURGE_EVERY_MS);
    this.purgeTimer.unref();
  }

  onModuleDestroy(): void {
    clearInterval(this.purgeTimer);
  }

  /**
   * Claims the key for this request, or finds the first response to replay.
   *
   * @throws DomainError IDEMPOTENCY_KEY_REUSED (422) when the key was used for another request
   * @throws DomainError IDEMPOTENCY_IN_FLIGHT (409) while the first request still runs
   */
  async begin(request: IdempotentRequest): Promise<IdempotencyOutcome> {
    const ttlSeconds = this.config.idempotencyTtlMs / 1000;
    const abandonedSeconds = ABANDONED_AFTER_MS / 1000;
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const inserted = await this.prisma.$queryRaw<{ id: string }[]>`
        INSERT INTO idempotency_records (project_id, key, method, path, request_hash)
        VALUES (${request.projectId}::uuid, ${request.key}, ${request.method}, ${request.path}, ${request.requestHash})
        ON CONFLICT (project_id, key) DO NOTHING
        RETURNING id::text`;
      const claimed = inserted[0];
      if (claimed) return { kind: 'execute', recordId: claimed.id };

      const rows = await this.prisma.$queryRaw<RecordRow[]>`
        SELECT id::text, request_hash, response_status, response_body,
               created_at < now() - make_interval(secs => ${ttlSeconds}) AS expired,
               created_at < now() - make_interval(secs => ${abandonedSeconds}) AS abandoned
          FROM idempotency_records
         WHERE project_id = ${request.projectId}::uuid AND key = ${request.key}`;
      const existing = rows[0];
      if (!existing) continue; // deleted in between (the first request failed): claim again
      if (existing.expired) {
        await this.prisma.$executeRaw`DELETE FROM idempotency_records WHERE id = ${existing.id}::uuid`;
        continue;
      }
      if (existing.request_hash !== request.requestHash) {
        throw new DomainError(
          'IDEMPOTENCY_KEY_REUSED',
          'This Idempotency-Key was used for a different request (another method, path or body); use a new key.',
          { field: 'Idempotency-Key' },
        );
      }
      if (existing.response_status === null) {
        if (existing.abandoned) {
          const taken = await this.prisma.$queryRaw<{ id: string }[]>`
            UPDATE idempotency_records SET created_at = now()
             WHERE id = ${existing.id}::uuid AND response_status IS NULL
               AND created_at < now() - make_interval(secs => ${abandonedSeconds})
            RETURNING id::text`;
          if (taken[0]) return { kind: 'execute', recordId: taken[0].id };
        }
        throw new DomainError(
          'IDEMPOTENCY_IN_FLIGHT',
          'The first request with this Idempotency-Key is still being processed; retry shortly.',
          { field: 'Idempotency-Key', headers: { 'Retry-After': '1' } },
        );
      }
      return { kind: 'replay', response: storedResponseOf(existing.response_status, existing.response_body) };
    }
    throw new DomainError('IDEMPOTENCY_IN_FLIGHT', 'The Idempotency-Key is contended; retry shortly.', {
      field: 'Idempotency-Key',
      headers: { 'Retry-After': '1' },
    });
  }

  /** Stores the first response of a claimed key (and the operation it started, if any). */
  async complete(recordId: string, response: StoredResponse, operationId?: string): Promise<void> {
    // The body is kept as text: jsonb would reorder its keys, and a replay sends the same bytes.
    const stored = JSON.stringify({ headers: response.headers, body: response.body });
    await this.prisma.$executeRaw`
      UPDATE idempotency_records
         SET response_status = ${response.status}, response_body = ${stored}::jsonb,
             operation_id = ${operationId ?? null}::uuid, completed_at = now()
       WHERE id = ${recordId}::uuid`;
  }

  /**
   * Releases a claimed key after its request failed, so the client may retry with the same key:
   * failed requests change nothing, so there is nothing to replay (docs/adr/0023).
   */
  async release(recordId: string): Promise<void> {
    await this.prisma.$executeRaw`
      DELETE FROM idempotency_records WHERE id = ${recordId}::uuid AND response_status IS NULL`;
  }

  /** Deletes records older than the retention; returns how many. */
  async purgeExpired(): Promise<number> {
    const ttlSeconds = this.config.idempotencyTtlMs / 1000;
    return this.prisma.$executeRaw`
      DELETE FROM idempotency_records WHERE created_at < now() - make_interval(secs => ${ttlSeconds})`;
  }
}

function storedResponseOf(status: number, stored: unknown): StoredResponse {
  const envelope = (stored ?? {}) as { headers?: Record<string, string>; body?: unknown };
  return {
    status,
    headers: envelope.headers ?? {},
    body: typeof envelope.body === 'string' ? envelope.body : null,
  };
}
