import { z } from 'zod';
import { iso, TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import { pageQueryShape, pageSchema } from '../../common/pagination/pagination.js';

/** An event id: the row's BIGSERIAL, as a decimal string (it outgrows a JSON number's precision). */
export const EventIdSchema = z
  .string()
  .regex(/^(0|[1-9][0-9]{0,18})$/, 'a decimal event id')
  .refine(
    (value) => /^\d{1,19}$/.test(value) && BigInt(value) <= 9_223_372_036_854_775_807n,
    'at most 2^63-1',
  );

/** What happened to a resource; `id` grows with every event (the stream's `Last-Event-ID`). */
export const EventSchema = z
  .strictObject({
    id: EventIdSchema.describe('Grows with every event; the SSE id and the `after` cursor'),
    kind: z.string().describe('vm.created, vm.state_changed, vm.resized, operation.succeeded, …'),
    resource_type: z.string().describe('vm, operation, host, …'),
    resource_id: UuidSchema,
    project_id: UuidSchema.nullable().describe(
      'The project it belongs to; null for cluster events (admins only)',
    ),
    data: z.record(z.string(), z.unknown()).describe('Detail of the event, by kind'),
    at: TimestampSchema,
  })
  .meta({ id: 'Event' });
export type EventDto = z.infer<typeof EventSchema>;

/** A page of `GET /v1/events`. */
export const EventPageSchema = pageSchema(EventSchema, 'EventPage');

const KindSchema = z
  .string()
  .regex(/^[a-z][a-z0-9_.-]{0,63}$/)
  .describe('Only events of this kind, e.g. vm.state_changed');
const ResourceTypeSchema = z
  .string()
  .regex(/^[a-z][a-z0-9_-]{0,31}$/)
  .describe('Only events of this resource type, e.g. vm');

/** The filters both the list and the stream take. */
const filterShape = {
  resource_type: ResourceTypeSchema.optional(),
  resource_id: UuidSchema.optional().describe('Only events of this resource'),
  kind: KindSchema.optional(),
  project_id: UuidSchema.optional().describe("Admins: only this project's events"),
};

/** `GET /v1/events`. */
export const ListEventsQuerySchema = z.strictObject({
  ...pageQueryShape,
  ...filterShape,
  since: z.iso
    .datetime({ offset: true })
    .optional()
    .describe('Only events at or after this instant (RFC 3339)'),
  after: EventIdSchema.optional().describe(
    'Cursor: only events with a larger id, oldest first (without it: newest first). Pages in this ' +
      'order never skip an event that commits late, so `after` = the last id read is a safe poll.',
  ),
});
export type ListEventsQuery = z.infer<typeof ListEventsQuerySchema>;

/** `GET /v1/events/stream`. */
export const StreamEventsQuerySchema = z.strictObject({
  ...filterShape,
  after: EventIdSchema.optional().describe(
    'Start after this event id (the `Last-Event-ID` header wins when both are given); without ' +
      'either, the stream starts with the events written from now on',
  ),
});
export type StreamEventsQuery = z.infer<typeof StreamEventsQuerySchema>;

/** The success body of the stream, as documented: text in the SSE format. */
export const EventStreamSchema = z
  .string()
  .describe(
    'Server-Sent Events: per event `id: <event id>`, `event: <kind>`, `data: <the Event as JSON>`; ' +
      'comment lines (`: keep-alive`) on an idle stream.',
  );

/** An event row as the feed and the queries read it. */
export interface EventRow {
  readonly id: bigint;
  readonly resourceType: string;
  readonly resourceId: string;
  readonly projectId: string | null;
  readonly kind: string;
  readonly data: unknown;
  readonly at: Date;
}

/** An event's representation. */
export function toEventDto(row: EventRow): EventDto {
  const data =
    row.data !== null && typeof row.data === 'object' && !Array.isArray(row.data)
      ? (row.data as Record<string, unknown>)
      : {};
  return {
    id: row.id.toString(),
    kind: row.kind,
    resource_type: row.resourceType,
    resource_id: row.resourceId,
    project_id: row.projectId,
    data,
    at: iso(row.at),
  };
}

/** Which events a reader sees: its tenancy and the filters it asked for. */
export interface EventFilter {
  /** Only this project's events (members and readers: always their own). */
  readonly projectId?: string | undefined;
  readonly resourceType?: string | undefined;
  readonly resourceId?: string | undefined;
  readonly kind?: string | undefined;
  /** Only events at or after this instant. */
  readonly since?: Date | undefined;
}

/** Whether `row` passes `filter` (the same test the SQL of {@link EventFilter} makes). */
export function matchesFilter(filter: EventFilter, row: EventRow): boolean {
  return (
    (filter.projectId === undefined || row.projectId === filter.projectId) &&
    (filter.resourceType === undefined || row.resourceType === filter.resourceType) &&
    (filter.resourceId === undefined || row.resourceId === filter.resourceId) &&
    (filter.kind === undefined || row.kind === filter.kind) &&
    (filter.since === undefined || row.at.getTime() >= filter.since.getTime())
  );
}
