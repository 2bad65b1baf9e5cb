import { z } from 'zod';
import { Roles } from '../../common/http/access.decorators.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { HttpResult } from '../../common/http/http-result.js';
import { Ctx, isAdmin, type RequestContext } from '../../common/http/request-context.js';
import { ValidParams } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import {
  type HostMetricsDto,
  HostMetricsSchema,
  toHostMetricsDto,
  toVmMetricsDto,
  type VmMetricsDto,
  VmMetricsSchema,
} from './metrics.schemas.js';
import { MetricsService } from './metrics.service.js';
import { PROMETHEUS_CONTENT_TYPE } from './prometheus.js';

/** `GET /v1/vms/{id}/metrics`: the VM's latest sample (another project's VM is a 404). */
@Resource({ path: 'vms', tag: 'VMs' })
export class VmMetricsController {
  constructor(private readonly metrics: MetricsService) {}

  @Endpoint({
    method: 'GET',
    path: ':id/metrics',
    operationId: 'getVmMetrics',
    summary: "The VM's latest metrics sample",
    params: IdParamsSchema,
    response: VmMetricsSchema,
    errors: ['VM_NOT_FOUND'],
  })
  async get(@Ctx() ctx: RequestContext, @ValidParams() params: IdParams): Promise<VmMetricsDto> {
    return toVmMetricsDto(
      await this.metrics.vmMetrics(params.id, isAdmin(ctx) ? {} : { projectId: ctx.projectId }),
    );
  }
}

/** `GET /v1/hosts/{id}/metrics` (admin, like every host read). */
@Roles('admin')
@Resource({ path: 'hosts', tag: 'Hosts' })
export class HostMetricsController {
  constructor(private readonly metrics: MetricsService) {}

  @Endpoint({
    method: 'GET',
    path: ':id/metrics',
    operationId: 'getHostMetrics',
    summary: "The host's latest metrics sample",
    params: IdParamsSchema,
    response: HostMetricsSchema,
    errors: ['HOST_NOT_FOUND'],
  })
  async get(@ValidParams() params: IdParams): Promise<HostMetricsDto> {
    return toHostMetricsDto(await this.metrics.hostMetrics(params.id));
  }
}

/**
 * `GET /metrics`: every host and VM in the Prometheus text format (`hangar_` names). It names
 * every project's VMs, so it takes an admin key (Prometheus: `authorization: {credentials: …}`).
 */
@Roles('admin')
@Resource({ path: 'metrics', tag: 'Metrics', unversioned: true, description: 'Prometheus exposition' })
export class PrometheusController {
  constructor(private readonly metrics: MetricsService) {}

  @Endpoint({
    method: 'GET',
    operationId: 'getPrometheusMetrics',
    summary: 'Cluster metrics in the Prometheus text format',
    response: z.string(),
    produces: 'text/plain',
  })
  async scrape(): Promise<HttpResult<string>> {
    return new HttpResult(await this.metrics.prometheusText(), {
      headers: { 'content-type': PROMETHEUS_CONTENT_TYPE },
    });
  }
}
