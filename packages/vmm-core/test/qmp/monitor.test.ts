import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import {
  QMP_QUERY_TIMEOUT_MS,
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  type QmpEvent,
  QmpMonitor,
  QmpProtocolError,
  QmpTimeoutError,
} from '../../src/qmp/index.js';
import { FakeQmpServer, type FakeQmpServerOptions, NO_REPLY } from './fake-qmp-server.js';

const servers: FakeQmpServer[] = [];
const monitors: QmpMonitor[] = [];

afterEach(async () => {
  await Promise.all(monitors.splice(0).map((m) => m.close()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function startServer(options: FakeQmpServerOptions = {}): Promise<FakeQmpServer> {
  const server = await FakeQmpServer.start(options);
  servers.push(server);
  return server;
}

async function connect(server: FakeQmpServer, options: Parameters<typeof QmpMonitor.connect>[1] = {}) {
  const monitor = await QmpMonitor.connect(server.socketPath, { connectTimeoutMs: 2_000, ...options });
  monitors.push(monitor);
  return monitor;
}

describe('QmpMonitor.connect', () => {
  it('greets, negotiates capabilities first and reports the QEMU version', async () => {
    const server = await startServer();
    const monitor = await connect(server);
    expect(monitor.qemuVersion).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(monitor.socketPath).toBe(server.socketPath);
    expect(server.received().map((c) => c.command)).toEqual(['qmp_capabilities']);
    server.handlers['query-status'] = () => ({ status: 'running', running: true });
    await expect(monitor.execute('query-status')).resolves.toEqual({ status: 'running', running: true });
  });

  it('retries while the socket does not exist yet', async () => {
    const server = await startServer({ listen: false });
    const started = Date.now();
    const connecting = QmpMonitor.connect(server.socketPath, {
      connectTimeoutMs: 3_000,
      retryIntervalMs: 20,
    });
    await sleep(300);
    await server.listen();
    const monitor = await connecting;
    monitors.push(monitor);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(monitor.closed).toBe(false);
  });

  it('gives up after the connect timeout with a QmpConnectError naming the socket', async () => {
    const server = await startServer({ listen: false });
    const started = Date.now();
    const err = await QmpMonitor.connect(server.socketPath, {
      connectTimeoutMs: 200,
      retryIntervalMs: 20,
    }).catch((e: unknown) => e);
    const elapsed = Date.now() - started;
    expect(err).toBeInstanceOf(QmpConnectError);
    expect(err).toMatchObject({ code: 'QMP_DISCONNECTED', socketPath: server.socketPath, timeoutMs: 200 });
    expect((err as QmpConnectError).message).toContain(server.socketPath);
    expect((err as QmpConnectError).message).toContain('ENOENT');
    expect((err as QmpConnectError).attempts).toBeGreaterThan(2);
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(1_500);
  });

  it('times out when the server accepts but never greets (another client holds the monitor)', async () => {
    const server = await startServer({ greeting: null });
    const err = await QmpMonitor.connect(server.socketPath, { greetingTimeoutMs: 100 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect((err as QmpTimeoutError).message).toMatch(/greeting/);
  });

  it('works when every byte arrives in its own chunk', async () => {
    const server = await startServer({
      chunkSize: 1,
      handlers: {
        'query-name': async (_args, ctx) => {
          await ctx.connection.sendEvent('RESUME');
          return { name: 'vm-ü' };
        },
      },
    });
    const monitor = await connect(server);
    const events: string[] = [];
    monitor.onEvent('*', (e) => events.push(e.event));
    await expect(monitor.execute('query-name')).resolves.toEqual({ name: 'vm-ü' });
    expect(events).toEqual(['RESUME']);
  });
});

describe('QmpMonitor commands', () => {
  it('matches replies sent out of order to their commands', async () => {
    const server = await startServer({
      handlers: {
        'query-slow': async () => {
          await sleep(100);
          return 'slow';
        },
        'query-fast': () => 'fast',
      },
    });
    const monitor = await connect(server);
    const order: string[] = [];
    const slow = monitor.execute('query-slow').then((v) => order.push(String(v)));
    const fast = monitor.execute('query-fast').then((v) => order.push(String(v)));
    await Promise.all([slow, fast]);
    expect(order).toEqual(['fast', 'slow']);
  });

  it('delivers events sent between replies to subscribers, not to pending commands', async () => {
    const server = await startServer({
      handlers: {
        cont: async (_args, ctx) => {
          // QEMU sends RESUME before the reply to cont.
          await ctx.connection.sendEvent('RESUME');
          await ctx.connection.sendEvent('RTC_CHANGE', { offset: 3 });
          return {};
        },
      },
    });
    const monitor = await connect(server);
    const resumes: QmpEvent[] = [];
    const all: string[] = [];
    const offResume = monitor.onEvent('RESUME', (e) => resumes.push(e));
    monitor.onEvent('*', (e) => all.push(e.event));
    await expect(monitor.execute('cont')).resolves.toEqual({});
    expect(resumes).toHaveLength(1);
    expect(resumes[0]?.data).toEqual({});
    expect(all).toEqual(['RESUME', 'RTC_CHANGE']);

    offResume();
    await monitor.execute('cont');
    expect(resumes).toHaveLength(1);
    expect(all).toEqual(['RESUME', 'RTC_CHANGE', 'RESUME', 'RTC_CHANGE']);
  });

  it('turns a QMP error into QmpCommandError with class and desc', async () => {
    const server = await startServer();
    const monitor = await connect(server);
    const err = await monitor.execute('no-such-command').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toMatchObject({ errorClass: 'CommandNotFound', command: 'no-such-command' });
    expect((err as QmpCommandError).desc).toContain('no-such-command');
  });

  it('applies the per-command timeout, then stays usable and ignores the late reply', async () => {
    let release: (() => void) | undefined;
    const server = await startServer({
      handlers: {
        'query-migrate': (_args, ctx) => {
          release = () => void ctx.reply({ status: 'late' });
          return NO_REPLY;
        },
        'query-status': () => ({ status: 'running', running: true }),
      },
    });
    const monitor = await connect(server, { commandTimeoutsMs: { 'query-migrate': 80 } });
    const protocolErrors: QmpProtocolError[] = [];
    monitor.onProtocolError((e) => protocolErrors.push(e));
    const started = Date.now();
    const err = await monitor.execute('query-migrate').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err).toMatchObject({ command: 'query-migrate', timeoutMs: 80 });
    expect(Date.now() - started).toBeLessThan(1_000);

    release?.();
    await sleep(50);
    await expect(monitor.execute('query-status')).resolves.toEqual({ status: 'running', running: true });
    expect(protocolErrors).toEqual([]);
    expect(monitor.closed).toBe(false);
  });

  it('lets one call override the table timeout', async () => {
    const server = await startServer({ handlers: { 'query-never': () => NO_REPLY } });
    const monitor = await connect(server);
    await expect(monitor.execute('query-never', undefined, { timeoutMs: 30 })).rejects.toMatchObject({
      code: 'QMP_TIMEOUT',
      timeoutMs: 30,
    });
  });

  it('looks up timeouts: table, query-* rule, default, overrides', async () => {
    const server = await startServer();
    const monitor = await connect(server, { defaultTimeoutMs: 1_234, commandTimeoutsMs: { migrate: 99 } });
    expect(monitor.timeoutFor('blockdev-add')).toBe(30_000);
    expect(monitor.timeoutFor('human-monitor-command')).toBe(60_000);
    expect(monitor.timeoutFor('system_powerdown')).toBe(5_000);
    expect(monitor.timeoutFor('query-anything-new')).toBe(QMP_QUERY_TIMEOUT_MS);
    expect(monitor.timeoutFor('x-unknown')).toBe(1_234);
    expect(monitor.timeoutFor('migrate')).toBe(99);
  });
});

describe('QmpMonitor failures', () => {
  it('rejects a pending command promptly when QEMU disconnects mid-command', async () => {
    const server = await startServer({
      handlers: {
        'query-hang': (_args, ctx) => {
          setTimeout(() => ctx.connection.destroy(), 50);
          return NO_REPLY;
        },
      },
    });
    const monitor = await connect(server);
    const disconnects: QmpDisconnectedError[] = [];
    monitor.onDisconnect((r) => disconnects.push(r));
    const started = Date.now();
    const err = await monitor
      .execute('query-hang', undefined, { timeoutMs: 10_000 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(err).toMatchObject({ code: 'QMP_DISCONNECTED', reason: 'remote-closed', command: 'query-hang' });
    expect(Date.now() - started).toBeLessThan(1_000);
    expect((await monitor.disconnected).reason).toBe('remote-closed');
    expect(disconnects).toHaveLength(1);
    expect(monitor.closed).toBe(true);
    await expect(monitor.execute('query-status')).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('surfaces a garbage line as QmpProtocolError and rejects pending commands', async () => {
    const server = await startServer({
      handlers: {
        'query-status': async (_args, ctx) => {
          await ctx.connection.sendRaw('<html>502 Bad Gateway</html>\r\n');
          return NO_REPLY;
        },
      },
    });
    const monitor = await connect(server);
    const protocolErrors: QmpProtocolError[] = [];
    monitor.onProtocolError((e) => protocolErrors.push(e));
    const err = await monitor.execute('query-status').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect((err as QmpDisconnectedError).reason).toBe('protocol-error');
    expect((err as QmpDisconnectedError).cause).toBeInstanceOf(QmpProtocolError);
    expect(protocolErrors).toHaveLength(1);
    expect(protocolErrors[0]?.line).toContain('502 Bad Gateway');
    const reason = await monitor.disconnected;
    expect(reason.cause).toBe(protocolErrors[0]);
  });

  it('reports truncated JSON followed by a disconnect as QmpDisconnectedError', async () => {
    const server = await startServer({
      handlers: {
        'query-status': async (_args, ctx) => {
          await ctx.connection.sendRaw(`{"return": {"status": "runn`);
          await ctx.connection.end();
          return NO_REPLY;
        },
      },
    });
    const monitor = await connect(server);
    const err = await monitor.execute('query-status').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect((err as QmpDisconnectedError).reason).toBe('remote-closed');
    expect((err as QmpDisconnectedError).cause).toBeInstanceOf(QmpProtocolError);
  });

  it('calls onDisconnect registered after the disconnect, once', async () => {
    const server = await startServer();
    const monitor = await connect(server);
    (await server.connection()).destroy();
    await monitor.disconnected;
    const seen: string[] = [];
    monitor.onDisconnect((r) => seen.push(r.reason));
    await sleep(0);
    expect(seen).toEqual(['remote-closed']);
  });
});

describe('QmpMonitor event waits', () => {
  it('waitForEvent resolves with the first event passing the predicate', async () => {
    const server = await startServer();
    const monitor = await connect(server);
    const connection = await server.connection();
    const waiting = monitor.waitForEvent('DEVICE_DELETED', {
      predicate: (e) => e.data.device === 'disk1',
      timeoutMs: 2_000,
    });
    await connection.sendEvent('DEVICE_DELETED', { device: 'disk0', path: '/machine/peripheral/disk0' });
    await connection.sendEvent('STOP');
    await connection.sendEvent('DEVICE_DELETED', { device: 'disk1', path: '/machine/peripheral/disk1' });
    const event = await waiting;
    expect(event.data).toEqual({ device: 'disk1', path: '/machine/peripheral/disk1' });
    expect(event.timestamp.seconds).toBeGreaterThan(0);
  });

  it('waitForEvent times out with QmpTimeoutError naming the event', async () => {
    const server = await startServer();
    const monitor = await connect(server);
    const err = await monitor.waitForEvent('SHUTDOWN', { timeoutMs: 50 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err).toMatchObject({ event: 'SHUTDOWN', timeoutMs: 50, command: undefined });
  });

  it('waitForEvent rejects when the connection goes', async () => {
    const server = await startServer();
    const monitor = await connect(server);
    const waiting = monitor.waitForEvent('SHUTDOWN', { timeoutMs: 5_000 });
    (await server.connection()).destroy();
    await expect(waiting).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('expectEvent catches an event QEMU sends before the reply to the command', async () => {
    const server = await startServer({
      handlers: {
        cont: async (_args, ctx) => {
          await ctx.connection.sendEvent('RESUME');
          return {};
        },
      },
    });
    const monitor = await connect(server);
    const resumed = monitor.expectEvent('RESUME', { timeoutMs: 2_000 });
    await monitor.execute('cont');
    await expect(resumed.promise).resolves.toMatchObject({ event: 'RESUME' });
  });

  it('expectEvent can be cancelled when the command fails, without an unhandled rejection', async () => {
    const server = await startServer();
    const monitor = await connect(server);
    const expectation = monitor.expectEvent('RESUME', { timeoutMs: 60 });
    await expect(monitor.execute('x-fails')).rejects.toBeInstanceOf(QmpCommandError);
    expectation.cancel();
    await expect(expectation.promise).rejects.toMatchObject({ name: 'AbortError' });
    // An expectation that is simply dropped times out quietly; vitest fails the run on unhandled rejections.
    monitor.expectEvent('RESUME', { timeoutMs: 10 });
    await sleep(40);
  });
});
