import { IfMatch, type IfMatchCondition } from '../../common/etag/etag.js';
import { Roles } from '../../common/http/access.decorators.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { created, type HttpResult, withEtag } from '../../common/http/http-result.js';
import { ValidBody, ValidParams, ValidQuery } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import type { Page } from '../../common/pagination/pagination.js';
import {
  type ApiKeyDto,
  ApiKeyPageSchema,
  ApiKeySchema,
  type CreateApiKeyBody,
  CreateApiKeyBodySchema,
  type CreatedApiKeyDto,
  CreatedApiKeySchema,
  type ListApiKeysQuery,
  ListApiKeysQuerySchema,
} from './api-key.schemas.js';
import { ApiKeysService } from './api-keys.service.js';

/** `/v1/api-keys`: admins issue keys for any project, list and revoke them. */
@Roles('admin')
@Resource({ path: 'api-keys', tag: 'API keys', description: 'Bearer credentials of projects, with a role' })
export class ApiKeysController {
  constructor(private readonly keys: ApiKeysService) {}

  @Endpoint({
    method: 'POST',
    operationId: 'createApiKey',
    summary: 'Issue an API key for a project (the secret is in this answer only)',
    body: CreateApiKeyBodySchema,
    response: CreatedApiKeySchema,
    headers: ['ETag', 'Location'],
    errors: ['PROJECT_NOT_FOUND'],
  })
  async create(@ValidBody() body: CreateApiKeyBody): Promise<HttpResult<CreatedApiKeyDto>> {
    const key = await this.keys.create(body);
    return created(key, `/v1/api-keys/${key.id}`);
  }

  @Endpoint({
    method: 'GET',
    operationId: 'listApiKeys',
    summary: 'List API keys',
    query: ListApiKeysQuerySchema,
    response: ApiKeyPageSchema,
  })
  list(@ValidQuery() query: ListApiKeysQuery): Promise<Page<ApiKeyDto>> {
    return this.keys.list(query);
  }

  @Endpoint({
    method: 'GET',
    path: ':id',
    operationId: 'getApiKey',
    summary: 'Get an API key',
    params: IdParamsSchema,
    response: ApiKeySchema,
    headers: ['ETag'],
    errors: ['API_KEY_NOT_FOUND'],
  })
  async get(@ValidParams() params: IdParams): Promise<HttpResult<ApiKeyDto>> {
    return withEtag(await this.keys.get(params.id));
  }

  @Endpoint({
    method: 'DELETE',
    path: ':id',
    operationId: 'revokeApiKey',
    summary: 'Revoke an API key',
    params: IdParamsSchema,
    errors: ['API_KEY_NOT_FOUND', 'CONFLICT'],
  })
  async revoke(
    @ValidParams() params: IdParams,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<void> {
    await this.keys.revoke(params.id, ifMatch);
  }
}
