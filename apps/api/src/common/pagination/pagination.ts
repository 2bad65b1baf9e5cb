import { z } from 'zod';
import { DomainError } from '../../errors/domain-error.js';
import { canonicalHash } from '../util/canonical-json.js';

/** Page size when the client does not ask for one. */
export const DEFAULT_PAGE_SIZE = 50;
/** The largest page a client may ask for. */
export const MAX_PAGE_SIZE = 500;

/**
 * `page_size` and `page_token`: spread into a list endpoint's query schema
 * (`z.strictObject({...pageQueryShape, status: …})`).
 */
export const pageQueryShape = {
  page_size: z.coerce
    .number()
    .int()
    .min(1)
    .max(MAX_PAGE_SIZE)
    .default(DEFAULT_PAGE_SIZE)
    .describe(`Items per page, 1..${MAX_PAGE_SIZE}`),
  page_token: z
    .string()
    .min(1)
    .max(512)
    .optional()
    .describe('The next_page_token of the previous page; the other query parameters must stay the same'),
};

/** What a list endpoint's validated query holds about paging. */
export interface PageRequest {
  readonly page_size: number;
  readonly page_token?: string | undefined;
}

/** A position in the stable order (created_at, id) of a list. */
export interface Keyset {
  readonly at: Date;
  readonly id: string;
}

/** A page of a list: `next_page_token` is null on the last page. */
export interface Page<T> {
  readonly items: T[];
  readonly next_page_token: string | null;
}

/** The response schema of a page of `item`: `{items: [...], next_page_token}`. */
export function pageSchema<T extends z.ZodType>(item: T, id: string) {
  return z
    .strictObject({
      items: z.array(item),
      next_page_token: z
        .string()
        .nullable()
        .describe('Pass as page_token to read the next page; null on the last one'),
    })
    .meta({ id });
}

const TokenSchema = z.strictObject({
  v: z.literal(1),
  /** created_at of the last item, epoch milliseconds. */
  t: z.int().min(0),
  /** id of the last item. */
  i: z.uuid(),
  /** Fingerprint of the list and its filters: a token only continues the list it came from. */
  s: z.string().length(16),
});

/** The fingerprint a token carries: the list's name and its filters, never the page size. */
function scopeOf(scope: unknown): string {
  return canonicalHash(scope).slice(0, 16);
}

/**
 * An opaque page token: where the next page starts, bound to the list and filters (`scope`) it
 * was issued for. Not secret (base64url JSON); tampering can only move the reader within what
 * the same query may see anyway.
 */
export function encodePageToken(keyset: Keyset, scope: unknown): string {
  const token: z.infer<typeof TokenSchema> = {
    v: 1,
    t: keyset.at.getTime(),
    i: keyset.id,
    s: scopeOf(scope),
  };
  return Buffer.from(JSON.stringify(token)).toString('base64url');
}

/**
 * Reads a page token; a token that is not one of ours, or belongs to another list or other filters,
 * is a 400 on `page_token`.
 */
export function decodePageToken(token: string, scope: unknown): Keyset {
  let parsed: z.infer<typeof TokenSchema> | undefined;
  if (/^[A-Za-z0-9_-]+$/.test(token)) {
    try {
      parsed = TokenSchema.parse(JSON.parse(Buffer.from(token, 'base64url').toString('utf8')));
    } catch {
      parsed = undefined;
    }
  }
  if (!parsed)
    throw DomainError.invalid('page_token', 'query', 'is not a page token of this API', 'invalid_page_token');
  if (parsed.s !== scopeOf(scope)) {
    throw DomainError.invalid(
      'page_token',
      'query',
      'belongs to another list or other filters; keep the query parameters of the first page',
      'invalid_page_token',
    );
  }
  return { at: new Date(parsed.t), id: parsed.i };
}

/** Where a page starts: after the position its token names, or at the start without a token. */
export function pageAfter(page: PageRequest, scope: unknown): Keyset | undefined {
  return page.page_token === undefined ? undefined : decodePageToken(page.page_token, scope);
}

/**
 * The Prisma clauses of one page in the stable order (`field`, id): `where` starts after the
 * token's position (merge it with the filters under `AND`), `orderBy` and `take` (one more row than
 * the page, to know whether another page follows).
 */
export function pageClauses<F extends string>(
  field: F,
  page: PageRequest,
  scope: unknown,
): {
  where: { OR?: [Record<F, { gt: Date }>, Record<F, Date> & { id: { gt: string } }] };
  orderBy: [Record<F, 'asc'>, { id: 'asc' }];
  take: number;
} {
  const after = pageAfter(page, scope);
  const where = after
    ? {
        OR: [
          { [field]: { gt: after.at } } as Record<F, { gt: Date }>,
          { [field]: after.at, id: { gt: after.id } } as Record<F, Date> & { id: { gt: string } },
        ] as [Record<F, { gt: Date }>, Record<F, Date> & { id: { gt: string } }],
      }
    : {};
  return {
    where,
    orderBy: [{ [field]: 'asc' } as Record<F, 'asc'>, { id: 'asc' }],
    take: page.page_size + 1,
  };
}

/**
 * Cuts the rows fetched with {@link pageClauses} into a page of `page_size` items and the token of
 * the next one (`keyOf` gives a row's position), mapping each item with `toDto`.
 */
export function toPage<Row, Dto>(
  rows: readonly Row[],
  page: PageRequest,
  scope: unknown,
  keyOf: (row: Row) => Keyset,
  toDto: (row: Row) => Dto,
): Page<Dto> {
  const items = rows.slice(0, page.page_size);
  const last = items[items.length - 1];
  const next =
    rows.length > page.page_size && last !== undefined ? encodePageToken(keyOf(last), scope) : null;
  return { items: items.map(toDto), next_page_token: next };
}
