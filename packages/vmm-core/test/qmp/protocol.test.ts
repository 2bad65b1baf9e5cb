import { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import {
  QmpCommandError,
  QmpDisconnectedError,
  type QmpEvent,
  QmpProtocol,
  QmpProtocolError,
  QmpTimeoutError,
} from '../../src/qmp/index.js';
import { DEFAULT_GREETING } from './fake-qmp-server.js';

interface SentCommand {
  execute: string;
  arguments?: Record<string, unknown>;
  id: number;
}

/**
 * The QEMU end of an in-memory stream: decides exactly how bytes are chunked, which a real socket
 * cannot guarantee.
 */
class MemoryPeer {
  readonly stream: Duplex;
  readonly commands: SentCommand[] = [];
  private written = '';
  private waiters: ((command: SentCommand) => void)[] = [];

  constructor() {
    this.stream = new Duplex({
      read() {},
      write: (chunk: Buffer, _encoding, callback) => {
        this.onWrite(chunk.toString('utf8'));
        callback();
      },
    });
  }

  send(data: string | Buffer): void {
    this.stream.push(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  }

  sendJson(message: unknown): void {
    this.send(`${JSON.stringify(message)}\r\n`);
  }

  end(): void {
    this.stream.push(null);
  }

  /** Resolves with the next command the client sends that has not been taken yet. */
  nextCommand(): Promise<SentCommand> {
    const taken = this.taken;
    const command = this.commands[taken];
    if (command !== undefined) {
      this.taken += 1;
      return Promise.resolve(command);
    }
    return new Promise((resolve) => {
      this.waiters.push((c) => {
        this.taken += 1;
        resolve(c);
      });
    });
  }

  private taken = 0;

  private onWrite(text: string): void {
    this.written += text;
    let newline = this.written.indexOf('\n');
    while (newline !== -1) {
      const command = JSON.parse(this.written.slice(0, newline)) as SentCommand;
      this.written = this.written.slice(newline + 1);
      this.commands.push(command);
      const waiter = this.waiters.shift();
      waiter?.(command);
      newline = this.written.indexOf('\n');
    }
  }
}

/** Opens a protocol over `peer`, answering the handshake like QEMU. */
async function openReady(peer: MemoryPeer): Promise<QmpProtocol> {
  const opening = QmpProtocol.open(peer.stream, { greetingTimeoutMs: 1_000, capabilitiesTimeoutMs: 1_000 });
  peer.sendJson(DEFAULT_GREETING);
  const caps = await peer.nextCommand();
  expect(caps.execute).toBe('qmp_capabilities');
  peer.sendJson({ return: {}, id: caps.id });
  return opening;
}

const opened: QmpProtocol[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((p) => p.close()));
});
async function open(peer: MemoryPeer): Promise<QmpProtocol> {
  const protocol = await openReady(peer);
  opened.push(protocol);
  return protocol;
}

describe('QmpProtocol handshake', () => {
  it('reads the greeting, negotiates capabilities and exposes the version', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    expect(peer.commands).toEqual([{ execute: 'qmp_capabilities', id: expect.any(Number) }]);
    expect(protocol.qemuVersion).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(protocol.greeting.capabilities).toEqual(['oob']);
    expect(protocol.greeting.version.package).toContain('Debian');
    expect(protocol.closed).toBe(false);
  });

  it('rejects a malformed greeting with QmpProtocolError and destroys the stream', async () => {
    const peer = new MemoryPeer();
    const opening = QmpProtocol.open(peer.stream, { greetingTimeoutMs: 1_000 });
    peer.sendJson({ QMP: { version: { qemu: { major: 'seven' } }, capabilities: [] } });
    const err = await opening.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect((err as QmpProtocolError).code).toBe('QMP_PROTOCOL');
    expect((err as QmpProtocolError).message).toMatch(/greeting/);
    expect(peer.stream.destroyed).toBe(true);
    expect(peer.commands).toEqual([]);
  });

  it('rejects a greeting that is not JSON with QmpProtocolError', async () => {
    const peer = new MemoryPeer();
    const opening = QmpProtocol.open(peer.stream, { greetingTimeoutMs: 1_000 });
    peer.send('SSH-2.0-OpenSSH_9.2\r\n');
    await expect(opening).rejects.toBeInstanceOf(QmpProtocolError);
  });

  it('times out when no greeting comes', async () => {
    const peer = new MemoryPeer();
    const err = await QmpProtocol.open(peer.stream, { greetingTimeoutMs: 50 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect((err as QmpTimeoutError).timeoutMs).toBe(50);
    expect(peer.stream.destroyed).toBe(true);
  });

  it('times out when qmp_capabilities gets no reply', async () => {
    const peer = new MemoryPeer();
    const opening = QmpProtocol.open(peer.stream, { greetingTimeoutMs: 1_000, capabilitiesTimeoutMs: 50 });
    peer.sendJson(DEFAULT_GREETING);
    const err = await opening.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect((err as QmpTimeoutError).command).toBe('qmp_capabilities');
  });

  it('reports a connection that ends before the greeting as disconnected', async () => {
    const peer = new MemoryPeer();
    const opening = QmpProtocol.open(peer.stream, { greetingTimeoutMs: 1_000 });
    peer.end();
    await expect(opening).rejects.toBeInstanceOf(QmpDisconnectedError);
  });
});

describe('QmpProtocol framing', () => {
  function lines(...messages: unknown[]): Buffer {
    return Buffer.from(messages.map((m) => `${JSON.stringify(m)}\r\n`).join(''), 'utf8');
  }

  function splits(bytes: Buffer): Buffer[][] {
    const all: Buffer[][] = [[bytes], [...bytes].map((b) => Buffer.from([b]))];
    for (let at = 1; at < bytes.length; at += 1) all.push([bytes.subarray(0, at), bytes.subarray(at)]);
    return all;
  }

  it('reads a greeting split anywhere, even inside a multi-byte character', async () => {
    const greeting = lines({
      QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'pkg-é€😀' }, capabilities: [] },
    });
    for (const chunks of splits(greeting)) {
      const peer = new MemoryPeer();
      const opening = QmpProtocol.open(peer.stream, {
        greetingTimeoutMs: 1_000,
        capabilitiesTimeoutMs: 1_000,
      });
      for (const chunk of chunks) peer.send(chunk);
      peer.sendJson({ return: {}, id: (await peer.nextCommand()).id });
      const protocol = await opening;
      opened.push(protocol);
      expect(protocol.greeting.version.package).toBe('pkg-é€😀');
    }
  });

  it('matches replies and events however the bytes are split into chunks', async () => {
    const conversation = (firstId: number, secondId: number): Buffer =>
      lines(
        { event: 'STOP', timestamp: { seconds: 1, microseconds: 2 } },
        { return: { name: 'vm-é€😀' }, id: secondId },
        { event: 'RTC_CHANGE', data: { offset: -1, note: '€' }, timestamp: { seconds: 3, microseconds: 4 } },
        { return: 'ok', id: firstId },
      );
    // Every protocol instance numbers its commands the same way, so one byte layout fits all.
    const variants = splits(conversation(2, 3));
    expect(variants.length).toBeGreaterThan(100);
    for (const chunks of variants) {
      const peer = new MemoryPeer();
      const protocol = await open(peer);
      const events: QmpEvent[] = [];
      protocol.on('event', (e) => events.push(e));
      const first = protocol.execute('query-status');
      const second = protocol.execute('query-name');
      expect([(await peer.nextCommand()).id, (await peer.nextCommand()).id]).toEqual([2, 3]);
      for (const chunk of chunks) peer.send(chunk);
      expect(await first).toBe('ok');
      expect(await second).toEqual({ name: 'vm-é€😀' });
      expect(events).toEqual([
        { event: 'STOP', data: {}, timestamp: { seconds: 1, microseconds: 2 } },
        { event: 'RTC_CHANGE', data: { offset: -1, note: '€' }, timestamp: { seconds: 3, microseconds: 4 } },
      ]);
    }
  });

  it('delivers an event that arrives in the same chunk as the capabilities reply via onEvent', async () => {
    const peer = new MemoryPeer();
    const events: QmpEvent[] = [];
    const opening = QmpProtocol.open(peer.stream, {
      greetingTimeoutMs: 1_000,
      onEvent: (e) => events.push(e),
    });
    peer.sendJson(DEFAULT_GREETING);
    const caps = await peer.nextCommand();
    peer.send(
      lines({ return: {}, id: caps.id }, { event: 'RESUME', timestamp: { seconds: 1, microseconds: 0 } }),
    );
    opened.push(await opening);
    expect(events.map((e) => e.event)).toEqual(['RESUME']);
  });

  it('ignores blank lines and accepts LF as well as CRLF', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const pending = protocol.execute('query-kvm');
    const command = await peer.nextCommand();
    peer.send(`\r\n\n   \n${JSON.stringify({ return: { enabled: false }, id: command.id })}\n`);
    await expect(pending).resolves.toEqual({ enabled: false });
  });
});

describe('QmpProtocol commands and events', () => {
  it('gives every command a unique id and matches replies arriving out of order', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const first = protocol.execute('query-status');
    const second = protocol.execute('query-name');
    const third = protocol.execute('query-kvm', { unused: 1 });
    const [c1, c2, c3] = [await peer.nextCommand(), await peer.nextCommand(), await peer.nextCommand()];
    expect(new Set([c1.id, c2.id, c3.id]).size).toBe(3);
    expect(c3.arguments).toEqual({ unused: 1 });
    peer.sendJson({ return: 'third', id: c3.id });
    peer.sendJson({ return: 'first', id: c1.id });
    peer.sendJson({ return: 'second', id: c2.id });
    expect(await Promise.all([first, second, third])).toEqual(['first', 'second', 'third']);
  });

  it('emits events that arrive between replies and never takes them for replies', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const events: QmpEvent[] = [];
    protocol.on('event', (e) => events.push(e));
    const pending = protocol.execute('cont');
    const command = await peer.nextCommand();
    // An event carrying an `id`-looking field and a `return` key inside data must stay an event.
    peer.sendJson({ event: 'RESUME', timestamp: { seconds: 10, microseconds: 5 } });
    peer.sendJson({
      event: 'ODD',
      data: { id: command.id, return: 'no' },
      timestamp: { seconds: 10, microseconds: 6 },
    });
    await sleep(10);
    expect(events.map((e) => e.event)).toEqual(['RESUME', 'ODD']);
    let settled = false;
    void pending.then(() => {
      settled = true;
    });
    await sleep(10);
    expect(settled).toBe(false);
    peer.sendJson({ return: {}, id: command.id });
    await expect(pending).resolves.toEqual({});
    expect(events[0]).toEqual({ event: 'RESUME', data: {}, timestamp: { seconds: 10, microseconds: 5 } });
  });

  it('turns a QMP error reply into QmpCommandError and stays usable', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const failing = protocol.execute('device_del', { id: 'nope' });
    const c1 = await peer.nextCommand();
    peer.sendJson({ error: { class: 'DeviceNotFound', desc: "Device 'nope' not found" }, id: c1.id });
    const err = await failing.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toMatchObject({
      code: 'QMP_ERROR',
      errorClass: 'DeviceNotFound',
      desc: "Device 'nope' not found",
      command: 'device_del',
    });
    const next = protocol.execute('query-status');
    peer.sendJson({ return: { running: true }, id: (await peer.nextCommand()).id });
    await expect(next).resolves.toEqual({ running: true });
  });

  it('rejects with QmpTimeoutError, ignores the late reply and stays usable', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const errors: unknown[] = [];
    protocol.on('error', (e) => errors.push(e));
    const slow = protocol.execute('query-migrate', undefined, { timeoutMs: 30 });
    const c1 = await peer.nextCommand();
    const err = await slow.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err).toMatchObject({ code: 'QMP_TIMEOUT', command: 'query-migrate', timeoutMs: 30 });

    const next = protocol.execute('query-status');
    const c2 = await peer.nextCommand();
    peer.sendJson({ return: 'late', id: c1.id });
    peer.sendJson({ return: 'fresh', id: c2.id });
    await expect(next).resolves.toBe('fresh');
    expect(errors).toEqual([]);
    expect(protocol.closed).toBe(false);
  });

  it('reports a reply for an unknown id as a non-fatal protocol error', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const errors: QmpProtocolError[] = [];
    protocol.on('error', (e) => errors.push(e));
    const pending = protocol.execute('query-status');
    const command = await peer.nextCommand();
    peer.sendJson({ return: 'stray', id: 9999 });
    peer.sendJson({ return: 'mine', id: command.id });
    await expect(pending).resolves.toBe('mine');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(QmpProtocolError);
    expect(errors[0]?.message).toMatch(/unknown id 9999/);
    expect(protocol.closed).toBe(false);
  });
});

describe('QmpProtocol failures', () => {
  it('closes on a garbage line: emits QmpProtocolError, rejects pending commands as disconnected', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const errors: QmpProtocolError[] = [];
    const closes: QmpDisconnectedError[] = [];
    protocol.on('error', (e) => errors.push(e));
    protocol.on('close', (r) => closes.push(r));
    const a = protocol.execute('query-status');
    const b = protocol.execute('query-name');
    await peer.nextCommand();
    await peer.nextCommand();
    peer.send('this is {not json\r\n');

    for (const pending of [a, b]) {
      const err = await pending.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QmpDisconnectedError);
      expect((err as QmpDisconnectedError).reason).toBe('protocol-error');
      expect((err as QmpDisconnectedError).cause).toBeInstanceOf(QmpProtocolError);
    }
    expect(errors).toHaveLength(1);
    expect(errors[0]?.line).toBe('this is {not json');
    expect(closes).toHaveLength(1);
    expect(protocol.closed).toBe(true);
    expect(peer.stream.destroyed).toBe(true);
    await expect(protocol.execute('query-status')).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('treats JSON that is neither reply nor event as fatal', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const pending = protocol.execute('query-status');
    await peer.nextCommand();
    peer.send('[1,2,3]\r\n');
    const err = await pending.catch((e: unknown) => e);
    expect((err as QmpDisconnectedError).cause).toBeInstanceOf(QmpProtocolError);
  });

  it('does not crash when nobody listens for protocol errors', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const pending = protocol.execute('query-status');
    await peer.nextCommand();
    peer.send('garbage\n');
    await expect(pending).rejects.toBeInstanceOf(QmpDisconnectedError);
    expect(protocol.closed).toBe(true);
  });

  it('reports truncated JSON followed by end of stream as a disconnect, not as a reply', async () => {
    const peer = new MemoryPeer();
    const protocol = await open(peer);
    const errors: unknown[] = [];
    protocol.on('error', (e) => errors.push(e));
    const pending = protocol.execute('query-status');
    const command = await peer.nextCommand();
    peer.send(`{"return": {"status": "running"}, "id": ${command.id}`);
    await sleep(10);
    expect(protocol.closed).toBe(false);
    peer.end();
    const err = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(err).toMatchObject({ reason: 'remote-closed', command: 'query-status', code: 'QMP_DISCONNECTED' });
    expect((err as QmpDisconnectedError).cause).toBeInstanceOf(QmpProtocolError);
    expect(errors).toEqual([]);
  });

  it('rejects pending commands with client-closed on close()', async () => {
    const peer = new MemoryPeer();
    const protocol = await openReady(peer);
    const pending = protocol.execute('query-status');
    await protocol.close();
    await expect(pending).rejects.toMatchObject({ reason: 'client-closed', code: 'QMP_DISCONNECTED' });
    expect(protocol.closeReason?.reason).toBe('client-closed');
  });
});
