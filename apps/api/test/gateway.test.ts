import { credentials, Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { agentv1, controlv1, PROTOCOL_VERSION } from '@hangar/proto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../../../packages/vmm-core/test/support/test-host.js';
import { AgentClientPool } from '../src/infra/agent-client/agent-client.pool.js';
import { GatewayService } from '../src/modules/gateway/gateway.service.js';
import { MetricsService } from '../src/modules/metrics/metrics.service.js';
import { OperationService } from '../src/modules/operations/operation.service.js';
import { VmsService } from '../src/modules/vms/vms.service.js';
import {
  createTestRedis,
  joinToken,
  seedCatalog,
  startControlPlane,
  startTestAgent,
  type TestAgent,
  type TestControlPlane,
  type TestRedis,
  testSettings,
} from './support/cluster.js';
import { createTestDatabase, type TestDatabase } from './support/db.js';

const HEARTBEAT_MS = 500;

/** A raw AgentGateway client, to speak the protocol exactly as the test needs. */
function gatewayClient(address: string): controlv1.AgentGatewayClient {
  return new controlv1.AgentGatewayClient(address, credentials.createInsecure());
}

function register(
  client: controlv1.AgentGatewayClient,
  request: Partial<controlv1.RegisterRequest>,
): Promise<controlv1.RegisterResponse> {
  return new Promise((resolve, reject) => {
    client.register(
      controlv1.RegisterRequest.fromPartial({ protocolVersion: PROTOCOL_VERSION, ...request }),
      new Metadata(),
      { deadline: Date.now() + 5_000 },
      (error, response) => (error ? reject(error) : resolve(response)),
    );
  });
}

async function refusal(promise: Promise<unknown>): Promise<ServiceError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!error || typeof error !== 'object' || !('code' in error)) throw new Error('expected a gRPC error');
  return error as ServiceError;
}

function hostInfo(name: string): controlv1.HostInfo {
  return controlv1.HostInfo.fromPartial({
    hostname: name,
    agentAddress: '127.0.0.1:9',
    cores: 4,
    memoryBytes: 8 * 2 ** 30,
    driver: controlv1.HypervisorDriver.HYPERVISOR_DRIVER_FAKE,
    accelerator: controlv1.Accelerator.ACCELERATOR_FAKE,
    qemuVersion: '7.2.0',
    machineTypes: ['pc'],
    cpuModels: ['qemu64'],
    pools: [{ name: 'images', path: '/x', shared: true, totalBytes: 10, freeBytes: 5 }],
    agentVersion: '0.1.0',
  });
}

describe('AgentGateway against PostgreSQL, Redis and real agents', () => {
  let db: TestDatabase;
  let redis: TestRedis;
  let cp: TestControlPlane;
  const agents: TestAgent[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    redis = await createTestRedis();
    cp = await startControlPlane({
      db,
      redis,
      settings: testSettings({ heartbeatIntervalMs: HEARTBEAT_MS }),
    });
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.stop()));
    // Hosts of stopped agents stay UP until their heartbeats are missed: keep VMs of the next test off them.
    await db.prisma.host.updateMany({ data: { cordoned: true } });
  });
  afterAll(async () => {
    await cp?.close();
    await redis?.cleanup();
    await db?.drop();
  });

  async function agent(name: string, options: { token?: string; quiet?: boolean } = {}): Promise<TestAgent> {
    // Join tokens are single-use: every agent gets its own.
    const token = options.token ?? (await joinToken(db));
    const a = await startTestAgent({
      name,
      gatewayAddress: cp.gatewayAddress,
      joinToken: token,
      ...(options.quiet ? { logLevel: 'fatal' as const } : {}),
    });
    agents.push(a);
    return a;
  }

  /** Creates a VM through the use case and waits for its operation to finish. */
  async function runningVm(name: string): Promise<string> {
    const { projectId } = await seedCatalog(db);
    const { vm, operation } = await cp
      .get(VmsService)
      .create({ projectId, name, flavor: 'tiny', image: 'hangar-tiny' });
    const done = await cp.get(OperationService).wait(operation.id, 20_000);
    expect(done.status, `${done.errorCode}: ${done.errorMessage}`).toBe('SUCCEEDED');
    return vm.id;
  }

  it('registers an agent with an admin-issued join token and refuses bad tokens and protocols', async () => {
    const client = gatewayClient(cp.gatewayAddress);
    try {
      const bad = await refusal(
        register(client, { joinToken: 'hgj_not-a-token', host: hostInfo('intruder') }),
      );
      expect(bad.code).toBe(status.UNAUTHENTICATED);
      const none = await refusal(register(client, { joinToken: '', host: hostInfo('intruder') }));
      expect(none.code).toBe(status.UNAUTHENTICATED);
      const protocol = await refusal(
        register(client, {
          protocolVersion: PROTOCOL_VERSION + 1,
          joinToken: await joinToken(db),
          host: hostInfo('intruder'),
        }),
      );
      expect(protocol.code).toBe(status.FAILED_PRECONDITION);
      const late = await refusal(
        register(client, { joinToken: await joinToken(db, -1_000), host: hostInfo('intruder') }),
      );
      expect(late.code).toBe(status.UNAUTHENTICATED);
      expect(await db.prisma.host.count({ where: { name: 'intruder' } })).toBe(0);
    } finally {
      client.close();
    }

    // A real agent with a wrong token keeps being refused and never becomes a host.
    const refused = await agent('gw-refused', { token: 'hgj_wrong', quiet: true });
    await eventually(
      () => (refused.session()?.stats().lastError?.includes('UNAUTHENTICATED') ? true : undefined),
      {
        timeoutMs: 10_000,
        what: 'the refusal',
      },
    );
    expect(await db.prisma.host.findUnique({ where: { name: 'gw-refused' } })).toBeNull();

    const token = await joinToken(db);
    const a = await agent('gw-alpha', { token });
    await a.whenConnected();
    const host = await eventually(async () => {
      const h = await db.prisma.host.findUnique({ where: { name: 'gw-alpha' } });
      return h?.state === 'UP' ? h : undefined;
    });
    expect(host.id).toBe(a.session()?.stats().hostId);
    expect(host.agentAddress).toBe(a.address);
    expect(host.driver).toBe('fake');
    expect(host.accelerator).toBe('fake');
    expect(host.cores).toBeGreaterThan(0);
    expect((host.pools as { name: string }[]).map((p) => p.name).sort()).toEqual([
      'images',
      'local',
      'shared',
    ]);
    // The agent adopted the gateway's heartbeat interval from the Register answer.
    expect(a.session()?.stats().heartbeatIntervalMs).toBe(HEARTBEAT_MS);
    const used = await db.prisma.joinToken.findFirstOrThrow({ where: { hostId: host.id } });
    expect(used.usedAt).toBeInstanceOf(Date);
    expect(await db.prisma.event.count({ where: { resourceId: host.id, kind: 'host.registered' } })).toBe(1);

    const again = gatewayClient(cp.gatewayAddress);
    try {
      // Single-use: the token that made gw-alpha cannot make another host.
      const reused = await refusal(register(again, { joinToken: token, host: hostInfo('gw-copycat') }));
      expect(reused.code).toBe(status.UNAUTHENTICATED);
      // A restarted agent re-registers with the token it joined with, even after it expired: same host.
      await db.prisma.joinToken.update({
        where: { id: used.id },
        data: { expiresAt: new Date(Date.now() - 1_000) },
      });
      const response = await register(again, {
        joinToken: token,
        host: { ...hostInfo('gw-alpha'), agentAddress: a.address },
      });
      expect(response.hostId).toBe(host.id);
      expect(response.settings).toEqual({
        heartbeatIntervalMs: HEARTBEAT_MS,
        metricsIntervalMs: cp.settings.metricsIntervalMs,
      });
      // Revoked: not even the host it made gets back in.
      await db.prisma.joinToken.update({ where: { id: used.id }, data: { revokedAt: new Date() } });
      const revoked = await refusal(
        register(again, { joinToken: token, host: { ...hostInfo('gw-alpha'), agentAddress: a.address } }),
      );
      expect(revoked.code).toBe(status.UNAUTHENTICATED);
    } finally {
      again.close();
    }
  });

  it('keeps a heartbeating host UP; a host whose session stops is DOWN within 15 s with its VMs UNKNOWN, then back', async () => {
    const a = await agent('gw-beta');
    await a.whenConnected();
    const vmId = await runningVm('beta-vm');
    const hostId = a.session()?.stats().hostId ?? '';
    expect((await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } })).hostId).toBe(hostId);

    // Several heartbeat intervals pass: the host stays UP and its heartbeat time moves on.
    const first = await db.prisma.host.findUniqueOrThrow({ where: { id: hostId } });
    await new Promise((r) => setTimeout(r, 5 * HEARTBEAT_MS));
    const later = await db.prisma.host.findUniqueOrThrow({ where: { id: hostId } });
    expect(later.state).toBe('UP');
    expect(later.lastHeartbeatAt?.getTime()).toBeGreaterThan(first.lastHeartbeatAt?.getTime() ?? 0);

    const stoppedAt = Date.now();
    await a.stopSession();
    await eventually(
      async () =>
        (await db.prisma.host.findUniqueOrThrow({ where: { id: hostId } })).state === 'DOWN'
          ? true
          : undefined,
      { timeoutMs: 15_000, intervalMs: 100, what: 'host DOWN' },
    );
    const downAfterMs = Date.now() - stoppedAt;
    expect(downAfterMs).toBeLessThan(15_000);
    // Not before three heartbeat intervals were missed.
    expect(downAfterMs).toBeGreaterThanOrEqual(3 * HEARTBEAT_MS - 200);
    const vm = await eventually(async () => {
      const v = await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } });
      return v.observedState === 'UNKNOWN' ? v : undefined;
    });
    expect(vm.errorMessage).toBeNull();
    // The guest never stopped: the fake hypervisor still runs it.
    expect(a.fakeHost?.vms.get(vmId)?.state).toBe('RUNNING');

    await a.resumeSession();
    await eventually(
      async () => {
        const [h, v] = await Promise.all([
          db.prisma.host.findUniqueOrThrow({ where: { id: hostId } }),
          db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } }),
        ]);
        return h.state === 'UP' && v.observedState === 'RUNNING' ? true : undefined;
      },
      { timeoutMs: 10_000, what: 'host UP and VM RUNNING again' },
    );

    const hostEvents = await db.prisma.event.findMany({
      where: { resourceId: hostId, kind: 'host.state_changed' },
      orderBy: { id: 'asc' },
    });
    expect(hostEvents.map((e) => [(e.data as { from: string }).from, (e.data as { to: string }).to])).toEqual(
      [
        ['DOWN', 'UP'],
        ['UP', 'DOWN'],
        ['DOWN', 'UP'],
      ],
    );
    const vmEvents = await db.prisma.event.findMany({
      where: { resourceId: vmId, kind: 'vm.state_changed' },
      orderBy: { id: 'asc' },
    });
    const transitions = vmEvents.map(
      (e) => `${(e.data as { from: string }).from}>${(e.data as { to: string }).to}`,
    );
    expect(transitions).toEqual([
      'PENDING>SCHEDULING',
      'SCHEDULING>CREATING',
      'CREATING>RUNNING',
      'RUNNING>UNKNOWN',
      'UNKNOWN>RUNNING',
    ]);
    // Every state change bumped the VM's version (its ETag).
    expect((await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } })).version).toBeGreaterThanOrEqual(
      1 + transitions.length,
    );
  });

  it('stores metrics batches in Redis under the deployment prefix and serves them', async () => {
    const a = await agent('gw-gamma');
    await a.whenConnected();
    const vmId = await runningVm('gamma-vm');
    const hostId = a.session()?.stats().hostId ?? '';
    const vmKey = `${redis.prefix}:metrics:vm:${vmId}`;
    const hostKey = `${redis.prefix}:metrics:host:${hostId}`;
    await eventually(async () => ((await redis.client.exists(vmKey, hostKey)) === 2 ? true : undefined), {
      timeoutMs: 10_000,
      what: 'metrics in Redis',
    });
    expect(await redis.client.pttl(vmKey)).toBeGreaterThan(0);
    expect(await redis.client.pttl(hostKey)).toBeGreaterThan(0);
    const sample = JSON.parse((await redis.client.hget(vmKey, 'data')) ?? '{}') as {
      vmId: string;
      hostId: string;
      rssBytes: number;
    };
    expect(sample).toMatchObject({ vmId, hostId });

    const metrics = cp.get(MetricsService);
    const vm = await eventually(
      async () => {
        const m = await metrics.vmMetrics(vmId);
        return m.cpuUsage !== null ? m : undefined;
      },
      { timeoutMs: 10_000, what: 'two samples' },
    );
    expect(vm.hostId).toBe(hostId);
    expect(vm.sample?.cpuSecondsTotal).toBeGreaterThanOrEqual(0);
    const host = await metrics.hostMetrics(hostId);
    expect(host.sample?.cpuCount).toBeGreaterThan(0);

    const text = await metrics.prometheusText();
    expect(text).toContain('# TYPE hangar_vm_cpu_seconds_total counter');
    expect(text).toMatch(
      new RegExp(
        `hangar_vm_cpu_seconds_total\\{vm="${vmId}",name="gamma-vm",host="gw-gamma",project="p-[0-9a-f]+"\\} [0-9.e+-]+`,
      ),
    );
    expect(text).toMatch(new RegExp(`hangar_vm_memory_rss_bytes\\{vm="${vmId}",[^}]*\\} \\d+`));
    expect(text).toContain('hangar_host_up{host="gw-gamma"} 1');
    expect(text).toMatch(/hangar_host_cpu_seconds_total\{host="gw-gamma",mode="idle"\} [0-9.e+]+/);
    expect(text).toMatch(/hangar_vms\{state="RUNNING"\} [1-9]/);

    // Metrics of a VM the api does not place on that host are dropped, not stored.
    await cp.get(GatewayService).metricsBatch(hostId, {
      host: undefined,
      vms: [
        {
          vmId: '00000000-0000-4000-8000-000000000000',
          sampledAt: new Date(),
          vcpuSeconds: [],
          cpuSecondsTotal: 1,
          rssBytes: 1,
          block: [],
          nics: [],
        },
      ],
    });
    expect(await redis.client.exists(`${redis.prefix}:metrics:vm:00000000-0000-4000-8000-000000000000`)).toBe(
      0,
    );
  });

  it('acknowledges every report by sequence and tolerates duplicates', async () => {
    const a = await agent('gw-delta');
    await a.whenConnected();
    const vmId = await runningVm('delta-vm');
    const hostId = a.session()?.stats().hostId ?? '';
    // The agent must not fight the test over this host's reports.
    await a.stopSession();

    const client = gatewayClient(cp.gatewayAddress);
    const stream = client.session();
    const acks: number[] = [];
    stream.on('data', (notice: controlv1.SessionResponse) => {
      if (notice.notice?.$case === 'ack') acks.push(notice.notice.value.upToSequence);
    });
    stream.on('error', () => undefined);
    try {
      const running: controlv1.VmStatus = {
        vmId,
        state: agentv1.VmState.VM_STATE_RUNNING,
        qemuStatus: 'running',
        pid: 1,
        desiredState: agentv1.VmState.VM_STATE_RUNNING,
        drift: false,
      };
      const paused = new Date(Date.now() + 50);
      const pauseEvent: controlv1.VmEvent = {
        vmId,
        type: controlv1.VmEventType.VM_EVENT_TYPE_STATE,
        state: agentv1.VmState.VM_STATE_PAUSED,
        reason: 'host-qmp-stop',
        at: paused,
        detail: undefined,
      };
      const reset: controlv1.VmEvent = {
        vmId,
        type: controlv1.VmEventType.VM_EVENT_TYPE_RESET,
        state: agentv1.VmState.VM_STATE_UNSPECIFIED,
        reason: 'guest-reset',
        at: paused,
        detail: { guest: true },
      };
      const reports: controlv1.SessionRequest['body'][] = [
        { $case: 'heartbeat', value: { sentAt: new Date(), inventory: [running], orphans: [] } },
        { $case: 'vmEvent', value: pauseEvent },
        // At-least-once delivery: the same event again, as after a reconnect.
        { $case: 'vmEvent', value: pauseEvent },
        { $case: 'vmEvent', value: reset },
        { $case: 'vmEvent', value: reset },
        { $case: 'dropped', value: { eventsDropped: 2, metricsDropped: 7 } },
      ];
      await new Promise((r) => setTimeout(r, 60));
      for (const [index, body] of reports.entries()) stream.write({ hostId, sequence: index + 1, body });
      await eventually(() => (acks.length === reports.length ? true : undefined), {
        timeoutMs: 10_000,
        what: 'acks',
      });
      expect(acks).toEqual([1, 2, 3, 4, 5, 6]);

      const vm = await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } });
      expect(vm.observedState).toBe('PAUSED');
      const changes = await db.prisma.event.findMany({
        where: { resourceId: vmId, kind: 'vm.state_changed', data: { path: ['to'], equals: 'PAUSED' } },
      });
      expect(changes).toHaveLength(1);
      expect(changes[0]?.data).toMatchObject({
        from: 'RUNNING',
        to: 'PAUSED',
        source: 'agent-event',
        reason: 'host-qmp-stop',
      });
      expect(await db.prisma.event.count({ where: { resourceId: vmId, kind: 'vm.reset' } })).toBe(1);
      expect(
        await db.prisma.event.count({ where: { resourceId: hostId, kind: 'host.reports_dropped' } }),
      ).toBe(1);

      // A report of another host on this stream ends the Session with INVALID_ARGUMENT.
      const ended = new Promise<number>((resolve) =>
        stream.on('status', (s: { code: number }) => resolve(s.code)),
      );
      stream.write({ hostId: '00000000-0000-4000-8000-000000000000', sequence: 7, body: reports[0] });
      expect(await ended).toBe(status.INVALID_ARGUMENT);
    } finally {
      stream.cancel();
      client.close();
    }
  });

  it('marks a VM that vanished from its host ERROR, never silently STOPPED', async () => {
    const a = await agent('gw-epsilon');
    await a.whenConnected();
    const vmId = await runningVm('epsilon-vm');
    // Someone removed the guest behind the api's back, straight through the agent.
    const pool = cp.get(AgentClientPool);
    await pool.stopVm(a.address, { vmId, operationId: 'manual-stop', force: true });
    await eventually(async () =>
      (await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } })).observedState === 'STOPPED'
        ? true
        : undefined,
    );
    await pool.deleteVm(a.address, { vmId, operationId: 'manual-delete' });
    const vm = await eventually(
      async () => {
        const v = await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } });
        return v.observedState === 'ERROR' ? v : undefined;
      },
      { timeoutMs: 10_000, what: 'VM ERROR' },
    );
    expect(vm.errorMessage).toMatch(/missing from its host/);
  });
});
