import { Injectable } from '@nestjs/common';
import { assertIfMatch, contentEtag, type IfMatchCondition } from '../../common/etag/etag.js';
import { isAdmin, type RequestContext } from '../../common/http/request-context.js';
import { iso } from '../../common/http/schemas.js';
import { type Page, pageClauses, toPage } from '../../common/pagination/pagination.js';
import { type Db, isUniqueViolation, lockRow } from '../../common/util/prisma-helpers.js';
import { DomainError } from '../../errors/domain-error.js';
import type { Project } from '../../gen/prisma/client.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { AuthService } from '../auth/auth.service.js';
import type {
  CreateProjectBody,
  ListProjectsQuery,
  ProjectDto,
  ProjectQuotaDto,
  QuotaLimits,
  UpdateProjectBody,
} from './project.schemas.js';

/** The entity tag of a project: its writable state (name, description, quota). */
export function projectEtag(row: Project): string {
  return contentEtag({
    name: row.name,
    description: row.description,
    quota: [row.quotaVcpus, row.quotaMemoryMib, row.quotaVms],
  });
}

/** A project's representation. */
export function toProjectDto(row: Project): ProjectDto {
  return {
    id: row.id,
    name: row.name,
    description: row.description,
    quota: { vcpus: row.quotaVcpus, memory_mib: row.quotaMemoryMib, vms: row.quotaVms },
    created_at: iso(row.createdAt),
    updated_at: iso(row.updatedAt),
    etag: projectEtag(row),
  };
}

function quotaColumns(quota: Partial<QuotaLimits> | undefined): {
  quotaVcpus?: number;
  quotaMemoryMib?: number;
  quotaVms?: number;
} {
  return {
    ...(quota?.vcpus === undefined ? {} : { quotaVcpus: quota.vcpus }),
    ...(quota?.memory_mib === undefined ? {} : { quotaMemoryMib: quota.memory_mib }),
    ...(quota?.vms === undefined ? {} : { quotaVms: quota.vms }),
  };
}

/** What a project's live (not deleted) VMs use. */
export async function projectUsage(
  db: Db,
  projectId: string,
): Promise<{ vcpus: number; memory_mib: number; vms: number }> {
  const usage = await db.vm.aggregate({
    where: { projectId, deletedAt: null },
    _sum: { vcpus: true, memoryMib: true },
    _count: { _all: true },
  });
  return { vcpus: usage._sum.vcpus ?? 0, memory_mib: usage._sum.memoryMib ?? 0, vms: usage._count._all };
}

/**
 * Projects and their quotas. Admins see and change every project; other keys see only their own,
 * and another project is a 404 to them (no existence leak).
 */
@Injectable()
export class ProjectsService {
  constructor(
    private readonly prisma: PrismaService,
    private readonly auth: AuthService,
  ) {}

  /** @throws DomainError ALREADY_EXISTS */
  async create(body: CreateProjectBody): Promise<ProjectDto> {
    try {
      const row = await this.prisma.project.create({
        data: { name: body.name, description: body.description, ...quotaColumns(body.quota) },
      });
      return toProjectDto(row);
    } catch (error) {
      if (isUniqueViolation(error)) {
        throw new DomainError('ALREADY_EXISTS', `A project named ${body.name} exists.`, { field: 'name' });
      }
      throw error;
    }
  }

  async list(caller: RequestContext, query: ListProjectsQuery): Promise<Page<ProjectDto>> {
    const filters = { name: query.name };
    const scope = { list: 'projects', ...filters, visibleTo: isAdmin(caller) ? '*' : caller.projectId };
    const page = pageClauses('createdAt', query, scope);
    const rows = await this.prisma.project.findMany({
      where: {
        AND: [
          isAdmin(caller) ? {} : { id: caller.projectId },
          query.name === undefined ? {} : { name: query.name },
          page.where,
        ],
      },
      orderBy: page.orderBy,
      take: page.take,
    });
    return toPage(rows, query, scope, (r) => ({ at: r.createdAt, id: r.id }), toProjectDto);
  }

  /** @throws DomainError PROJECT_NOT_FOUND (also for another project's id, to non-admins) */
  async get(caller: RequestContext, id: string): Promise<ProjectDto> {
    return toProjectDto(await this.find(this.prisma, caller, id));
  }

  /** @throws DomainError PROJECT_NOT_FOUND, PRECONDITION_FAILED, ALREADY_EXISTS */
  async update(
    caller: RequestContext,
    id: string,
    body: UpdateProjectBody,
    ifMatch: IfMatchCondition | undefined,
  ): Promise<ProjectDto> {
    try {
      const row = await this.prisma.$transaction(async (tx) => {
        await lockRow(tx, 'projects', id);
        const current = await this.find(tx, caller, id);
        assertIfMatch(ifMatch, projectEtag(current));
        return tx.project.update({
          where: { id },
          data: {
            ...(body.name === undefined ? {} : { name: body.name }),
            ...(body.description === undefined ? {} : { description: body.description }),
            ...quotaColumns(body.quota),
          },
        });
      });
      return toProjectDto(row);
    } catch (error) {
      if (isUniqueViolation(error)) {
        throw new DomainError('ALREADY_EXISTS', `A project named ${body.name ?? ''} exists.`, {
          field: 'name',
        });
      }
      throw error;
    }
  }

  /**
   * Deletes a project without VMs, with its API keys, operations and the history of its deleted
   * VMs. A key cannot delete its own project (it would lock its holder out mid-request).
   *
   * @throws DomainError PROJECT_NOT_FOUND, PRECONDITION_FAILED, PROJECT_NOT_EMPTY, CONFLICT
   */
  async delete(caller: RequestContext, id: string, ifMatch: IfMatchCondition | undefined): Promise<void> {
    await this.prisma.$transaction(async (tx) => {
      await lockRow(tx, 'projects', id);
      const current = await this.find(tx, caller, id);
      assertIfMatch(ifMatch, projectEtag(current));
      if (id === caller.projectId) {
        throw new DomainError(
          'CONFLICT',
          'A key cannot delete its own project; use an admin key of another project.',
        );
      }
      const liveVms = await tx.vm.count({ where: { projectId: id, deletedAt: null } });
      const allocations = await tx.allocation.count({ where: { vm: { projectId: id } } });
      if (liveVms > 0 || allocations > 0) {
        throw new DomainError(
          'PROJECT_NOT_EMPTY',
          `Project ${id} still has ${liveVms} VM(s); delete them first.`,
          {
            extensions: { vms: liveVms },
          },
        );
      }
      // Migration rows keep their VM (no cascade): the history of deleted VMs goes with the project.
      await tx.migration.deleteMany({ where: { vm: { projectId: id } } });
      await tx.project.delete({ where: { id } });
    });
    this.auth.forgetProject(id);
  }

  /** @throws DomainError PROJECT_NOT_FOUND */
  async getQuota(caller: RequestContext, id: string): Promise<ProjectQuotaDto> {
    const row = await this.find(this.prisma, caller, id);
    return {
      project_id: row.id,
      limits: { vcpus: row.quotaVcpus, memory_mib: row.quotaMemoryMib, vms: row.quotaVms },
      usage: await projectUsage(this.prisma, id),
      etag: projectEtag(row),
    };
  }

  /**
   * Replaces a project's quota. Limits below the current usage are allowed: running VMs stay, new
   * ones are refused until usage fits again (as in Nova).
   *
   * @throws DomainError PROJECT_NOT_FOUND, PRECONDITION_FAILED
   */
  async putQuota(
    caller: RequestContext,
    id: string,
    limits: QuotaLimits,
    ifMatch: IfMatchCondition | undefined,
  ): Promise<ProjectQuotaDto> {
    await this.prisma.$transaction(async (tx) => {
      await lockRow(tx, 'projects', id);
      const current = await this.find(tx, caller, id);
      assertIfMatch(ifMatch, projectEtag(current));
      await tx.project.update({ where: { id }, data: quotaColumns(limits) });
    });
    return this.getQuota(caller, id);
  }

  private async find(db: Db, caller: RequestContext, id: string): Promise<Project> {
    const row =
      isAdmin(caller) || id === caller.projectId ? await db.project.findUnique({ where: { id } }) : null;
    if (!row) throw DomainError.notFound('PROJECT_NOT_FOUND', 'Project', id);
    return row;
  }
}
