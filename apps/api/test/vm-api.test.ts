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
  error: { code: string; message: string } | null;
  attempts: number;
}

interface VmBody {
  id: string;
  name: string;
  status: string;
  desired_state: string;
  host_id: string | null;
  etag: string;
  labels: Record<string, string>;
}

describe('REST /v1/vms and /v1/operations on a cluster with a fake-driver agent', () => {
  let redis: TestRedis;
  let app: TestApp;
  let agent: TestAgent;
  let alpha: TestProject;
  let beta: TestProject;
  let restoreEnv: () => void;

  beforeAll(async () => {
    redis = await createTestRedis();
    restoreEnv = useSettingsEnv(testSettings());
    app = await startTestApp({
      env: { HANGAR_ROLE: 'all', REDIS_URL: redis.url, HANGAR_REDIS_PREFIX: redis.prefix },
    });
    const gateway = app.running.app.get(AgentGatewayServer, { strict: false }).address;
    agent = await startTestAgent({
      name: 'api-host',
      gatewayAddress: gateway,
      joinToken: await joinToken(app.db),
    });
    await agent.whenConnected();
    await eventually(async () =>
      (await app.db.prisma.host.count({ where: { state: 'UP' } })) === 1 ? true : undefined,
    );
    await app.db.prisma.flavor.create({ data: { name: 'tiny', vcpus: 1, memoryMib: 256, diskGib: 1 } });
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

  async function createVm(
    token: string,
    name: string,
    extra: Record<string, unknown> = {},
  ): Promise<{ vm: VmBody; operation: OperationBody; res: Exchange }> {
    const res = await app
      .client(token)
      .post('/v1/vms', { name, flavor: 'tiny', image: 'hangar-tiny', ...extra });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const body = json(res) as unknown as { vm: VmBody; operation: OperationBody };
    return { ...body, res };
  }

  it('creates a VM: 202 with the VM and its operation, Location, then RUNNING on the host', async () => {
    const { vm, operation, res } = await createVm(alpha.member, 'web-1', { labels: { tier: 'web' } });
    expect(res.headers.get('location')).toBe(`/v1/operations/${operation.id}`);
    expect(vm).toMatchObject({
      name: 'web-1',
      status: 'PENDING',
      desired_state: 'RUNNING',
      labels: { tier: 'web' },
    });
    expect(operation).toMatchObject({ kind: 'create', vm_id: vm.id });
    const done = await waitFor(alpha.member, operation.id);
    expect(done).toMatchObject({ status: 'SUCCEEDED', error: null });

    const get = await app.client(alpha.reader).get(`/v1/vms/${vm.id}`);
    expect(get.status).toBe(200);
    const body = json(get) as unknown as VmBody;
    expect(body).toMatchObject({ status: 'RUNNING', host_id: agent.session()?.stats().hostId });
    expect(get.headers.get('etag')).toBe(`"${body.etag}"`);

    const list = await app.client(alpha.reader).get('/v1/vms?status=RUNNING');
    expect((json(list).items as VmBody[]).map((v) => v.id)).toEqual([vm.id]);
    const operations = await app.client(alpha.reader).get(`/v1/operations?vm_id=${vm.id}`);
    expect((json(operations).items as OperationBody[]).map((o) => o.kind)).toEqual(['create']);

    const console = await app.client(alpha.member).get(`/v1/vms/${vm.id}/console?tail_bytes=4096`);
    expect(console.status).toBe(200);
    expect(json(console)).toMatchObject({ vm_id: vm.id, host_id: body.host_id, text: expect.any(String) });

    const metrics = await eventually(
      async () => {
        const m = await app.client(alpha.reader).get(`/v1/vms/${vm.id}/metrics`);
        return (json(m) as { sampled_at: string | null }).sampled_at ? m : undefined;
      },
      { timeoutMs: 10_000, what: 'a metrics sample' },
    );
    expect(json(metrics)).toMatchObject({
      vm_id: vm.id,
      host_id: body.host_id,
      cpu: { seconds_total: expect.any(Number) },
    });
  });

  it('runs actions as operations and answers wrong states and busy VMs with 409', async () => {
    const { vm, operation } = await createVm(alpha.member, 'act-1');
    // While the create runs (or right after), a second action is refused or the state is wrong.
    const early = await app.client(alpha.member).post(`/v1/vms/${vm.id}/reboot`);
    expect([409]).toContain(early.status);
    expect(['OPERATION_IN_PROGRESS', 'INVALID_STATE']).toContain(json(early).code);
    await waitFor(alpha.member, operation.id);

    const paused = await app.client(alpha.member).post(`/v1/vms/${vm.id}/pause`);
    expect(paused.status).toBe(202);
    expect(paused.headers.get('location')).toBe(
      `/v1/operations/${(json(paused) as unknown as OperationBody).id}`,
    );
    expect((await waitFor(alpha.member, (json(paused) as unknown as OperationBody).id)).status).toBe(
      'SUCCEEDED',
    );
    const invalid = expectProblem(
      await app.client(alpha.member).post(`/v1/vms/${vm.id}/start`),
      409,
      'INVALID_STATE',
    );
    expect(invalid.detail).toMatch(/while it is PAUSED/);
    expect(invalid.state).toBe('PAUSED');
    const deleteRunning = expectProblem(
      await app.client(alpha.member).delete(`/v1/vms/${vm.id}`),
      409,
      'INVALID_STATE',
    );
    expect(deleteRunning.detail).toMatch(/PAUSED/);

    const stop = await app.client(alpha.member).post(`/v1/vms/${vm.id}/stop`, { force: true });
    expect(stop.status).toBe(202);
    const stopOp = json(stop) as unknown as OperationBody & { params: { force: boolean } };
    expect(stopOp.params).toEqual({ force: true });
    const busy = expectProblem(
      await app.client(alpha.member).post(`/v1/vms/${vm.id}/stop`),
      409,
      'OPERATION_IN_PROGRESS',
    );
    expect(busy.operation_id).toBe(stopOp.id);
    expect((await waitFor(alpha.member, stopOp.id)).status).toBe('SUCCEEDED');
    // A finished operation cannot be cancelled.
    expectProblem(await app.client(alpha.member).delete(`/v1/operations/${stopOp.id}`), 409, 'INVALID_STATE');

    const start = await app.client(alpha.member).post(`/v1/vms/${vm.id}/start`);
    expect((await waitFor(alpha.member, (json(start) as unknown as OperationBody).id)).status).toBe(
      'SUCCEEDED',
    );
    const stop2 = await app.client(alpha.member).post(`/v1/vms/${vm.id}/stop`, {});
    expect((await waitFor(alpha.member, (json(stop2) as unknown as OperationBody).id)).status).toBe(
      'SUCCEEDED',
    );
    const del = await app.client(alpha.member).delete(`/v1/vms/${vm.id}`);
    expect(del.status).toBe(202);
    expect((await waitFor(alpha.member, (json(del) as unknown as OperationBody).id)).status).toBe(
      'SUCCEEDED',
    );
    expectProblem(await app.client(alpha.member).get(`/v1/vms/${vm.id}`), 404, 'VM_NOT_FOUND');
  });

  it('honours If-Match on PATCH and DELETE (412 with the current ETag)', async () => {
    const { vm, operation } = await createVm(alpha.member, 'etag-1');
    await waitFor(alpha.member, operation.id);
    const current = await app.client(alpha.member).get(`/v1/vms/${vm.id}`);
    const etag = (json(current) as unknown as VmBody).etag;
    const renamed = await app
      .client(alpha.member)
      .patch(`/v1/vms/${vm.id}`, { labels: { env: 'prod' } }, { headers: { 'if-match': `"${etag}"` } });
    expect(renamed.status).toBe(200);
    const next = (json(renamed) as unknown as VmBody).etag;
    expect(next).not.toBe(etag);
    expect(renamed.headers.get('etag')).toBe(`"${next}"`);
    const stale = expectProblem(
      await app
        .client(alpha.member)
        .patch(`/v1/vms/${vm.id}`, { name: 'etag-2' }, { headers: { 'if-match': `"${etag}"` } }),
      412,
      'PRECONDITION_FAILED',
    );
    expect(stale.current_etag).toBe(next);
    expectProblem(
      await app.client(alpha.member).delete(`/v1/vms/${vm.id}`, { headers: { 'if-match': `"${etag}"` } }),
      412,
      'PRECONDITION_FAILED',
    );
    const taken = await createVm(alpha.member, 'etag-taken');
    expectProblem(
      await app.client(alpha.member).patch(`/v1/vms/${vm.id}`, { name: 'etag-taken' }),
      409,
      'ALREADY_EXISTS',
    );
    await waitFor(alpha.member, taken.operation.id);
  });

  it('replays an idempotent create and refuses the key with another body', async () => {
    const headers = { 'idempotency-key': 'create-idem-1' };
    const first = await app
      .client(alpha.member)
      .post('/v1/vms', { name: 'idem-1', flavor: 'tiny', image: 'hangar-tiny' }, { headers });
    expect(first.status).toBe(202);
    const again = await app
      .client(alpha.member)
      .post('/v1/vms', { name: 'idem-1', flavor: 'tiny', image: 'hangar-tiny' }, { headers });
    expect(again.status).toBe(202);
    expect(again.body).toEqual(first.body);
    expect(again.headers.get('location')).toBe(first.headers.get('location'));
    expect(await app.db.prisma.vm.count({ where: { name: 'idem-1' } })).toBe(1);
    expectProblem(
      await app
        .client(alpha.member)
        .post('/v1/vms', { name: 'idem-2', flavor: 'tiny', image: 'hangar-tiny' }, { headers }),
      422,
      'IDEMPOTENCY_KEY_REUSED',
    );
    await waitFor(alpha.member, (json(first).operation as OperationBody).id);
  });

  it('keeps projects apart, lets readers only read, and enforces quotas', async () => {
    const { vm, operation } = await createVm(alpha.member, 'secret-1');
    await waitFor(alpha.member, operation.id);
    const b = app.client(beta.member);
    expectProblem(await b.get(`/v1/vms/${vm.id}`), 404, 'VM_NOT_FOUND');
    expectProblem(await b.post(`/v1/vms/${vm.id}/stop`), 404, 'VM_NOT_FOUND');
    expectProblem(await b.delete(`/v1/vms/${vm.id}`), 404, 'VM_NOT_FOUND');
    expectProblem(await b.get(`/v1/vms/${vm.id}/console`), 404, 'VM_NOT_FOUND');
    expectProblem(await b.get(`/v1/vms/${vm.id}/metrics`), 404, 'VM_NOT_FOUND');
    expectProblem(await b.get(`/v1/operations/${operation.id}`), 404, 'OPERATION_NOT_FOUND');
    expect(json(await b.get('/v1/vms')).items).toEqual([]);
    expect(json(await b.get(`/v1/vms?project_id=${alpha.id}`)).items).toEqual([]);
    expect(json(await b.get('/v1/operations')).items).toEqual([]);
    // An admin sees every project.
    const all = json(await app.admin.get(`/v1/vms?project_id=${alpha.id}&name=secret-1`)).items as VmBody[];
    expect(all.map((v) => v.id)).toEqual([vm.id]);

    expectProblem(
      await app.client(alpha.reader).post('/v1/vms', { name: 'nope', flavor: 'tiny', image: 'hangar-tiny' }),
      403,
      'FORBIDDEN',
    );
    expectProblem(await app.client(alpha.reader).post(`/v1/vms/${vm.id}/stop`), 403, 'FORBIDDEN');
    expect((await app.client(alpha.reader).get(`/v1/vms/${vm.id}`)).status).toBe(200);

    const small = await app.db.prisma.project.create({ data: { name: 'small', quotaVms: 1 } });
    const smallKey = await createKey(app.db, small.id, 'member');
    const one = await createVm(smallKey, 'only-1');
    const over = expectProblem(
      await app.client(smallKey).post('/v1/vms', { name: 'only-2', flavor: 'tiny', image: 'hangar-tiny' }),
      403,
      'QUOTA_EXCEEDED',
    );
    expect(over).toMatchObject({ resource: 'vms', limit: 1, used: 1, requested: 1 });
    await waitFor(smallKey, one.operation.id);
  });

  it('answers bad requests with 400 problems, never 500', async () => {
    const c = app.client(alpha.member);
    const cases: [string, Promise<Exchange>][] = [
      [
        'unknown field',
        c.post('/v1/vms', { name: 'x', flavor: 'tiny', image: 'hangar-tiny', colour: 'red' }),
      ],
      ['wrong type', c.post('/v1/vms', { name: 42, flavor: 'tiny', image: 'hangar-tiny' })],
      ['bad name', c.post('/v1/vms', { name: 'Not_A_Label', flavor: 'tiny', image: 'hangar-tiny' })],
      ['huge string', c.post('/v1/vms', { name: 'x'.repeat(10_000), flavor: 'tiny', image: 'hangar-tiny' })],
      [
        'huge user data',
        c.post('/v1/vms', {
          name: 'ud',
          flavor: 'tiny',
          image: 'hangar-tiny',
          user_data: 'x'.repeat(70_000),
        }),
      ],
      ['missing fields', c.post('/v1/vms', {})],
      ['force not boolean', c.post('/v1/vms/00000000-0000-4000-8000-000000000000/stop', { force: 'yes' })],
      ['body on start', c.post('/v1/vms/00000000-0000-4000-8000-000000000000/start', { now: true })],
      ['empty patch', c.patch('/v1/vms/00000000-0000-4000-8000-000000000000', {})],
      ['bad uuid', c.get('/v1/vms/not-a-uuid')],
      ['bad page size', c.get('/v1/vms?page_size=-5')],
      ['bad page token', c.get('/v1/vms?page_token=garbage!')],
      ['bad status filter', c.get('/v1/vms?status=SLEEPING')],
      ['unknown query', c.get('/v1/vms?colour=red')],
      ['bad wait timeout', c.get('/v1/operations/00000000-0000-4000-8000-000000000000/wait?timeout=5h')],
      ['negative tail', c.get('/v1/vms/00000000-0000-4000-8000-000000000000/console?tail_bytes=-1')],
    ];
    for (const [what, request] of cases) {
      const res = await request;
      expect(res.status, `${what}: ${JSON.stringify(res.body)}`).toBe(400);
      expectProblem(res, 400, 'VALIDATION_FAILED');
    }
    expectProblem(
      await c.post('/v1/vms', { name: 'nf', flavor: 'no-such-flavor', image: 'hangar-tiny' }),
      404,
      'FLAVOR_NOT_FOUND',
    );
    expectProblem(await c.get('/v1/vms/00000000-0000-4000-8000-000000000000'), 404, 'VM_NOT_FOUND');
  });

  it('serves host metrics and the Prometheus text to admins only', async () => {
    const hostId = agent.session()?.stats().hostId ?? '';
    const host = await eventually(async () => {
      const res = await app.admin.get(`/v1/hosts/${hostId}/metrics`);
      return (json(res) as { sampled_at: string | null }).sampled_at ? res : undefined;
    });
    expect(json(host)).toMatchObject({ host_id: hostId, cpu: { count: expect.any(Number) } });
    expectProblem(await app.client(alpha.member).get(`/v1/hosts/${hostId}/metrics`), 403, 'FORBIDDEN');
    const scrape = await app.admin.get('/metrics');
    expect(scrape.status).toBe(200);
    expect(scrape.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(String(scrape.body)).toContain('hangar_host_up{host="api-host"} 1');
    expect(String(scrape.body)).toMatch(
      /hangar_vm_cpu_seconds_total\{vm="[0-9a-f-]{36}",name="web-1",host="api-host",project="alpha"\}/,
    );
    expectProblem(await app.client(alpha.member).get('/metrics'), 403, 'FORBIDDEN');
    expectProblem(await app.client().get('/metrics', { token: null }), 401, 'UNAUTHENTICATED');
  });

  it('lists VMs page by page in (created_at, id) order, ties and filters included', async () => {
    const gamma = await createProject(app.db, 'gamma');
    const flavor = await app.db.prisma.flavor.findFirstOrThrow({ where: { name: 'tiny' } });
    const image = await app.db.prisma.image.findFirstOrThrow({ where: { name: 'hangar-tiny' } });
    const host = await app.db.prisma.host.findFirstOrThrow();
    const tiedAt = new Date('2030-01-01T00:00:00.000Z');
    for (let i = 0; i < 11; i += 1) {
      await app.db.prisma.vm.create({
        data: {
          projectId: gamma.id,
          name: `page-${i}`,
          flavorId: flavor.id,
          imageId: image.id,
          vcpus: 1,
          memoryMib: 256,
          diskGib: 1,
          observedState: i % 3 === 0 ? 'STOPPED' : 'RUNNING',
          hostId: i % 2 === 0 ? host.id : null,
          labels: { i: String(i) },
          userData: 'x'.repeat(1000),
          // Seven rows share one created_at: the id breaks the tie at page boundaries.
          ...(i >= 4 ? { createdAt: tiedAt } : {}),
          ...(i === 10 ? { deletedAt: new Date() } : {}),
        },
      });
    }
    async function walk(query: string, pageSize: number): Promise<VmBody[]> {
      const seen: VmBody[] = [];
      let token: string | null = null;
      for (let n = 0; n < 50; n += 1) {
        const tokenParam = token ? `&page_token=${token}` : '';
        const res = await app.client(gamma.member).get(`/v1/vms?page_size=${pageSize}${query}${tokenParam}`);
        expect(res.status).toBe(200);
        const page = json(res) as { items: VmBody[]; next_page_token: string | null };
        expect(page.items.length).toBeLessThanOrEqual(pageSize);
        seen.push(...page.items);
        token = page.next_page_token;
        if (token === null) return seen;
      }
      throw new Error('too many pages');
    }
    const expected = async (where: Record<string, unknown>) =>
      (
        await app.db.prisma.vm.findMany({
          where: { projectId: gamma.id, deletedAt: null, ...where },
          orderBy: [{ createdAt: 'asc' }, { id: 'asc' }],
          select: { id: true },
        })
      ).map((v) => v.id);

    const all = await walk('', 3);
    expect(all.map((v) => v.id)).toEqual(await expected({}));
    expect(all).toHaveLength(10);
    expect(all[0]).toMatchObject({ name: 'page-0', labels: { i: '0' }, status: 'STOPPED' });
    expect(all[0]).not.toHaveProperty('user_data');
    const stopped = await walk('&status=STOPPED', 2);
    expect(stopped.map((v) => v.id)).toEqual(await expected({ observedState: 'STOPPED' }));
    expect(stopped.map((v) => v.name).sort()).toEqual(['page-0', 'page-3', 'page-6', 'page-9']);
    const onHost = await walk(`&host_id=${host.id}`, 2);
    expect(onHost.map((v) => v.id)).toEqual(await expected({ hostId: host.id }));
    expect(onHost).toHaveLength(5);
    expect((await walk('&name=page-7', 5)).map((v) => v.name)).toEqual(['page-7']);
    // Another project's member never sees gamma's VMs, even when it names the project.
    const foreign = json(await app.client(beta.member).get(`/v1/vms?project_id=${gamma.id}`));
    expect(foreign.items).toEqual([]);
  });

  it('answers every exchange as the OpenAPI document says', async () => {
    const checks = await expectExchangesConform(app);
    const documented = new Set(checks.filter((c) => c.operation).map((c) => c.operation));
    for (const route of [
      'POST /v1/vms',
      'GET /v1/vms',
      'GET /v1/vms/{id}',
      'PATCH /v1/vms/{id}',
      'DELETE /v1/vms/{id}',
      'POST /v1/vms/{id}/stop',
      'POST /v1/vms/{id}/start',
      'POST /v1/vms/{id}/pause',
      'GET /v1/vms/{id}/console',
      'GET /v1/vms/{id}/metrics',
      'GET /v1/operations',
      'GET /v1/operations/{id}',
      'GET /v1/operations/{id}/wait',
      'DELETE /v1/operations/{id}',
      'GET /v1/hosts/{id}/metrics',
      'GET /metrics',
    ]) {
      expect(documented.has(route), route).toBe(true);
    }
  });
});
