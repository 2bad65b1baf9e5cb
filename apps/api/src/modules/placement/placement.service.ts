import { Injectable } from '@nestjs/common';
import type { AllocationKind } from '../../gen/prisma/enums.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { VmNotFoundError } from '../../infra/prisma/vm-version.js';
import { claimAllocation, HOST_COLUMNS, type HostRowLike, toHostCandidate } from './claim-allocation.js';
import { decidePlacement, describeRejections } from './decide-placement.js';
import { NoValidHostError } from './placement.errors.js';
import type { ClaimRequest, FilterName, FilterReport, WeigherName } from './placement.types.js';

/** Options of {@link PlacementService.placeVm}. */
export interface PlaceVmOptions {
  /** `primary` (default): where the VM will run; `migration`: a migration's destination. */
  readonly kind?: AllocationKind;
  readonly weigher?: WeigherName;
  /** Required accelerator (a migration passes its source's). */
  readonly accelerator?: string;
  /** Only these hosts (an operator-chosen migration target). */
  readonly onlyHostIds?: readonly string[];
  /** Never these hosts (a migration's source). */
  readonly excludeHostIds?: readonly string[];
  /** Decide-and-claim rounds before giving up when concurrent claims take the chosen hosts (3). */
  readonly maxAttempts?: number;
  /** Hosts a round's claim tries (5); the last round tries every host that passed. */
  readonly maxCandidates?: number;
}

/** Where the VM was placed. */
export interface Placement {
  readonly hostId: string;
  readonly allocationId: string;
  /** The VM already held this allocation (a retried placement); nothing new was claimed. */
  readonly existing: boolean;
  /** Decide-and-claim rounds used. */
  readonly attempts: number;
}

/**
 * Chooses a host for a VM and claims its resources there: reads the hosts, runs the pure
 * filters and weighers ({@link decidePlacement}), then claims on the best candidates in one
 * transaction ({@link claimAllocation}) that also points a primary VM at its host. When
 * concurrent placements took every candidate first, decides again on fresh rows.
 */
@Injectable()
export class PlacementService {
  constructor(private readonly prisma: PrismaService) {}

  /**
   * @throws NoValidHostError (`NO_VALID_HOST`, with how many hosts each filter removed)
   * @throws VmNotFoundError when the VM does not exist or is deleted
   */
  async placeVm(vmId: string, options: PlaceVmOptions = {}): Promise<Placement> {
    const kind = options.kind ?? 'primary';
    const maxAttempts = Math.max(1, options.maxAttempts ?? 3);
    for (let attempt = 1; ; attempt += 1) {
      const vm = await this.prisma.vm.findUnique({
        where: { id: vmId },
        select: {
          projectId: true,
          vcpus: true,
          memoryMib: true,
          cpuModel: true,
          machineType: true,
          antiAffinityGroup: true,
          hostId: true,
          deletedAt: true,
          image: { select: { pool: true } },
          allocations: { select: { id: true, hostId: true, kind: true } },
        },
      });
      if (!vm || vm.deletedAt !== null) throw new VmNotFoundError(vmId);
      const held = vm.allocations.find((a) => a.kind === kind);
      if (held) {
        if (kind === 'primary' && vm.hostId !== held.hostId) {
          await this.prisma.vm.update({ where: { id: vmId }, data: { hostId: held.hostId } });
        }
        return { hostId: held.hostId, allocationId: held.id, existing: true, attempts: attempt };
      }

      const request: ClaimRequest = {
        vmId,
        projectId: vm.projectId,
        kind,
        vcpus: vm.vcpus,
        memoryMib: vm.memoryMib,
        cpuModel: vm.cpuModel,
        machineType: vm.machineType,
        storagePool: vm.image.pool,
        antiAffinityGroup: vm.antiAffinityGroup,
        accelerator: options.accelerator,
        onlyHostIds: options.onlyHostIds,
        excludeHostIds: options.excludeHostIds,
      };
      const [hostRows, groupHosts] = await Promise.all([
        // Every host, through node-postgres: with Prisma's result mapping, reading 10,000 host rows
        // took 84 ms at p50, a hundred times the decision itself (BENCHMARKS.md "API").
        this.prisma.pool.query<HostRowLike>(`SELECT ${HOST_COLUMNS} FROM hosts`).then((r) => r.rows),
        vm.antiAffinityGroup
          ? this.prisma.allocation.findMany({
              where: {
                vmId: { not: vmId },
                vm: { projectId: vm.projectId, antiAffinityGroup: vm.antiAffinityGroup },
              },
              select: { hostId: true },
              distinct: ['hostId'],
            })
          : Promise.resolve([]),
      ]);
      const hosts = hostRows.map(toHostCandidate);
      const lastAttempt = attempt >= maxAttempts;
      const decision = decidePlacement(request, hosts, {
        weigher: options.weigher ?? 'spread',
        maxCandidates: lastAttempt ? hosts.length : (options.maxCandidates ?? 5),
        context: { hostsWithGroupMembers: new Set(groupHosts.map((g) => g.hostId)) },
      });
      if (!decision.ok) throw new NoValidHostError(decision.error);

      const claim = await this.prisma.$transaction(
        async (tx) => {
          const result = await claimAllocation(tx, request, decision.candidates);
          if (result.ok && kind === 'primary') {
            await tx.vm.update({ where: { id: vmId }, data: { hostId: result.hostId } });
          }
          return result;
        },
        // Under a burst, claims queue on the same host rows and for pool connections.
        { maxWait: 15_000, timeout: 30_000 },
      );
      if (claim.ok) {
        return {
          hostId: claim.hostId,
          allocationId: claim.allocationId,
          existing: claim.existing,
          attempts: attempt,
        };
      }
      if (lastAttempt) {
        // Every host that passed on the snapshot was tried under its lock: count each under the
        // filter that rejected it then, so the counts still add up to the hosts considered.
        const removed = new Map<FilterName, number>(decision.filters.map((f) => [f.name, f.removed]));
        for (const r of claim.rejected) {
          const name: FilterName = r.reason === 'gone' ? 'host-state' : r.reason;
          removed.set(name, (removed.get(name) ?? 0) + 1);
        }
        const filters: FilterReport[] = decision.filters.map((f) => ({
          name: f.name,
          removed: removed.get(f.name) ?? 0,
        }));
        throw new NoValidHostError({
          code: 'NO_VALID_HOST',
          detail: describeRejections(decision.considered, filters),
          filters,
        });
      }
    }
  }
}
