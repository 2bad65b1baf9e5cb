import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../../../packages/vmm-core/test/support/test-host.js';
import { DomainError } from '../src/errors/domain-error.js';
import type { Operation } from '../src/gen/prisma/client.js';
import { OperationQueue } from '../src/infra/queue/operation-queue.js';
import { OperationService } from '../src/modules/operations/operation.service.js';
import { VmsService } from '../src/modules/vms/vms.service.js';
import {
  buildApi,
  createTestRedis,
  FlakyLink,
  joinToken,
  seedCatalog,
  startControlPlane,
  startTestAgent,
  type TestAgent,
  type TestControlPlane,
  type TestRedis,
  testSettings,
  WorkerProcess,
} from './support/cluster.js';
import { createTestDatabase, type TestDatabase } from './support/db.js';

async function domainError(promise: Promise<unknown>): Promise<DomainError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof DomainError)) throw new Error(`expected a DomainError, got ${String(error)}`);
  return error;
}

describe('conductor against PostgreSQL, Redis and fake-driver agents', () => {
  let db: TestDatabase;
  let redis: TestRedis;
  let built: Promise<void>;
  const planes: TestControlPlane[] = [];
  const agents: TestAgent[] = [];
  const workers: WorkerProcess[] = [];
  const links: FlakyLink[] = [];

  beforeAll(async () => {
    // The worker child runs the built code: build it while the first tests run.
    built = buildApi();
    db = await createTestDatabase();
    redis = await createTestRedis();
  });
  afterEach(async () => {
    await Promise.all(workers.splice(0).map((w) => w.dispose()));
    await Promise.all(agents.splice(0).map((a) => a.stop()));
    await Promise.all(planes.splice(0).map((p) => p.close()));
    await Promise.all(links.splice(0).map((l) => l.close()));
    // Hosts of stopped agents stay UP until their heartbeats are missed: keep the next test's VMs off them.
    await db.prisma.host.updateMany({ data: { cordoned: true } });
  });
  afterAll(async () => {
    await built?.catch(() => undefined);
    await redis?.cleanup();
    await db?.drop();
  });

  async function plane(options: { worker?: boolean } = {}): Promise<TestControlPlane> {
    const p = await startControlPlane({ db, redis, worker: options.worker ?? true });
    planes.push(p);
    return p;
  }

  async function agent(
    cp: TestControlPlane,
    name: string,
    options: { latencyMs?: number; advertise?: string } = {},
  ) {
    const a = await startTestAgent({
      name,
      gatewayAddress: cp.gatewayAddress,
      joinToken: await joinToken(db),
      ...options,
    });
    agents.push(a);
    await a.whenConnected();
    const hostId = a.session()?.stats().hostId ?? '';
    await eventually(async () =>
      (await db.prisma.host.findUniqueOrThrow({ where: { id: hostId } })).state === 'UP' ? true : undefined,
    );
    return { agent: a, hostId };
  }

  async function finished(cp: TestControlPlane, operationId: string, timeoutMs = 30_000): Promise<Operation> {
    const op = await cp.get(OperationService).wait(operationId, timeoutMs);
    if (op.status === 'PENDING' || op.status === 'RUNNING')
      throw new Error(`operation ${operationId} still ${op.status}`);
    return op;
  }

  async function vmRow(id: string) {
    return db.prisma.vm.findUniqueOrThrow({ where: { id } });
  }

  it('creates a VM (SUCCEEDED, RUNNING on the host with its allocation), runs every action, deletes it', async () => {
    const cp = await plane();
    const { agent: a, hostId } = await agent(cp, 'cd-alpha');
    const { projectId } = await seedCatalog(db);
    const vms = cp.get(VmsService);

    const { vm, operation } = await vms.create({
      projectId,
      name: 'alpha-1',
      flavor: 'tiny',
      image: 'hangar-tiny',
      labels: { app: 'web' },
    });
    expect(vm.observedState).toBe('PENDING');
    expect(operation).toMatchObject({ kind: 'create', status: 'PENDING', vmId: vm.id, projectId });
    const done = await finished(cp, operation.id);
    expect(done).toMatchObject({ status: 'SUCCEEDED', percent: 100, attempts: 1, errorCode: null, hostId });
    expect(done.result).toMatchObject({ hostId, state: 'RUNNING' });
    expect(done.startedAt).toBeInstanceOf(Date);
    expect(done.finishedAt).toBeInstanceOf(Date);
    expect(await vmRow(vm.id)).toMatchObject({ observedState: 'RUNNING', desiredState: 'RUNNING', hostId });
    expect(a.fakeHost?.vms.get(vm.id)?.state).toBe('RUNNING');
    const spec = a.fakeHost?.vms.get(vm.id)?.spec;
    expect(spec).toMatchObject({
      vcpus: 1,
      memoryMiB: 256,
      cloudInit: { hostname: 'alpha-1', instanceId: vm.id },
    });
    expect(spec?.disks[0]).toMatchObject({ file: { pool: 'shared', path: `vms/${vm.id}/root.qcow2` } });
    expect(await db.prisma.allocation.findMany({ where: { vmId: vm.id } })).toMatchObject([
      { hostId, vcpus: 1, memoryMib: 256 },
    ]);
    expect(await db.prisma.host.findUniqueOrThrow({ where: { id: hostId } })).toMatchObject({
      usedVcpus: 1,
      usedMemoryMib: 256,
    });

    // Actions follow the state table; each is an operation the conductor runs on the agent.
    const act = async (
      action: 'start' | 'stop' | 'reboot' | 'pause' | 'resume',
      expected: string,
      force = false,
    ) => {
      const accepted = await vms.requestAction(vm.id, action, { projectId, force });
      expect(accepted.operation).toMatchObject({ kind: action, status: 'PENDING' });
      const result = await finished(cp, accepted.operation.id);
      expect(result.status, `${action}: ${result.errorCode} ${result.errorMessage}`).toBe('SUCCEEDED');
      expect((await vmRow(vm.id)).observedState).toBe(expected);
      expect(a.fakeHost?.vms.get(vm.id)?.state).toBe(expected);
    };
    await act('pause', 'PAUSED');
    const paused = await domainError(vms.requestAction(vm.id, 'pause', { projectId }));
    expect(paused.code).toBe('INVALID_STATE');
    expect(paused.message).toMatch(/while it is PAUSED/);
    await act('resume', 'RUNNING');
    await act('reboot', 'RUNNING');
    await eventually(async () =>
      (await db.prisma.event.count({ where: { resourceId: vm.id, kind: 'vm.reset' } })) === 1
        ? true
        : undefined,
    );
    const running = await domainError(vms.delete(vm.id, { projectId }));
    expect(running.code).toBe('INVALID_STATE');
    expect(running.message).toMatch(/while it is RUNNING; allowed from STOPPED, ERROR, PENDING, CREATING/);
    await act('stop', 'STOPPED', true);
    expect(
      (
        (await db.prisma.operation.findFirstOrThrow({ where: { vmId: vm.id, kind: 'stop' } })).params as {
          force: boolean;
        }
      ).force,
    ).toBe(true);
    expect((await vmRow(vm.id)).desiredState).toBe('STOPPED');
    await act('start', 'RUNNING');
    await act('stop', 'STOPPED');

    // Another project does not see the VM at all.
    const other = await seedCatalog(db);
    await expect(vms.requestAction(vm.id, 'start', { projectId: other.projectId })).rejects.toMatchObject({
      code: 'VM_NOT_FOUND',
    });

    const deleting = await vms.delete(vm.id, { projectId });
    expect(deleting.vm.desiredState).toBe('DELETED');
    const deleted = await finished(cp, deleting.operation.id);
    expect(deleted.status).toBe('SUCCEEDED');
    const gone = await vmRow(vm.id);
    expect(gone).toMatchObject({ observedState: 'DELETED', hostId: null });
    expect(gone.deletedAt).toBeInstanceOf(Date);
    expect(a.fakeHost?.vms.has(vm.id)).toBe(false);
    expect(await db.prisma.allocation.count({ where: { vmId: vm.id } })).toBe(0);
    expect(await db.prisma.host.findUniqueOrThrow({ where: { id: hostId } })).toMatchObject({
      usedVcpus: 0,
      usedMemoryMib: 0,
    });
    await expect(vms.get(vm.id, { projectId })).rejects.toMatchObject({ code: 'VM_NOT_FOUND' });
    // The name is free again.
    const again = await vms.create({ projectId, name: 'alpha-1', flavor: 'tiny', image: 'hangar-tiny' });
    expect((await finished(cp, again.operation.id)).status).toBe('SUCCEEDED');
  });

  it('retries a transient agent failure (host unreachable) with backoff until it succeeds', async () => {
    const cp = await plane();
    // The agent registers an address behind a link that is down: calls fail with UNAVAILABLE.
    const link = await FlakyLink.create();
    links.push(link);
    const { agent: a } = await agent(cp, 'cd-flaky', { advertise: link.address });
    const { projectId } = await seedCatalog(db);
    const { vm, operation } = await cp
      .get(VmsService)
      .create({ projectId, name: 'flaky-1', flavor: 'tiny', image: 'hangar-tiny' });
    const retrying = await eventually(
      async () => {
        const op = await db.prisma.operation.findUniqueOrThrow({ where: { id: operation.id } });
        return (op.progress as { lastError?: { code: string } }).lastError ? op : undefined;
      },
      { timeoutMs: 15_000, what: 'a failed first attempt' },
    );
    expect(retrying.status).toBe('RUNNING');
    expect((retrying.progress as { lastError: { code: string; attempt: number } }).lastError).toMatchObject({
      code: 'UNAVAILABLE',
      attempt: 1,
    });
    await link.open(a.address);
    const done = await finished(cp, operation.id);
    expect(done.status, `${done.errorCode}: ${done.errorMessage}`).toBe('SUCCEEDED');
    expect(done.attempts).toBeGreaterThanOrEqual(2);
    expect((await vmRow(vm.id)).observedState).toBe('RUNNING');
    // Retries were keyed by the operation id: the host made the VM once.
    expect([...(a.fakeHost?.vms.keys() ?? [])]).toEqual([vm.id]);
  });

  it('does not retry an action the agent refuses for good (INVALID_STATE)', async () => {
    const cp = await plane();
    const { agent: a, hostId } = await agent(cp, 'cd-strict');
    const { projectId } = await seedCatalog(db);
    const created = await cp
      .get(VmsService)
      .create({ projectId, name: 'strict-1', flavor: 'tiny', image: 'hangar-tiny' });
    expect((await finished(cp, created.operation.id)).status).toBe('SUCCEEDED');
    // The api believes the VM is STOPPED (a stale view): its start reaches an agent that runs it.
    await db.prisma.vm.update({ where: { id: created.vm.id }, data: { observedState: 'STOPPED' } });
    const accepted = await cp.get(VmsService).requestAction(created.vm.id, 'start', { projectId });
    const failed = await finished(cp, accepted.operation.id);
    expect(failed).toMatchObject({ status: 'FAILED', errorCode: 'INVALID_STATE', attempts: 1 });
    expect(failed.errorMessage).toMatch(/while it is RUNNING/);
    expect((failed.progress as { lastError?: unknown }).lastError).toBeUndefined();
    // The conductor read the truth back from the host.
    expect(await vmRow(created.vm.id)).toMatchObject({
      observedState: 'RUNNING',
      desiredState: 'RUNNING',
      hostId,
    });
    expect(a.fakeHost?.vms.get(created.vm.id)?.state).toBe('RUNNING');
  });

  it('fails a create no host can take with NO_VALID_HOST and leaves nothing claimed', async () => {
    const cp = await plane();
    await agent(cp, 'cd-small');
    const { projectId } = await seedCatalog(db, { quotaVcpus: 100_000, quotaMemoryMib: 10_000_000 });
    await db.prisma.flavor.create({ data: { name: 'colossal', vcpus: 4_096, memoryMib: 256, diskGib: 1 } });
    const { vm, operation } = await cp
      .get(VmsService)
      .create({ projectId, name: 'big-1', flavor: 'colossal', image: 'hangar-tiny' });
    const failed = await finished(cp, operation.id);
    expect(failed).toMatchObject({ status: 'FAILED', errorCode: 'NO_VALID_HOST', attempts: 1 });
    expect(failed.errorMessage).toMatch(/capacity removed 1/);
    expect(failed.result).toMatchObject({
      filters: expect.arrayContaining([{ name: 'capacity', removed: 1 }]),
    });
    expect(await vmRow(vm.id)).toMatchObject({ observedState: 'ERROR', hostId: null });
    expect((await vmRow(vm.id)).errorMessage).toMatch(/NO_VALID_HOST/);
    expect(await db.prisma.allocation.count({ where: { vmId: vm.id } })).toBe(0);
  });

  it('refuses a second action while one runs (OPERATION_IN_PROGRESS), also under concurrent requests', async () => {
    const cp = await plane();
    await agent(cp, 'cd-slow', { latencyMs: 600 });
    const { projectId } = await seedCatalog(db);
    const vms = cp.get(VmsService);
    const created = await vms.create({ projectId, name: 'busy-1', flavor: 'tiny', image: 'hangar-tiny' });
    const whileCreating = await domainError(vms.delete(created.vm.id, { projectId }));
    expect(whileCreating.code).toBe('OPERATION_IN_PROGRESS');
    expect(whileCreating.extensions).toMatchObject({
      operation_id: created.operation.id,
      operation_kind: 'create',
    });
    expect((await finished(cp, created.operation.id)).status).toBe('SUCCEEDED');

    // Twelve clients reboot the VM at the same moment: exactly one operation is accepted.
    const results = await Promise.allSettled(
      Array.from({ length: 12 }, () => vms.requestAction(created.vm.id, 'reboot', { projectId })),
    );
    const accepted = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as DomainError] : []));
    expect(accepted).toHaveLength(1);
    expect(refused).toHaveLength(11);
    for (const error of refused) expect(error.code).toBe('OPERATION_IN_PROGRESS');
    expect(
      await db.prisma.operation.count({
        where: { vmId: created.vm.id, status: { in: ['PENDING', 'RUNNING'] } },
      }),
    ).toBe(1);
    const stop = await domainError(vms.requestAction(created.vm.id, 'stop', { projectId, force: true }));
    expect(stop.code).toBe('OPERATION_IN_PROGRESS');
    const reboot = accepted[0];
    if (!reboot) throw new Error('no reboot accepted');
    expect((await finished(cp, reboot.operation.id)).status).toBe('SUCCEEDED');
    // Once it finished, the VM takes the next action.
    const next = await vms.requestAction(created.vm.id, 'stop', { projectId });
    expect((await finished(cp, next.operation.id)).status).toBe('SUCCEEDED');
  });

  it('enforces the project quota, also for concurrent creates (QUOTA_EXCEEDED)', async () => {
    const cp = await plane({ worker: false });
    const { projectId } = await seedCatalog(db, { quotaVms: 3 });
    const vms = cp.get(VmsService);
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) =>
        vms.create({ projectId, name: `q-${i}`, flavor: 'tiny', image: 'hangar-tiny' }),
      ),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
    const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as DomainError] : []));
    expect(refused).toHaveLength(5);
    for (const error of refused) {
      expect(error.code).toBe('QUOTA_EXCEEDED');
      expect(error.extensions).toMatchObject({ resource: 'vms', limit: 3, used: 3 });
    }
    const small = await seedCatalog(db, { quotaMemoryMib: 300 });
    await vms.create({ projectId: small.projectId, name: 'm-1', flavor: 'tiny', image: 'hangar-tiny' });
    const memory = await domainError(
      vms.create({ projectId: small.projectId, name: 'm-2', flavor: 'tiny', image: 'hangar-tiny' }),
    );
    expect(memory.code).toBe('QUOTA_EXCEEDED');
    expect(memory.message).toMatch(/memory_mib: 256 in use \+ 256 requested > limit 300/);
    expect(
      (await domainError(vms.create({ projectId, name: 'x', flavor: 'nope', image: 'hangar-tiny' }))).code,
    ).toBe('FLAVOR_NOT_FOUND');
    const roomy = await seedCatalog(db);
    await vms.create({ projectId: roomy.projectId, name: 'dup', flavor: 'tiny', image: 'hangar-tiny' });
    const taken = await domainError(
      vms.create({ projectId: roomy.projectId, name: 'dup', flavor: 'tiny', image: 'hangar-tiny' }),
    );
    expect(taken).toMatchObject({ code: 'ALREADY_EXISTS', field: 'name' });
  });

  it('re-enqueues operations whose jobs a Redis flush lost', async () => {
    const api = await plane({ worker: false });
    await agent(api, 'cd-flush');
    const { projectId } = await seedCatalog(db);
    const { vm, operation } = await api
      .get(VmsService)
      .create({ projectId, name: 'flush-1', flavor: 'tiny', image: 'hangar-tiny' });
    const queue = api.get(OperationQueue);
    expect(await queue.jobState(operation.id)).toBe('waiting');
    expect(await redis.flush()).toBeGreaterThan(0);
    expect(await queue.jobState(operation.id)).toBe('unknown');
    expect((await db.prisma.operation.findUniqueOrThrow({ where: { id: operation.id } })).status).toBe(
      'PENDING',
    );

    await plane({ worker: true });
    const done = await finished(api, operation.id);
    expect(done.status, `${done.errorCode}: ${done.errorMessage}`).toBe('SUCCEEDED');
    expect((await vmRow(vm.id)).observedState).toBe('RUNNING');
  });

  it('cancels an operation that has not started; a worker then skips it', async () => {
    const api = await plane({ worker: false });
    await agent(api, 'cd-cancel');
    const { projectId } = await seedCatalog(db);
    const vms = api.get(VmsService);
    const operations = api.get(OperationService);
    const { vm, operation } = await vms.create({
      projectId,
      name: 'cancel-1',
      flavor: 'tiny',
      image: 'hangar-tiny',
    });
    const cancelled = await operations.cancel(operation.id, projectId);
    expect(cancelled).toMatchObject({ status: 'CANCELLED', errorCode: 'CANCELLED' });
    expect(await vmRow(vm.id)).toMatchObject({ observedState: 'ERROR', hostId: null });
    // Cancelling again is a no-op; another project cannot even see it.
    expect((await operations.cancel(operation.id, projectId)).status).toBe('CANCELLED');
    await expect(operations.cancel(operation.id, (await seedCatalog(db)).projectId)).rejects.toMatchObject({
      code: 'OPERATION_NOT_FOUND',
    });

    await plane({ worker: true });
    const deleting = await vms.delete(vm.id, { projectId });
    const deleted = await finished(api, deleting.operation.id);
    expect(deleted.status).toBe('SUCCEEDED');
    // The cancelled create never ran: no attempt, no allocation.
    expect(await db.prisma.operation.findUniqueOrThrow({ where: { id: operation.id } })).toMatchObject({
      status: 'CANCELLED',
      attempts: 0,
    });
    expect(await db.prisma.allocation.count({ where: { vmId: vm.id } })).toBe(0);
    const running = await vms.create({ projectId, name: 'cancel-2', flavor: 'tiny', image: 'hangar-tiny' });
    expect((await finished(api, running.operation.id)).status).toBe('SUCCEEDED');
    await expect(operations.cancel(running.operation.id, projectId)).rejects.toMatchObject({
      code: 'INVALID_STATE',
    });
  });

  it('finishes a create whose worker was SIGKILLed mid-way once a worker runs again', async () => {
    await built;
    const settings = testSettings();
    const api = await plane({ worker: false });
    // Each fake hypervisor call takes 2 s, so the kill lands inside CreateVm/StartVm.
    const { agent: a } = await agent(api, 'cd-crash', { latencyMs: 2_000 });
    const first = await WorkerProcess.start({ db, redis, settings });
    workers.push(first);
    const { projectId } = await seedCatalog(db);
    const { vm, operation } = await api
      .get(VmsService)
      .create({ projectId, name: 'crash-1', flavor: 'tiny', image: 'hangar-tiny' });
    await eventually(
      async () => {
        const op = await db.prisma.operation.findUniqueOrThrow({ where: { id: operation.id } });
        return op.status === 'RUNNING' && (op.progress as { phase?: string }).phase === 'creating'
          ? true
          : undefined;
      },
      { timeoutMs: 20_000, what: 'the create to reach the host' },
    );
    first.kill('SIGKILL');
    expect((await first.waitForExit()).signal).toBe('SIGKILL');
    await new Promise((r) => setTimeout(r, 500));
    expect((await db.prisma.operation.findUniqueOrThrow({ where: { id: operation.id } })).status).toBe(
      'RUNNING',
    );

    const second = await WorkerProcess.start({ db, redis, settings });
    workers.push(second);
    const done = await finished(api, operation.id, 60_000);
    expect(done.status, `${done.errorCode}: ${done.errorMessage}`).toBe('SUCCEEDED');
    expect(done.attempts).toBeGreaterThanOrEqual(2);
    expect((await vmRow(vm.id)).observedState).toBe('RUNNING');
    // One VM on the host and one allocation: the retried steps did not act twice.
    expect([...(a.fakeHost?.vms.keys() ?? [])]).toEqual([vm.id]);
    expect(await db.prisma.allocation.count({ where: { vmId: vm.id } })).toBe(1);
  });
});
