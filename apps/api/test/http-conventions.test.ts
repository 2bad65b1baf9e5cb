import { Module } from '@nestjs/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { eventually } from '../../../packages/vmm-core/test/support/test-host.js';
import { Endpoint, Resource } from '../src/common/http/endpoint.decorator.js';
import { accepted, type HttpResult } from '../src/common/http/http-result.js';
import { Ctx, type RequestContext } from '../src/common/http/request-context.js';
import { ValidBody, ValidParams } from '../src/common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../src/common/http/schemas.js';
import { IdempotencyService } from '../src/common/idempotency/idempotency.service.js';
import { canonicalHash } from '../src/common/util/canonical-json.js';
import { PrismaService } from '../src/infra/prisma/prisma.service.js';
import { VersionConflictError, VmNotFoundError } from '../src/infra/prisma/vm-version.js';
import { NoValidHostError } from '../src/modules/placement/placement.errors.js';
import {
  createProject,
  type Exchange,
  expectExchangesConform,
  expectProblem,
  json,
  startTestApp,
  type TestApp,
  type TestProject,
} from './support/app.js';

/** A gate a test handler waits on, so a request can be held "in flight" for as long as a test needs. */
function deferred(): { promise: Promise<void>; release: () => void } {
  let release: () => void = () => undefined;
  const promise = new Promise<void>((resolve) => {
    release = resolve;
  });
  return { promise, release };
}

let gate: Promise<void> | undefined;
let actionsRun = 0;

const TestOperationSchema = z
  .strictObject({ id: z.uuid(), kind: z.string(), vm_id: z.uuid(), force: z.boolean() })
  .meta({ id: 'TestOperation' });
const StartBodySchema = z.strictObject({ force: z.boolean().default(false) });

/** A VM-action-like endpoint (202 + operation) and endpoints throwing other layers' errors. */
@Resource({ path: 'test-actions', tag: 'Test' })
class TestActionsController {
  constructor(private readonly prisma: PrismaService) {}

  @Endpoint({
    method: 'POST',
    path: ':id/start',
    operationId: 'testStartAction',
    summary: 'Starts something as an operation',
    params: IdParamsSchema,
    body: StartBodySchema,
    status: 202,
    response: TestOperationSchema,
    headers: ['Location'],
  })
  async start(
    @Ctx() caller: RequestContext,
    @ValidParams() params: IdParams,
    @ValidBody() body: z.infer<typeof StartBodySchema>,
  ): Promise<HttpResult<z.infer<typeof TestOperationSchema>>> {
    actionsRun += 1;
    await gate;
    const operation = await this.prisma.operation.create({
      data: { kind: 'start', projectId: caller.projectId, params: { force: body.force } },
    });
    return accepted({ id: operation.id, kind: 'start', vm_id: params.id, force: body.force }, operation.id);
  }

  @Endpoint({ method: 'GET', path: 'boom', operationId: 'testBoom', summary: 'Fails like a bug would' })
  boom(): never {
    throw new Error(
      'connect to postgres://admin:hunter2@db.internal:5432 failed at /srv/hangar/secret.ts:42',
    );
  }

  @Endpoint({
    method: 'GET',
    path: 'vm-missing',
    operationId: 'testVmMissing',
    summary: "Throws the data layer's VmNotFoundError",
    errors: ['VM_NOT_FOUND'],
  })
  vmMissing(): never {
    throw new VmNotFoundError('00000000-0000-4000-8000-000000000001');
  }

  @Endpoint({
    method: 'GET',
    path: 'stale-vm',
    operationId: 'testStaleVm',
    summary: "Throws the data layer's VersionConflictError",
    errors: ['PRECONDITION_FAILED'],
  })
  staleVm(): never {
    throw new VersionConflictError('00000000-0000-4000-8000-000000000001', 3, 4);
  }

  @Endpoint({
    method: 'GET',
    path: 'no-host',
    operationId: 'testNoHost',
    summary: "Throws placement's NoValidHostError",
    errors: ['NO_VALID_HOST'],
  })
  noHost(): never {
    throw new NoValidHostError({
      code: 'NO_VALID_HOST',
      detail: 'No host can take 4 vCPUs and 8192 MiB: 2 hosts considered',
      filters: [
        { name: 'host-state', removed: 1 },
        { name: 'capacity', removed: 1 },
      ],
    });
  }
}

@Module({ controllers: [TestActionsController] })
class TestActionsModule {}

const VM = '6f1c2e8a-3b4d-4c5e-8f60-718293a4b5c6';
const OTHER_VM = '7a2d3f9b-4c5e-4d6f-9a71-8293a4b5c6d7';

describe('HTTP conventions', () => {
  let app: TestApp;
  let a: TestProject;
  let b: TestProject;

  beforeAll(async () => {
    app = await startTestApp({ extraModules: [TestActionsModule] });
    a = await createProject(app.db, 'project-a');
    b = await createProject(app.db, 'project-b');
  });
  afterAll(async () => {
    gate = undefined;
    await app?.close();
  });

  describe('actions', () => {
    it('answer 202 Accepted with Location: /v1/operations/{id}', async () => {
      const res = await app.client(a.member).post(`/v1/test-actions/${VM}/start`, { force: true });
      expect(res.status).toBe(202);
      const body = json(res);
      expect(body).toMatchObject({ kind: 'start', vm_id: VM, force: true });
      expect(res.headers.get('location')).toBe(`/v1/operations/${String(body.id)}`);
      expect(await app.db.prisma.operation.count({ where: { id: String(body.id) } })).toBe(1);
    });
  });

  describe('Idempotency-Key', () => {
    const post = (token: string, key: string, vm = VM, body: unknown = { force: false }): Promise<Exchange> =>
      app.client(token).post(`/v1/test-actions/${vm}/start`, body, { headers: { 'Idempotency-Key': key } });

    it('replays the first response for the same key and request, without running it again', async () => {
      const before = actionsRun;
      const first = await post(a.member, 'replay-1');
      const second = await post(a.member, 'replay-1');
      expect(first.status).toBe(202);
      expect(first.headers.get('idempotent-replayed')).toBeNull();
      expect(second.status).toBe(202);
      expect(second.headers.get('idempotent-replayed')).toBe('true');
      expect(JSON.stringify(second.body)).toBe(JSON.stringify(first.body));
      expect(second.headers.get('location')).toBe(first.headers.get('location'));
      expect(actionsRun).toBe(before + 1);
      // The record links the operation the first request started.
      const record = await app.db.prisma.idempotencyRecord.findFirstOrThrow({ where: { key: 'replay-1' } });
      expect(record.operationId).toBe(json(first).id);
      expect(record.responseStatus).toBe(202);
    });

    it('treats the body as JSON: key order and spacing do not make another request', async () => {
      const first = await app.client(a.member).post(`/v1/test-actions/${VM}/start`, undefined, {
        raw: '{"force":true}',
        headers: { 'Idempotency-Key': 'replay-json' },
      });
      const second = await app.client(a.member).post(`/v1/test-actions/${VM}/start`, undefined, {
        raw: '{ "force" : true }',
        headers: { 'Idempotency-Key': 'replay-json' },
      });
      expect(second.headers.get('idempotent-replayed')).toBe('true');
      expect(second.body).toEqual(first.body);
    });

    it('answers 422 when the key comes back with another body or another path', async () => {
      expect((await post(a.member, 'reuse-1', VM, { force: false })).status).toBe(202);
      const otherBody = await post(a.member, 'reuse-1', VM, { force: true });
      expect(expectProblem(otherBody, 422, 'IDEMPOTENCY_KEY_REUSED').field).toBe('Idempotency-Key');
      expectProblem(await post(a.member, 'reuse-1', OTHER_VM), 422, 'IDEMPOTENCY_KEY_REUSED');
    });

    it('answers 409 with Retry-After while the first request is still in flight, then replays it', async () => {
      const hold = deferred();
      gate = hold.promise;
      const before = actionsRun;
      try {
        const first = post(a.member, 'inflight-1');
        await eventually(() => (actionsRun > before ? true : undefined), {
          timeoutMs: 10_000,
          what: 'the first request to run',
        });
        const second = await post(a.member, 'inflight-1');
        expectProblem(second, 409, 'IDEMPOTENCY_IN_FLIGHT');
        expect(second.headers.get('retry-after')).toBe('1');
        hold.release();
        const done = await first;
        expect(done.status).toBe(202);
        const third = await post(a.member, 'inflight-1');
        expect(third.status).toBe(202);
        expect(third.headers.get('idempotent-replayed')).toBe('true');
        expect(third.body).toEqual(done.body);
        expect(actionsRun).toBe(before + 1);
      } finally {
        hold.release();
        gate = undefined;
      }
    });

    it('scopes keys to the project: another project may use the same key', async () => {
      const before = actionsRun;
      const fromA = await post(a.member, 'shared-key');
      const fromB = await post(b.member, 'shared-key');
      expect(fromA.status).toBe(202);
      expect(fromB.status).toBe(202);
      expect(fromB.headers.get('idempotent-replayed')).toBeNull();
      expect(json(fromB).id).not.toBe(json(fromA).id);
      expect(actionsRun).toBe(before + 2);
    });

    it('releases the key of a failed request, so the same request can be retried', async () => {
      await app.db.prisma.project.create({ data: { name: 'taken-name' } });
      const failed = await app.admin.post(
        '/v1/projects',
        { name: 'taken-name' },
        { headers: { 'Idempotency-Key': 'retry-1' } },
      );
      expectProblem(failed, 409, 'ALREADY_EXISTS');
      await app.db.prisma.project.delete({ where: { name: 'taken-name' } });
      const retried = await app.admin.post(
        '/v1/projects',
        { name: 'taken-name' },
        { headers: { 'Idempotency-Key': 'retry-1' } },
      );
      expect(retried.status).toBe(201);
      expect(retried.headers.get('idempotent-replayed')).toBeNull();
      // ETag and Location of a create are replayed too.
      const replay = await app.admin.post(
        '/v1/projects',
        { name: 'taken-name' },
        { headers: { 'Idempotency-Key': 'retry-1' } },
      );
      expect(replay.status).toBe(201);
      expect(replay.headers.get('etag')).toBe(retried.headers.get('etag'));
      expect(replay.headers.get('location')).toBe(retried.headers.get('location'));
    });

    it('takes over a key whose first request died in flight, and forgets expired keys', async () => {
      const path = `/v1/test-actions/${VM}/start`;
      const body = { force: true };
      await app.db.prisma.idempotencyRecord.create({
        data: {
          projectId: a.id,
          key: 'abandoned-1',
          method: 'POST',
          path,
          requestHash: canonicalHash({ method: 'POST', path, body }),
          createdAt: new Date(Date.now() - 3 * 60_000),
        },
      });
      const taken = await post(a.member, 'abandoned-1', VM, body);
      expect(taken.status).toBe(202);
      expect(taken.headers.get('idempotent-replayed')).toBeNull();

      await app.db.prisma.idempotencyRecord.create({
        data: {
          projectId: a.id,
          key: 'expired-1',
          method: 'POST',
          path: '/somewhere/else',
          requestHash: 'f'.repeat(64),
          responseStatus: 201,
          responseBody: { headers: {}, body: '{}' },
          createdAt: new Date(Date.now() - 25 * 3600_000),
        },
      });
      expect((await post(a.member, 'expired-1')).status).toBe(202);

      await app.db.prisma.idempotencyRecord.create({
        data: {
          projectId: b.id,
          key: 'expired-2',
          method: 'POST',
          path,
          requestHash: 'e'.repeat(64),
          createdAt: new Date(Date.now() - 48 * 3600_000),
        },
      });
      const purged = await app.running.app.get(IdempotencyService).purgeExpired();
      expect(purged).toBeGreaterThanOrEqual(1);
      expect(await app.db.prisma.idempotencyRecord.count({ where: { key: 'expired-2' } })).toBe(0);
    });

    it('rejects malformed keys with a 400 on the header', async () => {
      const tooLong = await post(a.member, 'k'.repeat(256));
      expect(expectProblem(tooLong, 400, 'VALIDATION_FAILED').field).toBe('Idempotency-Key');
      expectProblem(await post(a.member, 'has space'), 400, 'VALIDATION_FAILED');
    });
  });

  describe('ETag and If-Match', () => {
    it('puts the representation’s etag in the ETag header', async () => {
      const created = await app.admin.post('/v1/flavors', {
        name: 'etag-flavor',
        vcpus: 1,
        memory_mib: 128,
        disk_gib: 0,
      });
      const got = await app.admin.get(`/v1/flavors/${String(json(created).id)}`);
      expect(got.headers.get('etag')).toBe(`"${String(json(got).etag)}"`);
      expect(created.headers.get('etag')).toBe(got.headers.get('etag'));
    });

    it('answers 412 with the current etag when If-Match is stale, and applies a matching one', async () => {
      const project = json(await app.admin.post('/v1/projects', { name: 'etag-project' }));
      const url = `/v1/projects/${String(project.id)}`;
      const first = await app.admin.patch(
        url,
        { description: 'one' },
        { headers: { 'If-Match': `"${String(project.etag)}"` } },
      );
      expect(first.status).toBe(200);
      const changed = json(first);
      expect(changed.etag).not.toBe(project.etag);
      expect(first.headers.get('etag')).toBe(`"${String(changed.etag)}"`);

      const stale = await app.admin.patch(
        url,
        { description: 'two' },
        { headers: { 'If-Match': `"${String(project.etag)}"` } },
      );
      const problem = expectProblem(stale, 412, 'PRECONDITION_FAILED');
      expect(problem.current_etag).toBe(changed.etag);
      expect(json(await app.admin.get(url)).description).toBe('one');

      // Unquoted tags (as the bodies carry them), lists and * match; weak tags never do.
      expect(
        (
          await app.admin.patch(
            url,
            { description: 'three' },
            { headers: { 'If-Match': String(changed.etag) } },
          )
        ).status,
      ).toBe(200);
      const current = String(json(await app.admin.get(url)).etag);
      expect(
        (
          await app.admin.patch(
            url,
            { description: 'four' },
            { headers: { 'If-Match': `"nope", "${current}"` } },
          )
        ).status,
      ).toBe(200);
      expect(
        (await app.admin.patch(url, { description: 'five' }, { headers: { 'If-Match': '*' } })).status,
      ).toBe(200);
      const now = String(json(await app.admin.get(url)).etag);
      expectProblem(
        await app.admin.patch(url, { description: 'six' }, { headers: { 'If-Match': `W/"${now}"` } }),
        412,
        'PRECONDITION_FAILED',
      );
      const malformed = await app.admin.patch(
        url,
        { description: 'seven' },
        { headers: { 'If-Match': '"unterminated' } },
      );
      expect(expectProblem(malformed, 400, 'VALIDATION_FAILED').field).toBe('If-Match');
    });

    it('lets exactly one of several concurrent writers with the same If-Match win', async () => {
      const project = json(await app.admin.post('/v1/projects', { name: 'etag-race' }));
      const url = `/v1/projects/${String(project.id)}`;
      const results = await Promise.all(
        [1, 2, 3, 4, 5].map((n) =>
          app.admin.patch(
            url,
            { description: `writer ${n}` },
            { headers: { 'If-Match': `"${String(project.etag)}"` } },
          ),
        ),
      );
      expect(results.filter((r) => r.status === 200)).toHaveLength(1);
      for (const loser of results.filter((r) => r.status !== 200))
        expectProblem(loser, 412, 'PRECONDITION_FAILED');
    });

    it('guards DELETE and PUT with If-Match too', async () => {
      const flavor = json(
        await app.admin.post('/v1/flavors', { name: 'etag-delete', vcpus: 1, memory_mib: 128, disk_gib: 0 }),
      );
      const url = `/v1/flavors/${String(flavor.id)}`;
      expectProblem(
        await app.admin.delete(url, { headers: { 'If-Match': '"0000"' } }),
        412,
        'PRECONDITION_FAILED',
      );
      expect((await app.admin.get(url)).status).toBe(200);
      expect(
        (await app.admin.delete(url, { headers: { 'If-Match': `"${String(flavor.etag)}"` } })).status,
      ).toBe(204);
      expectProblem(await app.admin.get(url), 404, 'FLAVOR_NOT_FOUND');

      const quotaUrl = `/v1/projects/${a.id}/quota`;
      const quota = json(await app.admin.get(quotaUrl));
      const limits = { vcpus: 8, memory_mib: 8192, vms: 4 };
      expectProblem(
        await app.admin.put(quotaUrl, limits, { headers: { 'If-Match': '"stale"' } }),
        412,
        'PRECONDITION_FAILED',
      );
      const put = await app.admin.put(quotaUrl, limits, {
        headers: { 'If-Match': `"${String(quota.etag)}"` },
      });
      expect(put.status).toBe(200);
      expect(json(put).limits).toEqual(limits);
    });

    it("maps the data layer's VersionConflictError to 412 PRECONDITION_FAILED", async () => {
      expectProblem(await app.admin.get('/v1/test-actions/stale-vm'), 412, 'PRECONDITION_FAILED');
    });
  });

  describe('pagination', () => {
    let ids: string[];

    beforeAll(async () => {
      ids = [];
      for (let i = 0; i < 23; i += 1) {
        const res = await app.admin.post('/v1/flavors', {
          name: `page-${String(i).padStart(2, '0')}`,
          vcpus: 1,
          memory_mib: 64,
          disk_gib: 0,
        });
        ids.push(String(json(res).id));
      }
    });

    async function walk(
      url: string,
      pageSize: number,
      onPage?: (n: number) => Promise<void>,
    ): Promise<string[]> {
      const seen: string[] = [];
      let token: string | null = null;
      for (let n = 0; n < 100; n += 1) {
        const sep = url.includes('?') ? '&' : '?';
        const res = await app.admin.get(
          `${url}${sep}page_size=${pageSize}${token ? `&page_token=${token}` : ''}`,
        );
        expect(res.status).toBe(200);
        const page = json(res) as { items: { id: string }[]; next_page_token: string | null };
        expect(page.items.length).toBeLessThanOrEqual(pageSize);
        seen.push(...page.items.map((item) => item.id));
        token = page.next_page_token;
        if (token === null) return seen;
        await onPage?.(n);
      }
      throw new Error('too many pages');
    }

    it('walks every item once, in (created_at, id) order', async () => {
      const all = await walk('/v1/flavors', 5);
      expect(new Set(all).size).toBe(all.length);
      const expected = await app.db.prisma.flavor.findMany({
        orderBy: [{ createdAt: 'asc' }, { id: 'asc' }],
        select: { id: true },
      });
      expect(all).toEqual(expected.map((f) => f.id));
      for (const id of ids) expect(all).toContain(id);
    });

    it('breaks ties of created_at by id without losing rows at page boundaries', async () => {
      const at = new Date('2030-01-01T00:00:00.000Z');
      const tied: string[] = [];
      for (let i = 0; i < 7; i += 1) {
        const row = await app.db.prisma.flavor.create({
          data: { name: `tie-${i}`, vcpus: 1, memoryMib: 64, diskGib: 0, createdAt: at },
        });
        tied.push(row.id);
      }
      const all = await walk('/v1/flavors', 3);
      const tail = all.slice(-7);
      expect(tail).toEqual([...tied].sort());
      expect(new Set(all).size).toBe(all.length);
    });

    it('stays stable while rows are added and removed during the walk', async () => {
      const before = await walk('/v1/images', 50);
      expect(before).toEqual([]);
      for (let i = 0; i < 12; i += 1) {
        await app.admin.post('/v1/images', {
          name: `img-${i}`,
          pool: 'default',
          disk_path: `images/${i}.qcow2`,
        });
      }
      const original = (
        await app.db.prisma.image.findMany({ orderBy: [{ createdAt: 'asc' }, { id: 'asc' }] })
      ).map((i) => i.id);
      const seen = await walk('/v1/images', 4, async (n) => {
        if (n === 0) {
          // A new row sorts after every existing one; a seen row disappears.
          await app.admin.post('/v1/images', {
            name: `img-late-${n}`,
            pool: 'default',
            disk_path: 'late.qcow2',
          });
          await app.db.prisma.image.delete({ where: { id: original[0]! } });
        }
      });
      expect(new Set(seen).size).toBe(seen.length);
      for (const id of original) expect(seen).toContain(id);
    });

    it('filters by field, and a token only continues the list and filters it came from', async () => {
      const filtered = json(await app.admin.get('/v1/flavors?name=page-07'));
      expect((filtered.items as { name: string }[]).map((f) => f.name)).toEqual(['page-07']);

      const first = json(await app.admin.get('/v1/flavors?page_size=2'));
      const token = String(first.next_page_token);
      expect((await app.admin.get(`/v1/flavors?page_size=2&page_token=${token}`)).status).toBe(200);
      expect((await app.admin.get(`/v1/flavors?page_size=7&page_token=${token}`)).status).toBe(200);
      const otherFilter = await app.admin.get(`/v1/flavors?page_size=2&name=page-01&page_token=${token}`);
      expect(expectProblem(otherFilter, 400, 'VALIDATION_FAILED').field).toBe('page_token');
      expectProblem(await app.admin.get(`/v1/images?page_token=${token}`), 400, 'VALIDATION_FAILED');
    });

    it('rejects bad page tokens and page sizes with 400, never 500', async () => {
      const forged = Buffer.from(
        JSON.stringify({ v: 1, t: 0, i: 'not-a-uuid', s: '0123456789abcdef' }),
      ).toString('base64url');
      for (const token of [
        'garbage!!',
        'AAAA',
        `${forged}`,
        'x'.repeat(600),
        encodeURIComponent('{"v":1}'),
      ]) {
        const res = await app.admin.get(`/v1/flavors?page_token=${token}`);
        expect(expectProblem(res, 400, 'VALIDATION_FAILED').field).toBe('page_token');
      }
      for (const size of ['0', '501', 'ten', '-1', '2.5', '']) {
        const res = await app.admin.get(`/v1/flavors?page_size=${size}`);
        expect(expectProblem(res, 400, 'VALIDATION_FAILED').field).toBe('page_size');
      }
      const def = json(await app.admin.get('/v1/flavors'));
      expect((def.items as unknown[]).length).toBe(Math.min(50, await app.db.prisma.flavor.count()));
    });
  });

  describe('errors of other layers', () => {
    it('turns an unexpected error into a 500 INTERNAL that reveals nothing but the request id', async () => {
      const res = await app.admin.get('/v1/test-actions/boom', {
        headers: { 'X-Request-Id': 'trace-me-123' },
      });
      const problem = expectProblem(res, 500, 'INTERNAL');
      expect(res.headers.get('x-request-id')).toBe('trace-me-123');
      expect(problem.detail).toContain('trace-me-123');
      const text = JSON.stringify(problem);
      for (const secret of ['hunter2', 'postgres', 'secret.ts', '/srv', 'stack'])
        expect(text).not.toContain(secret);
    });

    it('keeps the codes of the data layer and placement, with their extra members', async () => {
      expectProblem(await app.admin.get('/v1/test-actions/vm-missing'), 404, 'VM_NOT_FOUND');
      const noHost = expectProblem(await app.admin.get('/v1/test-actions/no-host'), 409, 'NO_VALID_HOST');
      expect(noHost.filters).toEqual([
        { name: 'host-state', removed: 1 },
        { name: 'capacity', removed: 1 },
      ]);
      expect(noHost.detail).toContain('2 hosts considered');
    });
  });

  it('answered every request of this file as the OpenAPI document says', async () => {
    const checks = await expectExchangesConform(app);
    expect(checks.filter((c) => c.operation !== undefined).length).toBeGreaterThan(50);
  });
});
