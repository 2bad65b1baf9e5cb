import { IfMatch, type IfMatchCondition } from '../../common/etag/etag.js';
import { Roles } from '../../common/http/access.decorators.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { created, type HttpResult, withEtag } from '../../common/http/http-result.js';
import { ValidBody, ValidParams, ValidQuery } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import type { Page } from '../../common/pagination/pagination.js';
import {
  type CreatedJoinTokenDto,
  CreatedJoinTokenSchema,
  type CreateJoinTokenBody,
  CreateJoinTokenBodySchema,
  type JoinTokenDto,
  JoinTokenPageSchema,
  JoinTokenSchema,
  type ListJoinTokensQuery,
  ListJoinTokensQuerySchema,
} from './host.schemas.js';
import { JoinTokensService } from './join-tokens.service.js';

/** `/v1/join-tokens`: single-use secrets an agent presents to register its host (admin only). */
@Roles('admin')
@Resource({ path: 'join-tokens', tag: 'Hosts' })
export class JoinTokensController {
  constructor(private readonly tokens: JoinTokensService) {}

  @Endpoint({
    method: 'POST',
    operationId: 'createJoinToken',
    summary: 'Issue a join token for an agent (the secret is in this answer only)',
    body: CreateJoinTokenBodySchema,
    response: CreatedJoinTokenSchema,
    headers: ['ETag', 'Location'],
  })
  async create(@ValidBody() body: CreateJoinTokenBody): Promise<HttpResult<CreatedJoinTokenDto>> {
    const token = await this.tokens.create(body);
    return created(token, `/v1/join-tokens/${token.id}`);
  }

  @Endpoint({
    method: 'GET',
    operationId: 'listJoinTokens',
    summary: 'List join tokens',
    query: ListJoinTokensQuerySchema,
    response: JoinTokenPageSchema,
  })
  list(@ValidQuery() query: ListJoinTokensQuery): Promise<Page<JoinTokenDto>> {
    return this.tokens.list(query);
  }

  @Endpoint({
    method: 'GET',
    path: ':id',
    operationId: 'getJoinToken',
    summary: 'Get a join token',
    params: IdParamsSchema,
    response: JoinTokenSchema,
    headers: ['ETag'],
    errors: ['JOIN_TOKEN_NOT_FOUND'],
  })
  async get(@ValidParams() params: IdParams): Promise<HttpResult<JoinTokenDto>> {
    return withEtag(await this.tokens.get(params.id));
  }

  @Endpoint({
    method: 'DELETE',
    path: ':id',
    operationId: 'revokeJoinToken',
    summary: 'Revoke a join token',
    description:
      'An unused token can no longer be redeemed; the host that registered with a used one is refused at its next Register.',
    params: IdParamsSchema,
    errors: ['JOIN_TOKEN_NOT_FOUND'],
  })
  async revoke(
    @ValidParams() params: IdParams,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<void> {
    await this.tokens.revoke(params.id, ifMatch);
  }
}
