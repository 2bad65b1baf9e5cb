import { PoolPathSchema } from '@hangar/vmm-core';
import { z } from 'zod';
import { NameSchema, TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import { pageQueryShape, pageSchema } from '../../common/pagination/pagination.js';

/** vmm-core's rules for a pool name and a path inside a pool: the agent will apply the same. */
const PoolNameSchema = PoolPathSchema.shape.pool;
const PoolFileSchema = PoolPathSchema.shape.path;

/** A boot image registered on a storage pool. */
export const ImageSchema = z
  .strictObject({
    id: UuidSchema,
    name: NameSchema,
    pool: z.string(),
    kernel_path: z.string().nullable().describe('Kernel for direct boot, relative to the pool'),
    initrd_path: z.string().nullable(),
    cmdline: z.string().nullable(),
    disk_path: z
      .string()
      .nullable()
      .describe('Disk image the VM disks are overlays of, relative to the pool'),
    format: z.enum(['qcow2', 'raw']),
    created_at: TimestampSchema,
    etag: z.string(),
  })
  .meta({ id: 'Image' });
export type ImageDto = z.infer<typeof ImageSchema>;

/**
 * `POST /v1/images`: registers files that already exist on a storage pool of the hosts (the api
 * never touches hosts' disks; the agent checks the files when a VM boots). A kernel (direct boot)
 * or a disk (or both) is required; initrd and cmdline go with a kernel.
 */
export const CreateImageBodySchema = z
  .strictObject({
    name: NameSchema,
    pool: PoolNameSchema.describe('Storage pool name, as the agents report it'),
    kernel_path: PoolFileSchema.optional(),
    initrd_path: PoolFileSchema.optional(),
    cmdline: z
      .string()
      .max(4096)
      .refine((s) => !/[\0\n]/.test(s), 'no NUL or newline')
      .optional(),
    disk_path: PoolFileSchema.optional(),
    format: z.enum(['qcow2', 'raw']).default('qcow2').describe('Format of the disk image'),
  })
  .superRefine((image, ctx) => {
    if (image.kernel_path === undefined && image.disk_path === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['kernel_path'],
        message: 'a kernel_path or a disk_path is required',
      });
    }
    for (const field of ['initrd_path', 'cmdline'] as const) {
      if (image[field] !== undefined && image.kernel_path === undefined) {
        ctx.addIssue({ code: 'custom', path: [field], message: 'only with a kernel_path' });
      }
    }
  })
  .meta({ id: 'CreateImageRequest' });
export type CreateImageBody = z.infer<typeof CreateImageBodySchema>;

/** `GET /v1/images`. */
export const ListImagesQuerySchema = z.strictObject({
  ...pageQueryShape,
  name: NameSchema.optional().describe('Only the image with this name'),
  pool: PoolNameSchema.optional().describe('Only images on this pool'),
});
export type ListImagesQuery = z.infer<typeof ListImagesQuerySchema>;

export const ImagePageSchema = pageSchema(ImageSchema, 'ImagePage');
