import type { FilterName, HostCandidate, PlacementContext, PlacementRequest } from './placement.types.js';

/** A filter keeps the hosts that can take the request. Pure: no I/O, no clock. */
export interface HostFilter {
  readonly name: FilterName;
  passes(host: HostCandidate, request: PlacementRequest, context: PlacementContext): boolean;
}

/** Schedulable vCPUs and memory of a host: physical size times its allocation ratio. */
export function hostCapacity(host: HostCandidate): { vcpus: number; memoryMib: number } {
  // floor: a ratio of 1.5 on 3 cores gives 4 vCPUs, never a fraction the claim could round up.
  return {
    vcpus: Math.floor(host.cores * host.cpuAllocationRatio),
    memoryMib: Math.floor(host.memoryMib * host.ramAllocationRatio),
  };
}

/** Whether the request fits in what the host has left. */
export function fitsOnHost(
  host: HostCandidate,
  request: Pick<PlacementRequest, 'vcpus' | 'memoryMib'>,
): boolean {
  const capacity = hostCapacity(host);
  return (
    host.usedVcpus + request.vcpus <= capacity.vcpus &&
    host.usedMemoryMib + request.memoryMib <= capacity.memoryMib
  );
}

/** The filters in the order they run: cheap and most telling first, capacity last. */
export const HOST_FILTERS: readonly HostFilter[] = [
  {
    name: 'host-selection',
    passes: (host, request) =>
      (request.onlyHostIds === undefined || request.onlyHostIds.includes(host.id)) &&
      (request.excludeHostIds === undefined || !request.excludeHostIds.includes(host.id)),
  },
  {
    name: 'host-state',
    passes: (host) => host.state === 'UP' && !host.cordoned,
  },
  {
    name: 'accelerator',
    passes: (host, request) => request.accelerator === undefined || host.accelerator === request.accelerator,
  },
  {
    // A VM pinned to a CPU model or machine type the host's QEMU lacks would not start (or not
    // accept an incoming migration) there.
    name: 'cpu-model',
    passes: (host, request) =>
      (request.cpuModel === undefined || host.cpuModels.includes(request.cpuModel)) &&
      (request.machineType === undefined || host.machineTypes.includes(request.machineType)),
  },
  {
    name: 'storage-pool',
    passes: (host, request) => request.storagePool === undefined || host.pools.includes(request.storagePool),
  },
  {
    name: 'anti-affinity',
    passes: (host, request, context) =>
      !request.antiAffinityGroup || !(context.hostsWithGroupMembers?.has(host.id) ?? false),
  },
  {
    name: 'capacity',
    passes: (host, request) => fitsOnHost(host, request),
  },
];

/** The first filter the host fails, or null when it passes them all. */
export function firstFailingFilter(
  host: HostCandidate,
  request: PlacementRequest,
  context: PlacementContext,
): FilterName | null {
  for (const filter of HOST_FILTERS) {
    if (!filter.passes(host, request, context)) return filter.name;
  }
  return null;
}
