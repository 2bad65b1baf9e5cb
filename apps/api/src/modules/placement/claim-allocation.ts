import type { Prisma } from '../../gen/prisma/client.js';
import { firstFailingFilter } from './host-filters.js';
import type { ClaimRequest, ClaimResult, FilterName, HostCandidate } from './placement.types.js';

/** A `hosts` row (Prisma model or raw SQL) with the columns placement reads. */
export interface HostRowLike {
  readonly id: string;
  readonly name: string;
  readonly state: HostCandidate['state'];
  readonly cordoned: boolean;
  readonly cores: number;
  readonly memoryMib: number;
  readonly cpuAllocationRatio: number;
  readonly ramAllocationRatio: number;
  readonly usedVcpus: number;
  readonly usedMemoryMib: number;
  readonly accelerator: string;
  readonly cpuModels: readonly string[] | null;
  readonly machineTypes: readonly string[] | null;
  /** The agent's `[{name, …}]` pool list (JSON). */
  readonly pools: unknown;
}

/** The projection of a `hosts` row that filters and weighers work on. */
export function toHostCandidate(row: HostRowLike): HostCandidate {
  const pools = Array.isArray(row.pools)
    ? row.pools.flatMap((p: unknown) =>
        typeof p === 'object' && p !== null && typeof (p as { name?: unknown }).name === 'string'
          ? [(p as { name: string }).name]
          : [],
      )
    : [];
  return {
    id: row.id,
    name: row.name,
    state: row.state,
    cordoned: row.cordoned,
    cores: row.cores,
    memoryMib: row.memoryMib,
    cpuAllocationRatio: row.cpuAllocationRatio,
    ramAllocationRatio: row.ramAllocationRatio,
    usedVcpus: row.usedVcpus,
    usedMemoryMib: row.usedMemoryMib,
    accelerator: row.accelerator,
    cpuModels: row.cpuModels ?? [],
    machineTypes: row.machineTypes ?? [],
    pools,
  };
}

/** The columns of {@link HostRowLike}, for raw queries. */
export const HOST_COLUMNS = `id::text AS "id", name, state::text AS "state", cordoned, cores, memory_mib AS "memoryMib",
    cpu_allocation_ratio AS "cpuAllocationRatio", ram_allocation_ratio AS "ramAllocationRatio",
    used_vcpus AS "usedVcpus", used_memory_mib AS "usedMemoryMib", accelerator,
    cpu_models AS "cpuModels", machine_types AS "machineTypes", pools`;

/**
 * Opens a savepoint, which PostgreSQL only allows inside a transaction block: a plain (pooled,
 * autocommit) client is refused here instead of claiming without a lock that holds.
 */
async function savepoint(tx: Prisma.TransactionClient, name: string): Promise<void> {
  try {
    await tx.$executeRawUnsafe(`SAVEPOINT ${name}`);
  } catch (error) {
    const meta = (error as { meta?: { code?: unknown; message?: unknown } }).meta;
    if (meta?.code === '25P01' || /only be used in transaction blocks/.test(String(meta?.message ?? error))) {
      throw new TypeError(
        'placement claims need the client of an interactive transaction ($transaction(async tx => …))',
      );
    }
    throw error;
  }
}

type AttemptOutcome =
  | { ok: true; allocationId: string; existing: boolean }
  | { ok: false; reason: FilterName | 'gone' };

async function claimOnHost(
  tx: Prisma.TransactionClient,
  request: ClaimRequest,
  hostId: string,
): Promise<AttemptOutcome> {
  // The row lock serialises every claim and release on this host: whatever committed before we
  // got it is visible to the statements below (READ COMMITTED takes a snapshot per statement).
  const rows = await tx.$queryRawUnsafe<HostRowLike[]>(
    `SELECT ${HOST_COLUMNS} FROM hosts WHERE id = $1::uuid FOR UPDATE`,
    hostId,
  );
  const row = rows[0];
  if (!row) return { ok: false, reason: 'gone' };

  const held = await tx.$queryRaw<{ id: string }[]>`
    SELECT id::text AS id FROM allocations WHERE vm_id = ${request.vmId}::uuid AND host_id = ${hostId}::uuid`;
  if (held[0]) return { ok: true, allocationId: held[0].id, existing: true };

  let hostsWithGroupMembers: ReadonlySet<string> = new Set();
  if (request.antiAffinityGroup) {
    const taken = await tx.$queryRaw<{ taken: boolean }[]>`
      SELECT EXISTS (
        SELECT 1 FROM allocations a JOIN vms v ON v.id = a.vm_id
         WHERE a.host_id = ${hostId}::uuid AND v.project_id = ${request.projectId}::uuid
           AND v.anti_affinity_group = ${request.antiAffinityGroup} AND a.vm_id <> ${request.vmId}::uuid
      ) AS taken`;
    if (taken[0]?.taken) hostsWithGroupMembers = new Set([hostId]);
  }
  const failed = firstFailingFilter(toHostCandidate(row), request, { hostsWithGroupMembers });
  if (failed !== null) return { ok: false, reason: failed };

  const inserted = await tx.$queryRaw<{ id: string }[]>`
    INSERT INTO allocations (vm_id, host_id, vcpus, memory_mib, kind)
    VALUES (${request.vmId}::uuid, ${hostId}::uuid, ${request.vcpus}::int, ${request.memoryMib}::int,
            ${request.kind ?? 'primary'}::allocation_kind)
    RETURNING id::text AS id`;
  await tx.$executeRaw`
    UPDATE hosts SET used_vcpus = used_vcpus + ${request.vcpus}::int,
                     used_memory_mib = used_memory_mib + ${request.memoryMib}::int
     WHERE id = ${hostId}::uuid`;
  const allocationId = inserted[0]?.id;
  if (!allocationId) throw new Error(`allocation of VM ${request.vmId} on host ${hostId} returned no id`);
  return { ok: true, allocationId, existing: false };
}

/**
 * Claims the request's vCPUs and memory on the first candidate that can still take them, inside
 * the caller's transaction: locks the host row, re-runs every filter on the locked row (the
 * decision was made on a snapshot that concurrent claims may have outdated), then records the
 * allocation and bumps the host's usage counters. Cannot overcommit whatever runs concurrently.
 *
 * Each candidate is tried under a savepoint; a rejected candidate is rolled back to it, which
 * also releases its row lock, so a claim never holds one host while waiting for another (two
 * claims walking the same hosts in opposite orders cannot deadlock). Idempotent: a VM that
 * already holds an allocation on a candidate gets that one back (`existing: true`).
 */
export async function claimAllocation(
  tx: Prisma.TransactionClient,
  request: ClaimRequest,
  candidates: readonly (HostCandidate | string)[],
): Promise<ClaimResult> {
  const rejected: { hostId: string; reason: FilterName | 'gone' }[] = [];
  for (const candidate of candidates) {
    const hostId = typeof candidate === 'string' ? candidate : candidate.id;
    await savepoint(tx, 'hangar_claim');
    let outcome: AttemptOutcome;
    try {
      outcome = await claimOnHost(tx, request, hostId);
    } catch (error) {
      await tx.$executeRawUnsafe('ROLLBACK TO SAVEPOINT hangar_claim');
      throw error;
    }
    if (outcome.ok) {
      await tx.$executeRawUnsafe('RELEASE SAVEPOINT hangar_claim');
      return { ok: true, hostId, allocationId: outcome.allocationId, existing: outcome.existing };
    }
    await tx.$executeRawUnsafe('ROLLBACK TO SAVEPOINT hangar_claim');
    await tx.$executeRawUnsafe('RELEASE SAVEPOINT hangar_claim');
    rejected.push({ hostId, reason: outcome.reason });
  }
  return { ok: false, rejected };
}

/**
 * Gives a VM's allocation on one host back: deletes it and lowers the host's counters, under the
 * host's row lock (the same lock order as a claim: host, then allocation). Returns false when the
 * VM held nothing there, so a retried release is harmless.
 */
export async function releaseAllocation(
  tx: Prisma.TransactionClient,
  vmId: string,
  hostId: string,
): Promise<boolean> {
  await savepoint(tx, 'hangar_release');
  try {
    await tx.$queryRaw`SELECT 1 FROM hosts WHERE id = ${hostId}::uuid FOR UPDATE`;
    const deleted = await tx.$queryRaw<{ vcpus: number; memoryMib: number }[]>`
      DELETE FROM allocations WHERE vm_id = ${vmId}::uuid AND host_id = ${hostId}::uuid
      RETURNING vcpus, memory_mib AS "memoryMib"`;
    const gone = deleted[0];
    if (gone) {
      await tx.$executeRaw`
        UPDATE hosts SET used_vcpus = used_vcpus - ${gone.vcpus}::int,
                         used_memory_mib = used_memory_mib - ${gone.memoryMib}::int
         WHERE id = ${hostId}::uuid`;
    }
    await tx.$executeRawUnsafe('RELEASE SAVEPOINT hangar_release');
    return gone !== undefined;
  } catch (error) {
    await tx.$executeRawUnsafe('ROLLBACK TO SAVEPOINT hangar_release').catch(() => undefined);
    throw error;
  }
}

/** Releases every allocation of a VM (on delete), host by host in id order. Returns how many. */
export async function releaseVmAllocations(tx: Prisma.TransactionClient, vmId: string): Promise<number> {
  const held = await tx.$queryRaw<{ hostId: string }[]>`
    SELECT host_id::text AS "hostId" FROM allocations WHERE vm_id = ${vmId}::uuid ORDER BY host_id`;
  let released = 0;
  for (const { hostId } of held) {
    if (await releaseAllocation(tx, vmId, hostId)) released += 1;
  }
  return released;
}

/**
 * Ends a successful migration's double booking: the source's allocation is released and the
 * destination's `migration` allocation becomes the VM's `primary` one. (A failed migration
 * releases the destination's instead, with {@link releaseAllocation}.)
 */
export async function completeMigrationAllocation(
  tx: Prisma.TransactionClient,
  vmId: string,
  sourceHostId: string,
  destinationHostId: string,
): Promise<void> {
  await savepoint(tx, 'hangar_promote');
  try {
    const promoted = await tx.$executeRaw`
      UPDATE allocations SET kind = 'primary'
       WHERE vm_id = ${vmId}::uuid AND host_id = ${destinationHostId}::uuid`;
    if (promoted !== 1) {
      throw new Error(`VM ${vmId} holds no allocation on destination host ${destinationHostId}`);
    }
    await releaseAllocation(tx, vmId, sourceHostId);
    await tx.$executeRawUnsafe('RELEASE SAVEPOINT hangar_promote');
  } catch (error) {
    await tx.$executeRawUnsafe('ROLLBACK TO SAVEPOINT hangar_promote').catch(() => undefined);
    throw error;
  }
}
