import { VM_STATES } from '@hangar/vmm-core';
import { z } from 'zod';
import { versionEtag } from '../../common/etag/etag.js';
import { iso, LabelsSchema, NameSchema, TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import { pageQueryShape, pageSchema } from '../../common/pagination/pagination.js';
import type { Vm } from '../../gen/prisma/client.js';
import { OperationSchema } from '../operations/operation.schemas.js';
import { MAX_USER_DATA_BYTES } from './vms.service.js';

/** A flavor or image reference: its id or its name. */
const ReferenceSchema = z.union([UuidSchema, NameSchema]);

/** A virtual machine. `status` is what its host last observed; `desired_state` what was asked. */
export const VmSchema = z
  .strictObject({
    id: UuidSchema,
    project_id: UuidSchema,
    name: NameSchema,
    flavor_id: UuidSchema,
    image_id: UuidSchema,
    host_id: UuidSchema.nullable().describe('The host it runs on; null before placement and after deletion'),
    vcpus: z.int().min(1),
    memory_mib: z.int().min(1),
    disk_gib: z.int().min(0),
    status: z.enum(VM_STATES).describe('Observed state (UNKNOWN while its host is unreachable)'),
    desired_state: z.enum(['RUNNING', 'STOPPED', 'PAUSED', 'DELETED']),
    labels: LabelsSchema,
    anti_affinity_group: z.string().nullable(),
    cpu_model: z.string(),
    machine_type: z.string(),
    error_message: z.string().nullable().describe('Why the VM is in ERROR'),
    created_at: TimestampSchema,
    updated_at: TimestampSchema,
    etag: z.string().describe('Changes with every write to the VM (its version)'),
  })
  .meta({ id: 'Vm' });
export type VmDto = z.infer<typeof VmSchema>;

/** A page of `GET /v1/vms`. */
export const VmPageSchema = pageSchema(VmSchema, 'VmPage');

/** `POST /v1/vms`. */
export const CreateVmBodySchema = z
  .strictObject({
    name: NameSchema.describe('Unique among the VMs of the project; also the host name of the guest'),
    flavor: ReferenceSchema.describe('Flavor id or name'),
    image: ReferenceSchema.describe('Image id or name'),
    labels: LabelsSchema.optional(),
    user_data: z
      .string()
      .max(MAX_USER_DATA_BYTES)
      .optional()
      .describe('cloud-init user-data; a script starting with #! runs at first boot'),
    anti_affinity_group: NameSchema.optional().describe(
      'No two VMs of the group (in this project) share a host',
    ),
    cpu_model: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/)
      .optional()
      .describe('Named QEMU CPU model (default qemu64); host and max are refused'),
    machine_type: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]{0,63}$/)
      .optional()
      .describe('QEMU machine type (default pc)'),
  })
  .meta({ id: 'CreateVmRequest' });
export type CreateVmBody = z.infer<typeof CreateVmBodySchema>;

/** The answer to `POST /v1/vms`: the VM (PENDING) and the operation that creates it. */
export const CreateVmResponseSchema = z
  .strictObject({ vm: VmSchema, operation: OperationSchema })
  .meta({ id: 'CreateVmResponse' });

/** `PATCH /v1/vms/{id}`. */
export const UpdateVmBodySchema = z
  .strictObject({ name: NameSchema.optional(), labels: LabelsSchema.optional() })
  .refine((body) => body.name !== undefined || body.labels !== undefined, 'give name and/or labels')
  .meta({ id: 'UpdateVmRequest' });
export type UpdateVmBody = z.infer<typeof UpdateVmBodySchema>;

/** `POST /v1/vms/{id}/stop`. */
export const StopVmBodySchema = z
  .strictObject({
    force: z.boolean().default(false).describe('Skip the ACPI shutdown of the guest: power off at once'),
  })
  .optional()
  .meta({ id: 'StopVmRequest' });
export type StopVmBody = z.infer<typeof StopVmBodySchema>;

/** `GET /v1/vms`. */
export const ListVmsQuerySchema = z.strictObject({
  ...pageQueryShape,
  status: z.enum(VM_STATES).optional().describe('Only VMs in this observed state'),
  host_id: UuidSchema.optional().describe('Only VMs on this host'),
  name: NameSchema.optional().describe('Only the VM with this name'),
  project_id: UuidSchema.optional().describe('Admins: only the VMs of this project'),
});
export type ListVmsQueryDto = z.infer<typeof ListVmsQuerySchema>;

/** `GET /v1/vms/{id}/console`. */
export const ConsoleQuerySchema = z.strictObject({
  tail_bytes: z.coerce
    .number()
    .int()
    .min(1)
    .max(1024 * 1024)
    .default(64 * 1024)
    .describe('How much of the end of the log to return'),
});
export type ConsoleQuery = z.infer<typeof ConsoleQuerySchema>;

/** The answer of `GET /v1/vms/{id}/console`. */
export const VmConsoleSchema = z
  .strictObject({
    vm_id: UuidSchema,
    host_id: UuidSchema,
    text: z.string().describe('The tail of the serial console (ttyS0)'),
  })
  .meta({ id: 'VmConsole' });
export type VmConsoleDto = z.infer<typeof VmConsoleSchema>;

/** A VM's representation; its ETag is its version, bumped by the database on every write. */
export function toVmDto(row: Omit<Vm, 'userData' | 'deletedAt'>): VmDto {
  return {
    id: row.id,
    project_id: row.projectId,
    name: row.name,
    flavor_id: row.flavorId,
    image_id: row.imageId,
    host_id: row.hostId,
    vcpus: row.vcpus,
    memory_mib: row.memoryMib,
    disk_gib: row.diskGib,
    status: row.observedState,
    desired_state: row.desiredState,
    labels: (row.labels ?? {}) as Record<string, string>,
    anti_affinity_group: row.antiAffinityGroup,
    cpu_model: row.cpuModel,
    machine_type: row.machineType,
    error_message: row.errorMessage,
    created_at: iso(row.createdAt),
    updated_at: iso(row.updatedAt),
    etag: versionEtag(row.version),
  };
}
