import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../../../packages/vmm-core/test/support/test-host.js';
import { AgentGatewayServer } from '../src/infra/grpc/agent-gateway.server.js';
import {
  createKey,
  createProject,
  type Exchange,
  expectExchangesConform,
  expectProblem,
  json,
  startTestApp,
  type TestApp,
  type TestProject,
} from './support/app.js';
import {
  createTestRedis,
  joinToken,
  startTestAgent,
  type TestAgent,
  type TestRedis,
  testSettings,
  useSettingsEnv,
} from './support/cluster.js';

interface OperationBody {
  id: string;
  kind: string;
  status: string;
  vm_id: string | null;
  params: Record<string, unknown>;
  result: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
}

interface VmBody {
  id: string;
  status: string;
  flavor_id: string;
  vcpus: number;
  memory_mib: number;
  host_id: string | null;
  etag: string;
}

describe('POST /v1/vms/{id}/resize on a cluster with a fake-driver agent', () => {
  let redis: TestRedis;
  let app: TestApp;
  let agent: TestAgent;
  let alpha: TestProject;
  let beta: TestProject;
  let hostId: string;
  const flavors: Record<string, string> = {};
  let restoreEnv: () => void;

  beforeAll(async () => {
    redis = await createTestRedis();
    restoreEnv = useSettingsEnv(testSettings());
    app = await startTestApp({
      env: { HANGAR_ROLE: 'all', REDIS_URL: redis.url, HANGAR_REDIS_PREFIX: redis.prefix },
    });
    const gateway = app.running.app.get(AgentGatewayServer, { strict: false }).address;
    agent = await startTestAgent({
      name: 'resize-host',
      gatewayAddress: gateway,
      joinToken: await joinToken(app.db),
    });
    await agent.whenConnected();
    const host = await eventually(
      async () => (await app.db.prisma.host.findFirst({ where: { state: 'UP' } })) ?? undefined,
    );
    hostId = host.id;
    const capacity = Math.floor(host.cores * host.cpuAllocationRatio);
    for (const [name, vcpus, memoryMib] of [
      ['tiny', 1, 256],
      ['small', 2, 512],
      ['large', 4, 1024],
      // More vCPUs than the host can schedule.
      ['roomy', capacity + 1, 256],
    ] as const) {
      flavors[name] = (
        await app.db.prisma.flavor.create({ data: { name, vcpus, memoryMib, diskGib: 1 } })
      ).id;
    }
    await app.db.prisma.image.create({
      data: {
        name: 'hangar-tiny',
        pool: 'images',
        kernelPath: 'vmlinuz',
        initrdPath: 'initrd.img',
        diskPath: 'base.qcow2',
      },
    });
    alpha = await createProject(app.db, 'alpha');
    beta = await createProject(app.db, 'beta');
  });
  afterAll(async () => {
    await agent?.stop();
    await app?.close();
    await redis?.cleanup();
    restoreEnv?.();
  });

  async function waitFor(token: string, operationId: string): Promise<OperationBody> {
    const res = await app.client(token).get(`/v1/operations/${operationId}/wait?timeout=20s`);
    expect(res.status).toBe(200);
    return res.body as OperationBody;
  }

  async function succeed(token: string, res: Exchange): Promise<OperationBody> {
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const operation = (json(res).operation as OperationBody | undefined) ?? (res.body as OperationBody);
    const done = await waitFor(token, operation.id);
    expect(done.status, JSON.stringify(done.error)).toBe('SUCCEEDED');
    return done;
  }

  async function stoppedVm(token: string, name: string): Promise<string> {
    const created = await app.client(token).post('/v1/vms', { name, flavor: 'tiny', image: 'hangar-tiny' });
    await succeed(token, created);
    const vmId = (json(created).vm as VmBody).id;
    await succeed(token, await app.client(token).post(`/v1/vms/${vmId}/stop`, { force: true }));
    return vmId;
  }

  async function vm(token: string, vmId: string): Promise<VmBody> {
    const res = await app.client(token).get(`/v1/vms/${vmId}`);
    expect(res.status).toBe(200);
    return res.body as VmBody;
  }

  async function hostUsage(): Promise<{ usedVcpus: number; usedMemoryMib: number }> {
    return app.db.prisma.host.findUniqueOrThrow({
      where: { id: hostId },
      select: { usedVcpus: true, usedMemoryMib: true },
    });
  }

  /** The size the host's agent will start the VM with (its definition in the fake hypervisor). */
  function hostDefinition(vmId: string): { vcpus: number; memoryMiB: number } | undefined {
    const spec = agent.fakeHost?.vms.get(vmId)?.spec;
    return spec ? { vcpus: spec.vcpus, memoryMiB: spec.memoryMiB } : undefined;
  }

  it('refuses a VM that is not STOPPED, unknown and unchanged flavors, bad bodies and other projects', async () => {
    const created = await app
      .client(alpha.member)
      .post('/v1/vms', { name: 'busy-1', flavor: 'tiny', image: 'hangar-tiny' });
    await succeed(alpha.member, created);
    const vmId = (json(created).vm as VmBody).id;
    const c = app.client(alpha.member);

    const running = expectProblem(
      await c.post(`/v1/vms/${vmId}/resize`, { flavor: 'small' }),
      409,
      'INVALID_STATE',
    );
    expect(running.detail).toMatch(/cannot resize VM .* while it is RUNNING; allowed from STOPPED/);
    expect(running).toMatchObject({ state: 'RUNNING', action: 'resize', allowed_states: ['STOPPED'] });

    await succeed(alpha.member, await c.post(`/v1/vms/${vmId}/stop`, { force: true }));
    expectProblem(
      await c.post(`/v1/vms/${vmId}/resize`, { flavor: 'no-such-flavor' }),
      404,
      'FLAVOR_NOT_FOUND',
    );
    const same = expectProblem(
      await c.post(`/v1/vms/${vmId}/resize`, { flavor: flavors.tiny }),
      409,
      'CONFLICT',
    );
    expect(same.detail).toMatch(/already has flavor tiny/);
    for (const body of [{}, { flavor: 42 }, { flavor: 'small', vcpus: 4 }, { flavor: 'Not_A_Name' }]) {
      expectProblem(await c.post(`/v1/vms/${vmId}/resize`, body), 400, 'VALIDATION_FAILED');
    }
    expectProblem(await c.post('/v1/vms/not-a-uuid/resize', { flavor: 'small' }), 400, 'VALIDATION_FAILED');
    expectProblem(
      await c.post('/v1/vms/00000000-0000-4000-8000-000000000000/resize', { flavor: 'small' }),
      404,
      'VM_NOT_FOUND',
    );
    expectProblem(
      await app.client(beta.member).post(`/v1/vms/${vmId}/resize`, { flavor: 'small' }),
      404,
      'VM_NOT_FOUND',
    );
    expectProblem(
      await app.client(alpha.reader).post(`/v1/vms/${vmId}/resize`, { flavor: 'small' }),
      403,
      'FORBIDDEN',
    );
    // Nothing changed.
    expect(await vm(alpha.member, vmId)).toMatchObject({
      vcpus: 1,
      memory_mib: 256,
      flavor_id: flavors.tiny,
    });
    expect(await app.db.prisma.operation.count({ where: { vmId, kind: 'resize' } })).toBe(0);
  });

  it('resizes a STOPPED VM on its host: new size in GET, allocation and host definition, used at the next start', async () => {
    const vmId = await stoppedVm(alpha.member, 'grow-1');
    const before = await vm(alpha.member, vmId);
    const usage = await hostUsage();

    const res = await app
      .client(alpha.member)
      .post(
        `/v1/vms/${vmId}/resize`,
        { flavor: 'small' },
        { headers: { 'Idempotency-Key': 'resize-grow-1' } },
      );
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const operation = res.body as OperationBody;
    expect(res.headers.get('location')).toBe(`/v1/operations/${operation.id}`);
    expect(operation).toMatchObject({
      kind: 'resize',
      vm_id: vmId,
      params: {
        flavor_id: flavors.small,
        flavor: 'small',
        vcpus: 2,
        memory_mib: 512,
        from: { flavor_id: flavors.tiny, vcpus: 1, memory_mib: 256 },
      },
    });
    // A replay with the same key is the same operation, not a second resize.
    const replay = await app
      .client(alpha.member)
      .post(
        `/v1/vms/${vmId}/resize`,
        { flavor: 'small' },
        { headers: { 'Idempotency-Key': 'resize-grow-1' } },
      );
    expect(replay.status).toBe(202);
    expect((replay.body as OperationBody).id).toBe(operation.id);

    const done = await waitFor(alpha.member, operation.id);
    expect(done).toMatchObject({ status: 'SUCCEEDED', result: { vcpus: 2, memory_mib: 512, hostId } });
    const after = await vm(alpha.member, vmId);
    expect(after).toMatchObject({
      status: 'STOPPED',
      vcpus: 2,
      memory_mib: 512,
      flavor_id: flavors.small,
      host_id: hostId,
    });
    expect(after.etag).not.toBe(before.etag);
    expect(
      await app.db.prisma.allocation.findMany({
        where: { vmId },
        select: { hostId: true, vcpus: true, memoryMib: true },
      }),
    ).toEqual([{ hostId, vcpus: 2, memoryMib: 512 }]);
    expect(await hostUsage()).toEqual({
      usedVcpus: usage.usedVcpus + 1,
      usedMemoryMib: usage.usedMemoryMib + 256,
    });
    expect(hostDefinition(vmId)).toEqual({ vcpus: 2, memoryMiB: 512 });
    const kinds = (
      await app.db.prisma.event.findMany({ where: { resourceId: vmId }, orderBy: { id: 'asc' } })
    ).map((e) => e.kind);
    expect(kinds.slice(-2)).toEqual(['vm.action_requested', 'vm.resized']);

    // The next start runs with the new size.
    await succeed(alpha.member, await app.client(alpha.member).post(`/v1/vms/${vmId}/start`));
    expect(await vm(alpha.member, vmId)).toMatchObject({ status: 'RUNNING', vcpus: 2 });
    expect(hostDefinition(vmId)).toEqual({ vcpus: 2, memoryMiB: 512 });
    expect(agent.fakeHost?.vms.get(vmId)?.state).toBe('RUNNING');
  });

  it("checks the project's quota for the growth only; shrinking always fits", async () => {
    const small = await app.db.prisma.project.create({
      data: { name: 'small-quota', quotaVcpus: 2, quotaMemoryMib: 1024 },
    });
    const key = await createKey(app.db, small.id, 'member');
    const vmId = await stoppedVm(key, 'quota-1');
    const over = expectProblem(
      await app.client(key).post(`/v1/vms/${vmId}/resize`, { flavor: 'large' }),
      403,
      'QUOTA_EXCEEDED',
    );
    expect(over).toMatchObject({ resource: 'vcpus', limit: 2, used: 1, requested: 3 });
    expect(await vm(key, vmId)).toMatchObject({ vcpus: 1, memory_mib: 256 });
    // Exactly up to the limit, then back down.
    await succeed(key, await app.client(key).post(`/v1/vms/${vmId}/resize`, { flavor: 'small' }));
    expect(await vm(key, vmId)).toMatchObject({ vcpus: 2, memory_mib: 512 });
    await app.db.prisma.project.update({ where: { id: small.id }, data: { quotaVcpus: 1 } });
    await succeed(key, await app.client(key).post(`/v1/vms/${vmId}/resize`, { flavor: 'tiny' }));
    expect(await vm(key, vmId)).toMatchObject({ vcpus: 1, memory_mib: 256 });
    expect(hostDefinition(vmId)).toEqual({ vcpus: 1, memoryMiB: 256 });
  });

  it('answers NO_VALID_HOST when its host has no room, naming the filter, and never moves the VM', async () => {
    await app.db.prisma.project.update({ where: { id: alpha.id }, data: { quotaVcpus: 10_000 } });
    const vmId = await stoppedVm(alpha.member, 'roomy-1');
    const usage = await hostUsage();
    const problem = expectProblem(
      await app.client(alpha.member).post(`/v1/vms/${vmId}/resize`, { flavor: 'roomy' }),
      409,
      'NO_VALID_HOST',
    );
    expect(problem.detail).toMatch(/1 host considered; capacity removed 1/);
    expect(problem.filters).toContainEqual({ name: 'capacity', removed: 1 });
    expect((problem.filters as { removed: number }[]).reduce((sum, f) => sum + f.removed, 0)).toBe(1);
    expect(await hostUsage()).toEqual(usage);
    expect(await vm(alpha.member, vmId)).toMatchObject({ vcpus: 1, host_id: hostId });
    // A cordoned host takes no new size either (the host-state filter).
    await app.db.prisma.host.update({ where: { id: hostId }, data: { cordoned: true } });
    try {
      const cordoned = expectProblem(
        await app.client(alpha.member).post(`/v1/vms/${vmId}/resize`, { flavor: 'small' }),
        409,
        'NO_VALID_HOST',
      );
      expect(cordoned.filters).toContainEqual({ name: 'host-state', removed: 1 });
    } finally {
      await app.db.prisma.host.update({ where: { id: hostId }, data: { cordoned: false } });
    }
  });

  it('puts the size back when the host refuses the new definition', async () => {
    // The host has room on paper (a large allocation ratio), but vmm-core allows at most 64 vCPUs.
    const host = await app.db.prisma.host.findUniqueOrThrow({ where: { id: hostId } });
    await app.db.prisma.host.update({ where: { id: hostId }, data: { cpuAllocationRatio: 100 } });
    try {
      const wide = await app.db.prisma.flavor.create({
        data: { name: 'wide', vcpus: 65, memoryMib: 256, diskGib: 1 },
      });
      const vmId = await stoppedVm(alpha.member, 'wide-1');
      const usage = await hostUsage();
      const res = await app.client(alpha.member).post(`/v1/vms/${vmId}/resize`, { flavor: wide.id });
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      const done = await waitFor(alpha.member, (res.body as OperationBody).id);
      expect(done.status).toBe('FAILED');
      expect(done.error?.code).toBe('INVALID_SPEC');
      expect(await vm(alpha.member, vmId)).toMatchObject({
        status: 'STOPPED',
        vcpus: 1,
        memory_mib: 256,
        flavor_id: flavors.tiny,
      });
      expect(await app.db.prisma.allocation.findMany({ where: { vmId }, select: { vcpus: true } })).toEqual([
        { vcpus: 1 },
      ]);
      expect(await hostUsage()).toEqual(usage);
      expect(hostDefinition(vmId)).toEqual({ vcpus: 1, memoryMiB: 256 });
      const kinds = (
        await app.db.prisma.event.findMany({ where: { resourceId: vmId }, orderBy: { id: 'asc' } })
      ).map((e) => e.kind);
      expect(kinds.slice(-3)).toEqual(['vm.action_requested', 'vm.resized', 'vm.resize_reverted']);
      // The VM still starts, with its old size.
      await succeed(alpha.member, await app.client(alpha.member).post(`/v1/vms/${vmId}/start`));
      expect(hostDefinition(vmId)).toEqual({ vcpus: 1, memoryMiB: 256 });
    } finally {
      await app.db.prisma.host.update({
        where: { id: hostId },
        data: { cpuAllocationRatio: host.cpuAllocationRatio },
      });
    }
  });

  it('answers every exchange as the OpenAPI document says', async () => {
    const checks = await expectExchangesConform(app);
    const covered = new Set(
      checks.filter((c) => c.operation && c.exchange.status < 300).map((c) => c.operation),
    );
    expect(covered.has('POST /v1/vms/{id}/resize')).toBe(true);
    const problems = new Set(
      checks
        .filter((c) => c.operation === 'POST /v1/vms/{id}/resize' && c.exchange.status >= 400)
        .map((c) => c.exchange.status),
    );
    expect([...problems].sort()).toEqual([400, 403, 404, 409]);
  });
});
