import { z } from 'zod';

/**
 * Zod building blocks shared by the resources' schemas, so the same rule reads the same
 * everywhere (and in the OpenAPI document).
 */

/** A resource id. */
export const UuidSchema = z.uuid();

/** `{id}` path parameters. */
export const IdParamsSchema = z.strictObject({ id: UuidSchema.describe('The resource id') });
export type IdParams = z.infer<typeof IdParamsSchema>;

/** Resource names: DNS labels (they become host names, file names, CLI arguments). */
export const NameSchema = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/, 'lowercase letters, digits and "-", not at either end');

/** Free text a human reads. */
export const DescriptionSchema = z.string().max(1024);

/** Key/value labels: at most 64, keys like `env` or `team.io/owner`, values up to 255 characters. */
export const LabelsSchema = z
  .record(
    z
      .string()
      .min(1)
      .max(63)
      .regex(/^[A-Za-z0-9][A-Za-z0-9._/-]*$/, 'letters, digits, ".", "_", "/" and "-"'),
    z.string().max(255),
  )
  .refine((labels) => Object.keys(labels).length <= 64, 'at most 64 labels')
  .meta({ id: 'Labels' });

/** A timestamp in responses: RFC 3339, UTC, milliseconds. */
export const TimestampSchema = z.iso.datetime();

/** A boolean in a query string: `true` or `false`. */
export const QueryBooleanSchema = z.enum(['true', 'false']).transform((value) => value === 'true');

/** Date → RFC 3339 (responses never carry Date objects: their JSON is what the schema says). */
export function iso(date: Date): string {
  return date.toISOString();
}

/** Nullable Date → RFC 3339 or null. */
export function isoOrNull(date: Date | null): string | null {
  return date === null ? null : date.toISOString();
}
