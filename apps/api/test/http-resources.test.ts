import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DomainError } from '../src/errors/domain-error.js';
import { generateJoinToken, hashJoinToken, redeemJoinToken } from '../src/modules/hosts/join-token.js';
import { DEFAULT_FLAVORS, ensureBootstrap } from '../src/modules/projects/ensure-bootstrap.js';
import { assertWithinQuota } from '../src/modules/projects/quota.js';
import {
  createProject,
  expectExchangesConform,
  expectProblem,
  json,
  startTestApp,
  type TestApp,
  type TestProject,
} from './support/app.js';

describe('admin resources', () => {
  let app: TestApp;
  let flavorId: string;
  let imageId: string;

  beforeAll(async () => {
    app = await startTestApp();
    flavorId = (
      await app.db.prisma.flavor.create({ data: { name: 'base', vcpus: 2, memoryMib: 512, diskGib: 1 } })
    ).id;
    imageId = (
      await app.db.prisma.image.create({
        data: { name: 'base-image', pool: 'default', diskPath: 'base.qcow2' },
      })
    ).id;
  });
  afterAll(async () => {
    await app?.close();
  });

  /** A VM row as the VM use cases will write it (this suite only needs it to exist). */
  async function insertVm(
    projectId: string,
    name: string,
    extra: { deletedAt?: Date; hostId?: string } = {},
  ) {
    return app.db.prisma.vm.create({
      data: { projectId, name, flavorId, imageId, vcpus: 2, memoryMib: 512, diskGib: 1, ...extra },
    });
  }

  describe('projects and quotas', () => {
    let p: TestProject;

    beforeAll(async () => {
      p = await createProject(app.db, 'quota-project');
    });

    it('creates projects with default or given quotas and refuses duplicate names', async () => {
      const created = await app.admin.post('/v1/projects', {
        name: 'research',
        description: 'lab',
        quota: { vcpus: 8 },
      });
      expect(created.status).toBe(201);
      const body = json(created);
      expect(body).toMatchObject({
        name: 'research',
        description: 'lab',
        quota: { vcpus: 8, memory_mib: 131072, vms: 32 },
      });
      expect(created.headers.get('location')).toBe(`/v1/projects/${String(body.id)}`);
      const dup = await app.admin.post('/v1/projects', { name: 'research' });
      expect(expectProblem(dup, 409, 'ALREADY_EXISTS').field).toBe('name');
      const renamed = await app.admin.patch(`/v1/projects/${String(body.id)}`, { name: 'quota-project' });
      expectProblem(renamed, 409, 'ALREADY_EXISTS');
      const patched = await app.admin.patch(`/v1/projects/${String(body.id)}`, {
        name: 'research-2',
        quota: { vms: 3 },
      });
      expect(json(patched)).toMatchObject({ name: 'research-2', quota: { vcpus: 8, vms: 3 } });
    });

    it('reports quota usage of live VMs only', async () => {
      await insertVm(p.id, 'vm-1');
      await insertVm(p.id, 'vm-2');
      await insertVm(p.id, 'vm-gone', { deletedAt: new Date() });
      const quota = json(await app.client(p.member).get(`/v1/projects/${p.id}/quota`));
      expect(quota).toMatchObject({ project_id: p.id, usage: { vcpus: 4, memory_mib: 1024, vms: 2 } });
      const put = await app.admin.put(`/v1/projects/${p.id}/quota`, { vcpus: 1, memory_mib: 100, vms: 1 });
      // Below usage is accepted: running VMs stay.
      expect(json(put)).toMatchObject({ limits: { vcpus: 1, memory_mib: 100, vms: 1 }, usage: { vms: 2 } });
    });

    it('checks the quota for the VM use cases, serialising concurrent creates of a project', async () => {
      const q = await app.db.prisma.project.create({
        data: { name: 'quota-race', quotaVms: 1, quotaVcpus: 4, quotaMemoryMib: 4096 },
      });
      const create = (name: string) =>
        app.db.prisma.$transaction(async (tx) => {
          await assertWithinQuota(tx, q.id, { vcpus: 2, memoryMib: 512, vms: 1 });
          // Hold the lock a moment, so the other transaction really waits on it.
          await tx.$executeRaw`SELECT pg_sleep(0.1)`;
          return tx.vm.create({
            data: { projectId: q.id, name, flavorId, imageId, vcpus: 2, memoryMib: 512, diskGib: 1 },
          });
        });
      const results = await Promise.allSettled([create('race-1'), create('race-2'), create('race-3')]);
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      for (const r of results.filter((x): x is PromiseRejectedResult => x.status === 'rejected')) {
        expect(r.reason).toBeInstanceOf(DomainError);
        expect((r.reason as DomainError).code).toBe('QUOTA_EXCEEDED');
        expect((r.reason as DomainError).extensions.exceeded).toEqual(['vms']);
      }
      const tooBig = app.db.prisma.$transaction((tx) =>
        assertWithinQuota(tx, q.id, { vcpus: 3, memoryMib: 4000, vms: 0 }),
      );
      await expect(tooBig).rejects.toMatchObject({
        code: 'QUOTA_EXCEEDED',
        extensions: { exceeded: ['vcpus', 'memory_mib'] },
      });
      await expect(
        app.db.prisma.$transaction((tx) => assertWithinQuota(tx, q.id, { vcpus: 2, memoryMib: 512, vms: 0 })),
      ).resolves.toBeUndefined();
    });

    it('deletes only empty projects, never the caller’s own, with their keys', async () => {
      const full = await createProject(app.db, 'full-project');
      const vm = await insertVm(full.id, 'keeps-it-busy');
      expectProblem(await app.admin.delete(`/v1/projects/${full.id}`), 409, 'PROJECT_NOT_EMPTY');
      expectProblem(await app.admin.delete(`/v1/projects/${app.adminProjectId}`), 409, 'CONFLICT');
      // A deleted VM with a migration in its history does not keep the project alive.
      await app.db.prisma.vm.update({
        where: { id: vm.id },
        data: { deletedAt: new Date(), observedState: 'DELETED' },
      });
      await app.db.prisma.migration.create({ data: { vmId: vm.id, status: 'COMPLETED' } });
      expect((await app.admin.delete(`/v1/projects/${full.id}`)).status).toBe(204);
      expect(await app.db.prisma.apiKey.count({ where: { projectId: full.id } })).toBe(0);
      expect(await app.db.prisma.vm.count({ where: { projectId: full.id } })).toBe(0);
      expectProblem(await app.admin.delete(`/v1/projects/${full.id}`), 404, 'PROJECT_NOT_FOUND');
    });
  });

  describe('flavors and images', () => {
    it('creates, lists, gets and deletes flavors', async () => {
      const created = json(
        await app.admin.post('/v1/flavors', { name: 'xl', vcpus: 8, memory_mib: 16384, disk_gib: 80 }),
      );
      expect(created).toMatchObject({
        name: 'xl',
        vcpus: 8,
        memory_mib: 16384,
        disk_gib: 80,
        description: '',
      });
      expectProblem(
        await app.admin.post('/v1/flavors', { name: 'xl', vcpus: 1, memory_mib: 64, disk_gib: 0 }),
        409,
        'ALREADY_EXISTS',
      );
      const reader = app.client((await createProject(app.db, 'flavor-readers')).reader);
      expect(json(await reader.get(`/v1/flavors/${String(created.id)}`))).toEqual(created);
      expect((await app.admin.delete(`/v1/flavors/${String(created.id)}`)).status).toBe(204);
      expectProblem(await reader.get(`/v1/flavors/${String(created.id)}`), 404, 'FLAVOR_NOT_FOUND');
    });

    it('refuses to delete a flavor or an image that VMs refer to', async () => {
      const owner = await createProject(app.db, 'refs');
      await insertVm(owner.id, 'uses-base');
      const flavor = await app.admin.delete(`/v1/flavors/${flavorId}`);
      expect(expectProblem(flavor, 409, 'FLAVOR_IN_USE').vms).toBeGreaterThanOrEqual(1);
      expectProblem(await app.admin.delete(`/v1/images/${imageId}`), 409, 'IMAGE_IN_USE');
    });

    it('registers kernel and disk images, filters them by pool and forgets unused ones', async () => {
      const kernel = await app.admin.post('/v1/images', {
        name: 'hangar-tiny',
        pool: 'shared',
        kernel_path: 'hangar-tiny/vmlinuz',
        initrd_path: 'hangar-tiny/initrd.img',
        cmdline: 'console=ttyS0 quiet',
      });
      expect(kernel.status).toBe(201);
      expect(json(kernel)).toMatchObject({
        pool: 'shared',
        disk_path: null,
        format: 'qcow2',
        cmdline: 'console=ttyS0 quiet',
      });
      const disk = json(
        await app.admin.post('/v1/images', {
          name: 'debian',
          pool: 'shared',
          disk_path: 'debian.raw',
          format: 'raw',
        }),
      );
      expect(disk).toMatchObject({ kernel_path: null, format: 'raw' });
      const shared = json(
        await app.client((await createProject(app.db, 'image-readers')).member).get('/v1/images?pool=shared'),
      );
      expect((shared.items as { name: string }[]).map((i) => i.name)).toEqual(['hangar-tiny', 'debian']);
      expect((await app.admin.delete(`/v1/images/${String(disk.id)}`)).status).toBe(204);
      expectProblem(await app.admin.get(`/v1/images/${String(disk.id)}`), 404, 'IMAGE_NOT_FOUND');
    });
  });

  describe('hosts and join tokens', () => {
    let hostId: string;
    let busyHostId: string;

    beforeAll(async () => {
      const host = await app.db.prisma.host.create({
        data: {
          name: 'hv1.example',
          agentAddress: '10.0.0.1:7443',
          state: 'UP',
          cores: 8,
          memoryMib: 32768,
          accelerator: 'kvm',
          qemuVersion: '7.2.0',
          machineTypes: ['pc', 'q35'],
          cpuModels: ['qemu64'],
          pools: [
            {
              name: 'default',
              path: '/var/lib/hangar/pools/default',
              shared: false,
              totalBytes: 1e11,
              freeBytes: 5e10,
            },
          ],
          features: { liveMigration: true },
          labels: { rack: 'r1' },
          lastHeartbeatAt: new Date(),
        },
      });
      hostId = host.id;
      const busy = await app.db.prisma.host.create({
        data: {
          name: 'hv2.example',
          agentAddress: '10.0.0.2:7443',
          state: 'DOWN',
          cores: 4,
          memoryMib: 8192,
          accelerator: 'tcg',
        },
      });
      busyHostId = busy.id;
      const owner = await createProject(app.db, 'host-tenant');
      const vm = await insertVm(owner.id, 'on-hv2', { hostId: busy.id });
      await app.db.prisma.allocation.create({
        data: { vmId: vm.id, hostId: busy.id, vcpus: 2, memoryMib: 512 },
      });
    });

    it('shows hosts to admins, with filters', async () => {
      const host = json(await app.admin.get(`/v1/hosts/${hostId}`));
      expect(host).toMatchObject({
        name: 'hv1.example',
        state: 'UP',
        cordoned: false,
        cpu_allocation_ratio: 4,
        ram_allocation_ratio: 1,
        machine_types: ['pc', 'q35'],
        pools: [
          {
            name: 'default',
            path: '/var/lib/hangar/pools/default',
            shared: false,
            total_bytes: 1e11,
            free_bytes: 5e10,
          },
        ],
        features: { liveMigration: true },
        labels: { rack: 'r1' },
      });
      const up = json(await app.admin.get('/v1/hosts?state=UP'));
      expect((up.items as { id: string }[]).map((h) => h.id)).toEqual([hostId]);
      const down = json(await app.admin.get('/v1/hosts?state=DOWN&cordoned=false'));
      expect((down.items as { id: string }[]).map((h) => h.id)).toEqual([busyHostId]);
    });

    it('cordons, uncordons and tunes allocation ratios; heartbeats do not move the ETag', async () => {
      const before = json(await app.admin.get(`/v1/hosts/${hostId}`));
      await app.db.prisma.host.update({
        where: { id: hostId },
        data: { lastHeartbeatAt: new Date(), usedVcpus: 3 },
      });
      const heartbeat = json(await app.admin.get(`/v1/hosts/${hostId}`));
      expect(heartbeat.etag).toBe(before.etag);

      const cordoned = await app.admin.post(`/v1/hosts/${hostId}/cordon`);
      expect(cordoned.status).toBe(200);
      expect(json(cordoned).cordoned).toBe(true);
      expect(json(await app.admin.post(`/v1/hosts/${hostId}/cordon`)).cordoned).toBe(true);
      expect(json(await app.admin.get('/v1/hosts?cordoned=true')).items).toHaveLength(1);
      const patched = await app.admin.patch(
        `/v1/hosts/${hostId}`,
        { cpu_allocation_ratio: 2, ram_allocation_ratio: 1.5, labels: { rack: 'r2', zone: 'a' } },
        { headers: { 'If-Match': `"${String(json(cordoned).etag)}"` } },
      );
      expect(json(patched)).toMatchObject({
        cpu_allocation_ratio: 2,
        ram_allocation_ratio: 1.5,
        labels: { rack: 'r2', zone: 'a' },
      });
      expectProblem(
        await app.admin.patch(
          `/v1/hosts/${hostId}`,
          { cpu_allocation_ratio: 3 },
          { headers: { 'If-Match': `"${String(before.etag)}"` } },
        ),
        412,
        'PRECONDITION_FAILED',
      );
      expect(json(await app.admin.post(`/v1/hosts/${hostId}/uncordon`)).cordoned).toBe(false);
      expectProblem(
        await app.admin.post('/v1/hosts/00000000-0000-4000-8000-000000000000/cordon'),
        404,
        'HOST_NOT_FOUND',
      );
    });

    it('removes only hosts without VMs or allocations', async () => {
      const busy = await app.admin.delete(`/v1/hosts/${busyHostId}`);
      expect(expectProblem(busy, 409, 'HOST_NOT_EMPTY')).toMatchObject({ vms: 1, allocations: 1 });
      expect((await app.admin.delete(`/v1/hosts/${hostId}`)).status).toBe(204);
      expectProblem(await app.admin.get(`/v1/hosts/${hostId}`), 404, 'HOST_NOT_FOUND');
    });

    it('issues join tokens that are stored hashed and redeem exactly once', async () => {
      const created = await app.admin.post('/v1/join-tokens', { description: 'for hv3', ttl_seconds: 600 });
      expect(created.status).toBe(201);
      const token = json(created);
      expect(String(token.token)).toMatch(/^hgj_[A-Za-z0-9_-]{43}$/);
      expect(token.state).toBe('active');
      const row = await app.db.prisma.joinToken.findUniqueOrThrow({ where: { id: String(token.id) } });
      expect(row.tokenHash).toBe(hashJoinToken(String(token.token)));
      expect(JSON.stringify(row)).not.toContain(String(token.token).slice(4));
      expect(json(await app.admin.get(`/v1/join-tokens/${String(token.id)}`))).not.toHaveProperty('token');

      // Two agents present the same token at once: one host registers.
      const register = (name: string) =>
        app.db.prisma.$transaction(async (tx) => {
          const host = await tx.host.create({
            data: { name, agentAddress: '127.0.0.1:7443', cores: 2, memoryMib: 2048, accelerator: 'tcg' },
          });
          await redeemJoinToken(tx, String(token.token), host.id);
          return host;
        });
      const results = await Promise.allSettled([register('hv3-a'), register('hv3-b')]);
      const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      expect(won).toHaveLength(1);
      expect(results.find((r) => r.status === 'rejected')).toMatchObject({
        reason: { code: 'UNAUTHENTICATED' },
      });
      expect(await app.db.prisma.host.count({ where: { name: { in: ['hv3-a', 'hv3-b'] } } })).toBe(1);
      const used = json(await app.admin.get(`/v1/join-tokens/${String(token.id)}`));
      expect(used).toMatchObject({ state: 'used', host_id: won[0]?.id });
      // Revoking a used token is what locks its host out of Register later (docs/adr/0030).
      expect((await app.admin.delete(`/v1/join-tokens/${String(token.id)}`)).status).toBe(204);
      const revoked = json(await app.admin.get(`/v1/join-tokens/${String(token.id)}`));
      expect(revoked).toMatchObject({ state: 'revoked', host_id: won[0]?.id });
      expect(revoked.used_at).not.toBeNull();
    });

    it('refuses expired, revoked and unknown join tokens', async () => {
      const expired = generateJoinToken();
      await app.db.prisma.joinToken.create({
        data: { tokenHash: expired.tokenHash, expiresAt: new Date(Date.now() - 1000) },
      });
      await expect(redeemJoinToken(app.db.prisma, expired.token, null)).rejects.toMatchObject({
        code: 'UNAUTHENTICATED',
      });

      const revoked = json(await app.admin.post('/v1/join-tokens', {}));
      expect((await app.admin.delete(`/v1/join-tokens/${String(revoked.id)}`)).status).toBe(204);
      expect(json(await app.admin.get(`/v1/join-tokens/${String(revoked.id)}`)).state).toBe('revoked');
      await expect(redeemJoinToken(app.db.prisma, String(revoked.token), null)).rejects.toMatchObject({
        code: 'UNAUTHENTICATED',
      });
      await expect(redeemJoinToken(app.db.prisma, generateJoinToken().token, null)).rejects.toMatchObject({
        code: 'UNAUTHENTICATED',
      });

      const listed = json(await app.admin.get('/v1/join-tokens'));
      expect((listed.items as { state: string }[]).map((t) => t.state)).toEqual(
        expect.arrayContaining(['expired', 'revoked']),
      );
    });
  });

  describe('bootstrap', () => {
    it('creates the default project, an admin key that works and the flavors, once', async () => {
      const first = await ensureBootstrap(app.db.prisma, {
        images: [
          { name: 'boot-tiny', pool: 'default', kernelPath: 'tiny/vmlinuz', initrdPath: 'tiny/initrd.img' },
        ],
      });
      expect(first.projectCreated).toBe(true);
      expect(first.adminKey.token).toMatch(/^hgr_/);
      expect(first.flavorsCreated).toEqual(['tiny', 'small', 'medium']);
      expect(first.imagesCreated).toEqual(['boot-tiny']);
      const admin = app.client(first.adminKey.token);
      const flavors = json(await admin.get('/v1/flavors?page_size=500')).items as {
        name: string;
        vcpus: number;
        memory_mib: number;
      }[];
      for (const seed of DEFAULT_FLAVORS) {
        expect(flavors).toContainEqual(
          expect.objectContaining({ name: seed.name, vcpus: seed.vcpus, memory_mib: seed.memoryMib }),
        );
      }
      expect((await admin.post('/v1/projects', { name: 'made-by-bootstrap-admin' })).status).toBe(201);

      const again = await ensureBootstrap(app.db.prisma);
      expect(again).toMatchObject({
        projectId: first.projectId,
        projectCreated: false,
        flavorsCreated: [],
        imagesCreated: [],
      });
      expect(again.adminKey.token).toBeUndefined();
      expect(again.adminKey.id).toBe(first.adminKey.id);

      const rotated = await ensureBootstrap(app.db.prisma, { newAdminKey: true });
      expect(rotated.adminKey.token).toMatch(/^hgr_/);
      expect(rotated.adminKey.id).not.toBe(first.adminKey.id);
      expect((await admin.get('/v1/flavors')).status).toBe(200);
    });

    it('creates each thing once when several set-ups run at the same time', async () => {
      const flavors = [{ name: 'concurrent', vcpus: 1, memoryMib: 64, diskGib: 0, description: '' }];
      const runs = await Promise.all(
        [1, 2, 3, 4].map(() => ensureBootstrap(app.db.prisma, { projectName: 'parallel', flavors })),
      );
      expect(runs.filter((r) => r.projectCreated)).toHaveLength(1);
      expect(runs.filter((r) => r.adminKey.token !== undefined)).toHaveLength(1);
      expect(runs.flatMap((r) => r.flavorsCreated)).toEqual(['concurrent']);
      const project = await app.db.prisma.project.findUniqueOrThrow({ where: { name: 'parallel' } });
      expect(await app.db.prisma.apiKey.count({ where: { projectId: project.id, role: 'admin' } })).toBe(1);
    });
  });

  it('answered every request of this file as the OpenAPI document says', async () => {
    await expectExchangesConform(app);
  });
});
