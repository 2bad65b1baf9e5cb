import { type Db, lockRow } from '../../common/util/prisma-helpers.js';
import { DomainError } from '../../errors/domain-error.js';
import { projectUsage } from './projects.service.js';

/** What a new or resized VM adds to its project's usage (for a resize: the growth only). */
export interface QuotaRequest {
  readonly vcpus: number;
  readonly memoryMib: number;
  /** VMs added: 1 for a create, 0 for a resize. */
  readonly vms: number;
}

/**
 * Checks that a project can take `request` on top of what its live VMs use, inside the caller's
 * transaction, and keeps the check true until that transaction ends: the project row is locked
 * (`FOR UPDATE`), so two concurrent creates in one project cannot both squeeze under the quota.
 * Call it in the same transaction that inserts (or resizes) the VM row.
 *
 * @throws DomainError QUOTA_EXCEEDED (403) naming each exceeded limit, with `limits`, `usage` and `requested`
 * @throws DomainError PROJECT_NOT_FOUND
 */
export async function assertWithinQuota(tx: Db, projectId: string, request: QuotaRequest): Promise<void> {
  if (!(await lockRow(tx, 'projects', projectId)))
    throw DomainError.notFound('PROJECT_NOT_FOUND', 'Project', projectId);
  const project = await tx.project.findUniqueOrThrow({ where: { id: projectId } });
  const usage = await projectUsage(tx, projectId);
  const limits = { vcpus: project.quotaVcpus, memory_mib: project.quotaMemoryMib, vms: project.quotaVms };
  const requested = { vcpus: request.vcpus, memory_mib: request.memoryMib, vms: request.vms };
  const exceeded = (['vcpus', 'memory_mib', 'vms'] as const).filter(
    (k) => requested[k] > 0 && usage[k] + requested[k] > limits[k],
  );
  if (exceeded.length === 0) return;
  throw new DomainError(
    'QUOTA_EXCEEDED',
    `The project's quota is exceeded for ${exceeded
      .map((k) => `${k} (limit ${limits[k]}, used ${usage[k]}, requested ${requested[k]})`)
      .join(', ')}.`,
    { extensions: { exceeded, limits, usage, requested } },
  );
}
