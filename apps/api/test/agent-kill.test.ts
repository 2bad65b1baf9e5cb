import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  eventually,
  lastTick,
  loadGuestImage,
  makeTestHost,
  type TestHost,
} from '../../../packages/vmm-core/test/support/test-host.js';
import {
  buildAgent,
  ChildAgent,
  qemuPidsOf,
  testAgentConfig,
} from '../../agent/test/support/agent-harness.js';
import { AgentGatewayServer } from '../src/infra/grpc/agent-gateway.server.js';
import { createProject, json, startTestApp, type TestApp, type TestProject } from './support/app.js';
import {
  createTestRedis,
  joinToken,
  type TestRedis,
  testSettings,
  useSettingsEnv,
} from './support/cluster.js';

/**
 * A real `hangar-agent` process is SIGKILLed under a running guest: the control plane marks the
 * host DOWN within 15 s and the VM UNKNOWN (never STOPPED); the restarted agent re-adopts the
 * guest and the VM is RUNNING again on the same host, with one QEMU.
 */
describe('agent killed and restarted, through the control plane', () => {
  let redis: TestRedis;
  let app: TestApp;
  let host: TestHost;
  let project: TestProject;
  let restoreEnv: () => void;
  const children: ChildAgent[] = [];
  let configFile: string;
  let agentConfig: ReturnType<typeof testAgentConfig>;

  beforeAll(async () => {
    await buildAgent();
    redis = await createTestRedis();
    restoreEnv = useSettingsEnv(testSettings({ heartbeatIntervalMs: 1_000, metricsIntervalMs: 2_000 }));
    app = await startTestApp({
      env: { HANGAR_ROLE: 'all', REDIS_URL: redis.url, HANGAR_REDIS_PREFIX: redis.prefix },
    });
    host = await makeTestHost({ label: 'agent-kill' });
    configFile = path.join(host.root, 'agent.json');
    agentConfig = {
      ...testAgentConfig(host, {
        hostName: 'kill-host',
        controlPlane: app.running.app.get(AgentGatewayServer, { strict: false }).address,
        joinToken: await joinToken(app.db),
      }),
      logLevel: 'info',
    };
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
    project = await createProject(app.db, 'kill');
  }, 120_000);
  afterAll(async () => {
    for (const c of children) await c.dispose();
    await host?.cleanup();
    await app?.close();
    await redis?.cleanup();
    restoreEnv?.();
  });

  const startAgent = async () => {
    const child = await ChildAgent.start(agentConfig, configFile);
    children.push(child);
    return child;
  };
  const hostRow = () => app.db.prisma.host.findUniqueOrThrow({ where: { name: 'kill-host' } });
  const status = async (vmId: string) =>
    (json(await app.client(project.reader).get(`/v1/vms/${vmId}`)) as { status: string }).status;

  it('host DOWN within 15 s and VM UNKNOWN after SIGKILL; RUNNING again after restart', async () => {
    await startAgent();
    await eventually(async () => ((await hostRow()).state === 'UP' ? true : undefined), {
      timeoutMs: 20_000,
      what: 'host UP',
    });
    const created = await app.client(project.member).post('/v1/vms', {
      name: 'kill-vm',
      flavor: 'tiny',
      image: 'hangar-tiny',
    });
    expect(created.status, JSON.stringify(created.body)).toBe(202);
    const vmId = (json(created).vm as { id: string }).id;
    const done = await app.client(project.member).get(`${created.headers.get('location')}/wait?timeout=60s`);
    expect((done.body as { status: string }).status).toBe('SUCCEEDED');
    expect(await status(vmId)).toBe('RUNNING');
    const [qemuPid] = await qemuPidsOf(host.runtimeDir, vmId);
    expect(qemuPid).toBeGreaterThan(0);

    const killedAt = Date.now();
    children[0]!.child.kill('SIGKILL');
    await children[0]!.waitForExit();
    await eventually(async () => ((await hostRow()).state === 'DOWN' ? true : undefined), {
      timeoutMs: 15_000,
      intervalMs: 100,
      what: 'host DOWN',
    });
    expect(Date.now() - killedAt).toBeLessThan(15_000);
    await eventually(async () => ((await status(vmId)) === 'UNKNOWN' ? true : undefined), {
      timeoutMs: 5_000,
      what: 'VM UNKNOWN',
    });
    // The guest itself never stopped.
    expect(await qemuPidsOf(host.runtimeDir, vmId)).toEqual([qemuPid]);

    await startAgent();
    await eventually(
      async () => ((await hostRow()).state === 'UP' && (await status(vmId)) === 'RUNNING' ? true : undefined),
      { timeoutMs: 20_000, what: 'host UP and VM RUNNING again' },
    );
    expect(await qemuPidsOf(host.runtimeDir, vmId)).toEqual([qemuPid]);
    const serial = path.join(host.runtimeDir, 'vms', vmId, 'serial.log');
    const { readFile } = await import('node:fs/promises');
    const t = lastTick(await readFile(serial, 'utf8')) ?? 0;
    await eventually(async () => ((lastTick(await readFile(serial, 'utf8')) ?? 0) > t ? true : undefined), {
      what: 'guest still ticking',
    });
  });
});
