import { IfMatch, type IfMatchCondition } from '../../common/etag/etag.js';
import { Roles } from '../../common/http/access.decorators.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { created, type HttpResult, withEtag } from '../../common/http/http-result.js';
import { ValidBody, ValidParams, ValidQuery } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import type { Page } from '../../common/pagination/pagination.js';
import {
  type CreateFlavorBody,
  CreateFlavorBodySchema,
  type FlavorDto,
  FlavorPageSchema,
  FlavorSchema,
  type ListFlavorsQuery,
  ListFlavorsQuerySchema,
} from './flavor.schemas.js';
import { FlavorsService } from './flavors.service.js';

/** `/v1/flavors`: VM sizes. Admins create and delete them; every key reads them. */
@Resource({ path: 'flavors', tag: 'Flavors', description: 'VM sizes: vCPUs, memory and disk' })
export class FlavorsController {
  constructor(private readonly flavors: FlavorsService) {}

  @Roles('admin')
  @Endpoint({
    method: 'POST',
    operationId: 'createFlavor',
    summary: 'Create a flavor',
    body: CreateFlavorBodySchema,
    response: FlavorSchema,
    headers: ['ETag', 'Location'],
    errors: ['ALREADY_EXISTS'],
  })
  async create(@ValidBody() body: CreateFlavorBody): Promise<HttpResult<FlavorDto>> {
    const flavor = await this.flavors.create(body);
    return created(flavor, `/v1/flavors/${flavor.id}`);
  }

  @Endpoint({
    method: 'GET',
    operationId: 'listFlavors',
    summary: 'List flavors',
    query: ListFlavorsQuerySchema,
    response: FlavorPageSchema,
  })
  list(@ValidQuery() query: ListFlavorsQuery): Promise<Page<FlavorDto>> {
    return this.flavors.list(query);
  }

  @Endpoint({
    method: 'GET',
    path: ':id',
    operationId: 'getFlavor',
    summary: 'Get a flavor',
    params: IdParamsSchema,
    response: FlavorSchema,
    headers: ['ETag'],
    errors: ['FLAVOR_NOT_FOUND'],
  })
  async get(@ValidParams() params: IdParams): Promise<HttpResult<FlavorDto>> {
    return withEtag(await this.flavors.get(params.id));
  }

  @Roles('admin')
  @Endpoint({
    method: 'DELETE',
    path: ':id',
    operationId: 'deleteFlavor',
    summary: 'Delete a flavor no VM refers to',
    params: IdParamsSchema,
    errors: ['FLAVOR_NOT_FOUND', 'FLAVOR_IN_USE'],
  })
  async delete(
    @ValidParams() params: IdParams,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<void> {
    await this.flavors.delete(params.id, ifMatch);
  }
}
