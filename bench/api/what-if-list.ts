/**
 * bench/api `--what-if-list select|raw`: an experiment, not Hangar as shipped. A preload
 * (`node --import`) for the api process of part 1 that replaces `VmsService.list` at run time, to
 * measure what a cheaper read of the list would give before anyone changes apps/api:
 *
 * - `select`: the same `prisma.vm.findMany`, with a `select` of the 19 columns the VM
 *   representation uses (no `user_data`, no `deleted_at`);
 * - `raw`: one `$queryRawUnsafe` with the same WHERE, ORDER BY and LIMIT, columns aliased to the
 *   model's names, so Prisma's per-value result mapping is skipped.
 *
 * Filters, page tokens and the response are the api's own (`pageClauses`, `toPage`, `toVmDto` in
 * the controller); the bench still checks that the body is byte for byte the baseline's. Only the
 * member's first page is handled (what the bench asks); anything else falls back to the original.
 */
import { type PageRequest, pageClauses, toPage } from '@hangar/api/dist/common/pagination/pagination.js';
import type { Vm } from '@hangar/api/dist/gen/prisma/client.js';
import type { PrismaService } from '@hangar/api/dist/infra/prisma/prisma.service.js';
import { type ListVmsQuery, VmsService } from '@hangar/api/dist/modules/vms/vms.service.js';

const variant = process.env.BENCH_WHAT_IF_LIST;

const COLUMNS = {
  id: true,
  projectId: true,
  name: true,
  flavorId: true,
  imageId: true,
  hostId: true,
  vcpus: true,
  memoryMib: true,
  diskGib: true,
  desiredState: true,
  observedState: true,
  version: true,
  labels: true,
  antiAffinityGroup: true,
  cpuModel: true,
  machineType: true,
  errorMessage: true,
  createdAt: true,
  updatedAt: true,
} as const;

const RAW_SQL = `SELECT id::text, project_id::text AS "projectId", name, flavor_id::text AS "flavorId",
  image_id::text AS "imageId", host_id::text AS "hostId", vcpus, memory_mib AS "memoryMib",
  disk_gib AS "diskGib", desired_state::text AS "desiredState", observed_state::text AS "observedState",
  version, labels, anti_affinity_group AS "antiAffinityGroup", cpu_model AS "cpuModel",
  machine_type AS "machineType", error_message AS "errorMessage", created_at AS "createdAt",
  updated_at AS "updatedAt"
  FROM vms WHERE deleted_at IS NULL AND project_id = $1::uuid ORDER BY created_at, id LIMIT $2`;

if (variant === 'select' || variant === 'raw') {
  const original = VmsService.prototype.list;
  VmsService.prototype.list = async function (this: VmsService, query: ListVmsQuery, page: PageRequest) {
    const simple =
      query.projectId !== undefined &&
      query.status === undefined &&
      query.hostId === undefined &&
      query.name === undefined &&
      page.page_token === undefined;
    if (!simple) return original.call(this, query, page);
    const prisma = (this as unknown as { prisma: PrismaService }).prisma;
    // The scope the api binds its page tokens to, so next_page_token stays the same.
    const scope = {
      list: 'vms',
      projectId: query.projectId,
      status: undefined,
      hostId: undefined,
      name: undefined,
    };
    const clauses = pageClauses('createdAt', page, scope);
    const rows: Vm[] =
      variant === 'select'
        ? ((await prisma.vm.findMany({
            where: { AND: [{ deletedAt: null, projectId: query.projectId }, clauses.where] },
            orderBy: clauses.orderBy,
            take: clauses.take,
            select: COLUMNS,
          })) as Vm[])
        : await prisma.$queryRawUnsafe<Vm[]>(RAW_SQL, query.projectId, clauses.take);
    return toPage(
      rows,
      page,
      scope,
      (vm) => ({ at: vm.createdAt, id: vm.id }),
      (vm) => vm,
    );
  };
}
