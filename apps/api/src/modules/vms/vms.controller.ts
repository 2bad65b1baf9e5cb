import {
  expectedVersionOf,
  IfMatch,
  type IfMatchCondition,
  preconditionFailed,
  versionEtag,
} from '../../common/etag/etag.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { accepted, type HttpResult, withEtag } from '../../common/http/http-result.js';
import { Ctx, isAdmin, type RequestContext } from '../../common/http/request-context.js';
import { ValidBody, ValidParams, ValidQuery } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import type { Page } from '../../common/pagination/pagination.js';
import { VersionConflictError } from '../../infra/prisma/vm-version.js';
import { type OperationDto, OperationSchema, toOperationDto } from '../operations/operation.schemas.js';
import { type ResizeVmBody, ResizeVmBodySchema } from './usecases/resize-vm.schemas.js';
import {
  type ConsoleQuery,
  ConsoleQuerySchema,
  type CreateVmBody,
  CreateVmBodySchema,
  CreateVmResponseSchema,
  type ListVmsQueryDto,
  ListVmsQuerySchema,
  type StopVmBody,
  StopVmBodySchema,
  toVmDto,
  type UpdateVmBody,
  UpdateVmBodySchema,
  type VmConsoleDto,
  VmConsoleSchema,
  type VmDto,
  VmPageSchema,
  VmSchema,
} from './vm.schemas.js';
import { type VmPowerAction, type VmScope, VmsService } from './vms.service.js';

/** The caller's project, or every project for an admin. */
function scopeOf(ctx: RequestContext): VmScope {
  return isAdmin(ctx) ? {} : { projectId: ctx.projectId };
}

const ACTION_ERRORS = ['VM_NOT_FOUND', 'INVALID_STATE', 'OPERATION_IN_PROGRESS'] as const;

/**
 * `/v1/vms`: virtual machines of the caller's project (an admin sees every project). Create,
 * actions and delete answer `202 Accepted` with the operation that carries them out and
 * `Location: /v1/operations/{id}`; another project's VM is a 404.
 */
@Resource({ path: 'vms', tag: 'VMs', description: 'Virtual machines and their power actions' })
export class VmsController {
  constructor(private readonly vms: VmsService) {}

  @Endpoint({
    method: 'POST',
    operationId: 'createVm',
    summary: 'Create a VM',
    description: 'Places, creates and starts the VM in the background; follow the operation.',
    body: CreateVmBodySchema,
    status: 202,
    response: CreateVmResponseSchema,
    headers: ['Location'],
    errors: ['QUOTA_EXCEEDED', 'FLAVOR_NOT_FOUND', 'IMAGE_NOT_FOUND', 'ALREADY_EXISTS'],
  })
  async create(
    @Ctx() ctx: RequestContext,
    @ValidBody() body: CreateVmBody,
  ): Promise<HttpResult<{ vm: VmDto; operation: OperationDto }>> {
    const { vm, operation } = await this.vms.create({
      projectId: ctx.projectId,
      name: body.name,
      flavor: body.flavor,
      image: body.image,
      ...(body.labels !== undefined ? { labels: body.labels } : {}),
      ...(body.user_data !== undefined ? { userData: body.user_data } : {}),
      ...(body.anti_affinity_group !== undefined ? { antiAffinityGroup: body.anti_affinity_group } : {}),
      ...(body.cpu_model !== undefined ? { cpuModel: body.cpu_model } : {}),
      ...(body.machine_type !== undefined ? { machineType: body.machine_type } : {}),
    });
    return accepted({ vm: toVmDto(vm), operation: toOperationDto(operation) }, operation.id);
  }

  @Endpoint({
    method: 'GET',
    operationId: 'listVms',
    summary: 'List VMs',
    query: ListVmsQuerySchema,
    response: VmPageSchema,
  })
  async list(@Ctx() ctx: RequestContext, @ValidQuery() query: ListVmsQueryDto): Promise<Page<VmDto>> {
    // A member sees its own project only: a filter naming another project lists nothing.
    if (!isAdmin(ctx) && query.project_id !== undefined && query.project_id !== ctx.projectId) {
      return { items: [], next_page_token: null };
    }
    const projectId = isAdmin(ctx) ? query.project_id : ctx.projectId;
    const page = await this.vms.list(
      {
        ...(projectId !== undefined ? { projectId } : {}),
        ...(query.status !== undefined ? { status: query.status } : {}),
        ...(query.host_id !== undefined ? { hostId: query.host_id } : {}),
        ...(query.name !== undefined ? { name: query.name } : {}),
      },
      query,
    );
    return { items: page.items.map(toVmDto), next_page_token: page.next_page_token };
  }

  @Endpoint({
    method: 'GET',
    path: ':id',
    operationId: 'getVm',
    summary: 'Get a VM',
    params: IdParamsSchema,
    response: VmSchema,
    headers: ['ETag'],
    errors: ['VM_NOT_FOUND'],
  })
  async get(@Ctx() ctx: RequestContext, @ValidParams() params: IdParams): Promise<HttpResult<VmDto>> {
    return withEtag(toVmDto(await this.vms.get(params.id, scopeOf(ctx))));
  }

  @Endpoint({
    method: 'PATCH',
    path: ':id',
    operationId: 'updateVm',
    summary: 'Rename or relabel a VM',
    params: IdParamsSchema,
    body: UpdateVmBodySchema,
    response: VmSchema,
    headers: ['ETag'],
    errors: ['VM_NOT_FOUND', 'ALREADY_EXISTS'],
  })
  async update(
    @Ctx() ctx: RequestContext,
    @ValidParams() params: IdParams,
    @ValidBody() body: UpdateVmBody,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<HttpResult<VmDto>> {
    const expectedVersion = expectedVersionOf(ifMatch);
    const vm = await withCurrentEtag(
      this.vms.update(
        params.id,
        {
          ...(body.name !== undefined ? { name: body.name } : {}),
          ...(body.labels !== undefined ? { labels: body.labels } : {}),
        },
        { ...scopeOf(ctx), ...(expectedVersion !== undefined ? { expectedVersion } : {}) },
      ),
    );
    return withEtag(toVmDto(vm));
  }

  @Endpoint({
    method: 'DELETE',
    path: ':id',
    operationId: 'deleteVm',
    summary: 'Delete a VM',
    description: 'Allowed while the VM is STOPPED, ERROR, PENDING or CREATING; stop it first otherwise.',
    params: IdParamsSchema,
    status: 202,
    response: OperationSchema,
    headers: ['Location'],
    errors: [...ACTION_ERRORS],
  })
  async delete(
    @Ctx() ctx: RequestContext,
    @ValidParams() params: IdParams,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<HttpResult<OperationDto>> {
    const expectedVersion = expectedVersionOf(ifMatch);
    const { operation } = await withCurrentEtag(
      this.vms.delete(params.id, {
        ...scopeOf(ctx),
        ...(expectedVersion !== undefined ? { expectedVersion } : {}),
      }),
    );
    return accepted(toOperationDto(operation), operation.id);
  }

  @Endpoint({ ...actionEndpoint('start', 'Start a STOPPED VM') })
  start(@Ctx() ctx: RequestContext, @ValidParams() params: IdParams): Promise<HttpResult<OperationDto>> {
    return this.action(ctx, params.id, 'start');
  }

  @Endpoint({
    ...actionEndpoint('stop', 'Stop a VM (ACPI shutdown, or at once with force)'),
    body: StopVmBodySchema,
  })
  stop(
    @Ctx() ctx: RequestContext,
    @ValidParams() params: IdParams,
    @ValidBody() body: StopVmBody,
  ): Promise<HttpResult<OperationDto>> {
    return this.action(ctx, params.id, 'stop', body?.force ?? false);
  }

  @Endpoint({ ...actionEndpoint('reboot', 'Reboot a RUNNING VM') })
  reboot(@Ctx() ctx: RequestContext, @ValidParams() params: IdParams): Promise<HttpResult<OperationDto>> {
    return this.action(ctx, params.id, 'reboot');
  }

  @Endpoint({ ...actionEndpoint('pause', 'Pause a RUNNING VM (its vCPUs stop; memory stays)') })
  pause(@Ctx() ctx: RequestContext, @ValidParams() params: IdParams): Promise<HttpResult<OperationDto>> {
    return this.action(ctx, params.id, 'pause');
  }

  @Endpoint({ ...actionEndpoint('resume', 'Resume a PAUSED VM') })
  resume(@Ctx() ctx: RequestContext, @ValidParams() params: IdParams): Promise<HttpResult<OperationDto>> {
    return this.action(ctx, params.id, 'resume');
  }

  @Endpoint({
    method: 'POST',
    path: ':id/resize',
    operationId: 'resizeVm',
    summary: 'Resize a STOPPED VM to another flavor',
    description:
      "Gives the VM the flavor's vCPUs and memory (its disk keeps its size) on the host it is on: " +
      "the project's quota and the host's room are checked at once (a resize never moves a VM). " +
      'The new size applies at the next start.',
    params: IdParamsSchema,
    body: ResizeVmBodySchema,
    status: 202,
    response: OperationSchema,
    headers: ['Location'],
    errors: [...ACTION_ERRORS, 'FLAVOR_NOT_FOUND', 'CONFLICT', 'QUOTA_EXCEEDED', 'NO_VALID_HOST'],
  })
  async resize(
    @Ctx() ctx: RequestContext,
    @ValidParams() params: IdParams,
    @ValidBody() body: ResizeVmBody,
  ): Promise<HttpResult<OperationDto>> {
    const { operation } = await this.vms.resize(params.id, body.flavor, scopeOf(ctx));
    return accepted(toOperationDto(operation), operation.id);
  }

  @Endpoint({
    method: 'GET',
    path: ':id/console',
    operationId: 'getVmConsole',
    summary: "The tail of the VM's serial console",
    params: IdParamsSchema,
    query: ConsoleQuerySchema,
    response: VmConsoleSchema,
    errors: ['VM_NOT_FOUND', 'INVALID_STATE', 'HOST_UNREACHABLE', 'AGENT_ERROR'],
  })
  async console(
    @Ctx() ctx: RequestContext,
    @ValidParams() params: IdParams,
    @ValidQuery() query: ConsoleQuery,
  ): Promise<VmConsoleDto> {
    const log = await this.vms.consoleLog(params.id, { ...scopeOf(ctx), tailBytes: query.tail_bytes });
    return { vm_id: log.vmId, host_id: log.hostId, text: log.text };
  }

  private async action(
    ctx: RequestContext,
    vmId: string,
    action: VmPowerAction,
    force = false,
  ): Promise<HttpResult<OperationDto>> {
    const { operation } = await this.vms.requestAction(vmId, action, { ...scopeOf(ctx), force });
    return accepted(toOperationDto(operation), operation.id);
  }
}

/** A stale If-Match becomes the 412 that names the VM's current ETag, so the client can re-read. */
async function withCurrentEtag<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    if (error instanceof VersionConflictError) throw preconditionFailed(versionEtag(error.currentVersion));
    throw error;
  }
}

/** The shared shape of `POST /v1/vms/{id}/<action>`. */
function actionEndpoint(action: VmPowerAction, summary: string) {
  return {
    method: 'POST' as const,
    path: `:id/${action}`,
    operationId: `${action}Vm`,
    summary,
    params: IdParamsSchema,
    status: 202,
    response: OperationSchema,
    headers: ['Location' as const],
    errors: [...ACTION_ERRORS],
  };
}
