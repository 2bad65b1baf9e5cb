import { HOST_FILTERS } from './host-filters.js';
import { HOST_WEIGHERS } from './host-weighers.js';
import type {
  FilterName,
  FilterReport,
  HostCandidate,
  PlacementContext,
  PlacementDecision,
  PlacementRequest,
  WeigherName,
} from './placement.types.js';

/** Options of {@link decidePlacement}. */
export interface DecideOptions {
  readonly weigher?: WeigherName;
  /** How many of the best hosts the decision returns for the claim to try (default 5). */
  readonly maxCandidates?: number;
  readonly context?: PlacementContext;
}

/**
 * Filters then weighs the hosts for one request. Pure (no database, no clock), linear in the
 * number of hosts: it keeps only the best `maxCandidates` instead of sorting them all. Ties go
 * to the host whose name sorts first, so the same input always gives the same answer.
 */
export function decidePlacement(
  request: PlacementRequest,
  hosts: readonly HostCandidate[],
  options: DecideOptions = {},
): PlacementDecision {
  const weigh = HOST_WEIGHERS[options.weigher ?? 'spread'];
  const maxCandidates = Math.max(1, options.maxCandidates ?? 5);
  const context = options.context ?? {};
  const removed = new Map<FilterName, number>(HOST_FILTERS.map((f) => [f.name, 0]));
  const best: { host: HostCandidate; weight: number }[] = [];
  let passed = 0;
  const keepAll = maxCandidates >= hosts.length;

  for (const host of hosts) {
    let rejectedBy: FilterName | null = null;
    for (const filter of HOST_FILTERS) {
      if (!filter.passes(host, request, context)) {
        rejectedBy = filter.name;
        break;
      }
    }
    if (rejectedBy !== null) {
      removed.set(rejectedBy, (removed.get(rejectedBy) ?? 0) + 1);
      continue;
    }
    passed += 1;
    const weight = weigh(host, request);
    if (keepAll) {
      best.push({ host, weight });
      continue;
    }
    // Insertion into a short sorted list: O(hosts × maxCandidates), no sort of every host.
    let at = best.length;
    while (at > 0 && before(host, weight, best[at - 1]!)) at -= 1;
    if (at < maxCandidates) {
      best.splice(at, 0, { host, weight });
      if (best.length > maxCandidates) best.pop();
    }
  }
  // Every host that passes is wanted (a last attempt): one sort, not an insertion per host, which
  // was quadratic (28.6 ms at 10,000 hosts against 0.68 ms for the best 5).
  if (keepAll) best.sort((a, b) => (before(a.host, a.weight, b) ? -1 : 1));

  const filters: FilterReport[] = HOST_FILTERS.map((f) => ({
    name: f.name,
    removed: removed.get(f.name) ?? 0,
  }));
  if (best.length === 0) {
    return {
      ok: false,
      considered: hosts.length,
      error: { code: 'NO_VALID_HOST', detail: describeRejections(hosts.length, filters), filters },
    };
  }
  return { ok: true, candidates: best.map((b) => b.host), filters, considered: hosts.length, passed };
}

/** Whether a host of `weight` ranks before `other`: heavier first, then by name. */
function before(
  host: HostCandidate,
  weight: number,
  other: { host: HostCandidate; weight: number },
): boolean {
  return weight > other.weight || (weight === other.weight && host.name < other.host.name);
}

/** "no host can take this VM: 3 hosts considered; host-state removed 1, capacity removed 2". */
export function describeRejections(considered: number, filters: readonly FilterReport[]): string {
  if (considered === 0) return 'no host can take this VM: no hosts are registered';
  const parts = filters.filter((f) => f.removed > 0).map((f) => `${f.name} removed ${f.removed}`);
  return `no host can take this VM: ${considered} host${considered === 1 ? '' : 's'} considered; ${parts.join(', ')}`;
}
