// Builds the default guest image (scripts/build-guest-image.sh) and boots it with raw QEMU under TCG,
// checking the guest contract of packages/vmm-core/guest/README.md: serial markers, seed handling,
// data disk, ticks, the ttyS1 shell, disk hot-plug and ACPI power-off. No Hangar code is used.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';

const execFileP = promisify(execFile);
const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const BUILD_SCRIPT = path.join(REPO_ROOT, 'scripts/build-guest-image.sh');
const TOOL_ENV = {
  ...process.env,
  PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin`,
  MTOOLS_SKIP_CHECK: '1',
};
// Every temp folder and QEMU process of this file carries this tag (+ the owning pid) so that a later
// run can sweep what a killed run left behind, and nothing else.
const TAG = 'hangar-test-guestimg';

interface ImageManifest {
  name: string;
  version: string;
  kernelVersion: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  baseDisk: string;
  bootDisk: string;
  marker: string;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------------
// Cleanup bookkeeping: everything a test starts is registered here and released in afterEach.
const procs: ChildProcess[] = [];
const dirs: string[] = [];
const sockets: net.Socket[] = [];

async function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await Promise.race([exited, sleep(5_000)]);
}

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(procs.splice(0).map(killAndWait));
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

/** Removes leftovers of earlier, killed runs of this file: orphaned QEMUs and folders of dead pids. */
function sweepLeftovers(): void {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      const nameArg = cmdline[cmdline.indexOf('-name') + 1] ?? '';
      if (!cmdline[0]?.includes('qemu-system') || !nameArg.startsWith(`${TAG}-`)) continue;
      const ppid = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${entry}/status`, 'utf8'))?.[1]);
      if (ppid === 1) process.kill(Number(entry), 'SIGKILL'); // its test process is gone
    } catch {
      // process vanished meanwhile or is not ours to read
    }
  }
  const tmp = os.tmpdir();
  for (const entry of readdirSync(tmp)) {
    const m = new RegExp(`^${TAG}-(\\d+)-`).exec(entry);
    if (!m) continue;
    if (existsSync(`/proc/${m[1]}`)) continue; // owner still alive (maybe a parallel run)
    rmSync(path.join(tmp, entry), { recursive: true, force: true });
  }
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `${TAG}-${process.pid}-`));
  dirs.push(dir);
  return dir;
}

// ---------------------------------------------------------------------------------------------------
// Image, seed and QEMU helpers.
async function buildImage(): Promise<{ dir: string; stdout: string; ms: number }> {
  const started = Date.now();
  const { stdout } = await execFileP('bash', [BUILD_SCRIPT], {
    cwd: REPO_ROOT,
    env: process.env,
    maxBuffer: 16 * 1024 * 1024,
    timeout: 600_000,
  });
  const lines = stdout.trim().split('\n');
  return { dir: lines[lines.length - 1] ?? '', stdout, ms: Date.now() - started };
}

async function makeSeed(dir: string, metaData: string, userData: string): Promise<string> {
  const seed = path.join(dir, 'seed.img');
  await writeFile(path.join(dir, 'meta-data'), metaData);
  await writeFile(path.join(dir, 'user-data'), userData);
  await writeFile(path.join(dir, 'network-config'), 'version: 2\nethernets: {}\n');
  await writeFile(seed, '');
  await truncate(seed, 1024 * 1024);
  await execFileP('mkfs.vfat', ['-n', 'CIDATA', seed], { env: TOOL_ENV });
  await execFileP(
    'mcopy',
    ['-i', seed, ...['meta-data', 'user-data', 'network-config'].map((f) => path.join(dir, f)), '::/'],
    { env: TOOL_ENV },
  );
  return seed;
}

async function overlay(dir: string, name: string, backing: string): Promise<string> {
  const file = path.join(dir, name);
  await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', file], {
    env: TOOL_ENV,
  });
  return file;
}

interface Guest {
  child: ChildProcess;
  dir: string;
  serialLog: string;
  startedAt: number;
  stderr: () => string;
  exited: Promise<number | null>;
}

function startQemu(dir: string, bootArgs: string[], drives: string[][]): Guest {
  const serialLog = path.join(dir, 'serial.log');
  const args = [
    '-name',
    `${TAG}-${process.pid}`,
    '-accel',
    'tcg',
    '-M',
    'pc',
    '-cpu',
    'qemu64',
    '-m',
    '256',
    '-nodefaults',
    '-display',
    'none',
    ...bootArgs,
    '-chardev',
    `socket,id=s0,path=${path.join(dir, 's0.sock')},server=on,wait=off,logfile=${serialLog}`,
    '-serial',
    'chardev:s0',
    '-chardev',
    `socket,id=s1,path=${path.join(dir, 'shell.sock')},server=on,wait=off`,
    '-serial',
    'chardev:s1',
    ...drives.flat(),
    '-netdev',
    'user,id=n0,restrict=on',
    '-device',
    'virtio-net-pci,netdev=n0',
    '-qmp',
    `unix:${path.join(dir, 'qmp.sock')},server=on,wait=off`,
  ];
  const startedAt = Date.now();
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  procs.push(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, dir, serialLog, startedAt, stderr: () => stderr, exited };
}

const virtioDrive = (file: string, format: string, extra = '') => [
  '-drive',
  `file=${file},if=virtio,format=${format},cache=none${extra}`,
];

async function serialText(guest: Guest): Promise<string> {
  try {
    return (await readFile(guest.serialLog, 'utf8')).replace(/\r/g, '');
  } catch {
    return '';
  }
}

/** Polls the serial log until `re` matches; fails early if QEMU exits. */
async function waitForSerial(guest: Guest, re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await serialText(guest);
    const m = re.exec(text);
    if (m) return m;
    if (guest.child.exitCode !== null || guest.child.signalCode !== null) {
      throw new Error(`QEMU exited while waiting for ${re}: ${guest.stderr()}\nserial:\n${text}`);
    }
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${re}; serial:\n${text}`);
    await sleep(50);
  }
}

async function connectUnix(file: string, timeoutMs = 5_000): Promise<net.Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const sock = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(file);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
      sockets.push(sock);
      return sock;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(50);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// A few lines of QMP (the real client lives in src/qmp; this test must not depend on it).
type QmpMessage = { event?: string; data?: Record<string, unknown>; return?: unknown; error?: unknown };

class MiniQmp {
  private buf = '';
  private readonly messages: QmpMessage[] = [];
  private waiters: (() => void)[] = [];
  readonly events: QmpMessage[] = [];

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.buf += chunk;
      for (let i = this.buf.indexOf('\n'); i >= 0; i = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as QmpMessage;
        if (msg.event) this.events.push(msg);
        else this.messages.push(msg);
      }
      for (const w of this.waiters.splice(0)) w();
    });
    sock.on('close', () => {
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static async connect(file: string): Promise<MiniQmp> {
    const qmp = new MiniQmp(await connectUnix(file));
    await qmp.next(); // greeting
    await qmp.execute('qmp_capabilities');
    return qmp;
  }

  private async until<T>(pick: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = pick();
      if (v !== undefined) return v;
      if (this.sock.destroyed || Date.now() > deadline) throw new Error(`QMP: no ${what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  private next(timeoutMs = 5_000): Promise<QmpMessage> {
    return this.until(() => this.messages.shift(), timeoutMs, 'reply');
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    this.sock.write(
      `${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`,
    );
    const reply = await this.next(10_000);
    if (reply.error) throw new Error(`QMP ${command}: ${JSON.stringify(reply.error)}`);
    return reply.return;
  }

  waitEvent(name: string, match: (data: Record<string, unknown>) => boolean, timeoutMs: number) {
    return this.until(
      () => this.events.find((e) => e.event === name && match(e.data ?? {})),
      timeoutMs,
      `${name} event`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// The ttyS1 shell: raw tty, no echo, no prompt; we frame each command with an end marker.
class GuestShell {
  private out = '';
  private seq = 0;
  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.out += d;
    });
  }

  static async connect(file: string): Promise<GuestShell> {
    return new GuestShell(await connectUnix(file));
  }

  async run(command: string, timeoutMs = 10_000): Promise<{ output: string; status: number }> {
    const marker = `__HANGAR_END_${++this.seq}_${randomBytes(3).toString('hex')}__`;
    this.sock.write(`${command}; echo "${marker} $?"\n`);
    const re = new RegExp(`([\\s\\S]*?)${marker} (\\d+)\\n`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.out);
      if (m) {
        this.out = this.out.slice((m.index ?? 0) + m[0].length);
        return { output: m[1] ?? '', status: Number(m[2]) };
      }
      if (Date.now() > deadline)
        throw new Error(`shell: no answer to ${command}; got ${JSON.stringify(this.out)}`);
      await sleep(25);
    }
  }
}

async function powerdownAndWaitExit(
  guest: Guest,
  qmp: MiniQmp,
): Promise<{ ms: number; code: number | null }> {
  const t0 = Date.now();
  await qmp.execute('system_powerdown');
  const code = await Promise.race([guest.exited, sleep(10_000).then(() => 'timeout' as const)]);
  if (code === 'timeout') throw new Error(`QEMU still running 10 s after system_powerdown`);
  return { ms: Date.now() - t0, code };
}

function ticks(text: string): number[] {
  return [...text.matchAll(/^HANGAR-TICK (\d+)$/gm)].map((m) => Number(m[1]));
}

// ---------------------------------------------------------------------------------------------------
describe('hangar-tiny guest image', () => {
  let imageDir = '';
  let manifest: ImageManifest;

  beforeAll(async () => {
    sweepLeftovers();
    imageDir = (await buildImage()).dir;
    manifest = JSON.parse(await readFile(path.join(imageDir, 'image.json'), 'utf8')) as ImageManifest;
  }, 600_000);

  it('build script is idempotent: a second run is a no-op that prints the same folder', async () => {
    const stamp = await readFile(path.join(imageDir, '.stamp'), 'utf8');
    const again = await buildImage();
    expect(again.dir).toBe(imageDir);
    expect(again.ms).toBeLessThan(5_000);
    expect(await readFile(path.join(imageDir, '.stamp'), 'utf8')).toBe(stamp);
    expect(manifest).toMatchObject({
      name: 'hangar-tiny',
      version: stamp.trim(),
      kernel: 'vmlinuz',
      initrd: 'initrd.img',
      baseDisk: 'base.qcow2',
      bootDisk: 'boot.qcow2',
      marker: 'HANGAR-READY',
    });
    expect(manifest.kernelVersion).toMatch(/^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
    expect(manifest.cmdline).toContain('console=ttyS0');
    expect(manifest.cmdline).toContain('panic=-1');
    for (const f of [manifest.kernel, manifest.initrd, manifest.baseDisk, manifest.bootDisk]) {
      expect(existsSync(path.join(imageDir, f))).toBe(true);
    }
  });

  it('direct kernel boot: seed, data disk, user-data, ticks, ttyS1 shell, hot-plug, ACPI power-off', async () => {
    const dir = await tempDir();
    const id = randomBytes(4).toString('hex');
    const hostname = `vm-${id}`;
    const seed = await makeSeed(
      dir,
      `instance-id: "iid-${id}"\nlocal-hostname: "${hostname}"\n`,
      '#!/bin/sh\necho "user-data ran on $(hostname) as $(id -u)"\nip link show eth0 >/dev/null && echo "eth0 present"\nexit 0\n',
    );
    const data = await overlay(dir, 'data.qcow2', path.join(imageDir, manifest.baseDisk));
    const guest = startQemu(
      dir,
      [
        '-kernel',
        path.join(imageDir, manifest.kernel),
        '-initrd',
        path.join(imageDir, manifest.initrd),
        '-append',
        manifest.cmdline,
      ],
      [virtioDrive(data, 'qcow2'), virtioDrive(seed, 'raw', ',readonly=on')],
    );

    await waitForSerial(guest, new RegExp(`^${manifest.marker} `, 'm'), 30_000);
    const bootMs = Date.now() - guest.startedAt;
    console.log(`direct kernel boot: ${manifest.marker} after ${bootMs} ms`);
    await waitForSerial(guest, /^HANGAR-TICK 3$/m, 10_000);

    const text = await serialText(guest);
    expect(text).toMatch(/^HANGAR-DATA mounted=\/mnt\/data$/m);
    expect(text).toContain(`user-data ran on ${hostname} as 0\n`);
    expect(text).toMatch(/^eth0 present$/m);
    expect(text).toMatch(/^HANGAR-USERDATA exit=0$/m);
    expect(text).toMatch(new RegExp(`^HANGAR-READY hostname=${hostname} instance=iid-${id}$`, 'm'));
    // order: data, user-data, READY, ticks
    const pos = (s: string) => text.indexOf(s);
    expect(pos('HANGAR-DATA')).toBeLessThan(pos('HANGAR-USERDATA'));
    expect(pos('HANGAR-USERDATA')).toBeLessThan(pos('HANGAR-READY'));
    expect(pos('HANGAR-READY')).toBeLessThan(pos('HANGAR-TICK 1'));
    const seen = ticks(text);
    expect(seen.slice(0, 3)).toEqual([1, 2, 3]);
    expect(seen.every((n, i) => n === i + 1)).toBe(true);

    // ttyS1 shell
    const shell = await GuestShell.connect(path.join(dir, 'shell.sock'));
    expect(await shell.run('cat /mnt/data/hello')).toEqual({ output: 'hangar-base\n', status: 0 });
    expect((await shell.run('cat /mnt/data/boot-log')).output).toBe('boot 1\n');
    expect((await shell.run('hostname')).output).toBe(`${hostname}\n`);
    expect((await shell.run('false')).status).toBe(1);

    // virtio-blk hot-plug and unplug
    const qmp = await MiniQmp.connect(path.join(dir, 'qmp.sock'));
    const before = (await shell.run('ls /sys/block')).output.split(/\s+/).filter(Boolean);
    const hot = path.join(dir, 'hot.raw');
    await writeFile(hot, '');
    await truncate(hot, 8 * 1024 * 1024);
    await qmp.execute('blockdev-add', {
      'node-name': 'hot0',
      driver: 'raw',
      file: { driver: 'file', filename: hot },
    });
    const plugAt = Date.now();
    await qmp.execute('device_add', { driver: 'virtio-blk-pci', id: 'hotdisk0', drive: 'hot0' });
    let added: string[] = [];
    while (added.length === 0) {
      if (Date.now() - plugAt > 15_000) throw new Error('hot-plugged disk never appeared in /sys/block');
      await sleep(200);
      const now = (await shell.run('ls /sys/block')).output.split(/\s+/).filter(Boolean);
      added = now.filter((d) => !before.includes(d));
    }
    console.log(`hot-plugged disk ${added.join(',')} visible after ${Date.now() - plugAt} ms`);
    expect(added).toHaveLength(1);
    expect(added[0]).toMatch(/^vd[a-z]$/);
    expect((await shell.run(`cat /sys/block/${added[0]}/size`)).output).toBe('16384\n');
    const unplugAt = Date.now();
    await qmp.execute('device_del', { id: 'hotdisk0' });
    await qmp.waitEvent('DEVICE_DELETED', (d) => d.device === 'hotdisk0', 15_000);
    console.log(`DEVICE_DELETED after ${Date.now() - unplugAt} ms`);
    await qmp.execute('blockdev-del', { 'node-name': 'hot0' });
    expect((await shell.run(`test -e /sys/block/${added[0]}`)).status).toBe(1);

    // ACPI power button: the guest powers itself off and QEMU exits on its own.
    const off = await powerdownAndWaitExit(guest, qmp);
    console.log(`system_powerdown -> QEMU exit in ${off.ms} ms`);
    expect(off.code).toBe(0);
    expect(off.ms).toBeLessThan(5_000);
    const final = await serialText(guest);
    expect(final).toMatch(/^HANGAR-POWEROFF$/m);
    expect(qmp.events.map((e) => e.event)).toEqual(expect.arrayContaining(['POWERDOWN', 'SHUTDOWN']));
  }, 60_000);

  it('disk boot from an overlay over boot.qcow2 (SeaBIOS + syslinux, no -kernel)', async () => {
    const dir = await tempDir();
    const id = randomBytes(4).toString('hex');
    const hostname = `disk-${id}`;
    const seed = await makeSeed(
      dir,
      `instance-id: iid-${id}\nlocal-hostname: ${hostname}\n`,
      '#!/bin/sh\necho "disk boot user-data"\nexit 7\n',
    );
    const root = await overlay(dir, 'root.qcow2', path.join(imageDir, manifest.bootDisk));
    const guest = startQemu(dir, [], [virtioDrive(root, 'qcow2'), virtioDrive(seed, 'raw', ',readonly=on')]);

    await waitForSerial(guest, new RegExp(`^${manifest.marker} `, 'm'), 30_000);
    console.log(`disk boot: ${manifest.marker} after ${Date.now() - guest.startedAt} ms`);
    await waitForSerial(guest, /^HANGAR-TICK 2$/m, 10_000);
    const text = await serialText(guest);
    expect(text).toMatch(/^HANGAR-DATA none$/m);
    expect(text).toMatch(/^disk boot user-data$/m);
    expect(text).toMatch(/^HANGAR-USERDATA exit=7$/m);
    expect(text).toMatch(new RegExp(`^HANGAR-READY hostname=${hostname} instance=iid-${id}$`, 'm'));
    expect(ticks(text).slice(0, 2)).toEqual([1, 2]);

    const qmp = await MiniQmp.connect(path.join(dir, 'qmp.sock'));
    const off = await powerdownAndWaitExit(guest, qmp);
    console.log(`disk boot: system_powerdown -> QEMU exit in ${off.ms} ms`);
    expect(off.code).toBe(0);
    expect(off.ms).toBeLessThan(5_000);
  }, 60_000);
});
