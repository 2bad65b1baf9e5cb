import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { StoragePool } from '../../src/driver/hypervisor.js';
import type { VmSpecInput } from '../../src/spec/vm-spec.js';

/** Every folder and process a test creates carries this prefix, so leftovers can be swept. */
export const TEST_PREFIX = 'hangar-test-';

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  baseDisk: string;
  bootDisk: string;
  marker: string;
}

const repoRoot = path.resolve(import.meta.dirname, '../../../..');

export function dataDir(): string {
  return process.env.HANGAR_DATA_DIR ?? path.join(repoRoot, '.data');
}

/** The guest image built by scripts/build-guest-image.sh (vitest's global setup builds it). */
export async function loadGuestImage(): Promise<GuestImage> {
  const dir = path.join(dataDir(), 'images', 'hangar-tiny');
  const manifest = JSON.parse(await readFile(path.join(dir, 'image.json'), 'utf8')) as Omit<
    GuestImage,
    'dir'
  >;
  return { ...manifest, dir };
}

/**
 * One simulated hypervisor host for a test: a temp folder with its own runtime dir, a local pool,
 * a shared pool (which several TestHosts may share) and the image pool.
 */
export interface TestHost {
  root: string;
  runtimeDir: string;
  pools: Record<string, StoragePool>;
  cleanup(): Promise<void>;
}

export async function makeTestHost(opts: { sharedDir?: string; label?: string } = {}): Promise<TestHost> {
  const image = await loadGuestImage();
  const root = await makeOwnedTempDir(opts.label ?? 'host');
  const runtimeDir = path.join(root, 'run');
  const local = path.join(root, 'local');
  const shared = opts.sharedDir ?? path.join(root, 'shared');
  await Promise.all([mkdir(runtimeDir), mkdir(local), mkdir(shared, { recursive: true })]);
  return {
    root,
    runtimeDir,
    pools: {
      images: { path: image.dir, shared: true },
      local: { path: local, shared: false },
      shared: { path: shared, shared: true },
    },
    async cleanup() {
      await killQemuUnder(root);
      await rm(root, { recursive: true, force: true });
    },
  };
}

export async function makeSharedDir(): Promise<{ dir: string; cleanup(): Promise<void> }> {
  const dir = await makeOwnedTempDir('shared');
  return {
    dir,
    async cleanup() {
      await killQemuUnder(dir);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A temp folder tagged with the pid of the test process that owns it, so a later run can tell
 * leftovers of a killed run (owner gone) from folders of a run still going.
 */
export async function makeOwnedTempDir(label: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `${TEST_PREFIX}${label}-`));
  await writeFile(path.join(dir, OWNER_FILE), String(process.pid));
  return dir;
}

const OWNER_FILE = '.owner-pid';

/** Removes test folders (and kills their QEMU processes) whose owning test process is gone. */
export async function sweepLeftovers(): Promise<{ dirs: string[]; killed: number[] }> {
  const dirs: string[] = [];
  const killed: number[] = [];
  for (const entry of await readdir(os.tmpdir())) {
    if (!entry.startsWith(TEST_PREFIX)) continue;
    const dir = path.join(os.tmpdir(), entry);
    let owner: number | undefined;
    try {
      owner = Number.parseInt(await readFile(path.join(dir, OWNER_FILE), 'utf8'), 10);
    } catch {
      owner = undefined;
    }
    if (owner !== undefined && Number.isInteger(owner) && isAlive(owner)) continue;
    // Folders without an owner tag come from tests that clean up themselves; only old ones are leftovers.
    if (owner === undefined && Date.now() - (await stat(dir)).mtimeMs < 60 * 60 * 1000) continue;
    killed.push(...(await killQemuUnder(dir)));
    await rm(dir, { recursive: true, force: true });
    dirs.push(dir);
  }
  return { dirs, killed };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A small VM of the test image: direct kernel boot, data disk overlay, NoCloud seed. */
export function tinySpec(
  id: string,
  over: Partial<VmSpecInput> & { pool?: 'local' | 'shared' } = {},
): VmSpecInput {
  const { pool = 'shared', ...rest } = over;
  return {
    id,
    name: `vm-${id}`.slice(0, 63),
    vcpus: 1,
    memoryMiB: 256,
    machineType: 'pc',
    cpuModel: 'qemu64',
    boot: {
      type: 'kernel',
      kernel: { pool: 'images', path: 'vmlinuz' },
      initrd: { pool: 'images', path: 'initrd.img' },
      cmdline: 'console=ttyS0 panic=-1 quiet loglevel=3',
    },
    disks: [
      {
        name: 'data',
        file: { pool, path: `${id}/data.qcow2` },
        backing: { pool: 'images', path: 'base.qcow2', format: 'qcow2' },
        cache: 'none',
      },
    ],
    nics: [],
    cloudInit: { hostname: `h-${id}`.slice(0, 63) },
    debugShell: true,
    ...rest,
  };
}

/**
 * Kills QEMU processes whose argv mentions `root` (so only processes a test started), by pid.
 * Used in teardown and to sweep what an earlier killed run left behind.
 */
export async function killQemuUnder(root: string): Promise<number[]> {
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
    if (!(argv[0] ?? '').includes('qemu-system')) continue;
    if (!argv.some((a) => a.includes(root))) continue;
    try {
      process.kill(pid, 'SIGKILL');
      killed.push(pid);
    } catch {
      // already gone
    }
  }
  return killed;
}

/** Polls `fn` until it returns a value other than undefined, or throws after the timeout. */
export async function eventually<T>(
  fn: () => Promise<T | undefined> | T | undefined,
  opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out waiting for ${opts.what ?? 'condition'}${lastError ? `: ${String(lastError)}` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}

/** The highest HANGAR-TICK number in a serial log text, or undefined. */
export function lastTick(log: string): number | undefined {
  const ticks = [...log.matchAll(/HANGAR-TICK (\d+)/g)].map((m) => Number(m[1]));
  return ticks.length ? Math.max(...ticks) : undefined;
}
