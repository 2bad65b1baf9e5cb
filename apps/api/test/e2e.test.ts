import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, loadGuestImage } from '../../../packages/vmm-core/test/support/test-host.js';
import { qemuPidsOf } from '../../agent/test/support/agent-harness.js';
import { AgentGatewayServer } from '../src/infra/grpc/agent-gateway.server.js';
import {
  createProject,
  type Exchange,
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
  status: string;
  error: { code: string; message: string } | null;
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/**
 * The whole path with a real guest: REST → PostgreSQL → BullMQ → conductor → gRPC → agent →
 * QEMU (TCG) and back through heartbeats, events and the console.
 */
describe('end to end: a real QEMU guest through the REST api', () => {
  let redis: TestRedis;
  let app: TestApp;
  let agent: TestAgent;
  let project: TestProject;
  let restoreEnv: () => void;

  beforeAll(async () => {
    redis = await createTestRedis();
    restoreEnv = useSettingsEnv(testSettings({ heartbeatIntervalMs: 1_000, metricsIntervalMs: 1_000 }));
    app = await startTestApp({
      env: { HANGAR_ROLE: 'all', REDIS_URL: redis.url, HANGAR_REDIS_PREFIX: redis.prefix },
    });
    const gateway = app.running.app.get(AgentGatewayServer, { strict: false }).address;
    agent = await startTestAgent({
      name: 'e2e-host',
      gatewayAddress: gateway,
      joinToken: await joinToken(app.db),
      driver: 'qemu',
    });
    await agent.whenConnected();
    await eventually(async () =>
      (await app.db.prisma.host.count({ where: { state: 'UP' } })) === 1 ? true : undefined,
    );
    const image = await loadGuestImage();
    await app.db.prisma.flavor.create({ data: { name: 'tiny', vcpus: 1, memoryMib: 256, diskGib: 1 } });
    await app.db.prisma.image.create({
      data: {
        name: 'hangar-tiny',
        pool: 'images',
        kernelPath: image.kernel,
        initrdPath: image.initrd,
        cmdline: image.cmdline,
        diskPath: image.baseDisk,
        format: 'qcow2',
      },
    });
    project = await createProject(app.db, 'e2e');
  }, 120_000);
  afterAll(async () => {
    // Stops the agent and kills any QEMU still running under its folders (also on failure).
    await agent?.stop();
    await app?.close();
    await redis?.cleanup();
    restoreEnv?.();
  });

  async function finish(res: Exchange): Promise<OperationBody> {
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const location = res.headers.get('location') ?? '';
    expect(location).toMatch(/^\/v1\/operations\/[0-9a-f-]{36}$/);
    const done = await app.client(project.member).get(`${location}/wait?timeout=60s`);
    const body = done.body as OperationBody;
    expect(body.status, JSON.stringify(body.error)).toBe('SUCCEEDED');
    return body;
  }

  async function consoleText(vmId: string): Promise<string> {
    const res = await app.client(project.member).get(`/v1/vms/${vmId}/console`);
    expect(res.status).toBe(200);
    return (json(res) as { text: string }).text;
  }

  async function status(vmId: string): Promise<string> {
    return (json(await app.client(project.reader).get(`/v1/vms/${vmId}`)) as { status: string }).status;
  }

  it('creates, boots, stops, starts and deletes a VM', async () => {
    const api = app.client(project.member);
    const created = await api.post('/v1/vms', {
      name: 'e2e-vm',
      flavor: 'tiny',
      image: 'hangar-tiny',
      user_data: '#!/bin/sh\necho "E2E-USERDATA-$(cat /run/instance-id)"\n',
    });
    const vmId = (json(created).vm as { id: string }).id;
    await finish(created);
    expect(await status(vmId)).toBe('RUNNING');
    const runtimeDir = agent.host.runtimeDir;
    expect(await qemuPidsOf(runtimeDir, vmId)).toHaveLength(1);

    // The guest boots: its marker names the VM as host name, and user-data saw the VM id.
    const booted = await eventually(
      async () => {
        const text = await consoleText(vmId);
        return text.includes('HANGAR-READY hostname=e2e-vm') ? text : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 500, what: 'the guest marker in the console' },
    );
    expect(booted).toContain(`E2E-USERDATA-${vmId}`);
    expect(booted).toContain(`HANGAR-READY hostname=e2e-vm instance=${vmId}`);

    // Real metrics from the QEMU process reach the api.
    const metrics = await eventually(
      async () => {
        const m = json(await api.get(`/v1/vms/${vmId}/metrics`)) as {
          cpu: { seconds_total: number } | null;
          memory: { rss_bytes: number } | null;
        };
        return m.cpu && m.cpu.seconds_total > 0 && m.memory && m.memory.rss_bytes > 0 ? m : undefined;
      },
      { timeoutMs: 15_000, what: 'metrics of the guest' },
    );
    expect(metrics.memory?.rss_bytes).toBeGreaterThan(32 * 1024 * 1024);

    // A graceful stop goes through the guest's ACPI power button.
    await finish(await api.post(`/v1/vms/${vmId}/stop`));
    expect(await status(vmId)).toBe('STOPPED');
    expect(await qemuPidsOf(runtimeDir, vmId)).toEqual([]);
    const serial = await readFile(path.join(runtimeDir, 'vms', vmId, 'serial.log'), 'utf8').catch(() => '');
    expect(serial + (await consoleText(vmId))).toContain('HANGAR-POWEROFF');

    await finish(await api.post(`/v1/vms/${vmId}/start`));
    expect(await status(vmId)).toBe('RUNNING');
    await eventually(
      async () => {
        const text = await consoleText(vmId);
        return text.split('HANGAR-READY hostname=e2e-vm').length - 1 >= 2 ? true : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 500, what: 'the second boot' },
    );

    await finish(await api.post(`/v1/vms/${vmId}/stop`, { force: true }));
    expect(await qemuPidsOf(runtimeDir, vmId)).toEqual([]);
    const hostId = (await app.db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } })).hostId;
    await finish(await api.delete(`/v1/vms/${vmId}`));
    expect((await api.get(`/v1/vms/${vmId}`)).status).toBe(404);
    const row = await app.db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } });
    expect(row.observedState).toBe('DELETED');
    expect(await app.db.prisma.allocation.count({ where: { vmId } })).toBe(0);
    expect(await app.db.prisma.host.findUniqueOrThrow({ where: { id: hostId ?? '' } })).toMatchObject({
      usedVcpus: 0,
    });
    // The host removed the guest's files: runtime folder and disk overlay.
    expect(await exists(path.join(runtimeDir, 'vms', vmId))).toBe(false);
    expect(await exists(path.join(agent.host.pools.shared?.path ?? '', 'vms', vmId, 'root.qcow2'))).toBe(
      false,
    );
    const events = await app.db.prisma.event.findMany({
      where: { resourceId: vmId, kind: 'vm.state_changed' },
      orderBy: { id: 'asc' },
    });
    expect(events.map((e) => (e.data as { to: string }).to)).toEqual(
      expect.arrayContaining(['SCHEDULING', 'CREATING', 'RUNNING', 'STOPPED', 'DELETING', 'DELETED']),
    );
  }, 240_000);
});
