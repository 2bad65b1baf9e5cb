import { z } from 'zod';
import { contentEtag } from '../../common/etag/etag.js';
import { iso, isoOrNull, TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import { pageQueryShape, pageSchema } from '../../common/pagination/pagination.js';
import type { Operation } from '../../gen/prisma/client.js';

/** Every status an operation can have. */
export const OPERATION_STATUSES = ['PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'] as const;

const JsonObjectSchema = z.record(z.string(), z.unknown());

/** A long-running action: what `202 Accepted` answers point at (`Location: /v1/operations/{id}`). */
export const OperationSchema = z
  .strictObject({
    id: UuidSchema,
    kind: z.string().describe('create, start, stop, reboot, pause, resume, delete, …'),
    status: z.enum(OPERATION_STATUSES),
    project_id: UuidSchema.nullable(),
    vm_id: UuidSchema.nullable(),
    host_id: UuidSchema.nullable(),
    percent: z.int().min(0).max(100).describe('Progress summary, 0..100'),
    progress: JsonObjectSchema.describe('Phase and detail of the work so far (and the last retried error)'),
    params: JsonObjectSchema.describe('The action parameters, e.g. {"force": true} for stop'),
    result: JsonObjectSchema.nullable().describe('What a finished operation produced'),
    error: z
      .strictObject({
        code: z.string().describe('Stable code, e.g. INVALID_STATE, NO_VALID_HOST'),
        message: z.string(),
      })
      .nullable()
      .describe('Why a FAILED (or CANCELLED) operation did not succeed'),
    attempts: z.int().min(0).describe('Runs so far (retries of transient failures included)'),
    created_at: TimestampSchema,
    updated_at: TimestampSchema,
    started_at: TimestampSchema.nullable(),
    finished_at: TimestampSchema.nullable(),
    etag: z.string(),
  })
  .meta({ id: 'Operation' });
export type OperationDto = z.infer<typeof OperationSchema>;

/** A page of `GET /v1/operations`. */
export const OperationPageSchema = pageSchema(OperationSchema, 'OperationPage');

/** `GET /v1/operations`. */
export const ListOperationsQuerySchema = z.strictObject({
  ...pageQueryShape,
  vm_id: UuidSchema.optional().describe('Only operations of this VM'),
  status: z.enum(OPERATION_STATUSES).optional(),
  kind: z
    .string()
    .regex(/^[a-z][a-z_-]{0,31}$/)
    .optional(),
});
export type ListOperationsQueryDto = z.infer<typeof ListOperationsQuerySchema>;

/** `30s`, `1500ms`, `2m` or plain seconds; at most 60 s. */
const DurationSchema = z
  .string()
  .regex(/^\d{1,6}(ms|s|m)?$/, 'a duration such as 30s, 1500ms or 1m')
  .transform((value, ctx) => {
    const match = /^(\d+)(ms|s|m)?$/.exec(value);
    const amount = Number(match?.[1] ?? 0);
    const ms = match?.[2] === 'ms' ? amount : match?.[2] === 'm' ? amount * 60_000 : amount * 1_000;
    if (ms > 60_000) {
      ctx.addIssue({ code: 'custom', message: 'at most 60s' });
      return z.NEVER;
    }
    return ms;
  });

/** `GET /v1/operations/{id}/wait`. */
export const WaitOperationQuerySchema = z.strictObject({
  timeout: DurationSchema.default(30_000).describe(
    'How long to wait for the operation to finish (default 30s, at most 60s)',
  ),
});
export type WaitOperationQuery = z.infer<typeof WaitOperationQuerySchema>;

/** An operation's representation. */
export function toOperationDto(row: Operation): OperationDto {
  const error = row.errorCode !== null ? { code: row.errorCode, message: row.errorMessage ?? '' } : null;
  return {
    id: row.id,
    kind: row.kind,
    status: row.status,
    project_id: row.projectId,
    vm_id: row.vmId,
    host_id: row.hostId,
    percent: row.percent,
    progress: asObject(row.progress),
    params: asObject(row.params),
    result: row.result === null ? null : asObject(row.result),
    error,
    attempts: row.attempts,
    created_at: iso(row.createdAt),
    updated_at: iso(row.updatedAt),
    started_at: isoOrNull(row.startedAt),
    finished_at: isoOrNull(row.finishedAt),
    etag: contentEtag({
      id: row.id,
      status: row.status,
      percent: row.percent,
      updated: row.updatedAt.getTime(),
    }),
  };
}

function asObject(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}
