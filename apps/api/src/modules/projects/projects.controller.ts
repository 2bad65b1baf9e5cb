import { IfMatch, type IfMatchCondition } from '../../common/etag/etag.js';
import { Roles } from '../../common/http/access.decorators.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { created, type HttpResult, withEtag } from '../../common/http/http-result.js';
import { Ctx, type RequestContext } from '../../common/http/request-context.js';
import { ValidBody, ValidParams, ValidQuery } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import type { Page } from '../../common/pagination/pagination.js';
import {
  type CreateProjectBody,
  CreateProjectBodySchema,
  type ListProjectsQuery,
  ListProjectsQuerySchema,
  type ProjectDto,
  ProjectPageSchema,
  type ProjectQuotaDto,
  ProjectQuotaSchema,
  ProjectSchema,
  type QuotaLimits,
  QuotaLimitsSchema,
  type UpdateProjectBody,
  UpdateProjectBodySchema,
} from './project.schemas.js';
import { ProjectsService } from './projects.service.js';

/**
 * `/v1/projects`: tenants and their quotas. Admins manage every project; any key reads its own
 * project and quota.
 */
@Resource({
  path: 'projects',
  tag: 'Projects',
  description: 'Tenants: they own VMs and API keys; quotas bound their VMs',
})
export class ProjectsController {
  constructor(private readonly projects: ProjectsService) {}

  @Roles('admin')
  @Endpoint({
    method: 'POST',
    operationId: 'createProject',
    summary: 'Create a project',
    body: CreateProjectBodySchema,
    response: ProjectSchema,
    headers: ['ETag', 'Location'],
    errors: ['ALREADY_EXISTS'],
  })
  async create(@ValidBody() body: CreateProjectBody): Promise<HttpResult<ProjectDto>> {
    const project = await this.projects.create(body);
    return created(project, `/v1/projects/${project.id}`);
  }

  @Endpoint({
    method: 'GET',
    operationId: 'listProjects',
    summary: 'List projects (admins: all of them; other keys: their own)',
    query: ListProjectsQuerySchema,
    response: ProjectPageSchema,
  })
  list(@Ctx() caller: RequestContext, @ValidQuery() query: ListProjectsQuery): Promise<Page<ProjectDto>> {
    return this.projects.list(caller, query);
  }

  @Endpoint({
    method: 'GET',
    path: ':id',
    operationId: 'getProject',
    summary: 'Get a project',
    params: IdParamsSchema,
    response: ProjectSchema,
    headers: ['ETag'],
    errors: ['PROJECT_NOT_FOUND'],
  })
  async get(@Ctx() caller: RequestContext, @ValidParams() params: IdParams): Promise<HttpResult<ProjectDto>> {
    return withEtag(await this.projects.get(caller, params.id));
  }

  @Roles('admin')
  @Endpoint({
    method: 'PATCH',
    path: ':id',
    operationId: 'updateProject',
    summary: "Change a project's name, description or quota",
    params: IdParamsSchema,
    body: UpdateProjectBodySchema,
    response: ProjectSchema,
    headers: ['ETag'],
    errors: ['PROJECT_NOT_FOUND', 'ALREADY_EXISTS'],
  })
  async update(
    @Ctx() caller: RequestContext,
    @ValidParams() params: IdParams,
    @ValidBody() body: UpdateProjectBody,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<HttpResult<ProjectDto>> {
    return withEtag(await this.projects.update(caller, params.id, body, ifMatch));
  }

  @Roles('admin')
  @Endpoint({
    method: 'DELETE',
    path: ':id',
    operationId: 'deleteProject',
    summary: 'Delete a project that has no VMs (its API keys go with it)',
    params: IdParamsSchema,
    errors: ['PROJECT_NOT_FOUND', 'PROJECT_NOT_EMPTY', 'CONFLICT'],
  })
  async delete(
    @Ctx() caller: RequestContext,
    @ValidParams() params: IdParams,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<void> {
    await this.projects.delete(caller, params.id, ifMatch);
  }

  @Endpoint({
    method: 'GET',
    path: ':id/quota',
    operationId: 'getProjectQuota',
    summary: "A project's quota and what its VMs use",
    params: IdParamsSchema,
    response: ProjectQuotaSchema,
    headers: ['ETag'],
    errors: ['PROJECT_NOT_FOUND'],
  })
  async getQuota(
    @Ctx() caller: RequestContext,
    @ValidParams() params: IdParams,
  ): Promise<HttpResult<ProjectQuotaDto>> {
    return withEtag(await this.projects.getQuota(caller, params.id));
  }

  @Roles('admin')
  @Endpoint({
    method: 'PUT',
    path: ':id/quota',
    operationId: 'putProjectQuota',
    summary: "Replace a project's quota",
    description: 'Limits below the current usage are accepted: running VMs stay, new ones are refused.',
    params: IdParamsSchema,
    body: QuotaLimitsSchema,
    response: ProjectQuotaSchema,
    headers: ['ETag'],
    errors: ['PROJECT_NOT_FOUND'],
  })
  async putQuota(
    @Ctx() caller: RequestContext,
    @ValidParams() params: IdParams,
    @ValidBody() limits: QuotaLimits,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<HttpResult<ProjectQuotaDto>> {
    return withEtag(await this.projects.putQuota(caller, params.id, limits, ifMatch));
  }
}
