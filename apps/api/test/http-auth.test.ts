import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashSecret } from '../src/modules/auth/api-key-secret.js';
import {
  createKey,
  createProject,
  expectExchangesConform,
  expectProblem,
  json,
  startTestApp,
  type TestApp,
  type TestProject,
} from './support/app.js';

describe('authentication, roles and tenancy', () => {
  let app: TestApp;
  let a: TestProject;
  let b: TestProject;

  beforeAll(async () => {
    app = await startTestApp();
    a = await createProject(app.db, 'tenant-a');
    b = await createProject(app.db, 'tenant-b');
  });
  afterAll(async () => {
    await app?.close();
  });

  describe('API keys', () => {
    it('answers 401 with a Bearer challenge when the key is missing', async () => {
      for (const url of ['/v1/flavors', '/v1/projects', `/v1/projects/${a.id}`, '/v1/hosts']) {
        const res = await app.client().get(url);
        expectProblem(res, 401, 'UNAUTHENTICATED');
        expect(res.headers.get('www-authenticate')).toBe('Bearer realm="hangar"');
      }
      expectProblem(
        await app.client().post('/v1/flavors', { name: 'x', vcpus: 1, memory_mib: 64, disk_gib: 0 }),
        401,
        'UNAUTHENTICATED',
      );
    });

    it('answers 401 to malformed, unknown, wrong and non-Bearer keys', async () => {
      const [prefix] = a.member.split('_').slice(1, 2);
      const wrongSecret = `hgr_${prefix}_${'A'.repeat(43)}`;
      const unknown = `hgr_${'z'.repeat(12)}_${'A'.repeat(43)}`;
      for (const token of ['nonsense', 'hgr_short_x', wrongSecret, unknown, `${a.member}x`]) {
        const res = await app.client(token).get('/v1/flavors');
        expectProblem(res, 401, 'UNAUTHENTICATED');
        expect(res.headers.get('www-authenticate')).toContain('invalid_token');
      }
      for (const header of [`Basic ${a.member}`, a.member, 'Bearer', `Bearer ${a.member} extra`]) {
        const res = await app.client().get('/v1/flavors', { headers: { authorization: header } });
        expectProblem(res, 401, 'UNAUTHENTICATED');
      }
    });

    it('accepts a valid key with any case of the scheme, and records when it was used', async () => {
      const token = await createKey(app.db, a.id, 'reader', 'usage');
      const res = await app.client().get('/v1/flavors', { headers: { authorization: `bearer ${token}` } });
      expect(res.status).toBe(200);
      const prefix = token.split('_')[1] ?? '';
      const row = await app.db.prisma.apiKey.findUniqueOrThrow({ where: { prefix } });
      expect(row.lastUsedAt).not.toBeNull();
      // Only the hash of the secret is stored.
      expect(row.secretHash).toBe(hashSecret(token.slice(`hgr_${prefix}_`.length)));
      expect(JSON.stringify(row)).not.toContain(token.slice(-20));
    });

    it('issues keys whose secret is shown once, works at once and stops working when revoked', async () => {
      const created = await app.admin.post('/v1/api-keys', { project_id: a.id, role: 'member', name: 'ci' });
      expect(created.status).toBe(201);
      const key = json(created);
      expect(String(key.secret)).toMatch(/^hgr_[a-z0-9]{12}_[A-Za-z0-9_-]{43}$/);
      expect(String(key.secret).startsWith(String(key.prefix))).toBe(true);
      const member = app.client(String(key.secret));
      expect((await member.get('/v1/flavors')).status).toBe(200);

      const listed = json(await app.admin.get(`/v1/api-keys?project_id=${a.id}`));
      const entry = (listed.items as Record<string, unknown>[]).find((k) => k.id === key.id);
      expect(entry).toBeDefined();
      expect(entry).not.toHaveProperty('secret');
      expect(JSON.stringify(listed)).not.toContain(String(key.secret));
      expect(json(await app.admin.get(`/v1/api-keys/${String(key.id)}`))).not.toHaveProperty('secret');

      expect((await app.admin.delete(`/v1/api-keys/${String(key.id)}`)).status).toBe(204);
      expectProblem(await member.get('/v1/flavors'), 401, 'UNAUTHENTICATED');
      const revoked = json(await app.admin.get(`/v1/api-keys/${String(key.id)}`));
      expect(revoked.revoked_at).not.toBeNull();
      const active = json(await app.admin.get(`/v1/api-keys?project_id=${a.id}`));
      expect((active.items as { id: string }[]).map((k) => k.id)).not.toContain(key.id);
      const all = json(await app.admin.get(`/v1/api-keys?project_id=${a.id}&include_revoked=true`));
      expect((all.items as { id: string }[]).map((k) => k.id)).toContain(key.id);
      expect((await app.admin.delete(`/v1/api-keys/${String(key.id)}`)).status).toBe(204);
    });

    it('refuses to revoke the last active admin key of the cluster', async () => {
      const admins = await app.db.prisma.apiKey.findMany({ where: { role: 'admin', revokedAt: null } });
      // Revoke every admin key but the test's own through the database, then try the last one.
      const mine = app.admin.token?.split('_')[1];
      await app.db.prisma.apiKey.updateMany({
        where: { id: { in: admins.filter((k) => k.prefix !== mine).map((k) => k.id) } },
        data: { revokedAt: new Date() },
      });
      const last = admins.find((k) => k.prefix === mine);
      expect(last).toBeDefined();
      expectProblem(await app.admin.delete(`/v1/api-keys/${last!.id}`), 409, 'CONFLICT');
      await app.db.prisma.apiKey.updateMany({
        where: { id: { in: admins.map((k) => k.id) } },
        data: { revokedAt: null },
      });
    });

    it('rejects keys for a project that does not exist', async () => {
      const res = await app.admin.post('/v1/api-keys', {
        project_id: '00000000-0000-4000-8000-000000000000',
        role: 'admin',
      });
      expect(expectProblem(res, 404, 'PROJECT_NOT_FOUND').field).toBe('project_id');
    });

    it('serves health, the OpenAPI document and the docs page without a key', async () => {
      expect((await app.client().get('/healthz')).status).toBe(200);
      expect((await app.client().get('/readyz')).body).toEqual({ status: 'ok' });
      expect((await app.client().get('/openapi.json')).status).toBe(200);
      const docs = await app.client().get('/docs');
      expect(docs.status).toBe(200);
      expect(docs.contentType).toMatch(/^text\/html/);
      expect(String(docs.body)).toContain('/openapi.json');
    });
  });

  describe('roles', () => {
    it('lets a reader read but never write, whatever the route', async () => {
      const reader = app.client(a.reader);
      expect((await reader.get('/v1/flavors')).status).toBe(200);
      expect((await reader.get(`/v1/projects/${a.id}`)).status).toBe(200);
      expect((await reader.get(`/v1/projects/${a.id}/quota`)).status).toBe(200);
      expectProblem(
        await reader.post('/v1/flavors', { name: 'r', vcpus: 1, memory_mib: 64, disk_gib: 0 }),
        403,
        'FORBIDDEN',
      );
      expectProblem(await reader.post('/v1/projects', { name: 'r' }), 403, 'FORBIDDEN');
      expectProblem(await reader.patch(`/v1/projects/${a.id}`, { description: 'r' }), 403, 'FORBIDDEN');
      expectProblem(await reader.post('/v1/api-keys', { project_id: a.id, role: 'admin' }), 403, 'FORBIDDEN');
      // Even an invalid body gets the 403 first: a reader learns nothing about write rules.
      expectProblem(await reader.post('/v1/flavors', { nonsense: true }), 403, 'FORBIDDEN');
    });

    it('keeps members away from flavors, images, hosts, projects and keys management', async () => {
      const member = app.client(a.member);
      expect((await member.get('/v1/flavors')).status).toBe(200);
      expect((await member.get('/v1/images')).status).toBe(200);
      const flavor = await member.post('/v1/flavors', { name: 'm', vcpus: 1, memory_mib: 64, disk_gib: 0 });
      expect(String(expectProblem(flavor, 403, 'FORBIDDEN').detail)).toContain('admin');
      expectProblem(
        await member.post('/v1/images', { name: 'm', pool: 'default', disk_path: 'm.qcow2' }),
        403,
        'FORBIDDEN',
      );
      expectProblem(await member.get('/v1/hosts'), 403, 'FORBIDDEN');
      expectProblem(await member.post('/v1/join-tokens', {}), 403, 'FORBIDDEN');
      expectProblem(await member.get('/v1/api-keys'), 403, 'FORBIDDEN');
      expectProblem(await member.post('/v1/projects', { name: 'm' }), 403, 'FORBIDDEN');
      expectProblem(
        await member.put(`/v1/projects/${a.id}/quota`, { vcpus: 1000, memory_mib: 1, vms: 1 }),
        403,
        'FORBIDDEN',
      );
      expectProblem(await member.delete(`/v1/projects/${b.id}`), 403, 'FORBIDDEN');
      expect(await app.db.prisma.flavor.count({ where: { name: 'm' } })).toBe(0);
    });

    it('lets admins manage every project', async () => {
      const admin = app.client(a.admin);
      expect((await admin.get(`/v1/projects/${b.id}`)).status).toBe(200);
      const listed = json(await admin.get('/v1/projects?page_size=500'));
      const names = (listed.items as { name: string }[]).map((p) => p.name);
      expect(names).toEqual(expect.arrayContaining(['tenant-a', 'tenant-b', 'bootstrap']));
      expect((await admin.patch(`/v1/projects/${b.id}`, { description: 'by the admin of a' })).status).toBe(
        200,
      );
    });
  });

  describe('tenancy', () => {
    it("answers 404 to another project's resources, exactly as to ids that do not exist", async () => {
      for (const role of ['member', 'reader'] as const) {
        const fromB = app.client(b[role]);
        const foreign = await fromB.get(`/v1/projects/${a.id}`);
        const missing = await fromB.get('/v1/projects/00000000-0000-4000-8000-000000000000');
        expectProblem(foreign, 404, 'PROJECT_NOT_FOUND');
        expectProblem(missing, 404, 'PROJECT_NOT_FOUND');
        expect(String(json(foreign).detail).replace(a.id, 'X')).toBe(
          String(json(missing).detail).replace('00000000-0000-4000-8000-000000000000', 'X'),
        );
        expectProblem(await fromB.get(`/v1/projects/${a.id}/quota`), 404, 'PROJECT_NOT_FOUND');
      }
    });

    it('never lists another project', async () => {
      for (const role of ['member', 'reader'] as const) {
        const page = json(await app.client(b[role]).get('/v1/projects'));
        expect((page.items as { id: string }[]).map((p) => p.id)).toEqual([b.id]);
        const byName = json(await app.client(b[role]).get('/v1/projects?name=tenant-a'));
        expect(byName.items).toEqual([]);
      }
    });

    it('stops the keys of a deleted project at once', async () => {
      const doomed = await createProject(app.db, 'doomed');
      const member = app.client(doomed.member);
      expect((await member.get('/v1/flavors')).status).toBe(200);
      const project = json(await app.admin.get(`/v1/projects/${doomed.id}`));
      expect(
        (
          await app.admin.delete(`/v1/projects/${doomed.id}`, {
            headers: { 'If-Match': `"${String(project.etag)}"` },
          })
        ).status,
      ).toBe(204);
      expectProblem(await member.get('/v1/flavors'), 401, 'UNAUTHENTICATED');
      expectProblem(await app.admin.get(`/v1/projects/${doomed.id}`), 404, 'PROJECT_NOT_FOUND');
    });
  });

  it('answered every request of this file as the OpenAPI document says', async () => {
    await expectExchangesConform(app);
  });
});
