import { z } from 'zod';
import { DescriptionSchema, NameSchema, TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import { pageQueryShape, pageSchema } from '../../common/pagination/pagination.js';

const INT32_MAX = 2_147_483_647;

/** What a project's VMs may use in total. */
export const QuotaLimitsSchema = z
  .strictObject({
    vcpus: z.int().min(0).max(1_000_000).describe('Virtual CPUs of all VMs of the project'),
    memory_mib: z.int().min(0).max(INT32_MAX).describe('Memory of all VMs of the project, MiB'),
    vms: z.int().min(0).max(1_000_000).describe('Number of VMs of the project'),
  })
  .meta({ id: 'QuotaLimits' });
export type QuotaLimits = z.infer<typeof QuotaLimitsSchema>;

/** A project: a tenant owning VMs, API keys and operations. */
export const ProjectSchema = z
  .strictObject({
    id: UuidSchema,
    name: NameSchema,
    description: z.string(),
    quota: QuotaLimitsSchema,
    created_at: TimestampSchema,
    updated_at: TimestampSchema,
    etag: z.string(),
  })
  .meta({ id: 'Project' });
export type ProjectDto = z.infer<typeof ProjectSchema>;

/** `POST /v1/projects`. */
export const CreateProjectBodySchema = z
  .strictObject({
    name: NameSchema,
    description: DescriptionSchema.default(''),
    quota: QuotaLimitsSchema.partial()
      .optional()
      .describe('Limits; omitted ones take the defaults (64 vCPUs, 128 GiB, 32 VMs)'),
  })
  .meta({ id: 'CreateProjectRequest' });
export type CreateProjectBody = z.infer<typeof CreateProjectBodySchema>;

/** `PATCH /v1/projects/{id}`: only the fields given change. */
export const UpdateProjectBodySchema = z
  .strictObject({
    name: NameSchema.optional(),
    description: DescriptionSchema.optional(),
    quota: QuotaLimitsSchema.partial().optional(),
  })
  .meta({ id: 'UpdateProjectRequest' });
export type UpdateProjectBody = z.infer<typeof UpdateProjectBodySchema>;

/** `GET /v1/projects`. */
export const ListProjectsQuerySchema = z.strictObject({
  ...pageQueryShape,
  name: NameSchema.optional().describe('Only the project with this name'),
});
export type ListProjectsQuery = z.infer<typeof ListProjectsQuerySchema>;

export const ProjectPageSchema = pageSchema(ProjectSchema, 'ProjectPage');

/** A project's quota and what its VMs use now. */
export const ProjectQuotaSchema = z
  .strictObject({
    project_id: UuidSchema,
    limits: QuotaLimitsSchema,
    usage: z.strictObject({ vcpus: z.int().min(0), memory_mib: z.int().min(0), vms: z.int().min(0) }),
    etag: z.string().describe("The project's entity tag (the quota is part of the project)"),
  })
  .meta({ id: 'ProjectQuota' });
export type ProjectQuotaDto = z.infer<typeof ProjectQuotaSchema>;
