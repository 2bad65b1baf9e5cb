/**
 * bench/vmm: vmm-core against bare QEMU, side by side in one run on this machine.
 *
 * 1. Boot: N boots of the test guest by a hand-written `qemu-system-x86_64` command (spawned as a
 *    child, serial on a pipe) and N boots through `QemuDriver.create` + `start`, interleaved
 *    (A, B, A, B, ...) so machine noise hits both kinds alike. Each is timed to the `HANGAR-READY`
 *    marker on ttyS0.
 * 2. Live migration: M hops of an idle 256 MiB guest between two QemuDrivers (two runtime folders,
 *    one shared pool) on loopback, interleaved with M hops of a second guest driven by a bare QMP
 *    script (raw JSON over the unix socket) between two plain QEMU processes.
 *
 * Prints a markdown table (or JSON with --json) with medians, p90 and ratios, and PASS/FAIL
 * against the targets of issue 2. Every QEMU it starts is killed by pid and its temp folder removed
 * at the end, on failure and on SIGINT/SIGTERM.
 *
 * Run: `npm run bench:vmm -- [--n 7] [--migrations 7] [--warmup 1] [--json]` (see bench/README.md).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs, promisify } from 'node:util';
import {
  buildNoCloudSeed,
  type HypervisorCapabilities,
  type MigrationResult,
  QemuDriver,
  qemuImg,
  type StoragePool,
  type VmSpecInput,
} from '@hangar/vmm-core';

const execFileAsync = promisify(execFile);

const MARKER = 'HANGAR-READY';
const TICK_RE = /HANGAR-TICK (\d+)/g;
const BOOT_TIMEOUT_MS = 120_000;
const MIGRATION_TIMEOUT_MS = 120_000;
/** vmm-core's defaults for `migrate` (qemu-driver.ts), mirrored by the bare QMP script. */
const DOWNTIME_LIMIT_MS = 300;
const MIGRATE_POLL_MS = 100;
const INCOMING_POLL_MS = 25;
/** Boot target: vmm-core may add at most max(5 %, 50 ms) to boot-to-marker. */
const BOOT_BUDGET_FRACTION = 0.05;
const BOOT_BUDGET_MIN_MS = 50;
/** Migration target: idle 256 MiB guest, downtime p50 ≤ 50 ms. */
const DOWNTIME_TARGET_MS = 50;

// ---- options -----------------------------------------------------------------------------------

interface Options {
  n: number;
  migrations: number;
  warmup: number;
  pollMs: number;
  json: boolean;
  /** Also write the JSON report to this file (the markdown still goes to stdout). */
  jsonOut: string | undefined;
  boot: boolean;
  migration: boolean;
  qemu: string;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      n: { type: 'string', default: '7' },
      migrations: { type: 'string', default: '7' },
      warmup: { type: 'string', default: '1' },
      'poll-ms': { type: 'string', default: '10' },
      json: { type: 'boolean', default: false },
      'json-out': { type: 'string' },
      'skip-boot': { type: 'boolean', default: false },
      'skip-migration': { type: 'boolean', default: false },
      qemu: { type: 'string', default: 'qemu-system-x86_64' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(
      [
        'usage: node bench/vmm/dist/vmm.bench.js [options]',
        '  --n N             boots of each kind (default 7)',
        '  --migrations M    migration hops of each kind (default 7)',
        '  --warmup W        untimed boots of each kind first (default 1)',
        '  --poll-ms MS      how often vmm-core consoleLog() is polled for the marker (default 10)',
        '  --skip-boot       only the migration part',
        '  --skip-migration  only the boot part',
        '  --qemu PATH       QEMU binary for both kinds (default qemu-system-x86_64)',
        '  --json            print JSON instead of markdown',
        '  --json-out FILE   also write the JSON report to FILE',
        '',
      ].join('\n'),
    );
    process.exit(0);
  }
  const int = (name: string, v: string, min: number): number => {
    const x = Number(v);
    if (!Number.isInteger(x) || x < min) throw new Error(`--${name} must be an integer ≥ ${min}, got "${v}"`);
    return x;
  };
  return {
    n: int('n', values.n, 1),
    migrations: int('migrations', values.migrations, 1),
    warmup: int('warmup', values.warmup, 0),
    pollMs: int('poll-ms', values['poll-ms'], 1),
    json: values.json,
    jsonOut: values['json-out'],
    boot: !values['skip-boot'],
    migration: !values['skip-migration'],
    qemu: values.qemu,
  };
}

// ---- statistics --------------------------------------------------------------------------------

interface Stats {
  n: number;
  median: number;
  p90: number;
  min: number;
  max: number;
  mean: number;
}

/** Median (mean of the two middle values for even n) and p90 by nearest rank (with n=7: the max). */
function stats(xs: number[]): Stats {
  if (xs.length === 0)
    return { n: 0, median: Number.NaN, p90: Number.NaN, min: Number.NaN, max: Number.NaN, mean: Number.NaN };
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  const p90 = s[Math.min(s.length - 1, Math.ceil(0.9 * s.length) - 1)]!;
  return {
    n: s.length,
    median,
    p90,
    min: s[0]!,
    max: s[s.length - 1]!,
    mean: s.reduce((a, b) => a + b, 0) / s.length,
  };
}

const r1 = (x: number): number => Math.round(x * 10) / 10;
const fmt = (x: number): string =>
  Number.isFinite(x) ? (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1)) : '–';
const ratio = (a: number, b: number): string =>
  b > 0 && Number.isFinite(a) ? `${(a / b).toFixed(3)}×` : '–';

// ---- small process helpers ---------------------------------------------------------------------

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

async function run(file: string, args: string[], env?: Record<string, string>): Promise<string> {
  const { stdout } = await execFileAsync(file, args, {
    env: env ? { ...process.env, ...env } : process.env,
    timeout: 60_000,
  });
  return stdout;
}

/** A QEMU the bench spawned itself (not daemonized): killed by its pid at the end. */
interface BareQemu {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
  stderr: () => string;
}

const bareChildren = new Set<BareQemu>();

function spawnBare(binary: string, args: string[], onStdout?: (chunk: string) => void): BareQemu {
  const child = spawn(binary, args, { stdio: ['ignore', onStdout ? 'pipe' : 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    if (stderr.length < 16_384) stderr += d;
  });
  if (onStdout) {
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', onStdout);
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  if (child.pid === undefined) throw new Error(`cannot spawn ${binary}`);
  const q: BareQemu = { child, pid: child.pid, exited, stderr: () => stderr };
  bareChildren.add(q);
  void exited.then(() => bareChildren.delete(q));
  return q;
}

async function killBare(q: BareQemu): Promise<void> {
  if (q.child.exitCode === null && q.child.signalCode === null) q.child.kill('SIGKILL');
  await q.exited;
}

/** Kills (by pid) every QEMU whose argv names `root`: only the bench's own guests do. */
async function killQemuUnder(root: string): Promise<number[]> {
  const killed: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    let argv: string[];
    try {
      argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    } catch {
      continue;
    }
    if (!(argv[0] ?? '').includes('qemu-system') || !argv.some((a) => a.includes(root))) continue;
    try {
      process.kill(pid, 'SIGKILL');
      killed.push(pid);
    } catch {
      // already gone
    }
  }
  return killed;
}

async function pollUntil<T>(
  fn: () => Promise<T | undefined>,
  intervalMs: number,
  timeoutMs: number,
  what: string,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** utime+stime of a process in ms (from /proc; USER_HZ is 100 on Linux x86). */
function processCpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return undefined;
  }
}

const cpuMs = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1000;

function lastTick(text: string): number | undefined {
  let last: number | undefined;
  for (const m of text.matchAll(TICK_RE)) last = Math.max(last ?? 0, Number(m[1]));
  return last;
}

// ---- the guest ---------------------------------------------------------------------------------

interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  baseDisk: string;
}

async function loadImage(): Promise<GuestImage> {
  const repoRoot = path.resolve(import.meta.dirname, '../../..');
  const candidates = [
    process.env.HANGAR_DATA_DIR,
    path.join(repoRoot, '.data'),
    path.join(process.cwd(), '.data'),
  ].filter((d): d is string => d !== undefined);
  for (const data of candidates) {
    const dir = path.join(data, 'images', 'hangar-tiny');
    if (!existsSync(path.join(dir, 'image.json'))) continue;
    const m = JSON.parse(await readFile(path.join(dir, 'image.json'), 'utf8')) as Omit<GuestImage, 'dir'>;
    return { dir, kernel: m.kernel, initrd: m.initrd, cmdline: m.cmdline, baseDisk: m.baseDisk };
  }
  throw new Error(
    `guest image not found (looked in ${candidates.join(', ')}); build it with \`npm run guest-image\``,
  );
}

/** The VM both kinds boot: direct kernel boot, qcow2 data overlay on the shared pool, NoCloud seed. */
function benchSpec(id: string, image: GuestImage): VmSpecInput {
  return {
    id,
    name: `bench-${id}`,
    vcpus: 1,
    memoryMiB: 256,
    machineType: 'pc',
    cpuModel: 'qemu64',
    boot: {
      type: 'kernel',
      kernel: { pool: 'images', path: image.kernel },
      initrd: { pool: 'images', path: image.initrd },
      cmdline: image.cmdline,
    },
    disks: [
      {
        name: 'data',
        file: { pool: 'shared', path: `${id}/data.qcow2` },
        backing: { pool: 'images', path: image.baseDisk, format: 'qcow2' },
        cache: 'none',
      },
    ],
    nics: [],
    cloudInit: { hostname: `h-${id}` },
    debugShell: false,
  };
}

/**
 * The bare command, written out by hand. Same machine, CPU, memory, kernel/initrd/cmdline and the
 * same three block nodes + virtio-blk devices (data overlay with cache=none, raw read-only seed) as
 * vmm-core's argv.ts. Differences: no -daemonize/-pidfile; serial is a plain `-serial stdio` pipe
 * (or a file) instead of a unix-socket chardev with a logfile; a QMP socket only when `qmpSocket`.
 */
function bareArgv(
  image: GuestImage,
  accel: string,
  name: string,
  overlay: string,
  seed: string,
  serial: string,
  extra: { qmpSocket?: string; incoming?: boolean } = {},
): string[] {
  const args = [
    '-name',
    `guest=${name},debug-threads=on`,
    '-machine',
    'pc',
    '-accel',
    accel,
    '-cpu',
    'qemu64',
    '-smp',
    '1',
    '-m',
    '256',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-rtc',
    'base=utc',
    '-serial',
    serial,
    '-kernel',
    path.join(image.dir, image.kernel),
    '-initrd',
    path.join(image.dir, image.initrd),
    '-append',
    image.cmdline,
    '-blockdev',
    `{"driver":"file","filename":${JSON.stringify(overlay)},"node-name":"file-data","cache":{"direct":true,"no-flush":false},"auto-read-only":true,"discard":"unmap"}`,
    '-blockdev',
    '{"driver":"qcow2","file":"file-data","node-name":"disk-data","read-only":false,"cache":{"direct":true,"no-flush":false}}',
    '-device',
    '{"driver":"virtio-blk-pci","id":"data","drive":"disk-data","write-cache":"on"}',
    '-blockdev',
    `{"driver":"file","filename":${JSON.stringify(seed)},"node-name":"file-seed","read-only":true}`,
    '-blockdev',
    '{"driver":"raw","file":"file-seed","node-name":"disk-seed","read-only":true}',
    '-device',
    '{"driver":"virtio-blk-pci","id":"seed","drive":"disk-seed"}',
  ];
  if (extra.qmpSocket) args.push('-qmp', `unix:${extra.qmpSocket},server=on,wait=off`);
  if (extra.incoming) args.push('-incoming', 'defer');
  return args;
}

/** The bare way to make the disk: `qemu-img create` of a qcow2 overlay over the base image. */
async function bareOverlay(image: GuestImage, file: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await run('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-b',
    path.join(image.dir, image.baseDisk),
    '-F',
    'qcow2',
    file,
  ]);
}

/** The bare way to make a NoCloud seed: a 1 MiB vfat image labelled CIDATA, filled with mcopy. */
async function bareSeed(file: string, id: string): Promise<void> {
  const dir = path.dirname(file);
  const meta = path.join(dir, 'meta-data');
  const user = path.join(dir, 'user-data');
  await writeFile(meta, `instance-id: "${id}"\nlocal-hostname: "h-${id}"\n`);
  await writeFile(user, '#cloud-config\n{}\n');
  const env = { MTOOLS_SKIP_CHECK: '1', LC_ALL: 'C' };
  await run('mkfs.vfat', ['-n', 'CIDATA', '-C', file, '1024'], env);
  await run('mcopy', ['-i', file, meta, '::/meta-data'], env);
  await run('mcopy', ['-i', file, user, '::/user-data'], env);
}

// ---- raw QMP (the bare migration script) -------------------------------------------------------

type Json = Record<string, unknown>;

/** Just enough QMP by hand: greeting, qmp_capabilities, id-matched replies; events are skipped. */
class RawQmp {
  private buf = '';
  private nextId = 1;
  private greeted: (() => void) | undefined;
  private readonly waiting = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => {
      for (const w of this.waiting.values()) w.reject(new Error('QMP socket closed'));
      this.waiting.clear();
    });
    sock.on('error', () => undefined);
  }

  /** Connects, retrying while QEMU has not created the socket yet. */
  static async connect(socketPath: string, timeoutMs = 10_000): Promise<RawQmp> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(socketPath);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const q = new RawQmp(sock);
        await new Promise<void>((resolve) => {
          q.greeted = resolve;
        });
        await q.execute('qmp_capabilities');
        return q;
      } catch (err) {
        if (performance.now() > deadline) throw err;
        await sleep(5);
      }
    }
  }

  execute<T = unknown>(command: string, args?: Json, timeoutMs = 10_000): Promise<T> {
    const id = `b${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`QMP ${command} timed out`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(d: string): void {
    this.buf += d;
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as Json;
      if ('QMP' in msg) {
        this.greeted?.();
        continue;
      }
      const id = typeof msg.id === 'string' ? msg.id : undefined;
      const w = id ? this.waiting.get(id) : undefined;
      if (!id || !w) continue;
      this.waiting.delete(id);
      if ('error' in msg) {
        const e = msg.error as { class?: string; desc?: string };
        w.reject(new Error(`QMP error ${e.class}: ${e.desc}`));
      } else w.resolve(msg.return);
    }
  }
}

interface RawMigrateInfo {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: { transferred?: number };
  'error-desc'?: string;
  'socket-address'?: Array<{ port?: string | number }>;
}

// ---- the run -----------------------------------------------------------------------------------

interface BootSample {
  kind: 'bare' | 'vmm';
  /** bare: spawn → marker; vmm: start() call → marker. */
  bootMs: number;
  /** bare: hand-made overlay + seed; vmm: create(). */
  prepMs: number;
  /** vmm only: start() call → 'started' event (QEMU daemonized, QMP attached). */
  startLaunchMs?: number;
  /** vmm only: start() call → start() returned. */
  startCallMs?: number;
  /** CPU seconds (user+system, all threads) the QEMU process had used when the marker was seen. */
  qemuCpuMs: number | undefined;
  /** CPU the bench's own node process used from spawn/start() to the marker. */
  nodeCpuMs: number;
  prepOverlayMs?: number;
  prepSeedMs?: number;
  /** 1-minute load average when the sample ended: a noise indicator. */
  load1: number;
}

interface MigrationSample {
  kind: 'bare' | 'vmm';
  hop: number;
  from: string;
  to: string;
  downtimeMs: number;
  totalMs: number;
  setupMs: number | undefined;
  bytes: number;
  /** Destination ready (listening) → source gone: what a caller waits for. */
  prepareMs: number;
  migrateMs: number;
  finishMs: number;
  completeMs: number;
  wallMs: number;
  /**
   * QEMU 7.2 shows `completed` in query-migrate a moment before it has computed total-time and
   * downtime (both read 0 then). vmm-core returns that first reading; the bare script asks again.
   */
  timesRaced: boolean;
  load1: number;
}

interface Context {
  opts: Options;
  root: string;
  image: GuestImage;
  caps: HypervisorCapabilities;
  capsMs: number;
}

async function bootBare(ctx: Context, label: string): Promise<BootSample> {
  const dir = path.join(ctx.root, 'bare', label);
  await mkdir(dir, { recursive: true });
  const overlay = path.join(dir, 'data.qcow2');
  const seed = path.join(dir, 'seed.img');
  const p0 = performance.now();
  await bareOverlay(ctx.image, overlay);
  const p1 = performance.now();
  await bareSeed(seed, label);
  const p2 = performance.now();
  let tail = '';
  let markerAt: number | undefined;
  let qemuCpuMs: number | undefined;
  let nodeCpuMs = 0;
  let onMarker: (() => void) | undefined;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const q = spawnBare(
    ctx.opts.qemu,
    bareArgv(ctx.image, ctx.caps.accelerator, `bare-${label}`, overlay, seed, 'stdio'),
    (chunk) => {
      if (markerAt !== undefined) return;
      tail = (tail + chunk).slice(-4096);
      if (tail.includes(MARKER)) {
        markerAt = performance.now();
        qemuCpuMs = processCpuMs(q.pid);
        nodeCpuMs = cpuMs(process.cpuUsage(cpu0));
        onMarker?.();
      }
    },
  );
  try {
    await new Promise<void>((resolve, reject) => {
      if (markerAt !== undefined) return resolve();
      const timer = setTimeout(
        () => reject(new Error(`bare boot ${label}: no marker in ${BOOT_TIMEOUT_MS} ms`)),
        BOOT_TIMEOUT_MS,
      );
      void q.exited.then(() => {
        clearTimeout(timer);
        if (markerAt === undefined) reject(new Error(`bare QEMU exited before the marker: ${q.stderr()}`));
      });
      onMarker = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  } finally {
    await killBare(q);
  }
  await rm(dir, { recursive: true, force: true });
  return {
    kind: 'bare',
    bootMs: markerAt! - t0,
    qemuCpuMs,
    nodeCpuMs,
    prepMs: p2 - p0,
    prepOverlayMs: p1 - p0,
    prepSeedMs: p2 - p1,
    load1: r1(os.loadavg()[0] ?? 0),
  };
}

async function bootVmm(ctx: Context, d: QemuDriver, id: string): Promise<BootSample> {
  let launchedAt: number | undefined;
  const off = d.onEvent((e) => {
    if (e.vmId === id && e.type === 'state' && e.reason === 'started') launchedAt ??= performance.now();
  });
  try {
    const c0 = performance.now();
    await d.create(benchSpec(id, ctx.image));
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    const { pid } = await d.start(id);
    const t1 = performance.now();
    let qemuCpuMs: number | undefined;
    const markerAt = await pollUntil(
      async () => {
        if (!(await d.consoleLog(id)).includes(MARKER)) return undefined;
        const at = performance.now();
        qemuCpuMs = processCpuMs(pid);
        return at;
      },
      ctx.opts.pollMs,
      BOOT_TIMEOUT_MS,
      `${MARKER} from vmm-core VM ${id}`,
    );
    return {
      kind: 'vmm',
      bootMs: markerAt - t0,
      qemuCpuMs,
      nodeCpuMs: cpuMs(process.cpuUsage(cpu0)),
      prepMs: t0 - c0,
      startCallMs: t1 - t0,
      load1: r1(os.loadavg()[0] ?? 0),
      ...(launchedAt !== undefined ? { startLaunchMs: launchedAt - t0 } : {}),
    };
  } finally {
    off();
    await d.forceStop(id).catch(() => undefined);
    await d.delete(id).catch(() => undefined);
  }
}

async function runBoots(
  ctx: Context,
  d: QemuDriver,
): Promise<{ samples: BootSample[]; warmup: BootSample[] }> {
  const { n, warmup } = ctx.opts;
  const warm: BootSample[] = [];
  for (let i = 0; i < warmup; i++) {
    log(`boot warm-up ${i + 1}/${warmup}`);
    warm.push(await bootBare(ctx, `w${i}`));
    warm.push(await bootVmm(ctx, d, `w${i}`));
  }
  const samples: BootSample[] = [];
  for (let i = 0; i < n; i++) {
    const a = await bootBare(ctx, `b${i}`);
    const b = await bootVmm(ctx, d, `b${i}`);
    samples.push(a, b);
    log(
      `boot ${i + 1}/${n}: bare ${a.bootMs.toFixed(0)} ms, vmm-core start→marker ${b.bootMs.toFixed(0)} ms (create ${b.prepMs.toFixed(0)} ms)`,
    );
  }
  return { samples, warmup: warm };
}

/** create()'s two external steps alone, through vmm-core's exported helpers (no QEMU running). */
async function profileCreateSteps(ctx: Context): Promise<{ overlayMs: number[]; seedMs: number[] }> {
  const dir = path.join(ctx.root, 'profile');
  await mkdir(dir, { recursive: true });
  const overlayMs: number[] = [];
  const seedMs: number[] = [];
  for (let i = 0; i < ctx.opts.n; i++) {
    const f = path.join(dir, `o${i}.qcow2`);
    const t0 = performance.now();
    await qemuImg.createOverlay(f, {
      backingFile: path.join(ctx.image.dir, ctx.image.baseDisk),
      backingFormat: 'qcow2',
    });
    const t1 = performance.now();
    await buildNoCloudSeed(path.join(dir, `s${i}.img`), { instanceId: `p${i}`, hostname: `h-p${i}` });
    const t2 = performance.now();
    overlayMs.push(t1 - t0);
    seedMs.push(t2 - t1);
  }
  await rm(dir, { recursive: true, force: true });
  return { overlayMs, seedMs };
}

/** Waits for a HANGAR-TICK newer than `after` in `read()`: proof the guest runs where it landed. */
async function waitTick(read: () => Promise<string>, after: number, what: string): Promise<number> {
  return pollUntil(
    async () => {
      const t = lastTick(await read());
      return t !== undefined && t > after ? t : undefined;
    },
    50,
    30_000,
    `a tick after ${after} on ${what}`,
  );
}

async function runMigrations(ctx: Context, hosts: [QemuDriver, QemuDriver]): Promise<MigrationSample[]> {
  const samples: MigrationSample[] = [];
  const m = ctx.opts.migrations;

  // vmm-core guest on host a.
  const id = 'mig';
  const names = ['a', 'b'] as const;
  await hosts[0].create(benchSpec(id, ctx.image));
  await hosts[0].start(id);
  await pollUntil(
    async () => ((await hosts[0].consoleLog(id)).includes(MARKER) ? true : undefined),
    50,
    BOOT_TIMEOUT_MS,
    'vmm-core migration guest boot',
  );

  // bare guest: overlay + seed on the same shared folder, one QEMU process per hop.
  const bareDir = path.join(ctx.root, 'shared', 'bare-mig');
  await mkdir(bareDir, { recursive: true });
  const overlay = path.join(bareDir, 'data.qcow2');
  const seed = path.join(bareDir, 'seed.img');
  await bareOverlay(ctx.image, overlay);
  await bareSeed(seed, 'bare-mig');
  let seq = 0;
  const startBare = (incoming: boolean) => {
    const k = seq++;
    const qmpSocket = path.join(bareDir, `q${k}.sock`);
    const serialLog = path.join(bareDir, `serial${k}.log`);
    const q = spawnBare(
      ctx.opts.qemu,
      bareArgv(ctx.image, ctx.caps.accelerator, 'bare-mig', overlay, seed, `file:${serialLog}`, {
        qmpSocket,
        incoming,
      }),
    );
    return { q, qmpSocket, serialLog, readLog: () => readFile(serialLog, 'utf8').catch(() => '') };
  };
  let bareSrc = startBare(false);
  let bareSrcQmp = await RawQmp.connect(bareSrc.qmpSocket);
  await pollUntil(
    async () => ((await bareSrc.readLog()).includes(MARKER) ? true : undefined),
    50,
    BOOT_TIMEOUT_MS,
    'bare migration guest boot',
  );
  // Both guests idle past boot before the first hop (the tick loop is all that runs).
  let vmmTick = await waitTick(() => hosts[0].consoleLog(id), 1, 'vmm-core guest');
  let bareTick = await waitTick(bareSrc.readLog, 1, 'bare guest');

  try {
    for (let hop = 0; hop < m; hop++) {
      const from = hop % 2;
      const to = 1 - from;

      // A: through vmm-core.
      {
        const src = hosts[from]!;
        const dst = hosts[to]!;
        const spec = (await src.get(id)).spec;
        const t0 = performance.now();
        const { uri } = await dst.prepareIncoming(spec, { listenHost: '127.0.0.1' });
        const t1 = performance.now();
        const res: MigrationResult = await src.migrate(id, uri, {
          completionTimeoutMs: MIGRATION_TIMEOUT_MS,
        });
        const t2 = performance.now();
        await dst.finishIncoming(id);
        const t3 = performance.now();
        await src.completeOutgoing(id);
        const t4 = performance.now();
        samples.push({
          kind: 'vmm',
          hop,
          from: names[from]!,
          to: names[to]!,
          downtimeMs: res.downtimeMs,
          totalMs: res.totalMs,
          setupMs: res.setupMs,
          bytes: res.transferredBytes,
          prepareMs: t1 - t0,
          migrateMs: t2 - t1,
          finishMs: t3 - t2,
          completeMs: t4 - t3,
          wallMs: t4 - t0,
          load1: r1(os.loadavg()[0] ?? 0),
          timesRaced: res.totalMs === 0,
        });
        vmmTick = await waitTick(() => dst.consoleLog(id), vmmTick, `vmm-core guest on ${names[to]}`);
        log(
          `migration ${hop + 1}/${m} vmm-core ${names[from]}→${names[to]}: downtime ${res.downtimeMs} ms, total ${res.totalMs} ms, ${(res.transferredBytes / 2 ** 20).toFixed(1)} MiB (tick ${vmmTick})`,
        );
      }

      // B: bare QMP script, same steps and the same parameters as vmm-core's defaults.
      {
        const t0 = performance.now();
        const dst = startBare(true);
        const dstQmp = await RawQmp.connect(dst.qmpSocket);
        await dstQmp.execute('migrate-set-capabilities', {
          capabilities: [{ capability: 'events', state: true }],
        });
        await dstQmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
        const inc = await dstQmp.execute<RawMigrateInfo>('query-migrate');
        const port = inc['socket-address']?.find((a) => a.port !== undefined)?.port;
        if (port === undefined) throw new Error('bare destination did not report its port');
        const uri = `tcp:127.0.0.1:${port}`;
        const t1 = performance.now();
        await bareSrcQmp.execute('migrate-set-capabilities', {
          capabilities: [
            { capability: 'events', state: true },
            { capability: 'auto-converge', state: true },
          ],
        });
        await bareSrcQmp.execute('migrate-set-parameters', { 'downtime-limit': DOWNTIME_LIMIT_MS });
        await bareSrcQmp.execute('migrate', { uri });
        let info = await pollUntil(
          async () => {
            const i = await bareSrcQmp.execute<RawMigrateInfo>('query-migrate');
            if (i.status === 'failed' || i.status === 'cancelled')
              throw new Error(`bare migration ${i.status}: ${i['error-desc'] ?? ''}`);
            return i.status === 'completed' ? i : undefined;
          },
          MIGRATE_POLL_MS,
          MIGRATION_TIMEOUT_MS,
          'bare migration to complete',
        );
        const timesRaced = !info['total-time'];
        if (timesRaced) {
          info = await pollUntil(
            async () => {
              const i = await bareSrcQmp.execute<RawMigrateInfo>('query-migrate');
              return i['total-time'] ? i : undefined;
            },
            5,
            5_000,
            'QEMU to fill in total-time after completed',
          );
        }
        const t2 = performance.now();
        await pollUntil(
          async () => {
            const s = await dstQmp.execute<{ status: string }>('query-status');
            return s.status === 'running' ? true : undefined;
          },
          INCOMING_POLL_MS,
          30_000,
          'bare destination running',
        );
        const t3 = performance.now();
        await bareSrcQmp.execute('quit').catch(() => undefined);
        bareSrcQmp.close();
        await bareSrc.q.exited;
        const t4 = performance.now();
        await rm(bareSrc.qmpSocket, { force: true });
        await rm(bareSrc.serialLog, { force: true });
        bareSrc = dst;
        bareSrcQmp = dstQmp;
        samples.push({
          kind: 'bare',
          hop,
          from: names[from]!,
          to: names[to]!,
          downtimeMs: info.downtime ?? 0,
          totalMs: info['total-time'] ?? 0,
          setupMs: info['setup-time'],
          bytes: info.ram?.transferred ?? 0,
          prepareMs: t1 - t0,
          migrateMs: t2 - t1,
          finishMs: t3 - t2,
          completeMs: t4 - t3,
          wallMs: t4 - t0,
          load1: r1(os.loadavg()[0] ?? 0),
          timesRaced,
        });
        bareTick = await waitTick(bareSrc.readLog, bareTick, 'bare guest');
        log(
          `migration ${hop + 1}/${m} bare QMP: downtime ${info.downtime} ms, total ${info['total-time']} ms, ${((info.ram?.transferred ?? 0) / 2 ** 20).toFixed(1)} MiB (tick ${bareTick})`,
        );
      }
    }
  } finally {
    bareSrcQmp.close();
    await killBare(bareSrc.q);
    // Wherever the guest is (a failed hop can leave it on both hosts), take it down.
    for (const h of hosts) {
      await h.forceStop(id).catch(() => undefined);
      await h.delete(id).catch(() => undefined);
    }
  }
  return samples;
}

// ---- report ------------------------------------------------------------------------------------

interface Report {
  date: string;
  machine: {
    cpus: number;
    memoryGiB: number;
    kernel: string;
    os: string;
    qemu: string;
    accelerator: string;
    acceleratorReason: string;
    node: string;
    loadavgStart: number[];
    loadavgEnd: number[];
  };
  command: string;
  options: Options;
  boot?: {
    bare: Stats;
    vmmStart: Stats;
    vmmCreateStart: Stats;
    bareByHandPrep: Stats;
    pairedDelta: Stats;
    overheadMs: number;
    budgetMs: number;
    pass: boolean;
    createStartOverheadMs: number;
    createStartPass: boolean;
    profile: {
      vmmCreate: Stats;
      vmmStartLaunch: Stats;
      vmmStartCall: Stats;
      vmmStartToMarkerAfterReturn: Stats;
      vmmOverlay: Stats;
      vmmSeed: Stats;
      bareOverlay: Stats;
      bareSeed: Stats;
      capabilitiesProbeMs: number;
      bareQemuCpu: Stats;
      vmmQemuCpu: Stats;
      bareNodeCpu: Stats;
      vmmNodeCpu: Stats;
    };
    samples: BootSample[];
    warmup: BootSample[];
  };
  migration?: {
    vmm: MigrationStats;
    bare: MigrationStats;
    pass: boolean;
    samples: MigrationSample[];
  };
}

type MigrationStats = ReturnType<typeof migrationStats>;

/** QEMU's own times come only from hops where it had filled them in (see `timesRaced`). */
function migrationStats(xs: MigrationSample[]) {
  const timed = xs.filter((x) => !x.timesRaced);
  return {
    racedHops: xs.length - timed.length,
    downtimeMs: stats(timed.map((x) => x.downtimeMs)),
    totalMs: stats(timed.map((x) => x.totalMs)),
    setupMs: stats(timed.flatMap((x) => (x.setupMs === undefined ? [] : [x.setupMs]))),
    mib: stats(xs.map((x) => x.bytes / 2 ** 20)),
    prepareMs: stats(xs.map((x) => x.prepareMs)),
    finishMs: stats(xs.map((x) => x.finishMs)),
    completeMs: stats(xs.map((x) => x.completeMs)),
    wallMs: stats(xs.map((x) => x.wallMs)),
  };
}

function markdown(r: Report): string {
  const out: string[] = [];
  const m = r.machine;
  out.push(`# vmm-core benchmark — ${r.date}`, '');
  out.push(
    `Machine: ${m.cpus} CPUs, ${m.memoryGiB} GiB, ${m.os}, kernel ${m.kernel}, ${m.qemu}, accelerator ${m.accelerator} (${m.acceleratorReason}), Node ${m.node}.`,
    `Load average at start ${m.loadavgStart.map((x) => x.toFixed(2)).join(' ')}, at end ${m.loadavgEnd.map((x) => x.toFixed(2)).join(' ')}.`,
    `Command: \`${r.command}\``,
    '',
  );
  const loads = [...(r.boot?.samples ?? []), ...(r.migration?.samples ?? [])].map((x) => x.load1);
  if (loads.length) {
    out.push(`1-minute load average seen at the samples: ${Math.min(...loads)} – ${Math.max(...loads)}.`, '');
  }
  const row = (label: string, s: Stats, base?: Stats) =>
    `| ${label} | ${fmt(s.median)} | ${fmt(s.p90)} | ${fmt(s.min)} | ${fmt(s.max)} | ${base ? ratio(s.median, base.median) : ''} |`;
  if (r.boot) {
    const b = r.boot;
    out.push(`## Boot to \`${MARKER}\` (N=${b.bare.n} each, interleaved, ms; p90 = nearest rank)`, '');
    out.push('| measure | median | p90 | min | max | ratio (median) |', '|---|---:|---:|---:|---:|---:|');
    out.push(row('bare qemu: spawn → marker', b.bare, b.bare));
    out.push(row('vmm-core: start() → marker', b.vmmStart, b.bare));
    out.push(row('vmm-core: create() + start() → marker', b.vmmCreateStart, b.bare));
    out.push(row('bare: overlay + seed by hand, spawn → marker', b.bareByHandPrep, b.bare));
    out.push(row('paired delta (vmm start→marker − bare), per pair', b.pairedDelta));
    out.push('');
    out.push(
      `Target: vmm-core adds ≤ max(5 %, 50 ms) = ${fmt(b.budgetMs)} ms to boot-to-marker. ` +
        `start() → marker adds ${fmt(b.overheadMs)} ms (median vs median): **${b.pass ? 'PASS' : 'FAIL'}**. ` +
        `Including create(): ${fmt(b.createStartOverheadMs)} ms over the bare boot (which had its overlay and seed made beforehand): ` +
        `${b.createStartPass ? 'PASS' : 'FAIL'} (informational).`,
      '',
    );
    const p = b.profile;
    out.push('### Where vmm-core spends its time (medians, ms)', '');
    out.push('| step | median | p90 |', '|---|---:|---:|');
    out.push(
      `| capabilities probe (once per driver, before the warm-up) | ${fmt(p.capabilitiesProbeMs)} | |`,
    );
    out.push(
      `| create(): validate, overlay, seed, vm.json | ${fmt(p.vmmCreate.median)} | ${fmt(p.vmmCreate.p90)} |`,
    );
    out.push(
      `|   of which qemu-img overlay (qemuImg.createOverlay alone) | ${fmt(p.vmmOverlay.median)} | ${fmt(p.vmmOverlay.p90)} |`,
    );
    out.push(
      `|   of which NoCloud seed (buildNoCloudSeed alone) | ${fmt(p.vmmSeed.median)} | ${fmt(p.vmmSeed.p90)} |`,
    );
    out.push(
      `|   bare by hand: qemu-img create | ${fmt(p.bareOverlay.median)} | ${fmt(p.bareOverlay.p90)} |`,
    );
    out.push(`|   bare by hand: mkfs.vfat + 2× mcopy | ${fmt(p.bareSeed.median)} | ${fmt(p.bareSeed.p90)} |`);
    out.push(
      `| start(): call → QEMU daemonized + QMP attached | ${fmt(p.vmmStartLaunch.median)} | ${fmt(p.vmmStartLaunch.p90)} |`,
    );
    out.push(
      `| start(): call → returned (+ query-status) | ${fmt(p.vmmStartCall.median)} | ${fmt(p.vmmStartCall.p90)} |`,
    );
    out.push(
      `| start() returned → marker seen in consoleLog() | ${fmt(p.vmmStartToMarkerAfterReturn.median)} | ${fmt(p.vmmStartToMarkerAfterReturn.p90)} |`,
    );
    out.push(
      `| QEMU process CPU time at the marker: bare | ${fmt(p.bareQemuCpu.median)} | ${fmt(p.bareQemuCpu.p90)} |`,
      `| QEMU process CPU time at the marker: vmm-core | ${fmt(p.vmmQemuCpu.median)} | ${fmt(p.vmmQemuCpu.p90)} |`,
      `| bench's node CPU, spawn/start() → marker: bare | ${fmt(p.bareNodeCpu.median)} | ${fmt(p.bareNodeCpu.p90)} |`,
      `| bench's node CPU, start() → marker: vmm-core (QMP + consoleLog polling) | ${fmt(p.vmmNodeCpu.median)} | ${fmt(p.vmmNodeCpu.p90)} |`,
    );
    out.push('');
  }
  if (r.migration) {
    const v = r.migration.vmm;
    const b = r.migration.bare;
    out.push(
      `## Live migration, idle 256 MiB guest, loopback, shared pool (${v.wallMs.n} hops each, interleaved)`,
      '',
    );
    out.push(
      '| measure | vmm-core median | p90 | bare QMP median | p90 | ratio (medians) |',
      '|---|---:|---:|---:|---:|---:|',
    );
    const mrow = (label: string, a: Stats, c: Stats) =>
      `| ${label} | ${fmt(a.median)} | ${fmt(a.p90)} | ${fmt(c.median)} | ${fmt(c.p90)} | ${ratio(a.median, c.median)} |`;
    out.push(mrow('downtime ms (QEMU)', v.downtimeMs, b.downtimeMs));
    out.push(mrow('total ms (QEMU total-time)', v.totalMs, b.totalMs));
    out.push(mrow('setup ms (QEMU)', v.setupMs, b.setupMs));
    out.push(mrow('MiB transferred', v.mib, b.mib));
    out.push(mrow('destination ready ms (prepare)', v.prepareMs, b.prepareMs));
    out.push(mrow('destination running ms (finish)', v.finishMs, b.finishMs));
    out.push(mrow('source gone ms (complete)', v.completeMs, b.completeMs));
    out.push(mrow('wall ms, prepare → source gone', v.wallMs, b.wallMs));
    out.push('');
    if (v.racedHops + b.racedHops > 0) {
      out.push(
        `QEMU reported \`completed\` with total-time and downtime still 0 on ${v.racedHops} vmm-core hop(s) and on ` +
          `${b.racedHops} bare hop(s) at the first reading (the bare script asks again, vmm-core returns that reading); ` +
          'those hops are left out of the downtime, total and setup rows, kept in the others and in --json.',
        '',
      );
    }
    out.push(
      `Target: idle 256 MiB guest downtime p50 ≤ ${DOWNTIME_TARGET_MS} ms. vmm-core p50 ${fmt(v.downtimeMs.median)} ms: **${r.migration.pass ? 'PASS' : 'FAIL'}**.`,
      '',
    );
  }
  return out.join('\n');
}

// ---- main --------------------------------------------------------------------------------------

let cleanupPromise: Promise<void> | undefined;

function cleanup(root: string | undefined, drivers: QemuDriver[]): Promise<void> {
  cleanupPromise ??= (async () => {
    for (const q of [...bareChildren]) await killBare(q).catch(() => undefined);
    for (const d of drivers) await d.close().catch(() => undefined);
    if (root) {
      const killed = await killQemuUnder(root);
      if (killed.length) {
        log(`killed leftover QEMU ${killed.join(', ')}`);
        await sleep(200);
      }
      await rm(root, { recursive: true, force: true });
    }
  })();
  return cleanupPromise;
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const loadStart = os.loadavg();
  const image = await loadImage();
  const root = await mkdtemp(path.join(os.tmpdir(), 'hangar-bench-'));
  const drivers: QemuDriver[] = [];
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    log(`${sig}: killing the bench's QEMU processes and removing ${root}`);
    void cleanup(root, drivers).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const shared = path.join(root, 'shared');
    await Promise.all([mkdir(shared), mkdir(path.join(root, 'a')), mkdir(path.join(root, 'b'))]);
    const pools: Record<string, StoragePool> = {
      images: { path: image.dir, shared: true },
      shared: { path: shared, shared: true },
    };
    const hostA = new QemuDriver({ runtimeDir: path.join(root, 'a'), pools, qemuBinary: opts.qemu });
    const hostB = new QemuDriver({ runtimeDir: path.join(root, 'b'), pools, qemuBinary: opts.qemu });
    drivers.push(hostA, hostB);
    const c0 = performance.now();
    const caps = await hostA.capabilities();
    const capsMs = performance.now() - c0;
    await hostB.capabilities();
    const ctx: Context = { opts, root, image, caps, capsMs };
    log(
      `QEMU ${caps.qemuVersion}, accelerator ${caps.accelerator} (${caps.acceleratorReason}); temp ${root}`,
    );

    const report: Report = {
      date: new Date().toISOString(),
      machine: {
        cpus: os.availableParallelism(),
        memoryGiB: Math.round(os.totalmem() / 2 ** 30),
        kernel: os.release(),
        os: await osName(),
        qemu: `QEMU ${caps.qemuVersion}`,
        accelerator: caps.accelerator,
        acceleratorReason: caps.acceleratorReason,
        node: process.versions.node,
        loadavgStart: loadStart.map(r1),
        loadavgEnd: [],
      },
      command: `node bench/vmm/dist/vmm.bench.js ${process.argv.slice(2).join(' ')}`.trim(),
      options: opts,
    };

    if (opts.boot) {
      const { samples, warmup } = await runBoots(ctx, hostA);
      log('profiling create() steps');
      const prof = await profileCreateSteps(ctx);
      const bare = samples.filter((s) => s.kind === 'bare');
      const vmm = samples.filter((s) => s.kind === 'vmm');
      const bareS = stats(bare.map((s) => s.bootMs));
      const vmmS = stats(vmm.map((s) => s.bootMs));
      const vmmCS = stats(vmm.map((s) => s.bootMs + s.prepMs));
      const budgetMs = Math.max(BOOT_BUDGET_FRACTION * bareS.median, BOOT_BUDGET_MIN_MS);
      const overheadMs = vmmS.median - bareS.median;
      const createStartOverheadMs = vmmCS.median - bareS.median;
      report.boot = {
        bare: bareS,
        vmmStart: vmmS,
        vmmCreateStart: vmmCS,
        bareByHandPrep: stats(bare.map((s) => s.bootMs + s.prepMs)),
        pairedDelta: stats(vmm.map((s, i) => s.bootMs - bare[i]!.bootMs)),
        overheadMs,
        budgetMs,
        pass: overheadMs <= budgetMs,
        createStartOverheadMs,
        createStartPass: createStartOverheadMs <= budgetMs,
        profile: {
          vmmCreate: stats(vmm.map((s) => s.prepMs)),
          vmmStartLaunch: stats(vmm.flatMap((s) => (s.startLaunchMs === undefined ? [] : [s.startLaunchMs]))),
          vmmStartCall: stats(vmm.flatMap((s) => (s.startCallMs === undefined ? [] : [s.startCallMs]))),
          vmmStartToMarkerAfterReturn: stats(vmm.map((s) => s.bootMs - (s.startCallMs ?? 0))),
          vmmOverlay: stats(prof.overlayMs),
          vmmSeed: stats(prof.seedMs),
          bareOverlay: stats(bare.flatMap((s) => (s.prepOverlayMs === undefined ? [] : [s.prepOverlayMs]))),
          bareSeed: stats(bare.flatMap((s) => (s.prepSeedMs === undefined ? [] : [s.prepSeedMs]))),
          capabilitiesProbeMs: capsMs,
          bareQemuCpu: stats(bare.flatMap((s) => (s.qemuCpuMs === undefined ? [] : [s.qemuCpuMs]))),
          vmmQemuCpu: stats(vmm.flatMap((s) => (s.qemuCpuMs === undefined ? [] : [s.qemuCpuMs]))),
          bareNodeCpu: stats(bare.map((s) => s.nodeCpuMs)),
          vmmNodeCpu: stats(vmm.map((s) => s.nodeCpuMs)),
        },
        samples,
        warmup,
      };
    }
    if (opts.migration) {
      const samples = await runMigrations(ctx, [hostA, hostB]);
      const vmm = migrationStats(samples.filter((s) => s.kind === 'vmm'));
      const bare = migrationStats(samples.filter((s) => s.kind === 'bare'));
      report.migration = { vmm, bare, pass: vmm.downtimeMs.median <= DOWNTIME_TARGET_MS, samples };
    }
    report.machine.loadavgEnd = os.loadavg().map(r1);
    const json = `${JSON.stringify(report, null, 2)}\n`;
    if (opts.jsonOut) await writeFile(opts.jsonOut, json);
    process.stdout.write(opts.json ? json : `${markdown(report)}\n`);
  } finally {
    await cleanup(root, drivers);
  }
}

async function osName(): Promise<string> {
  try {
    const text = await readFile('/etc/os-release', 'utf8');
    return /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(text)?.[1] ?? os.type();
  } catch {
    return os.type();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(
    `[bench] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exitCode = 1;
});
