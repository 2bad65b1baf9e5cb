import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import {
  QmpCommandError,
  QmpCommands,
  QmpDisconnectedError,
  QmpMonitor,
  QmpProtocolError,
  QmpTimeoutError,
} from '../../src/qmp/index.js';
import { FakeQmpError, type FakeQmpHandler, FakeQmpServer, NO_REPLY } from './fake-qmp-server.js';

const servers: FakeQmpServer[] = [];
const monitors: QmpMonitor[] = [];

afterEach(async () => {
  await Promise.all(monitors.splice(0).map((m) => m.close()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function setup(
  handlers: Record<string, FakeQmpHandler> = {},
): Promise<{ server: FakeQmpServer; qmp: QmpCommands; monitor: QmpMonitor }> {
  const server = await FakeQmpServer.start({ handlers });
  servers.push(server);
  const monitor = await QmpMonitor.connect(server.socketPath, { connectTimeoutMs: 2_000 });
  monitors.push(monitor);
  return { server, qmp: new QmpCommands(monitor), monitor };
}

/** Arguments the server received for the last `command`. */
function argsOf(server: FakeQmpServer, command: string): unknown {
  return server
    .received()
    .filter((c) => c.command === command)
    .at(-1)?.args;
}

describe('QmpCommands queries', () => {
  it('queryStatus returns the run state', async () => {
    const { qmp } = await setup({
      'query-status': () => ({ status: 'prelaunch', singlestep: false, running: false }),
    });
    await expect(qmp.queryStatus()).resolves.toEqual({
      status: 'prelaunch',
      running: false,
      singlestep: false,
    });
  });

  it('queryCpusFast maps QEMU names to camelCase', async () => {
    const { qmp } = await setup({
      'query-cpus-fast': () => [
        {
          'thread-id': 8891,
          props: { 'core-id': 0, 'thread-id': 0, 'socket-id': 0 },
          'qom-path': '/machine/unattached/device[0]',
          'cpu-index': 0,
          target: 'x86_64',
        },
        { 'thread-id': 8892, 'qom-path': '/machine/unattached/device[1]', 'cpu-index': 1, target: 'x86_64' },
      ],
    });
    await expect(qmp.queryCpusFast()).resolves.toEqual([
      {
        cpuIndex: 0,
        threadId: 8891,
        qomPath: '/machine/unattached/device[0]',
        target: 'x86_64',
        props: { coreId: 0, threadId: 0, socketId: 0 },
      },
      { cpuIndex: 1, threadId: 8892, qomPath: '/machine/unattached/device[1]', target: 'x86_64' },
    ]);
  });

  it('queryMigrate maps an active migration and reports none for an empty reply', async () => {
    const ram = {
      transferred: 1000,
      remaining: 2000,
      total: 268435456,
      duplicate: 5,
      skipped: 0,
      normal: 7,
      'normal-bytes': 28672,
      'dirty-pages-rate': 12,
      mbps: 812.5,
      'dirty-sync-count': 3,
      'postcopy-requests': 0,
      'page-size': 4096,
      'multifd-bytes': 0,
      'pages-per-second': 9000,
      'precopy-bytes': 1000,
      'downtime-bytes': 0,
      'postcopy-bytes': 0,
      'dirty-sync-missed-zero-copy': 0,
    };
    let reply: unknown = {
      status: 'active',
      'expected-downtime': 40,
      'setup-time': 3,
      'total-time': 120,
      'cpu-throttle-percentage': 20,
      ram,
    };
    const { qmp } = await setup({ 'query-migrate': () => reply });
    await expect(qmp.queryMigrate()).resolves.toEqual({
      status: 'active',
      expectedDowntimeMs: 40,
      setupTimeMs: 3,
      totalTimeMs: 120,
      cpuThrottlePercentage: 20,
      ram: {
        transferred: 1000,
        remaining: 2000,
        total: 268435456,
        duplicate: 5,
        skipped: 0,
        normal: 7,
        normalBytes: 28672,
        dirtyPagesRate: 12,
        mbps: 812.5,
        dirtySyncCount: 3,
        postcopyRequests: 0,
        pageSize: 4096,
        multifdBytes: 0,
        pagesPerSecond: 9000,
        precopyBytes: 1000,
        downtimeBytes: 0,
        postcopyBytes: 0,
      },
    });

    reply = { status: 'failed', 'error-desc': 'Unable to write to socket: Broken pipe' };
    await expect(qmp.queryMigrate()).resolves.toEqual({
      status: 'failed',
      errorDesc: 'Unable to write to socket: Broken pipe',
    });

    reply = { 'socket-address': [{ port: '33143', ipv4: true, host: '127.0.0.1', type: 'inet' }] };
    await expect(qmp.queryMigrate()).resolves.toEqual({
      status: 'none',
      socketAddress: [{ type: 'inet', host: '127.0.0.1', port: '33143' }],
    });

    reply = {};
    await expect(qmp.queryMigrate()).resolves.toEqual({ status: 'none' });
  });

  it('rejects a reply of the wrong shape with QmpProtocolError and keeps the connection', async () => {
    const { qmp, monitor } = await setup({
      'query-status': () => ({ running: 'yes' }),
      'query-kvm': () => ({ enabled: false, present: true }),
    });
    const err = await qmp.queryStatus().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect((err as QmpProtocolError).message).toMatch(/query-status/);
    expect(monitor.closed).toBe(false);
    await expect(qmp.queryKvm()).resolves.toEqual({ enabled: false, present: true });
  });

  it('queryName returns the name, or undefined when the VM has none', async () => {
    let reply: unknown = { name: 'vm-1' };
    const { qmp } = await setup({ 'query-name': () => reply });
    await expect(qmp.queryName()).resolves.toBe('vm-1');
    reply = {};
    await expect(qmp.queryName()).resolves.toBeUndefined();
  });
});

describe('QmpCommands arguments', () => {
  it('migrateSetParameters sends QEMU names and leaves out unset members', async () => {
    const { server, qmp } = await setup({ 'migrate-set-parameters': () => ({}) });
    await qmp.migrateSetParameters({
      downtimeLimitMs: 300,
      maxBandwidth: 1_000_000_000,
      cpuThrottleInitial: 30,
      cpuThrottleIncrement: 10,
      multifdChannels: undefined,
    });
    expect(argsOf(server, 'migrate-set-parameters')).toEqual({
      'downtime-limit': 300,
      'max-bandwidth': 1_000_000_000,
      'cpu-throttle-initial': 30,
      'cpu-throttle-increment': 10,
    });
  });

  it('migrateSetCapabilities sends a capability list', async () => {
    const { server, qmp } = await setup({ 'migrate-set-capabilities': () => ({}) });
    await qmp.migrateSetCapabilities({ events: true, 'auto-converge': false });
    expect(argsOf(server, 'migrate-set-capabilities')).toEqual({
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'auto-converge', state: false },
      ],
    });
  });

  it('blockdevSnapshotSync, humanMonitorCommand, migrate and device commands use the schema names', async () => {
    const ok = () => ({});
    const { server, qmp } = await setup({
      'blockdev-snapshot-sync': ok,
      'human-monitor-command': () => 'VM status: running\r\n',
      migrate: ok,
      'migrate-incoming': ok,
      'blockdev-del': ok,
      netdev_add: ok,
      netdev_del: ok,
    });
    await qmp.blockdevSnapshotSync({
      nodeName: 'disk-root',
      snapshotFile: '/pool/root.snap1.qcow2',
      snapshotNodeName: 'snap-root-1',
      format: 'qcow2',
    });
    expect(argsOf(server, 'blockdev-snapshot-sync')).toEqual({
      'node-name': 'disk-root',
      'snapshot-file': '/pool/root.snap1.qcow2',
      'snapshot-node-name': 'snap-root-1',
      format: 'qcow2',
    });
    await expect(qmp.humanMonitorCommand('info status')).resolves.toBe('VM status: running\r\n');
    expect(argsOf(server, 'human-monitor-command')).toEqual({ 'command-line': 'info status' });
    await qmp.migrate('tcp:127.0.0.1:4444');
    expect(argsOf(server, 'migrate')).toEqual({ uri: 'tcp:127.0.0.1:4444' });
    await qmp.migrateIncoming('tcp:127.0.0.1:0');
    expect(argsOf(server, 'migrate-incoming')).toEqual({ uri: 'tcp:127.0.0.1:0' });
    await qmp.blockdevDel('disk-root');
    expect(argsOf(server, 'blockdev-del')).toEqual({ 'node-name': 'disk-root' });
    await qmp.netdevAdd({ type: 'tap', id: 'net-eth0', ifname: 'tap0', script: 'no' });
    expect(argsOf(server, 'netdev_add')).toEqual({
      type: 'tap',
      id: 'net-eth0',
      ifname: 'tap0',
      script: 'no',
    });
    await qmp.netdevDel('net-eth0');
    expect(argsOf(server, 'netdev_del')).toEqual({ id: 'net-eth0' });
  });

  it('passes QMP errors through as QmpCommandError', async () => {
    const { qmp } = await setup();
    const err = await qmp.blockdevDel('missing').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toMatchObject({ errorClass: 'CommandNotFound', command: 'blockdev-del' });
  });
});

describe('QmpCommands.deviceDel', () => {
  it('resolves only when DEVICE_DELETED for that id arrives', async () => {
    let unplug: ((device: string) => Promise<void>) | undefined;
    const { qmp } = await setup({
      device_del: (_args, ctx) => {
        unplug = (device) =>
          ctx.connection.sendEvent('DEVICE_DELETED', { device, path: `/machine/peripheral/${device}` });
        return {};
      },
    });
    let done = false;
    const deleting = qmp.deviceDel('disk1', { timeoutMs: 5_000 }).then(() => {
      done = true;
    });
    await sleep(50);
    expect(unplug).toBeDefined();
    expect(done).toBe(false);
    await unplug?.('disk0');
    await sleep(50);
    expect(done).toBe(false);
    await unplug?.('disk1');
    await deleting;
    expect(done).toBe(true);
  });

  it('resolves when QEMU sends DEVICE_DELETED before the reply', async () => {
    const { qmp } = await setup({
      device_del: async (args, ctx) => {
        await ctx.connection.sendEvent('DEVICE_DELETED', {
          device: String(args?.id),
          path: '/machine/peripheral/x',
        });
        return {};
      },
    });
    await expect(qmp.deviceDel('port0', { timeoutMs: 2_000 })).resolves.toBeUndefined();
  });

  it('times out when the device never goes away', async () => {
    const { qmp } = await setup({ device_del: () => ({}) });
    const err = await qmp.deviceDel('nic0', { timeoutMs: 80 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err).toMatchObject({ event: 'DEVICE_DELETED', command: 'device_del', timeoutMs: 80 });
  });

  it('rejects with QmpCommandError when QEMU refuses, leaving no wait behind', async () => {
    const { qmp } = await setup({
      device_del: (args) => {
        throw new FakeQmpError('DeviceNotFound', `Device '${String(args?.id)}' not found`);
      },
    });
    await expect(qmp.deviceDel('nope', { timeoutMs: 50 })).rejects.toMatchObject({
      errorClass: 'DeviceNotFound',
      command: 'device_del',
    });
    // Had the event waits not been cancelled they would reject now, unhandled, and fail the run.
    await sleep(100);
  });

  it('rejects with DEVICE_ERROR when the guest refuses the unplug', async () => {
    const { qmp } = await setup({
      device_del: async (args, ctx) => {
        await ctx.connection.sendEvent('DEVICE_UNPLUG_GUEST_ERROR', {
          device: String(args?.id),
          path: '/machine/peripheral/nic0',
        });
        return {};
      },
    });
    await expect(qmp.deviceDel('nic0', { timeoutMs: 2_000 })).rejects.toMatchObject({ code: 'DEVICE_ERROR' });
  });
});

describe('QmpCommands.quit', () => {
  it('treats the disconnect that follows the reply as success', async () => {
    const { qmp, monitor } = await setup();
    await expect(qmp.quit()).resolves.toBeUndefined();
    expect(monitor.closed).toBe(true);
    expect((await monitor.disconnected).reason).toBe('remote-closed');
  });

  it('treats a disconnect before any reply as success', async () => {
    const { qmp } = await setup({
      quit: (_args, ctx) => {
        ctx.connection.destroy();
        return NO_REPLY;
      },
    });
    await expect(qmp.quit()).resolves.toBeUndefined();
  });

  it('fails when QEMU acknowledges but keeps the connection open', async () => {
    const { qmp } = await setup({ quit: () => ({}) });
    await expect(qmp.quit({ timeoutMs: 100 })).rejects.toBeInstanceOf(QmpTimeoutError);
  });

  it('does not count a local close as success', async () => {
    const { qmp, monitor } = await setup({ quit: () => NO_REPLY });
    const quitting = qmp.quit().catch((e: unknown) => e);
    await sleep(20);
    await monitor.close();
    const err = await quitting;
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect((err as QmpDisconnectedError).reason).toBe('client-closed');
  });
});
