import { z } from 'zod';
import { LabelsSchema, QueryBooleanSchema, TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import { pageQueryShape, pageSchema } from '../../common/pagination/pagination.js';

/** Host states (see prisma/schema.prisma). */
export const HostStateSchema = z.enum(['UP', 'DOWN', 'MAINTENANCE']).meta({
  id: 'HostState',
  description:
    'UP while its agent heartbeats; DOWN after three missed heartbeats; MAINTENANCE set by an operator',
});

/** A storage pool as the host's agent reported it. */
export const HostPoolSchema = z
  .strictObject({
    name: z.string(),
    path: z.string().nullable(),
    shared: z.boolean(),
    total_bytes: z.number().nullable(),
    free_bytes: z.number().nullable(),
  })
  .meta({ id: 'HostPool' });

/** A hypervisor host. */
export const HostSchema = z
  .strictObject({
    id: UuidSchema,
    name: z.string(),
    agent_address: z.string(),
    state: HostStateSchema,
    cordoned: z.boolean().describe('No new VMs are placed on a cordoned host; its VMs stay'),
    cpu_allocation_ratio: z.number(),
    ram_allocation_ratio: z.number(),
    cores: z.int(),
    memory_mib: z.int(),
    used_vcpus: z.int(),
    used_memory_mib: z.int(),
    driver: z.string(),
    accelerator: z.string(),
    qemu_version: z.string(),
    machine_types: z.array(z.string()),
    cpu_models: z.array(z.string()),
    pools: z.array(HostPoolSchema),
    features: z.record(z.string(), z.unknown()),
    labels: z.record(z.string(), z.string()),
    agent_version: z.string(),
    last_heartbeat_at: TimestampSchema.nullable(),
    registered_at: TimestampSchema,
    updated_at: TimestampSchema,
    etag: z.string().describe('Covers what operators change (cordon, ratios, labels), not the live status'),
  })
  .meta({ id: 'Host' });
export type HostDto = z.infer<typeof HostSchema>;

/** `PATCH /v1/hosts/{id}`. */
export const UpdateHostBodySchema = z
  .strictObject({
    cpu_allocation_ratio: z
      .number()
      .positive()
      .max(64)
      .optional()
      .describe('Virtual CPUs placed per physical core (Nova cpu_allocation_ratio)'),
    ram_allocation_ratio: z
      .number()
      .positive()
      .max(8)
      .optional()
      .describe('Guest MiB placed per MiB of host memory'),
    labels: LabelsSchema.optional().describe('Replaces all labels'),
  })
  .meta({ id: 'UpdateHostRequest' });
export type UpdateHostBody = z.infer<typeof UpdateHostBodySchema>;

/** `GET /v1/hosts`. */
export const ListHostsQuerySchema = z.strictObject({
  ...pageQueryShape,
  state: HostStateSchema.optional().describe('Only hosts in this state'),
  cordoned: QueryBooleanSchema.optional().describe('Only cordoned (true) or schedulable (false) hosts'),
  name: z.string().min(1).max(253).optional().describe('Only the host with this name'),
});
export type ListHostsQuery = z.infer<typeof ListHostsQuerySchema>;

export const HostPageSchema = pageSchema(HostSchema, 'HostPage');

/** An admin-issued secret an agent presents to Register with the control plane. */
export const JoinTokenSchema = z
  .strictObject({
    id: UuidSchema,
    description: z.string(),
    created_at: TimestampSchema,
    expires_at: TimestampSchema,
    used_at: TimestampSchema.nullable().describe('When an agent registered with it (a token works once)'),
    host_id: UuidSchema.nullable().describe('The host that registered with it'),
    revoked_at: TimestampSchema.nullable(),
    state: z.enum(['active', 'used', 'expired', 'revoked']),
    etag: z.string(),
  })
  .meta({ id: 'JoinToken' });
export type JoinTokenDto = z.infer<typeof JoinTokenSchema>;

/** The answer to a create: the token with its secret, shown this once. */
export const CreatedJoinTokenSchema = JoinTokenSchema.extend({
  token: z.string().describe('hgj_<secret>: give it to the agent (joinToken); shown only now'),
}).meta({ id: 'CreatedJoinToken' });
export type CreatedJoinTokenDto = z.infer<typeof CreatedJoinTokenSchema>;

/** `POST /v1/join-tokens`. */
export const CreateJoinTokenBodySchema = z
  .strictObject({
    description: z.string().max(1024).default('').describe('Which host it is for'),
    ttl_seconds: z
      .int()
      .min(60)
      .max(7 * 24 * 3600)
      .default(3600)
      .describe('How long the token can be used'),
  })
  .meta({ id: 'CreateJoinTokenRequest' });
export type CreateJoinTokenBody = z.infer<typeof CreateJoinTokenBodySchema>;

/** `GET /v1/join-tokens`. */
export const ListJoinTokensQuerySchema = z.strictObject({ ...pageQueryShape });
export type ListJoinTokensQuery = z.infer<typeof ListJoinTokensQuerySchema>;

export const JoinTokenPageSchema = pageSchema(JoinTokenSchema, 'JoinTokenPage');
