import { z } from 'zod';
import { DescriptionSchema, NameSchema, TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import { pageQueryShape, pageSchema } from '../../common/pagination/pagination.js';

/** A flavor: the size of a VM (vCPUs, memory, disk). */
export const FlavorSchema = z
  .strictObject({
    id: UuidSchema,
    name: NameSchema,
    vcpus: z.int().min(1),
    memory_mib: z.int().min(1),
    disk_gib: z.int().min(0),
    description: z.string(),
    created_at: TimestampSchema,
    etag: z.string(),
  })
  .meta({ id: 'Flavor' });
export type FlavorDto = z.infer<typeof FlavorSchema>;

/** `POST /v1/flavors`. */
export const CreateFlavorBodySchema = z
  .strictObject({
    name: NameSchema,
    vcpus: z.int().min(1).max(256),
    memory_mib: z
      .int()
      .min(64)
      .max(4 * 1024 * 1024)
      .describe('Guest memory in MiB'),
    disk_gib: z.int().min(0).max(65_536).describe('Root disk size in GiB (0: the image as it is)'),
    description: DescriptionSchema.default(''),
  })
  .meta({ id: 'CreateFlavorRequest' });
export type CreateFlavorBody = z.infer<typeof CreateFlavorBodySchema>;

/** `GET /v1/flavors`. */
export const ListFlavorsQuerySchema = z.strictObject({
  ...pageQueryShape,
  name: NameSchema.optional().describe('Only the flavor with this name'),
});
export type ListFlavorsQuery = z.infer<typeof ListFlavorsQuerySchema>;

export const FlavorPageSchema = pageSchema(FlavorSchema, 'FlavorPage');
