import { Injectable } from '@nestjs/common';
import { assertIfMatch, contentEtag, type IfMatchCondition } from '../../common/etag/etag.js';
import { iso, isoOrNull } from '../../common/http/schemas.js';
import { type Page, pageClauses, toPage } from '../../common/pagination/pagination.js';
import { type Db, lockRow } from '../../common/util/prisma-helpers.js';
import { DomainError } from '../../errors/domain-error.js';
import type { Host } from '../../gen/prisma/client.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import type { HostDto, ListHostsQuery, UpdateHostBody } from './host.schemas.js';

/** The entity tag of a host: what operators change (heartbeats and usage do not move it). */
export function hostEtag(row: Host): string {
  return contentEtag({
    name: row.name,
    cordoned: row.cordoned,
    cpu: row.cpuAllocationRatio,
    ram: row.ramAllocationRatio,
    labels: row.labels,
  });
}

function stringRecord(value: unknown): Record<string, string> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return {};
  return Object.fromEntries(
    Object.entries(value).filter((e): e is [string, string] => typeof e[1] === 'string'),
  );
}

function objectRecord(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

/** Pools as the agent stored them (`{name, path, shared, totalBytes, freeBytes}`; snake_case tolerated). */
function poolsOf(value: unknown): HostDto['pools'] {
  if (!Array.isArray(value)) return [];
  return value.flatMap((entry) => {
    const pool = objectRecord(entry);
    if (typeof pool.name !== 'string') return [];
    const num = (a: unknown, b: unknown): number | null =>
      typeof a === 'number' ? a : typeof b === 'number' ? b : null;
    return [
      {
        name: pool.name,
        path: typeof pool.path === 'string' ? pool.path : null,
        shared: pool.shared === true,
        total_bytes: num(pool.totalBytes, pool.total_bytes),
        free_bytes: num(pool.freeBytes, pool.free_bytes),
      },
    ];
  });
}

/** A host's representation. */
export function toHostDto(row: Host): HostDto {
  return {
    id: row.id,
    name: row.name,
    agent_address: row.agentAddress,
    state: row.state,
    cordoned: row.cordoned,
    cpu_allocation_ratio: row.cpuAllocationRatio,
    ram_allocation_ratio: row.ramAllocationRatio,
    cores: row.cores,
    memory_mib: row.memoryMib,
    used_vcpus: row.usedVcpus,
    used_memory_mib: row.usedMemoryMib,
    driver: row.driver,
    accelerator: row.accelerator,
    qemu_version: row.qemuVersion,
    machine_types: row.machineTypes,
    cpu_models: row.cpuModels,
    pools: poolsOf(row.pools),
    features: objectRecord(row.features),
    labels: stringRecord(row.labels),
    agent_version: row.agentVersion,
    last_heartbeat_at: isoOrNull(row.lastHeartbeatAt),
    registered_at: iso(row.registeredAt),
    updated_at: iso(row.updatedAt),
    etag: hostEtag(row),
  };
}

/** Hosts as operators see them: read, cordon, tune allocation ratios, remove when empty. Agents register them. */
@Injectable()
export class HostsService {
  constructor(private readonly prisma: PrismaService) {}

  async list(query: ListHostsQuery): Promise<Page<HostDto>> {
    const filters = { state: query.state, cordoned: query.cordoned, name: query.name };
    const scope = { list: 'hosts', ...filters };
    const page = pageClauses('registeredAt', query, scope);
    const rows = await this.prisma.host.findMany({
      where: {
        AND: [
          query.state === undefined ? {} : { state: query.state },
          query.cordoned === undefined ? {} : { cordoned: query.cordoned },
          query.name === undefined ? {} : { name: query.name },
          page.where,
        ],
      },
      orderBy: page.orderBy,
      take: page.take,
    });
    return toPage(rows, query, scope, (r) => ({ at: r.registeredAt, id: r.id }), toHostDto);
  }

  /** @throws DomainError HOST_NOT_FOUND */
  async get(id: string): Promise<HostDto> {
    return toHostDto(await this.find(this.prisma, id));
  }

  /** @throws DomainError HOST_NOT_FOUND, PRECONDITION_FAILED */
  async update(id: string, body: UpdateHostBody, ifMatch: IfMatchCondition | undefined): Promise<HostDto> {
    const row = await this.prisma.$transaction(async (tx) => {
      await lockRow(tx, 'hosts', id);
      assertIfMatch(ifMatch, hostEtag(await this.find(tx, id)));
      return tx.host.update({
        where: { id },
        data: {
          ...(body.cpu_allocation_ratio === undefined
            ? {}
            : { cpuAllocationRatio: body.cpu_allocation_ratio }),
          ...(body.ram_allocation_ratio === undefined
            ? {}
            : { ramAllocationRatio: body.ram_allocation_ratio }),
          ...(body.labels === undefined ? {} : { labels: body.labels }),
        },
      });
    });
    return toHostDto(row);
  }

  /**
   * Cordons (no new VMs are placed there; its VMs keep running) or uncordons a host. Setting the
   * state it already has is not an error.
   *
   * @throws DomainError HOST_NOT_FOUND
   */
  async setCordoned(id: string, cordoned: boolean): Promise<HostDto> {
    const updated = await this.prisma.host.updateManyAndReturn({ where: { id }, data: { cordoned } });
    const row = updated[0];
    if (!row) throw DomainError.notFound('HOST_NOT_FOUND', 'Host', id);
    return toHostDto(row);
  }

  /**
   * Removes a host that holds no VM and no allocation (drain it first). Its agent must register
   * again, with a new join token, to come back.
   *
   * @throws DomainError HOST_NOT_FOUND, PRECONDITION_FAILED, HOST_NOT_EMPTY
   */
  async delete(id: string, ifMatch: IfMatchCondition | undefined): Promise<void> {
    await this.prisma.$transaction(async (tx) => {
      await lockRow(tx, 'hosts', id);
      assertIfMatch(ifMatch, hostEtag(await this.find(tx, id)));
      const vms = await tx.vm.count({ where: { hostId: id, deletedAt: null } });
      const allocations = await tx.allocation.count({ where: { hostId: id } });
      if (vms > 0 || allocations > 0) {
        throw new DomainError(
          'HOST_NOT_EMPTY',
          `Host ${id} still has ${vms} VM(s) and ${allocations} allocation(s); migrate or delete them first.`,
          { extensions: { vms, allocations } },
        );
      }
      await tx.host.delete({ where: { id } });
    });
  }

  private async find(db: Db, id: string): Promise<Host> {
    const row = await db.host.findUnique({ where: { id } });
    if (!row) throw DomainError.notFound('HOST_NOT_FOUND', 'Host', id);
    return row;
  }
}
