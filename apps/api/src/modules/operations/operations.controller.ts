import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { type HttpResult, withEtag } from '../../common/http/http-result.js';
import { Ctx, isAdmin, type RequestContext } from '../../common/http/request-context.js';
import { ValidParams, ValidQuery } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import type { Page } from '../../common/pagination/pagination.js';
import {
  type ListOperationsQueryDto,
  ListOperationsQuerySchema,
  type OperationDto,
  OperationPageSchema,
  OperationSchema,
  toOperationDto,
  type WaitOperationQuery,
  WaitOperationQuerySchema,
} from './operation.schemas.js';
import { OperationService } from './operation.service.js';

/** The caller's project, or every project for an admin. */
function scopeOf(ctx: RequestContext): string | undefined {
  return isAdmin(ctx) ? undefined : ctx.projectId;
}

/** `/v1/operations`: progress and outcome of long-running actions (another project's are 404). */
@Resource({
  path: 'operations',
  tag: 'Operations',
  description: 'Long-running actions: progress, result, wait, cancel',
})
export class OperationsController {
  constructor(private readonly operations: OperationService) {}

  @Endpoint({
    method: 'GET',
    operationId: 'listOperations',
    summary: 'List operations',
    query: ListOperationsQuerySchema,
    response: OperationPageSchema,
  })
  async list(
    @Ctx() ctx: RequestContext,
    @ValidQuery() query: ListOperationsQueryDto,
  ): Promise<Page<OperationDto>> {
    const page = await this.operations.list(
      {
        projectId: scopeOf(ctx),
        ...(query.vm_id !== undefined ? { vmId: query.vm_id } : {}),
        ...(query.status !== undefined ? { status: query.status } : {}),
        ...(query.kind !== undefined ? { kind: query.kind } : {}),
      },
      query,
    );
    return { items: page.items.map(toOperationDto), next_page_token: page.next_page_token };
  }

  @Endpoint({
    method: 'GET',
    path: ':id',
    operationId: 'getOperation',
    summary: 'Get an operation',
    params: IdParamsSchema,
    response: OperationSchema,
    headers: ['ETag'],
    errors: ['OPERATION_NOT_FOUND'],
  })
  async get(@Ctx() ctx: RequestContext, @ValidParams() params: IdParams): Promise<HttpResult<OperationDto>> {
    return withEtag(toOperationDto(await this.operations.get(params.id, scopeOf(ctx))));
  }

  @Endpoint({
    method: 'GET',
    path: ':id/wait',
    operationId: 'waitOperation',
    summary: 'Wait until an operation finishes (long poll)',
    description:
      'Answers as soon as the operation is SUCCEEDED, FAILED or CANCELLED, or when `timeout` runs out; ' +
      'the status tells which.',
    params: IdParamsSchema,
    query: WaitOperationQuerySchema,
    response: OperationSchema,
    headers: ['ETag'],
    errors: ['OPERATION_NOT_FOUND'],
  })
  async wait(
    @Ctx() ctx: RequestContext,
    @ValidParams() params: IdParams,
    @ValidQuery() query: WaitOperationQuery,
  ): Promise<HttpResult<OperationDto>> {
    return withEtag(toOperationDto(await this.operations.wait(params.id, query.timeout, scopeOf(ctx))));
  }

  @Endpoint({
    method: 'DELETE',
    path: ':id',
    operationId: 'cancelOperation',
    summary: 'Cancel an operation that has not started yet',
    params: IdParamsSchema,
    status: 200,
    conditional: false,
    response: OperationSchema,
    errors: ['OPERATION_NOT_FOUND', 'INVALID_STATE'],
  })
  async cancel(@Ctx() ctx: RequestContext, @ValidParams() params: IdParams): Promise<OperationDto> {
    return toOperationDto(await this.operations.cancel(params.id, scopeOf(ctx)));
  }
}
