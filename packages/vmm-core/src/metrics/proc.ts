import { readFile, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { VmmError } from '../errors.js';
import { IFNAME_PATTERN } from '../spec/vm-spec.js';
import { runCommand } from '../util/exec.js';

/** Where the readers look; tests point `root` at a folder of fixture files. */
export interface ProcOptions {
  /** Prefix of `/proc` and `/sys` (default `/`). */
  root?: string;
  /** Clock ticks per second for `/proc` times; default {@link clockTicksPerSecond}. */
  clockTicks?: number;
}

/** Counters of one network interface, from `/sys/class/net/<if>/statistics`. */
export interface NetDevCounters {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  rxErrors: number;
  txErrors: number;
  rxDropped: number;
  txDropped: number;
}

/** Host CPU time since boot summed over all CPUs, in seconds (first line of `/proc/stat`). */
export interface HostCpuTimes {
  user: number;
  nice: number;
  system: number;
  idle: number;
  iowait: number;
  irq: number;
  softirq: number;
  steal: number;
}

/** Host memory from `/proc/meminfo`. */
export interface HostMemory {
  totalBytes: number;
  /** What can be allocated without swapping (`MemAvailable`). */
  availableBytes: number;
  freeBytes: number;
}

/** `/proc/loadavg`. */
export interface LoadAverage {
  one: number;
  five: number;
  fifteen: number;
  runnableTasks: number;
  totalTasks: number;
}

/** Space of the filesystem holding a path. */
export interface FilesystemStats {
  totalBytes: number;
  freeBytes: number;
  /** Free space an unprivileged user may use (excludes the root reserve). */
  availableBytes: number;
}

const FALLBACK_CLOCK_TICKS = 100;
let clockTicksCache: Promise<number> | undefined;

/** `getconf CLK_TCK`, asked once per process; 100 when getconf fails. */
export function clockTicksPerSecond(): Promise<number> {
  clockTicksCache ??= runCommand('getconf', ['CLK_TCK'], { timeoutMs: 5_000 }).then(
    ({ stdout }) => {
      const ticks = Number.parseInt(stdout.trim(), 10);
      return Number.isInteger(ticks) && ticks > 0 ? ticks : FALLBACK_CLOCK_TICKS;
    },
    () => FALLBACK_CLOCK_TICKS,
  );
  return clockTicksCache;
}

/**
 * CPU time (user + system) of one thread, e.g. a vCPU thread whose id `query-cpus-fast` reported.
 *
 * @throws VmmError `INVALID_STATE` when the thread does not exist (any more); `INVALID_SPEC` for a bad id.
 */
export async function readThreadCpuSeconds(
  pid: number,
  tid: number,
  options: ProcOptions = {},
): Promise<number> {
  assertId('pid', pid);
  assertId('tid', tid);
  const path = procPath(options, 'proc', String(pid), 'task', String(tid), 'stat');
  return statCpuSeconds(await readProcFile(path), path, options);
}

/**
 * CPU time (user + system) of a whole process, all its threads included.
 *
 * @throws VmmError `INVALID_STATE` when the process does not exist; `INVALID_SPEC` for a bad pid.
 */
export async function readProcessCpuSeconds(pid: number, options: ProcOptions = {}): Promise<number> {
  assertId('pid', pid);
  const path = procPath(options, 'proc', String(pid), 'stat');
  return statCpuSeconds(await readProcFile(path), path, options);
}

/**
 * Resident memory of a process (`VmRSS` of `/proc/<pid>/status`); 0 for a zombie.
 *
 * @throws VmmError `INVALID_STATE` when the process does not exist; `INVALID_SPEC` for a bad pid.
 */
export async function readProcessRssBytes(pid: number, options: ProcOptions = {}): Promise<number> {
  assertId('pid', pid);
  const path = procPath(options, 'proc', String(pid), 'status');
  const text = await readProcFile(path);
  const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(text);
  return match?.[1] === undefined ? 0 : Number(match[1]) * 1024;
}

/**
 * Traffic counters of a network interface (e.g. a VM's tap device; rx is what the host received,
 * i.e. what the guest sent).
 *
 * @throws VmmError `INVALID_SPEC` for a bad interface name; `NETWORK_ERROR` when it does not exist.
 */
export async function readNetDevCounters(ifname: string, options: ProcOptions = {}): Promise<NetDevCounters> {
  if (!IFNAME_PATTERN.test(ifname) || ifname === '.' || ifname === '..') {
    throw new VmmError('INVALID_SPEC', `invalid interface name '${ifname}'`, { details: { ifname } });
  }
  const dir = procPath(options, 'sys', 'class', 'net', ifname, 'statistics');
  const counter = async (name: string): Promise<number> => {
    const path = join(dir, name);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      throw new VmmError('NETWORK_ERROR', `cannot read ${name} of interface ${ifname}: ${errorText(err)}`, {
        cause: err,
        details: { ifname, path, errno: errnoOf(err) },
      });
    }
    return parseCount(text.trim(), path);
  };
  const [rxBytes, txBytes, rxPackets, txPackets, rxErrors, txErrors, rxDropped, txDropped] =
    await Promise.all(
      [
        'rx_bytes',
        'tx_bytes',
        'rx_packets',
        'tx_packets',
        'rx_errors',
        'tx_errors',
        'rx_dropped',
        'tx_dropped',
      ].map(counter),
    );
  return {
    rxBytes: rxBytes ?? 0,
    txBytes: txBytes ?? 0,
    rxPackets: rxPackets ?? 0,
    txPackets: txPackets ?? 0,
    rxErrors: rxErrors ?? 0,
    txErrors: txErrors ?? 0,
    rxDropped: rxDropped ?? 0,
    txDropped: txDropped ?? 0,
  };
}

/**
 * Host CPU times since boot from the aggregate `cpu` line of `/proc/stat`.
 *
 * @throws VmmError `INVALID_STATE` when the file is missing or malformed.
 */
export async function readHostCpuTimes(options: ProcOptions = {}): Promise<HostCpuTimes> {
  const path = procPath(options, 'proc', 'stat');
  const text = await readProcFile(path);
  const line = text.split('\n').find((l) => /^cpu\s/.test(l));
  const fields = line?.trim().split(/\s+/).slice(1) ?? [];
  if (fields.length < 4) throw malformed(path, 'no aggregate cpu line');
  const ticks = options.clockTicks ?? (await clockTicksPerSecond());
  // Kernels before 2.6.11 lack steal and the like: missing columns count as 0.
  const at = (i: number): number => {
    const field = fields[i];
    return field === undefined ? 0 : parseCount(field, path) / ticks;
  };
  return {
    user: at(0),
    nice: at(1),
    system: at(2),
    idle: at(3),
    iowait: at(4),
    irq: at(5),
    softirq: at(6),
    steal: at(7),
  };
}

/**
 * Share of CPU time spent busy (anything but idle and iowait) between two samples of
 * {@link readHostCpuTimes}, from 0 to 1; 0 when no time passed.
 */
export function cpuBusyFraction(before: HostCpuTimes, after: HostCpuTimes): number {
  const busy = (t: HostCpuTimes) => t.user + t.nice + t.system + t.irq + t.softirq + t.steal;
  const idle = (t: HostCpuTimes) => t.idle + t.iowait;
  const busyDelta = busy(after) - busy(before);
  const total = busyDelta + idle(after) - idle(before);
  if (!(total > 0)) return 0;
  return Math.min(1, Math.max(0, busyDelta / total));
}

/**
 * Host memory from `/proc/meminfo`.
 *
 * @throws VmmError `INVALID_STATE` when the file is missing or lacks MemTotal/MemAvailable.
 */
export async function readHostMemory(options: ProcOptions = {}): Promise<HostMemory> {
  const path = procPath(options, 'proc', 'meminfo');
  const text = await readProcFile(path);
  const kib = (key: string): number => {
    const match = new RegExp(`^${key}:\\s+(\\d+)\\s+kB$`, 'm').exec(text);
    if (match?.[1] === undefined) throw malformed(path, `no ${key}`);
    return Number(match[1]) * 1024;
  };
  return { totalBytes: kib('MemTotal'), availableBytes: kib('MemAvailable'), freeBytes: kib('MemFree') };
}

/**
 * Load averages and task counts from `/proc/loadavg`.
 *
 * @throws VmmError `INVALID_STATE` when the file is missing or malformed.
 */
export async function readLoadAverage(options: ProcOptions = {}): Promise<LoadAverage> {
  const path = procPath(options, 'proc', 'loadavg');
  const match = /^(\d+\.\d+) (\d+\.\d+) (\d+\.\d+) (\d+)\/(\d+) /.exec(await readProcFile(path));
  if (match === null) throw malformed(path, 'unexpected format');
  return {
    one: Number(match[1]),
    five: Number(match[2]),
    fifteen: Number(match[3]),
    runnableTasks: Number(match[4]),
    totalTasks: Number(match[5]),
  };
}

/**
 * Size and free space of the filesystem holding `path` (e.g. a storage pool).
 *
 * @throws VmmError `DISK_ERROR` when the path cannot be examined.
 */
export async function filesystemStats(path: string): Promise<FilesystemStats> {
  try {
    const s = await statfs(path);
    return {
      totalBytes: s.blocks * s.bsize,
      freeBytes: s.bfree * s.bsize,
      availableBytes: s.bavail * s.bsize,
    };
  } catch (err) {
    throw new VmmError('DISK_ERROR', `cannot read filesystem statistics of ${path}: ${errorText(err)}`, {
      cause: err,
      details: { path, errno: errnoOf(err) },
    });
  }
}

/**
 * utime + stime of a `stat` line. The comm field (2nd) may itself hold spaces and ')' — a thread
 * can name itself `a) R 1 (b` — so the fields are counted after the LAST ')'.
 */
async function statCpuSeconds(text: string, path: string, options: ProcOptions): Promise<number> {
  const close = text.lastIndexOf(')');
  if (close < 0) throw malformed(path, 'no comm field');
  // After the comm come: state(3) ppid(4) ... utime(14) stime(15), so utime is the 12th here.
  const fields = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  const utime = fields[11];
  const stime = fields[12];
  if (utime === undefined || stime === undefined) throw malformed(path, 'too few fields');
  const ticks = options.clockTicks ?? (await clockTicksPerSecond());
  return (parseCount(utime, path) + parseCount(stime, path)) / ticks;
}

function procPath(options: ProcOptions, ...parts: string[]): string {
  return join(options.root ?? '/', ...parts);
}

async function readProcFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    const errno = errnoOf(err);
    const reason =
      errno === 'ENOENT' || errno === 'ESRCH' ? 'it does not exist (process gone?)' : errorText(err);
    throw new VmmError('INVALID_STATE', `cannot read ${path}: ${reason}`, {
      cause: err,
      details: { path, errno },
    });
  }
}

function parseCount(text: string, path: string): number {
  if (!/^\d+$/.test(text)) throw malformed(path, `'${text}' is not a count`);
  return Number(text);
}

function assertId(kind: string, id: number): void {
  if (!Number.isSafeInteger(id) || id <= 0) {
    throw new VmmError('INVALID_SPEC', `${kind} must be a positive integer, got ${id}`, {
      details: { [kind]: id },
    });
  }
}

function malformed(path: string, what: string): VmmError {
  return new VmmError('INVALID_STATE', `unexpected content in ${path}: ${what}`, { details: { path } });
}

function errnoOf(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
