import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Exchange,
  expectExchangesConform,
  expectProblem,
  json,
  startTestApp,
  type TestApp,
} from './support/app.js';

/** A rejected request: any 4xx problem+json, never a 5xx, never a body that echoes huge input back. */
function expectRejected(res: Exchange, status?: number, field?: string): void {
  const context = `${res.method} ${res.url} → ${res.status} ${JSON.stringify(res.body).slice(0, 300)}`;
  expect(res.status, context).toBeGreaterThanOrEqual(400);
  expect(res.status, context).toBeLessThan(500);
  if (status !== undefined) expect(res.status, context).toBe(status);
  expect(res.contentType, context).toMatch(/^application\/problem\+json/);
  expect(JSON.stringify(res.body).length, context).toBeLessThan(4000);
  if (field !== undefined) {
    const body = json(res);
    const fields = [
      body.field,
      ...((body.errors as { field: string }[] | undefined) ?? []).map((e) => e.field),
    ];
    expect(fields, context).toContain(field);
  }
}

describe('bad requests are 4xx problem+json, never 500', () => {
  let app: TestApp;
  let projectId: string;
  let hostId: string;

  beforeAll(async () => {
    app = await startTestApp({ env: { HANGAR_HTTP_BODY_LIMIT_BYTES: '16384' } });
    projectId = app.adminProjectId;
    const host = await app.db.prisma.host.create({
      data: {
        name: 'hv-validation',
        agentAddress: '127.0.0.1:7443',
        cores: 4,
        memoryMib: 8192,
        accelerator: 'tcg',
      },
    });
    hostId = host.id;
  });
  afterAll(async () => {
    await app?.close();
  });

  const flavor = { name: 'ok', vcpus: 1, memory_mib: 256, disk_gib: 1 };

  it('rejects wrong types, naming each offending field', async () => {
    const res = await app.admin.post('/v1/flavors', {
      name: 1,
      vcpus: '2',
      memory_mib: true,
      disk_gib: null,
    });
    expectRejected(res, 400);
    const problem = expectProblem(res, 400, 'VALIDATION_FAILED');
    const errors = problem.errors as { field: string; in: string; reason: string }[];
    expect(errors.map((e) => e.field).sort()).toEqual(['disk_gib', 'memory_mib', 'name', 'vcpus']);
    expect(errors.every((e) => e.in === 'body' && e.reason === 'invalid_type')).toBe(true);
    for (const body of [[], null, 'flavor', 42, true]) {
      expectRejected(
        await app.admin.post('/v1/flavors', undefined, { raw: JSON.stringify(body) }),
        400,
        '(root)',
      );
    }
  });

  it('rejects unknown fields, at the top level and nested', async () => {
    expectRejected(await app.admin.post('/v1/flavors', { ...flavor, gpu: 1 }), 400, 'gpu');
    expectRejected(
      await app.admin.post('/v1/projects', { name: 'p1', quota: { vcpus: 1, gpus: 2 } }),
      400,
      'quota.gpus',
    );
    expectRejected(await app.admin.patch(`/v1/projects/${projectId}`, { owner: 'me' }), 400, 'owner');
    expectRejected(
      await app.admin.post(`/v1/hosts/${hostId}/cordon`, { reason: 'maintenance' }),
      400,
      '(root)',
    );
  });

  it('rejects huge strings without echoing them', async () => {
    expectRejected(await app.admin.post('/v1/flavors', { ...flavor, name: 'a'.repeat(10_000) }), 400, 'name');
    expectRejected(
      await app.admin.post('/v1/flavors', { ...flavor, description: 'd'.repeat(5000) }),
      400,
      'description',
    );
    expectRejected(
      await app.admin.post('/v1/api-keys', { project_id: projectId, role: 'member', name: 'n'.repeat(64) }),
      400,
      'name',
    );
    expectRejected(
      await app.admin.post('/v1/images', { name: 'img', pool: 'default', kernel_path: `${'k'.repeat(300)}` }),
      400,
      'kernel_path',
    );
  });

  it('rejects negative, fractional and absurd sizes', async () => {
    for (const [field, value] of [
      ['vcpus', -1],
      ['vcpus', 0],
      ['vcpus', 1.5],
      ['vcpus', 1e308],
      ['memory_mib', -256],
      ['memory_mib', 2 ** 53],
      ['disk_gib', -5],
    ] as const) {
      expectRejected(
        await app.admin.post('/v1/flavors', { ...flavor, name: 'sizes', [field]: value }),
        400,
        field,
      );
    }
    expectRejected(
      await app.admin.put(`/v1/projects/${projectId}/quota`, { vcpus: -1, memory_mib: 1, vms: 1 }),
      400,
      'vcpus',
    );
    expectRejected(
      await app.admin.put(`/v1/projects/${projectId}/quota`, { vcpus: 1, memory_mib: 1 }),
      400,
      'vms',
    );
    expectRejected(
      await app.admin.post('/v1/projects', { name: 'neg', quota: { vms: -3 } }),
      400,
      'quota.vms',
    );
    for (const ratio of [0, -1, 1000]) {
      expectRejected(
        await app.admin.patch(`/v1/hosts/${hostId}`, { cpu_allocation_ratio: ratio }),
        400,
        'cpu_allocation_ratio',
      );
    }
    for (const ttl of [10, 10 ** 9, 'soon']) {
      expectRejected(await app.admin.post('/v1/join-tokens', { ttl_seconds: ttl }), 400, 'ttl_seconds');
    }
    expect(await app.db.prisma.flavor.count({ where: { name: 'sizes' } })).toBe(0);
  });

  it('rejects values outside their rules (names, enums, pool paths, labels)', async () => {
    for (const name of ['', 'Bad Name!', '-lead', 'trail-', 'UPPER']) {
      expectRejected(await app.admin.post('/v1/projects', { name }), 400, 'name');
    }
    expectRejected(
      await app.admin.post('/v1/api-keys', { project_id: projectId, role: 'root' }),
      400,
      'role',
    );
    expectRejected(
      await app.admin.post('/v1/images', { name: 'img', pool: 'default', disk_path: '../etc/passwd' }),
      400,
      'disk_path',
    );
    expectRejected(
      await app.admin.post('/v1/images', { name: 'img', pool: 'default', disk_path: '/etc/passwd' }),
      400,
      'disk_path',
    );
    expectRejected(
      await app.admin.post('/v1/images', { name: 'img', pool: 'bad pool', disk_path: 'a.qcow2' }),
      400,
      'pool',
    );
    expectRejected(
      await app.admin.post('/v1/images', { name: 'img', pool: 'default', disk_path: 'a', format: 'vmdk' }),
      400,
      'format',
    );
    expectRejected(await app.admin.post('/v1/images', { name: 'img', pool: 'default' }), 400, 'kernel_path');
    expectRejected(
      await app.admin.post('/v1/images', { name: 'img', pool: 'default', disk_path: 'a', cmdline: 'x' }),
      400,
      'cmdline',
    );
    expectRejected(await app.admin.patch(`/v1/hosts/${hostId}`, { labels: { 'bad key!': 'x' } }), 400);
    const tooMany = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']));
    expectRejected(await app.admin.patch(`/v1/hosts/${hostId}`, { labels: tooMany }), 400, 'labels');
  });

  it('rejects bad UUIDs in paths and bodies', async () => {
    const bad = [
      'nope',
      '123',
      `${projectId}x`,
      encodeURIComponent("' OR 1=1--"),
      '00000000-0000-0000-0000-00000000000g',
    ];
    for (const id of bad) {
      for (const url of [
        `/v1/projects/${id}`,
        `/v1/projects/${id}/quota`,
        `/v1/flavors/${id}`,
        `/v1/images/${id}`,
        `/v1/hosts/${id}`,
        `/v1/api-keys/${id}`,
        `/v1/join-tokens/${id}`,
      ]) {
        expectRejected(await app.admin.get(url), 400, 'id');
      }
      expectRejected(await app.admin.delete(`/v1/flavors/${id}`), 400, 'id');
      expectRejected(await app.admin.post(`/v1/hosts/${id}/cordon`), 400, 'id');
    }
    expectRejected(
      await app.admin.post('/v1/api-keys', { project_id: 'not-a-uuid', role: 'member' }),
      400,
      'project_id',
    );
  });

  it('rejects unknown and invalid query parameters', async () => {
    expectRejected(await app.admin.get('/v1/flavors?colour=red'), 400, 'colour');
    expectRejected(await app.admin.get('/v1/hosts?state=SLEEPING'), 400, 'state');
    expectRejected(await app.admin.get('/v1/hosts?cordoned=maybe'), 400, 'cordoned');
    expectRejected(await app.admin.get('/v1/api-keys?project_id=nope'), 400, 'project_id');
    expectRejected(await app.admin.get('/v1/api-keys?include_revoked=yes'), 400, 'include_revoked');
    expectRejected(await app.admin.get('/v1/flavors?page_size=1&page_size=2'), 400, 'page_size');
    expectRejected(await app.admin.get(`/v1/projects/${projectId}?expand=all`), 400, 'expand');
  });

  it('rejects malformed JSON, prototype pollution and deep nesting as 400', async () => {
    for (const raw of ['{', '{"name": }', "{'name': 'x'}", '{"name":"x",}', 'nul', '\u0000']) {
      expectRejected(await app.admin.post('/v1/flavors', undefined, { raw }), 400);
    }
    const empty = await app.admin.post('/v1/flavors', undefined, { raw: '' });
    expectProblem(empty, 400, 'MALFORMED_REQUEST');
    expectRejected(
      await app.admin.post('/v1/flavors', undefined, {
        raw: '{"__proto__": {"role": "admin"}, "name": "x"}',
      }),
      400,
    );
    expectRejected(
      await app.admin.post('/v1/flavors', undefined, {
        raw: '{"constructor": {"prototype": {"role": "admin"}}}',
      }),
      400,
    );
    const deep = `${'['.repeat(5000)}${']'.repeat(5000)}`;
    expectRejected(
      await app.admin.patch(`/v1/hosts/${hostId}`, undefined, { raw: `{"labels": ${deep}}` }),
      400,
      'labels',
    );
  });

  it('answers 415 to bodies that are not JSON and 413 to bodies over the limit', async () => {
    for (const contentType of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/xml',
    ]) {
      expectProblem(
        await app.admin.post('/v1/flavors', undefined, { raw: 'name=x', contentType }),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      );
    }
    const noType = await fetch(`${app.baseUrl}/v1/flavors`, {
      method: 'POST',
      headers: { authorization: `Bearer ${String(app.admin.token)}` },
      body: new Uint8Array(Buffer.from(JSON.stringify(flavor))),
    });
    expect(noType.status).toBe(415);
    expect(noType.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    // application/*+json is JSON too.
    const merge = await app.admin.patch(`/v1/projects/${projectId}`, undefined, {
      raw: JSON.stringify({ description: 'merge' }),
      contentType: 'application/merge-patch+json',
    });
    expect(merge.status).toBe(200);
    const big = await app.admin.post('/v1/flavors', { ...flavor, description: 'x'.repeat(20_000) });
    expectProblem(big, 413, 'PAYLOAD_TOO_LARGE');
  });

  it('answers unknown routes and methods with a 404 problem', async () => {
    expectProblem(await app.admin.get('/v1/nothing-here'), 404, 'NOT_FOUND');
    expectProblem(await app.admin.put('/v1/flavors', flavor), 404, 'NOT_FOUND');
    expectProblem(await app.client().get('/v2/flavors'), 404, 'NOT_FOUND');
  });

  it('answered every request of this file as the OpenAPI document says', async () => {
    const checks = await expectExchangesConform(app);
    expect(checks.every((c) => c.exchange.status < 500)).toBe(true);
  });
});
