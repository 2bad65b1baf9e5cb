import { z } from 'zod';
import { NameSchema, UuidSchema } from '../../../common/http/schemas.js';

/** `POST /v1/vms/{id}/resize`. */
export const ResizeVmBodySchema = z
  .strictObject({
    flavor: z.union([UuidSchema, NameSchema]).describe('The new flavor, by id or name'),
  })
  .meta({ id: 'ResizeVmRequest' });
export type ResizeVmBody = z.infer<typeof ResizeVmBodySchema>;

/** A VM's size as a resize records it (the operation's `params.from` and target). */
const SizeSchema = z.strictObject({
  flavor_id: UuidSchema,
  vcpus: z.int().min(1),
  memory_mib: z.int().min(1),
});

/**
 * The `params` of a `resize` operation: the target flavor and size, copied from the flavor when
 * the resize was accepted, and the size the VM had then (what a failed resize goes back to).
 */
export const ResizeParamsSchema = SizeSchema.extend({
  flavor: NameSchema.describe("The target flavor's name"),
  from: SizeSchema,
});
export type ResizeParams = z.infer<typeof ResizeParamsSchema>;
