import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { agentv1, controlv1, PROTOCOL_VERSION } from '@hangar/proto';
import { type Hypervisor, isProcessAlive, QemuDriver, vmRuntimePaths } from '@hangar/vmm-core';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GuestShell } from '../../../packages/vmm-core/test/support/guest-shell.js';
import {
  eventually,
  makeOwnedTempDir,
  makeTestHost,
  type TestHost,
  tinySpec,
} from '../../../packages/vmm-core/test/support/test-host.js';
import { ControlSession, type ControlSessionOptions } from '../src/session/control-session.js';
import type { AgentInventory } from '../src/session/inventory.js';
import { FakeInventory, MemoryLogger } from './support/session-fakes.js';
import { TestGateway } from './support/test-gateway.js';

const { VmState } = agentv1;

function hostInfo(hostname = 'alpha'): controlv1.HostInfo {
  return controlv1.HostInfo.fromPartial({
    hostname,
    agentAddress: '127.0.0.1:7443',
    cores: 2,
    memoryBytes: 8 * 2 ** 30,
    driver: controlv1.HypervisorDriver.HYPERVISOR_DRIVER_QEMU,
    accelerator: controlv1.Accelerator.ACCELERATOR_TCG,
    qemuVersion: '7.2.0',
    pools: [{ name: 'local', path: '/var/lib/hangar/local', shared: false, totalBytes: 100, freeBytes: 50 }],
    agentVersion: '0.1.0',
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('control session against an in-test gateway', () => {
  let gw: TestGateway;
  let inventory: FakeInventory;
  let logger: MemoryLogger;
  let dir: string;
  const sessions: ControlSession[] = [];

  const open = (over: Partial<ControlSessionOptions> = {}) => {
    const s = new ControlSession({
      address: gw.address,
      credentials: credentials.createInsecure(),
      hostInfo: async () => hostInfo(),
      joinToken: 'join-secret',
      inventory,
      heartbeatIntervalMs: 200,
      metricsIntervalMs: 300,
      bufferLimit: 100,
      logger,
      stateFile: path.join(dir, 'state', 'host-id.json'),
      reconnect: { initialDelayMs: 50, maxDelayMs: 400 },
      ...over,
    });
    sessions.push(s);
    return s;
  };

  beforeEach(async () => {
    dir = await makeOwnedTempDir('session');
    inventory = new FakeInventory();
    inventory.vms = [
      {
        vmId: 'vm-a',
        state: 'RUNNING',
        qemuStatus: 'running',
        pid: 4242,
        desiredState: 'RUNNING',
        drift: false,
      },
      {
        vmId: 'vm-b',
        state: 'STOPPED',
        qemuStatus: undefined,
        pid: undefined,
        desiredState: 'RUNNING',
        drift: true,
      },
    ];
    inventory.orphans = [{ path: '/var/lib/hangar/run/stray', pid: undefined, reason: 'no vm.json' }];
    logger = new MemoryLogger();
  });

  afterEach(async () => {
    for (const s of sessions.splice(0)) await s.stop();
    await gw?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('registers with protocol version and host info, adopts the settings, then heartbeats the inventory and sends metrics', async () => {
    gw = await TestGateway.start({ settings: { heartbeatIntervalMs: 200, metricsIntervalMs: 300 } });
    // Configured slower than the gateway wants: the gateway's settings must win.
    const session = open({ heartbeatIntervalMs: 5_000, metricsIntervalMs: 5_000 });
    await session.start();
    await session.whenConnected(5_000);

    const reg = gw.registers[0]!;
    expect(reg.request.protocolVersion).toBe(PROTOCOL_VERSION);
    expect(reg.request.joinToken).toBe('join-secret');
    expect(reg.request.hostId).toBe('');
    expect(reg.request.host).toMatchObject({ hostname: 'alpha', cores: 2, qemuVersion: '7.2.0' });
    expect(reg.request.host?.pools[0]).toMatchObject({ name: 'local', freeBytes: 50 });

    await gw.waitFor(() => (gw.heartbeats().length >= 5 ? true : undefined), '5 heartbeats', 5_000);
    const beats = gw.heartbeats();
    const gaps = beats.slice(1).map((b, i) => b.at - beats[i]!.at);
    const median = [...gaps].sort((x, y) => x - y)[Math.floor(gaps.length / 2)]!;
    expect(median).toBeGreaterThanOrEqual(150);
    expect(median).toBeLessThanOrEqual(350);

    const hb = beats.at(-1)!.heartbeat;
    expect(hb.sentAt).toBeInstanceOf(Date);
    expect(hb.inventory).toEqual([
      {
        vmId: 'vm-a',
        state: VmState.VM_STATE_RUNNING,
        qemuStatus: 'running',
        pid: 4242,
        desiredState: VmState.VM_STATE_RUNNING,
        drift: false,
      },
      {
        vmId: 'vm-b',
        state: VmState.VM_STATE_STOPPED,
        qemuStatus: undefined,
        pid: undefined,
        desiredState: VmState.VM_STATE_RUNNING,
        drift: true,
      },
    ]);
    expect(hb.orphans).toEqual([{ path: '/var/lib/hangar/run/stray', pid: undefined, reason: 'no vm.json' }]);
    expect(beats.every((b) => b.request.hostId === 'host-1')).toBe(true);

    const batch = await gw.waitFor(() => gw.metrics()[0]?.metrics, 'a metrics batch', 3_000);
    expect(batch.host).toMatchObject({ cpuCount: 2, memoryTotalBytes: 8 * 2 ** 30 });
    expect(batch.host?.cpuSeconds?.user).toBeGreaterThan(100);
    expect(batch.vms.map((v) => v.vmId)).toEqual(['vm-a']);
    expect(batch.vms[0]!.vcpuSeconds[0]).toBeGreaterThan(0);

    // Sequences 1, 2, 3, ... with a heartbeat first: checked by the gateway on every report.
    expect(gw.violations).toEqual([]);
    const stats = session.stats();
    expect(stats).toMatchObject({
      connected: true,
      hostId: 'host-1',
      sessionsOpened: 1,
      reconnects: 0,
      heartbeatIntervalMs: 200,
      metricsIntervalMs: 300,
      dropped: { events: 0, metrics: 0 },
    });
    expect(stats.lastAck?.sequence).toBeGreaterThanOrEqual(5);
    expect(JSON.parse(await readFile(path.join(dir, 'state', 'host-id.json'), 'utf8'))).toMatchObject({
      hostId: 'host-1',
    });
  });

  it('answers a Ping with a heartbeat, follows a SettingsUpdate, stops cleanly and keeps its host id across restarts', async () => {
    gw = await TestGateway.start();
    const first = open({ heartbeatIntervalMs: 2_000, metricsIntervalMs: 60_000 });
    await first.start();
    await first.whenConnected(5_000);
    await gw.waitFor(() => gw.heartbeats()[0], 'first heartbeat');

    const pingAt = Date.now();
    gw.ping();
    const answered = await gw.waitFor(() => gw.heartbeats()[1], 'heartbeat answering the ping', 1_000);
    expect(answered.at - pingAt).toBeLessThan(500);

    gw.pushSettings({ heartbeatIntervalMs: 150, metricsIntervalMs: 0 });
    await eventually(() => (first.stats().heartbeatIntervalMs === 150 ? true : undefined), {
      timeoutMs: 2_000,
    });
    expect(first.stats().metricsIntervalMs).toBe(60_000); // 0 = "keep yours"
    const before = gw.heartbeats().length;
    await sleep(1_000);
    // 2 s interval before the update; at 150 ms about 6 beats fit in a second.
    expect(gw.heartbeats().length - before).toBeGreaterThanOrEqual(4);

    await first.stop();
    expect(gw.cleanEnds).toBe(1);
    expect(inventory.subscribers).toBe(0);
    const after = gw.reports.length;
    await sleep(500);
    expect(gw.reports.length).toBe(after); // every timer is gone

    const second = open();
    await second.start();
    await second.whenConnected(5_000);
    expect(gw.registers.map((r) => r.request.hostId)).toEqual(['', 'host-1']);
    expect(second.stats().hostId).toBe('host-1');
    expect(gw.violations).toEqual([]);
  });

  it('keeps trying while the control plane is down at start and delivers what happened meanwhile', async () => {
    gw = await TestGateway.start();
    const back = gw.refuseConnections(1_200);
    const session = open();
    await session.start();
    inventory.emit({ vmId: 'vm-a', type: 'state', state: 'PAUSED', reason: 'before-connect' });
    await back;
    await session.whenConnected(5_000);
    const event = await gw.waitFor(() => gw.events()[0]?.event, 'the early event', 3_000);
    expect(event).toMatchObject({ vmId: 'vm-a', state: VmState.VM_STATE_PAUSED, reason: 'before-connect' });
    expect(session.stats().failedAttempts).toBeGreaterThan(0);
    expect(logger.messages('warn')).toContain('cannot reach the control plane');
    expect(gw.violations).toEqual([]);
  });

  it('buffers events while the session is cut and the gateway refuses reconnects, then delivers them in order', async () => {
    gw = await TestGateway.start();
    const session = open();
    await session.start();
    await session.whenConnected(5_000);
    inventory.emit({ vmId: 'vm-a', type: 'state', state: 'PAUSED', reason: 'e0' });
    await gw.waitFor(() => gw.events().find((e) => e.event.reason === 'e0'), 'e0 while connected');

    // A cut with the gateway still up: back within the first backoff step.
    expect(gw.cutSessions()).toBe(1);
    await eventually(() => (session.stats().sessionsOpened === 2 ? true : undefined), { timeoutMs: 3_000 });

    const back = gw.refuseConnections(1_000);
    await eventually(() => (session.stats().connected ? undefined : true), { timeoutMs: 2_000 });
    const reasons = ['e1', 'e2', 'e3', 'e4', 'e5'];
    for (const [i, reason] of reasons.entries()) {
      inventory.emit({
        vmId: i % 2 ? 'vm-a' : 'vm-b',
        type: i === 2 ? 'reset' : 'state',
        state: i === 2 ? undefined : i % 2 ? 'RUNNING' : 'STOPPED',
        reason,
        detail: { n: i },
      });
      await sleep(100);
    }
    expect(session.stats().buffered.events).toBeGreaterThanOrEqual(5);
    expect(session.stats().connected).toBe(false);
    await back;

    await gw.waitFor(
      () => (reasons.every((r) => gw.events().some((e) => e.event.reason === r)) ? true : undefined),
      'every buffered event',
      5_000,
    );
    // At-least-once: a report in flight at the cut may come twice; first arrivals keep the order.
    const seen = [...new Set(gw.events().map((e) => e.event.reason))];
    expect(seen).toEqual(['e0', ...reasons]);
    const e3 = gw.events().find((e) => e.event.reason === 'e3')!;
    expect(e3.event).toMatchObject({ vmId: 'vm-b', type: controlv1.VmEventType.VM_EVENT_TYPE_RESET });
    const e2 = gw.events().find((e) => e.event.reason === 'e2')!;
    expect(e2.event).toMatchObject({ vmId: 'vm-a', state: VmState.VM_STATE_RUNNING, detail: { n: 1 } });
    // The buffered events went out on the new session, right after its first heartbeat.
    const lastSession = e2.session;
    expect(lastSession).toBeGreaterThan(2);
    const inLast = gw.reports.filter((r) => r.session === lastSession).map((r) => r.request.body?.$case);
    expect(inLast[0]).toBe('heartbeat');

    await eventually(() => (session.stats().buffered.events === 0 ? true : undefined), { timeoutMs: 2_000 });
    expect(session.stats()).toMatchObject({ connected: true, dropped: { events: 0, metrics: 0 } });
    expect(session.stats().reconnects).toBeGreaterThanOrEqual(2);
    expect(gw.dropped()).toEqual([]);
    expect(gw.violations).toEqual([]);
    expect(logger.messages('warn')).toContain(
      'control-plane session lost; buffering reports until it is back',
    );
  });

  it('with a tiny buffer drops the oldest metrics first, then the oldest events, and reports the counts', async () => {
    gw = await TestGateway.start();
    const session = open({ bufferLimit: 3, metricsIntervalMs: 150 });
    await session.start();
    await session.whenConnected(5_000);
    await gw.waitFor(() => gw.metrics()[0], 'a metrics batch while connected');

    const back = gw.refuseConnections(1_000);
    await eventually(() => (session.stats().connected ? undefined : true), { timeoutMs: 2_000 });
    for (const reason of ['e1', 'e2', 'e3', 'e4', 'e5']) {
      inventory.emit({ vmId: 'vm-a', type: 'state', state: 'PAUSED', reason });
    }
    await back;

    const first = await gw.waitFor(() => gw.dropped()[0], 'a DroppedReport', 5_000);
    // The buffer kept the newest events; every metrics batch sampled meanwhile was dropped first.
    expect(first.dropped.eventsDropped).toBe(2);
    expect(first.dropped.metricsDropped).toBeGreaterThanOrEqual(1);
    const inSession = gw.reports.filter((r) => r.session === first.session);
    const order = inSession.map((r) =>
      r.request.body?.$case === 'vmEvent' ? r.request.body.value.reason : r.request.body?.$case,
    );
    expect(order.slice(0, 5)).toEqual(['heartbeat', 'e3', 'e4', 'e5', 'dropped']);
    expect(gw.events().map((e) => e.event.reason)).toEqual(['e3', 'e4', 'e5']);

    // Every loss ends up reported, and the stats agree with what the gateway was told.
    await eventually(
      () => {
        const s = session.stats();
        return s.unreportedDropped.events === 0 && s.unreportedDropped.metrics === 0 ? s : undefined;
      },
      { timeoutMs: 3_000 },
    );
    const stats = session.stats();
    const told = gw.dropped().reduce(
      (acc, d) => ({
        events: acc.events + d.dropped.eventsDropped,
        metrics: acc.metrics + d.dropped.metricsDropped,
      }),
      { events: 0, metrics: 0 },
    );
    expect(told).toEqual(stats.dropped);
    expect(stats.dropped.events).toBe(2);
    expect(gw.violations).toEqual([]);
  });

  it('reconnects when the gateway goes silent, and accepts pino as its logger', async () => {
    gw = await TestGateway.start({ ack: false });
    const session = open({ logger: pino({ level: 'silent' }), silenceTimeoutMs: 600 });
    await session.start();
    await session.whenConnected(5_000);
    // No acks, no pings: the agent must not trust a stream that never answers.
    await eventually(() => (session.stats().sessionsOpened >= 2 ? true : undefined), { timeoutMs: 5_000 });
    expect(gw.sessionCount).toBeGreaterThanOrEqual(2);
  });
});

/** The smallest runtime stand-in over vmm-core: what the agent's VmRuntime provides, minus desired state. */
class DriverInventory implements AgentInventory {
  constructor(private readonly driver: Hypervisor) {}
  async snapshot() {
    const vms = await this.driver.list();
    return {
      vms: vms.map((v) => ({
        vmId: v.id,
        state: v.state,
        qemuStatus: v.qemuStatus,
        pid: v.pid,
        desiredState: undefined,
        drift: false,
      })),
      orphans: [],
    };
  }
  onEvent(handler: Parameters<AgentInventory['onEvent']>[0]) {
    return this.driver.onEvent(handler);
  }
  async sampleMetrics() {
    const vms = (await this.driver.list()).filter((v) => v.state === 'RUNNING');
    const samples = await Promise.all(vms.map((v) => this.driver.sampleVm(v.id).catch(() => undefined)));
    return { host: await this.driver.sampleHost(), vms: samples.filter((s) => s !== undefined) };
  }
}

describe('control session with a real guest', () => {
  let host: TestHost;
  let driver: QemuDriver;
  let gw: TestGateway;
  let session: ControlSession | undefined;

  beforeEach(async () => {
    host = await makeTestHost({ label: 'agent-session' });
    driver = new QemuDriver({ runtimeDir: host.runtimeDir, pools: host.pools, accelerator: 'tcg' });
    gw = await TestGateway.start();
  });

  afterEach(async () => {
    await session?.stop();
    await driver.close();
    await gw.close();
    await host.cleanup();
  });

  it('reports non-zero vCPU time for a running guest and its STOPPED event within 2 s of QEMU exiting', async () => {
    await driver.create(tinySpec('sess1'));
    const { pid } = await driver.start('sess1');
    await eventually(
      async () => ((await driver.consoleLog('sess1')).includes('HANGAR-READY') ? true : undefined),
      {
        timeoutMs: 60_000,
        what: 'guest boot',
      },
    );

    session = new ControlSession({
      address: gw.address,
      credentials: credentials.createInsecure(),
      hostInfo: async () => hostInfo('qemu-host'),
      inventory: new DriverInventory(driver),
      heartbeatIntervalMs: 300,
      metricsIntervalMs: 500,
      bufferLimit: 100,
      logger: new MemoryLogger(),
      reconnect: { initialDelayMs: 50, maxDelayMs: 400 },
    });
    await session.start();
    await session.whenConnected(5_000);

    const sample = await gw.waitFor(
      () => gw.metrics().flatMap((m) => m.metrics.vms.filter((v) => v.vmId === 'sess1'))[0],
      'a metrics batch with the guest',
      10_000,
    );
    expect(sample.vcpuSeconds.length).toBe(1);
    expect(sample.vcpuSeconds.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    expect(sample.rssBytes).toBeGreaterThan(0);
    const beat = await gw.waitFor(
      () => gw.heartbeats().find((h) => h.heartbeat.inventory.some((v) => v.vmId === 'sess1')),
      'a heartbeat with the guest',
    );
    expect(beat.heartbeat.inventory[0]).toMatchObject({
      vmId: 'sess1',
      state: VmState.VM_STATE_RUNNING,
      pid,
    });

    // The guest powers itself off from inside; the shell returns before the kernel acts.
    const sh = await GuestShell.connect(vmRuntimePaths(host.runtimeDir, 'sess1').shellSocket);
    try {
      // `& true`: GuestShell appends `; echo <marker>` and `&;` would be a syntax error.
      await sh.run('(sleep 0.5; poweroff -f) >/dev/null 2>&1 & true');
    } finally {
      sh.close();
    }
    let exitedAt = 0;
    await eventually(
      async () => {
        if (await isProcessAlive(pid!)) return undefined;
        exitedAt = Date.now();
        return true;
      },
      { timeoutMs: 20_000, intervalMs: 10, what: 'QEMU to exit' },
    );
    const stopped = await gw.waitFor(
      () => gw.events().find((e) => e.event.vmId === 'sess1' && e.event.state === VmState.VM_STATE_STOPPED),
      'the STOPPED event',
      5_000,
    );
    expect(stopped.at - exitedAt).toBeLessThan(2_000);
    expect(stopped.event.type).toBe(controlv1.VmEventType.VM_EVENT_TYPE_STATE);
    await gw.waitFor(
      () =>
        gw
          .heartbeats()
          .find((h) => h.at > stopped.at && h.heartbeat.inventory[0]?.state === VmState.VM_STATE_STOPPED),
      'a heartbeat showing the guest stopped',
    );
    expect(gw.violations).toEqual([]);
  });
});
