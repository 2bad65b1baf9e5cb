import { hostCapacity } from './host-filters.js';
import type { HostCandidate, PlacementRequest, WeigherName } from './placement.types.js';

/**
 * The share of a host's schedulable vCPUs and memory still free once the request is placed
 * there, 0..1 averaged over both (a host short of either is not "empty").
 */
export function freeShareAfter(
  host: HostCandidate,
  request: Pick<PlacementRequest, 'vcpus' | 'memoryMib'>,
): number {
  const capacity = hostCapacity(host);
  const cpu = capacity.vcpus > 0 ? (capacity.vcpus - host.usedVcpus - request.vcpus) / capacity.vcpus : 0;
  const ram =
    capacity.memoryMib > 0
      ? (capacity.memoryMib - host.usedMemoryMib - request.memoryMib) / capacity.memoryMib
      : 0;
  return (cpu + ram) / 2;
}

/**
 * A weigher scores a host that passed every filter; higher is better. `spread` (the default)
 * prefers the emptiest host, so a host failure takes few VMs with it; `pack` prefers the fullest,
 * so whole hosts stay free for big VMs or can be switched off.
 */
export const HOST_WEIGHERS: Readonly<
  Record<WeigherName, (host: HostCandidate, request: Pick<PlacementRequest, 'vcpus' | 'memoryMib'>) => number>
> = {
  spread: (host, request) => freeShareAfter(host, request),
  pack: (host, request) => -freeShareAfter(host, request),
};
