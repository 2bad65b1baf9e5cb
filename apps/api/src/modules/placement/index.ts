/**
 * Placement (ARCHITECTURE.md "Placement"): pure filters and weighers over host rows
 * ({@link decidePlacement}), the allocation claim that cannot overcommit ({@link claimAllocation})
 * and the service that puts both together for a VM ({@link PlacementService.placeVm}).
 */
export * from './claim-allocation.js';
export * from './decide-placement.js';
export * from './host-filters.js';
export * from './host-weighers.js';
export * from './placement.errors.js';
export * from './placement.module.js';
export * from './placement.service.js';
export * from './placement.types.js';
