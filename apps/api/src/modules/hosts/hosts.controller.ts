import { IfMatch, type IfMatchCondition } from '../../common/etag/etag.js';
import { Roles } from '../../common/http/access.decorators.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { type HttpResult, withEtag } from '../../common/http/http-result.js';
import { ValidBody, ValidParams, ValidQuery } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import type { Page } from '../../common/pagination/pagination.js';
import {
  type HostDto,
  HostPageSchema,
  HostSchema,
  type ListHostsQuery,
  ListHostsQuerySchema,
  type UpdateHostBody,
  UpdateHostBodySchema,
} from './host.schemas.js';
import { HostsService } from './hosts.service.js';

/** `/v1/hosts`: hypervisor hosts, admin only. Agents add them by registering with a join token. */
@Roles('admin')
@Resource({
  path: 'hosts',
  tag: 'Hosts',
  description: 'Hypervisor hosts and the join tokens their agents register with',
})
export class HostsController {
  constructor(private readonly hosts: HostsService) {}

  @Endpoint({
    method: 'GET',
    operationId: 'listHosts',
    summary: 'List hosts',
    query: ListHostsQuerySchema,
    response: HostPageSchema,
  })
  list(@ValidQuery() query: ListHostsQuery): Promise<Page<HostDto>> {
    return this.hosts.list(query);
  }

  @Endpoint({
    method: 'GET',
    path: ':id',
    operationId: 'getHost',
    summary: 'Get a host',
    params: IdParamsSchema,
    response: HostSchema,
    headers: ['ETag'],
    errors: ['HOST_NOT_FOUND'],
  })
  async get(@ValidParams() params: IdParams): Promise<HttpResult<HostDto>> {
    return withEtag(await this.hosts.get(params.id));
  }

  @Endpoint({
    method: 'PATCH',
    path: ':id',
    operationId: 'updateHost',
    summary: "Change a host's allocation ratios or labels",
    params: IdParamsSchema,
    body: UpdateHostBodySchema,
    response: HostSchema,
    headers: ['ETag'],
    errors: ['HOST_NOT_FOUND'],
  })
  async update(
    @ValidParams() params: IdParams,
    @ValidBody() body: UpdateHostBody,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<HttpResult<HostDto>> {
    return withEtag(await this.hosts.update(params.id, body, ifMatch));
  }

  @Endpoint({
    method: 'POST',
    path: ':id/cordon',
    operationId: 'cordonHost',
    summary: 'Stop placing new VMs on a host (its VMs keep running)',
    status: 200,
    params: IdParamsSchema,
    response: HostSchema,
    headers: ['ETag'],
    errors: ['HOST_NOT_FOUND'],
  })
  async cordon(@ValidParams() params: IdParams): Promise<HttpResult<HostDto>> {
    return withEtag(await this.hosts.setCordoned(params.id, true));
  }

  @Endpoint({
    method: 'POST',
    path: ':id/uncordon',
    operationId: 'uncordonHost',
    summary: 'Place new VMs on a host again',
    status: 200,
    params: IdParamsSchema,
    response: HostSchema,
    headers: ['ETag'],
    errors: ['HOST_NOT_FOUND'],
  })
  async uncordon(@ValidParams() params: IdParams): Promise<HttpResult<HostDto>> {
    return withEtag(await this.hosts.setCordoned(params.id, false));
  }

  @Endpoint({
    method: 'DELETE',
    path: ':id',
    operationId: 'deleteHost',
    summary: 'Remove a host that holds no VM',
    params: IdParamsSchema,
    errors: ['HOST_NOT_FOUND', 'HOST_NOT_EMPTY'],
  })
  async delete(
    @ValidParams() params: IdParams,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<void> {
    await this.hosts.delete(params.id, ifMatch);
  }
}
