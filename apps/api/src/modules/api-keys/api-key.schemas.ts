import { z } from 'zod';
import { QueryBooleanSchema, TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import { pageQueryShape, pageSchema } from '../../common/pagination/pagination.js';

/** The roles of API keys. */
export const ApiKeyRoleSchema = z.enum(['admin', 'member', 'reader']).meta({
  id: 'ApiKeyRole',
  description:
    'admin: runs the cluster (every project, hosts, flavors); member: manages its project; reader: reads it',
});

/** An API key, without its secret. */
export const ApiKeySchema = z
  .strictObject({
    id: UuidSchema,
    project_id: UuidSchema,
    name: z.string(),
    role: ApiKeyRoleSchema,
    prefix: z.string().describe('The public start of the key (hgr_<prefix>_…), to recognise it'),
    created_at: TimestampSchema,
    last_used_at: TimestampSchema.nullable().describe('Refreshed at most once a minute'),
    revoked_at: TimestampSchema.nullable(),
    etag: z.string(),
  })
  .meta({ id: 'ApiKey' });
export type ApiKeyDto = z.infer<typeof ApiKeySchema>;

/** The answer to a create: the key with its secret, shown this once. */
export const CreatedApiKeySchema = ApiKeySchema.extend({
  secret: z.string().describe('The whole key, hgr_<prefix>_<secret>: shown only now, never stored in clear'),
}).meta({ id: 'CreatedApiKey' });
export type CreatedApiKeyDto = z.infer<typeof CreatedApiKeySchema>;

/** `POST /v1/api-keys`. */
export const CreateApiKeyBodySchema = z
  .strictObject({
    project_id: UuidSchema.describe('The project the key acts in'),
    role: ApiKeyRoleSchema,
    name: z.string().max(63).default('').describe('What the key is for (a person, a CI job)'),
  })
  .meta({ id: 'CreateApiKeyRequest' });
export type CreateApiKeyBody = z.infer<typeof CreateApiKeyBodySchema>;

/** `GET /v1/api-keys`. */
export const ListApiKeysQuerySchema = z.strictObject({
  ...pageQueryShape,
  project_id: UuidSchema.optional().describe('Only keys of this project'),
  role: ApiKeyRoleSchema.optional().describe('Only keys with this role'),
  include_revoked: QueryBooleanSchema.default(false).describe('Also list revoked keys'),
});
export type ListApiKeysQuery = z.infer<typeof ListApiKeysQuerySchema>;

export const ApiKeyPageSchema = pageSchema(ApiKeySchema, 'ApiKeyPage');
