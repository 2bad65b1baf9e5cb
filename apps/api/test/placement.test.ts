import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Prisma } from '../src/gen/prisma/client.js';
import {
  claimAllocation,
  completeMigrationAllocation,
  decidePlacement,
  FILTER_NAMES,
  type FilterReport,
  freeShareAfter,
  type HostCandidate,
  hostCapacity,
  NoValidHostError,
  PlacementService,
  releaseVmAllocations,
} from '../src/modules/placement/index.js';
import { createTestDatabase, type TestDatabase } from './support/db.js';

const FLAVOR = { vcpus: 2, memoryMib: 1024 };

/** A host row as an agent would register it, with room decided by the test. */
function hostData(name: string, over: Partial<Prisma.HostCreateInput> = {}): Prisma.HostCreateInput {
  return {
    name,
    agentAddress: '127.0.0.1:1',
    state: 'UP',
    cores: 4,
    memoryMib: 8192,
    accelerator: 'tcg',
    qemuVersion: '7.2.0',
    machineTypes: ['pc', 'q35'],
    cpuModels: ['qemu64', 'max'],
    pools: [{ name: 'images', path: '/var/lib/hangar/images', shared: false }],
    ...over,
  };
}

function reportOf(filters: readonly FilterReport[]): Record<string, number> {
  return Object.fromEntries(filters.filter((f) => f.removed > 0).map((f) => [f.name, f.removed]));
}

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (e: unknown) => e,
  );
}

describe('placement against PostgreSQL', () => {
  let db: TestDatabase;
  let placement: PlacementService;
  let projectId: string;
  let otherProjectId: string;
  let flavorId: string;
  let imageId: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    placement = new PlacementService(db.prisma);
    projectId = (await db.prisma.project.create({ data: { name: 'alpha', quotaVms: 1000 } })).id;
    otherProjectId = (await db.prisma.project.create({ data: { name: 'beta' } })).id;
    flavorId = (await db.prisma.flavor.create({ data: { name: 'small', ...FLAVOR, diskGib: 1 } })).id;
    imageId = (
      await db.prisma.image.create({ data: { name: 'tiny', pool: 'images', kernelPath: 'vmlinuz' } })
    ).id;
  });
  afterAll(async () => {
    await db?.drop();
  });
  afterEach(async () => {
    // Each test starts from an empty cluster: no allocations, VMs or hosts.
    await db.prisma.allocation.deleteMany();
    await db.prisma.vm.deleteMany();
    await db.prisma.host.deleteMany();
  });

  async function createVms(
    count: number,
    over: Partial<Prisma.VmUncheckedCreateInput> = {},
  ): Promise<string[]> {
    const { name = 'vm', ...rest } = over;
    const rows = await db.prisma.vm.createManyAndReturn({
      data: Array.from({ length: count }, (_, i) => ({
        projectId,
        name: `${name}-${i}`,
        flavorId,
        imageId,
        diskGib: 1,
        ...FLAVOR,
        ...rest,
      })),
      select: { id: true },
    });
    return rows.map((r) => r.id);
  }

  /** Per host: the allocation sums, the counters and the schedulable capacity. */
  async function usage(): Promise<
    {
      name: string;
      allocated: { vcpus: number; memoryMib: number };
      counters: { vcpus: number; memoryMib: number };
    }[]
  > {
    const hosts = await db.prisma.host.findMany({ include: { allocations: true }, orderBy: { name: 'asc' } });
    return hosts.map((h) => ({
      name: h.name,
      allocated: {
        vcpus: h.allocations.reduce((s, a) => s + a.vcpus, 0),
        memoryMib: h.allocations.reduce((s, a) => s + a.memoryMib, 0),
      },
      counters: { vcpus: h.usedVcpus, memoryMib: h.usedMemoryMib },
    }));
  }

  it('places exactly as many of 50 parallel VMs as fit (20), never overcommits, and explains the rest', async () => {
    // Room for the 2 vCPU / 1 GiB flavor, with each host limited differently:
    await db.prisma.host.createMany({
      data: [
        hostData('cpu-bound', { cores: 2, memoryMib: 16384 }), // 2 × 4.0 = 8 vCPUs → 4
        hostData('ram-bound', { cores: 16, memoryMib: 6144 }), // 6 GiB × 1.0 → 6
        hostData('ratios', { cores: 4, cpuAllocationRatio: 2.5, memoryMib: 8192, ramAllocationRatio: 1.5 }), // 10 vCPUs → 5
        hostData('overcommitted-ram', { cores: 5, memoryMib: 3413, ramAllocationRatio: 1.5 }), // 5119 MiB → 4, 20 vCPUs
        hostData('half-used', { cores: 4, memoryMib: 8192, usedVcpus: 14, usedMemoryMib: 1024 }), // 16 − 14 → 1
        // Emptier than all of the above (spread would love them), but not schedulable:
        hostData('down', { state: 'DOWN', cores: 64, memoryMib: 262144 }),
        hostData('cordoned', { cordoned: true, cores: 64, memoryMib: 262144 }),
        hostData('maintenance', { state: 'MAINTENANCE', cores: 64, memoryMib: 262144 }),
      ],
    });
    const before = await usage();
    const vmIds = await createVms(50);

    const results = await Promise.allSettled(vmIds.map((id) => placement.placeVm(id)));

    const placed = results.filter((r) => r.status === 'fulfilled');
    const failed = results.filter((r) => r.status === 'rejected');
    expect(placed).toHaveLength(20);
    expect(failed).toHaveLength(30);
    for (const f of failed) {
      const error = f.reason as unknown;
      expect(error).toBeInstanceOf(NoValidHostError);
      const body = (error as NoValidHostError).toJSON();
      expect(body.code).toBe('NO_VALID_HOST');
      expect(body.filters.map((x) => x.name)).toEqual([...FILTER_NAMES]);
      // Three hosts are not schedulable, the five others are full.
      expect(reportOf(body.filters)).toEqual({ 'host-state': 3, capacity: 5 });
      expect(body.detail).toMatch(/8 hosts considered; host-state removed 3, capacity removed 5/);
    }

    const after = await usage();
    const hosts = await db.prisma.host.findMany();
    const placedPerHost: Record<string, number> = {};
    for (const h of after) {
      const host = hosts.find((x) => x.name === h.name)!;
      const capacity = hostCapacity({ ...host, pools: [] });
      const seeded = before.find((b) => b.name === h.name)!.counters;
      // The counters are the allocations (plus what the host was seeded with), never above capacity.
      expect(h.counters).toEqual({
        vcpus: seeded.vcpus + h.allocated.vcpus,
        memoryMib: seeded.memoryMib + h.allocated.memoryMib,
      });
      expect(h.counters.vcpus).toBeLessThanOrEqual(capacity.vcpus);
      expect(h.counters.memoryMib).toBeLessThanOrEqual(capacity.memoryMib);
      placedPerHost[h.name] = h.allocated.vcpus / FLAVOR.vcpus;
    }
    expect(placedPerHost).toEqual({
      'cpu-bound': 4,
      'ram-bound': 6,
      ratios: 5,
      'overcommitted-ram': 4,
      'half-used': 1,
      down: 0,
      cordoned: 0,
      maintenance: 0,
    });

    // Each placed VM points at the host of its one allocation, and that write bumped its version.
    const vms = await db.prisma.vm.findMany({
      where: { hostId: { not: null } },
      include: { allocations: true },
    });
    expect(vms).toHaveLength(20);
    for (const vm of vms) {
      expect(vm.allocations).toHaveLength(1);
      expect(vm.allocations[0]).toMatchObject({ hostId: vm.hostId, kind: 'primary', ...FLAVOR });
      expect(vm.version).toBe(2);
    }
  });

  it('never chooses a DOWN, cordoned or MAINTENANCE host, however empty', async () => {
    await db.prisma.host.createMany({
      data: [
        hostData('busy', { cores: 4, usedVcpus: 10, usedMemoryMib: 6000 }),
        hostData('down', { state: 'DOWN', cores: 64, memoryMib: 262144 }),
        hostData('cordoned', { cordoned: true, cores: 64, memoryMib: 262144 }),
        hostData('maintenance', { state: 'MAINTENANCE', cores: 64, memoryMib: 262144 }),
      ],
    });
    const [vmId] = await createVms(1);
    const result = await placement.placeVm(vmId!);
    const busy = await db.prisma.host.findUniqueOrThrow({ where: { name: 'busy' } });
    expect(result.hostId).toBe(busy.id);

    // With the one UP host full too, the answer names both reasons.
    await db.prisma.host.update({ where: { id: busy.id }, data: { usedMemoryMib: 8192 } });
    const [second] = await createVms(1, { name: 'second' });
    const error = await rejectionOf(placement.placeVm(second!));
    expect(error).toBeInstanceOf(NoValidHostError);
    expect(reportOf((error as NoValidHostError).filters)).toEqual({ 'host-state': 3, capacity: 1 });
  });

  it('spreads an anti-affinity group over distinct hosts even when placed in parallel with pack', async () => {
    await db.prisma.host.createMany({
      data: ['a', 'b', 'c', 'd'].map((n) => hostData(`host-${n}`, { cores: 16, memoryMib: 65536 })),
    });
    const group = await createVms(4, { name: 'web', antiAffinityGroup: 'web' });
    // `pack` sends every VM to the same (fullest) host first: only the locked re-check keeps the
    // group apart when the claims race.
    const placed = await Promise.all(group.map((id) => placement.placeVm(id, { weigher: 'pack' })));
    expect(new Set(placed.map((p) => p.hostId)).size).toBe(4);

    // A fifth member has nowhere to go; the answer says the group's rule removed every host.
    const [fifth] = await createVms(1, { name: 'web-extra', antiAffinityGroup: 'web' });
    const error = await rejectionOf(placement.placeVm(fifth!));
    expect(error).toBeInstanceOf(NoValidHostError);
    expect(reportOf((error as NoValidHostError).filters)).toEqual({ 'anti-affinity': 4 });

    // Groups belong to a project: another project's "web" and ungrouped VMs are unaffected.
    const [foreign] = await createVms(1, {
      name: 'other',
      projectId: otherProjectId,
      antiAffinityGroup: 'web',
    });
    const [plain] = await createVms(1, { name: 'plain' });
    await expect(placement.placeVm(foreign!)).resolves.toMatchObject({ existing: false });
    await expect(placement.placeVm(plain!, { weigher: 'pack' })).resolves.toMatchObject({ existing: false });
  });

  it('honours the CPU model, machine type, accelerator, storage pool and host choice', async () => {
    await db.prisma.host.createMany({
      data: [
        hostData('kvm-host', { accelerator: 'kvm', cpuModels: ['EPYC', 'qemu64'] }),
        hostData('q35-only', { machineTypes: ['q35'] }),
        hostData('no-pool', { pools: [{ name: 'scratch' }] }),
        hostData('good', {}),
      ],
    });
    const good = await db.prisma.host.findUniqueOrThrow({ where: { name: 'good' } });
    const kvm = await db.prisma.host.findUniqueOrThrow({ where: { name: 'kvm-host' } });
    const [vm, epyc, pinned] = await createVms(3);
    // Needs TCG (say, a migration from a TCG host): the KVM host goes; machine type and pool rule out two more.
    await expect(placement.placeVm(vm!, { accelerator: 'tcg' })).resolves.toMatchObject({ hostId: good.id });
    await db.prisma.vm.update({ where: { id: epyc! }, data: { cpuModel: 'EPYC' } });
    await expect(placement.placeVm(epyc!)).resolves.toMatchObject({ hostId: kvm.id });
    const error = await rejectionOf(
      placement.placeVm(pinned!, { onlyHostIds: [kvm.id], accelerator: 'tcg' }),
    );
    expect(reportOf((error as NoValidHostError).filters)).toEqual({ 'host-selection': 3, accelerator: 1 });
  });

  it('claims idempotently, releases exactly what it claimed, and double-books during a migration', async () => {
    await db.prisma.host.createMany({ data: [hostData('source'), hostData('destination')] });
    const [vmId] = await createVms(1);
    const first = await placement.placeVm(vmId!);
    // A retried create (the worker died after the claim committed) gets the same allocation back.
    const again = await placement.placeVm(vmId!);
    expect(again).toMatchObject({ hostId: first.hostId, allocationId: first.allocationId, existing: true });
    const retried = await db.prisma.$transaction((tx) =>
      claimAllocation(tx, { vmId: vmId!, projectId, ...FLAVOR }, [first.hostId]),
    );
    expect(retried).toMatchObject({ ok: true, existing: true, allocationId: first.allocationId });
    expect((await usage()).map((u) => u.counters.vcpus).sort()).toEqual([0, 2]);

    // Migration: the destination is claimed as well (never the source itself), then promoted.
    const dest = await placement.placeVm(vmId!, { kind: 'migration', excludeHostIds: [first.hostId] });
    expect(dest.hostId).not.toBe(first.hostId);
    expect((await usage()).map((u) => u.counters)).toEqual([
      { vcpus: 2, memoryMib: 1024 },
      { vcpus: 2, memoryMib: 1024 },
    ]);
    await db.prisma.$transaction((tx) => completeMigrationAllocation(tx, vmId!, first.hostId, dest.hostId));
    const allocations = await db.prisma.allocation.findMany({ where: { vmId: vmId! } });
    expect(allocations).toEqual([expect.objectContaining({ hostId: dest.hostId, kind: 'primary' })]);

    const released = await db.prisma.$transaction((tx) => releaseVmAllocations(tx, vmId!));
    expect(released).toBe(1);
    for (const u of await usage()) {
      expect(u.counters).toEqual({ vcpus: 0, memoryMib: 0 });
      expect(u.allocated).toEqual({ vcpus: 0, memoryMib: 0 });
    }
    // Releasing twice changes nothing (and the CHECK constraint would refuse a negative count).
    expect(await db.prisma.$transaction((tx) => releaseVmAllocations(tx, vmId!))).toBe(0);
  });

  it('lets go of a rejected host before trying the next one, so crossing claims cannot deadlock', async () => {
    await db.prisma.host.createMany({ data: [hostData('full', { usedVcpus: 16 }), hostData('free')] });
    const full = await db.prisma.host.findUniqueOrThrow({ where: { name: 'full' } });
    const free = await db.prisma.host.findUniqueOrThrow({ where: { name: 'free' } });
    const [vmId] = await createVms(1);
    const probe = new pg.Client({ connectionString: db.url });
    await probe.connect();
    const lockable = async (hostId: string): Promise<boolean> => {
      await probe.query('BEGIN');
      try {
        await probe.query('SELECT 1 FROM hosts WHERE id = $1 FOR UPDATE NOWAIT', [hostId]);
        return true;
      } catch (error) {
        if ((error as { code?: string }).code === '55P03') return false;
        throw error;
      } finally {
        await probe.query('ROLLBACK');
      }
    };
    try {
      await db.prisma.$transaction(async (tx) => {
        const claim = await claimAllocation(tx, { vmId: vmId!, projectId, ...FLAVOR }, [full.id, free.id]);
        expect(claim).toMatchObject({ ok: true, hostId: free.id });
        // Still inside the claiming transaction: the host it chose stays locked until commit,
        // the one it rejected is free for anyone else already.
        expect(await lockable(free.id)).toBe(false);
        expect(await lockable(full.id)).toBe(true);
      });
    } finally {
      await probe.end();
    }
  });

  it('refuses to claim outside a transaction', async () => {
    await db.prisma.host.create({ data: hostData('lonely') });
    const [vmId] = await createVms(1);
    const host = await db.prisma.host.findUniqueOrThrow({ where: { name: 'lonely' } });
    await expect(
      claimAllocation(db.prisma, { vmId: vmId!, projectId, ...FLAVOR }, [host.id]),
    ).rejects.toThrow(/interactive transaction/);
    await expect(releaseVmAllocations(db.prisma, vmId!)).resolves.toBe(0);
    expect(await db.prisma.allocation.count()).toBe(0);
  });
});

describe('decidePlacement (pure)', () => {
  function host(i: number, over: Partial<HostCandidate> = {}): HostCandidate {
    return Object.freeze({
      id: `00000000-0000-4000-8000-${i.toString().padStart(12, '0')}`,
      name: `host-${i.toString().padStart(5, '0')}`,
      state: 'UP',
      cordoned: false,
      cores: 32,
      memoryMib: 131072,
      cpuAllocationRatio: 4,
      ramAllocationRatio: 1,
      usedVcpus: 0,
      usedMemoryMib: 0,
      accelerator: 'kvm',
      cpuModels: Object.freeze(['EPYC', 'qemu64']),
      machineTypes: Object.freeze(['pc', 'q35']),
      pools: Object.freeze(['images']),
      ...over,
    });
  }

  /** 10,000 hosts with every kind of reason to be rejected, deterministic (no Math.random). */
  function cluster(): HostCandidate[] {
    return Array.from({ length: 10_000 }, (_, i) => {
      const k = (i * 7919) % 10_000;
      if (i % 97 === 0) return host(i, { state: 'DOWN' });
      if (i % 89 === 0) return host(i, { cordoned: true });
      if (i % 83 === 0) return host(i, { accelerator: 'tcg' });
      if (i % 79 === 0) return host(i, { cpuModels: ['qemu64'] });
      if (i % 73 === 0) return host(i, { pools: ['other'] });
      return host(i, { usedVcpus: k % 129, usedMemoryMib: (k * 13) % 131072 });
    });
  }

  it('decides over 10,000 in-memory hosts synchronously, deterministically, without touching its input', () => {
    const hosts = Object.freeze(cluster());
    const request = {
      vcpus: 4,
      memoryMib: 8192,
      cpuModel: 'EPYC',
      accelerator: 'kvm',
      storagePool: 'images',
    };
    const decision = decidePlacement(request, hosts, { maxCandidates: 5 });
    // Synchronous (no Promise): it cannot have waited on a database or anything else.
    expect(decision).not.toBeInstanceOf(Promise);
    expect(decidePlacement(request, hosts, { maxCandidates: 5 })).toEqual(decision);
    if (!decision.ok) throw new Error(decision.error.detail);
    expect(decision.considered).toBe(10_000);
    const removed = decision.filters.reduce((s, f) => s + f.removed, 0);
    expect(removed + decision.passed).toBe(10_000);
    for (const name of ['host-state', 'accelerator', 'cpu-model', 'storage-pool', 'capacity'] as const) {
      expect(decision.filters.find((f) => f.name === name)?.removed).toBeGreaterThan(0);
    }

    // The five best are exactly what sorting every passing host by the spread weight gives.
    const reference = hosts
      .filter(
        (h) =>
          h.state === 'UP' &&
          !h.cordoned &&
          h.accelerator === 'kvm' &&
          h.cpuModels.includes('EPYC') &&
          h.pools.includes('images') &&
          h.usedVcpus + 4 <= 128 &&
          h.usedMemoryMib + 8192 <= 131072,
      )
      .map((h) => ({ h, w: freeShareAfter(h, request) }))
      .sort((a, b) => b.w - a.w || a.h.name.localeCompare(b.h.name));
    expect(reference).toHaveLength(decision.passed);
    expect(decision.candidates.map((h) => h.name)).toEqual(reference.slice(0, 5).map((r) => r.h.name));

    // pack prefers the fullest hosts instead.
    const packed = decidePlacement(request, hosts, { weigher: 'pack', maxCandidates: 3 });
    if (!packed.ok) throw new Error(packed.error.detail);
    expect(packed.candidates.map((h) => h.name)).toEqual(
      [...reference]
        .sort((a, b) => a.w - b.w || a.h.name.localeCompare(b.h.name))
        .slice(0, 3)
        .map((r) => r.h.name),
    );
  });

  it('counts each rejected host once, under the first filter it fails', () => {
    const hosts = [
      host(1, { state: 'DOWN', cordoned: true, usedVcpus: 128 }), // host-state (also full: counted once)
      host(2, { accelerator: 'tcg' }),
      host(3, { cpuModels: ['qemu64'] }),
      host(4, { machineTypes: ['q35'] }),
      host(5, { pools: [] }),
      host(6),
      host(7, { usedMemoryMib: 131072 }),
    ];
    const decision = decidePlacement(
      {
        vcpus: 1,
        memoryMib: 512,
        cpuModel: 'EPYC',
        machineType: 'pc',
        accelerator: 'kvm',
        storagePool: 'images',
        antiAffinityGroup: 'g',
        excludeHostIds: [],
      },
      hosts,
      { context: { hostsWithGroupMembers: new Set([hosts[5]!.id]) } },
    );
    expect(decision.ok).toBe(false);
    if (decision.ok) return;
    expect(decision.error.filters).toEqual([
      { name: 'host-selection', removed: 0 },
      { name: 'host-state', removed: 1 },
      { name: 'accelerator', removed: 1 },
      { name: 'cpu-model', removed: 2 },
      { name: 'storage-pool', removed: 1 },
      { name: 'anti-affinity', removed: 1 },
      { name: 'capacity', removed: 1 },
    ]);
    expect(decidePlacement({ vcpus: 1, memoryMib: 1 }, []).ok).toBe(false);
  });
});
