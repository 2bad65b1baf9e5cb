import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, loadGuestImage } from '../../../packages/vmm-core/test/support/test-host.js';
import { qemuPidsOf } from '../../agent/test/support/agent-harness.js';
import { AgentGatewayServer } from '../src/infra/grpc/agent-gateway.server.js';
import {
  createProject,
  type Exchange,
  expectExchangesConform,
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

/**
 * Runs at every boot (the guest runs `#!` user-data on each boot, after mounting its data disk):
 * prints what the guest sees of its size, and keeps a file on the root overlay's data filesystem
 * that was written on the first boot only.
 */
const USER_DATA = `#!/bin/sh
echo "HANGAR-SIZE nproc=$(grep -c '^processor' /proc/cpuinfo) mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
if [ -d /mnt/data ]; then
  [ -f /mnt/data/resize-marker ] || echo "first-boot-$(cat /run/instance-id)" > /mnt/data/resize-marker
  sync
  echo "HANGAR-DISK marker=$(cat /mnt/data/resize-marker) boots=$(grep -c '^boot ' /mnt/data/boot-log)"
fi
`;

interface Boot {
  nproc: number;
  memKib: number;
  marker: string;
  boots: number;
}

/** The lines each boot printed, in boot order (the console log keeps earlier boots). */
function bootsIn(text: string): Boot[] {
  const sizes = [...text.matchAll(/HANGAR-SIZE nproc=(\d+) mem_kib=(\d+)/g)];
  const disks = [...text.matchAll(/HANGAR-DISK marker=(\S+) boots=(\d+)/g)];
  return disks.map((disk, i) => ({
    nproc: Number(sizes[i]?.[1] ?? 0),
    memKib: Number(sizes[i]?.[2] ?? 0),
    marker: disk[1] ?? '',
    boots: Number(disk[2]),
  }));
}

/**
 * Resize with a real guest: REST → conductor → agent → vmm-core rewrites the stopped VM's
 * definition → the next QEMU start has the new vCPU count and memory, on the same disk.
 */
describe('resize with a real QEMU guest', () => {
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
      name: 'resize-qemu-host',
      gatewayAddress: gateway,
      joinToken: await joinToken(app.db),
      driver: 'qemu',
    });
    await agent.whenConnected();
    await eventually(async () =>
      (await app.db.prisma.host.count({ where: { state: 'UP' } })) === 1 ? true : undefined,
    );
    const image = await loadGuestImage();
    await app.db.prisma.flavor.createMany({
      data: [
        { name: 'tiny', vcpus: 1, memoryMib: 256, diskGib: 1 },
        { name: 'small', vcpus: 2, memoryMib: 512, diskGib: 1 },
      ],
    });
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
    project = await createProject(app.db, 'resize-e2e');
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
    const done = await app.client(project.member).get(`${location}/wait?timeout=60s`);
    const body = done.body as OperationBody;
    expect(body.status, JSON.stringify(body.error)).toBe('SUCCEEDED');
    return body;
  }

  async function boots(vmId: string, count: number): Promise<Boot[]> {
    return eventually(
      async () => {
        const res = await app.client(project.member).get(`/v1/vms/${vmId}/console?tail_bytes=262144`);
        expect(res.status).toBe(200);
        const found = bootsIn((json(res) as { text: string }).text);
        return found.length >= count ? found : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 500, what: `boot ${count} of the guest in the console` },
    );
  }

  it('stops, resizes to 2 vCPUs and 512 MiB, starts: the guest sees the new size on the same disk', async () => {
    const api = app.client(project.member);
    const created = await api.post('/v1/vms', {
      name: 'resize-vm',
      flavor: 'tiny',
      image: 'hangar-tiny',
      user_data: USER_DATA,
    });
    const vmId = (json(created).vm as { id: string }).id;
    await finish(created);
    const [first] = await boots(vmId, 1);
    expect(first).toMatchObject({ nproc: 1, marker: `first-boot-${vmId}`, boots: 1 });
    expect(first?.memKib).toBeLessThan(256 * 1024);

    // A graceful stop: the guest syncs and unmounts its data disk.
    await finish(await api.post(`/v1/vms/${vmId}/stop`));
    expect(await qemuPidsOf(agent.host.runtimeDir, vmId)).toEqual([]);
    await finish(await api.post(`/v1/vms/${vmId}/resize`, { flavor: 'small' }));
    expect(json(await api.get(`/v1/vms/${vmId}`))).toMatchObject({
      status: 'STOPPED',
      vcpus: 2,
      memory_mib: 512,
    });
    // Nothing ran while resizing: the definition changed, no QEMU started.
    expect(await qemuPidsOf(agent.host.runtimeDir, vmId)).toEqual([]);

    await finish(await api.post(`/v1/vms/${vmId}/start`));
    const all = await boots(vmId, 2);
    const second = all[1];
    expect(second).toMatchObject({ nproc: 2, marker: `first-boot-${vmId}`, boots: 2 });
    expect(second?.memKib).toBeGreaterThan(400 * 1024);
    expect(second?.memKib).toBeLessThan(512 * 1024);
    expect(await qemuPidsOf(agent.host.runtimeDir, vmId)).toHaveLength(1);

    await finish(await api.post(`/v1/vms/${vmId}/stop`, { force: true }));
    await finish(await api.delete(`/v1/vms/${vmId}`));
    await expectExchangesConform(app);
  }, 300_000);
});
