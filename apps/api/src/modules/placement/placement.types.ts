import type { AllocationKind, HostState } from '../../gen/prisma/enums.js';

/**
 * What placement needs to know about a host: a projection of a `hosts` row. Plain data, so the
 * decision can run over thousands of hosts without touching the database.
 */
export interface HostCandidate {
  readonly id: string;
  readonly name: string;
  readonly state: HostState;
  readonly cordoned: boolean;
  readonly cores: number;
  readonly memoryMib: number;
  /** Virtual CPUs per physical core the scheduler may hand out (Nova's cpu_allocation_ratio). */
  readonly cpuAllocationRatio: number;
  /** Guest memory per MiB of host memory (Nova's ram_allocation_ratio). */
  readonly ramAllocationRatio: number;
  readonly usedVcpus: number;
  readonly usedMemoryMib: number;
  /** `kvm` or `tcg`. */
  readonly accelerator: string;
  readonly cpuModels: readonly string[];
  readonly machineTypes: readonly string[];
  /** Names of the storage pools the host reported. */
  readonly pools: readonly string[];
}

/** What the VM to place asks for. Optional constraints are not checked when absent. */
export interface PlacementRequest {
  readonly vcpus: number;
  readonly memoryMib: number;
  /** The VM's CPU model; the host must offer it (migration needs the same model on both ends). */
  readonly cpuModel?: string | undefined;
  readonly machineType?: string | undefined;
  /** A required accelerator (a migration must stay on the source's). */
  readonly accelerator?: string | undefined;
  /** The storage pool holding the VM's image and disks. */
  readonly storagePool?: string | undefined;
  /** No two VMs of a project's group share a host. */
  readonly antiAffinityGroup?: string | null | undefined;
  /** Only these hosts may be chosen (an operator-requested migration target). */
  readonly onlyHostIds?: readonly string[] | undefined;
  /** Never these hosts (the source of a migration). */
  readonly excludeHostIds?: readonly string[] | undefined;
}

/** Facts about other VMs that filters need, gathered by the caller. */
export interface PlacementContext {
  /** Hosts already holding an allocation of a VM of the request's anti-affinity group. */
  readonly hostsWithGroupMembers?: ReadonlySet<string>;
}

/** The filters, in the order they run. */
export const FILTER_NAMES = [
  'host-selection',
  'host-state',
  'accelerator',
  'cpu-model',
  'storage-pool',
  'anti-affinity',
  'capacity',
] as const;
export type FilterName = (typeof FILTER_NAMES)[number];

/** How many hosts a filter removed (each host is counted once, by the first filter it failed). */
export interface FilterReport {
  readonly name: FilterName;
  readonly removed: number;
}

/** Weighers order the hosts that passed every filter. */
export type WeigherName = 'spread' | 'pack';

/** The error body of a failed placement: why each host was rejected. */
export interface NoValidHost {
  readonly code: 'NO_VALID_HOST';
  readonly detail: string;
  /** One entry per filter, in order; `removed` sums to the number of hosts considered. */
  readonly filters: readonly FilterReport[];
}

/** The outcome of {@link decidePlacement}. */
export type PlacementDecision =
  | {
      readonly ok: true;
      /** Best first; the claim tries them in this order. */
      readonly candidates: readonly HostCandidate[];
      readonly filters: readonly FilterReport[];
      readonly considered: number;
      /** How many hosts passed every filter (candidates holds at most `maxCandidates` of them). */
      readonly passed: number;
    }
  | { readonly ok: false; readonly error: NoValidHost; readonly considered: number };

/** What {@link claimAllocation} claims: a placement request for one VM. */
export interface ClaimRequest extends PlacementRequest {
  readonly vmId: string;
  readonly projectId: string;
  /** `primary` (create, default) or `migration` (a migration destination). */
  readonly kind?: AllocationKind;
}

/** The outcome of a claim. */
export type ClaimResult =
  | {
      readonly ok: true;
      readonly hostId: string;
      readonly allocationId: string;
      /** The VM already held this allocation (a retried claim); nothing was added. */
      readonly existing: boolean;
    }
  | {
      readonly ok: false;
      /** Each candidate, with the filter it failed once locked (or `gone` if it was removed). */
      readonly rejected: readonly { readonly hostId: string; readonly reason: FilterName | 'gone' }[];
    };
