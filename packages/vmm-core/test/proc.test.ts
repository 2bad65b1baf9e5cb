import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VmmError } from '../src/errors.js';
import {
  clockTicksPerSecond,
  cpuBusyFraction,
  filesystemStats,
  type HostCpuTimes,
  readHostCpuTimes,
  readHostMemory,
  readLoadAverage,
  readNetDevCounters,
  readProcessCpuSeconds,
  readProcessRssBytes,
  readThreadCpuSeconds,
} from '../src/metrics/index.js';

let root: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'hangar-test-'));
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function fixture(relativePath: string, content: string): Promise<void> {
  const path = join(root, relativePath);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, content);
}

async function failure(promise: Promise<unknown>): Promise<VmmError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof VmmError) return err;
    throw err;
  }
  throw new Error('expected a VmmError');
}

/**
 * A stat line whose comm holds spaces and ')' — the fields after it are state, ppid, pgrp, session,
 * tty, tpgid, flags, minflt, cminflt, majflt, cmajflt, utime, stime, cutime, cstime, ...
 */
function statLine(id: number, comm: string, utime: number, stime: number): string {
  return `${id} (${comm}) S 1 ${id} ${id} 0 -1 4194560 1200 0 7 0 ${utime} ${stime} 99999 88888 20 0 3 0 4242 1000000 512 18446744073709551615 0 0 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n`;
}

/** Spins until this process has used `cpuMs` more CPU time (bounded by wall time on a busy host). */
function burnCpu(cpuMs: number): void {
  const start = process.cpuUsage();
  const deadline = Date.now() + 20_000;
  let x = 0;
  while (Date.now() < deadline) {
    for (let i = 0; i < 100_000; i++) x += Math.sqrt(i + x);
    const used = process.cpuUsage(start);
    if ((used.user + used.system) / 1000 >= cpuMs) return;
  }
  throw new Error(`could not burn ${cpuMs} ms of CPU (${x})`);
}

describe('process and thread readers (fixtures)', () => {
  it('reads thread CPU seconds when the comm holds spaces and parentheses', async () => {
    await fixture('proc/4000/task/4012/stat', statLine(4012, 'CPU 0/KVM) R (x', 250, 150));
    await fixture('proc/4000/task/4013/stat', statLine(4013, ') ) )', 7, 3));
    expect(await readThreadCpuSeconds(4000, 4012, { root, clockTicks: 100 })).toBe(4);
    expect(await readThreadCpuSeconds(4000, 4013, { root, clockTicks: 100 })).toBeCloseTo(0.1, 10);
    expect(await readThreadCpuSeconds(4000, 4012, { root, clockTicks: 250 })).toBeCloseTo(1.6, 10);
  });

  it('reads process CPU seconds with the default clock ticks', async () => {
    await fixture('proc/4000/stat', statLine(4000, 'qemu-system-x86 (vm one)', 1000, 500));
    const ticks = await clockTicksPerSecond();
    expect(await readProcessCpuSeconds(4000, { root })).toBeCloseTo(1500 / ticks, 10);
  });

  it('reads RSS from VmRSS, and 0 when the process has none', async () => {
    await fixture(
      'proc/4000/status',
      'Name:\tqemu\nVmPeak:\t  900000 kB\nVmRSS:\t  204800 kB\nThreads:\t5\n',
    );
    await fixture('proc/4001/status', 'Name:\tzombie\nState:\tZ (zombie)\n');
    expect(await readProcessRssBytes(4000, { root })).toBe(204800 * 1024);
    expect(await readProcessRssBytes(4001, { root })).toBe(0);
  });

  it('fails with INVALID_STATE for a process that is gone and INVALID_SPEC for a bad id', async () => {
    const gone = await failure(readProcessCpuSeconds(4999, { root }));
    expect(gone.code).toBe('INVALID_STATE');
    expect(gone.details).toMatchObject({ errno: 'ENOENT' });
    expect((await failure(readThreadCpuSeconds(4000, 4001, { root }))).code).toBe('INVALID_STATE');
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      expect((await failure(readProcessCpuSeconds(bad, { root }))).code).toBe('INVALID_SPEC');
      expect((await failure(readThreadCpuSeconds(4000, bad, { root }))).code).toBe('INVALID_SPEC');
    }
  });

  it('fails with INVALID_STATE on a malformed stat file', async () => {
    await fixture('proc/4000/stat', '4000 (truncated) S 1 2 3\n');
    await fixture('proc/4001/stat', '4001 no comm field\n');
    expect((await failure(readProcessCpuSeconds(4000, { root, clockTicks: 100 }))).code).toBe(
      'INVALID_STATE',
    );
    expect((await failure(readProcessCpuSeconds(4001, { root, clockTicks: 100 }))).code).toBe(
      'INVALID_STATE',
    );
  });
});

describe('network counters', () => {
  it('reads the statistics of an interface', async () => {
    const values: Record<string, number> = {
      rx_bytes: 123456789012,
      tx_bytes: 987654321,
      rx_packets: 1000,
      tx_packets: 2000,
      rx_errors: 1,
      tx_errors: 2,
      rx_dropped: 3,
      tx_dropped: 4,
    };
    for (const [name, value] of Object.entries(values)) {
      await fixture(`sys/class/net/tap-vm1.0/statistics/${name}`, `${value}\n`);
    }
    expect(await readNetDevCounters('tap-vm1.0', { root })).toEqual({
      rxBytes: 123456789012,
      txBytes: 987654321,
      rxPackets: 1000,
      txPackets: 2000,
      rxErrors: 1,
      txErrors: 2,
      rxDropped: 3,
      txDropped: 4,
    });
  });

  it('rejects bad interface names and reports a missing one as NETWORK_ERROR', async () => {
    for (const bad of ['', '..', '../../etc', 'a/b', 'x'.repeat(16), 'tap 0', 'tap\n']) {
      expect((await failure(readNetDevCounters(bad, { root }))).code).toBe('INVALID_SPEC');
    }
    const missing = await failure(readNetDevCounters('tap404', { root }));
    expect(missing.code).toBe('NETWORK_ERROR');
    expect(missing.message).toContain('tap404');
  });

  it('reads the real loopback interface', async () => {
    const lo = await readNetDevCounters('lo');
    for (const value of Object.values(lo)) {
      expect(Number.isInteger(value)).toBe(true);
      expect(value).toBeGreaterThanOrEqual(0);
    }
  });
});

describe('host readers (fixtures)', () => {
  it('reads /proc/stat in seconds and computes the busy fraction between samples', async () => {
    await fixture(
      'proc/stat',
      'cpu  1000 200 300 8000 100 10 20 30 0 0\ncpu0 500 100 150 4000 50 5 10 15 0 0\nintr 1\n',
    );
    const before = await readHostCpuTimes({ root, clockTicks: 100 });
    expect(before).toEqual({
      user: 10,
      nice: 2,
      system: 3,
      idle: 80,
      iowait: 1,
      irq: 0.1,
      softirq: 0.2,
      steal: 0.3,
    });
    const after: HostCpuTimes = {
      ...before,
      user: before.user + 2,
      system: before.system + 1,
      idle: before.idle + 6.5,
      iowait: before.iowait + 0.5,
    };
    // 3 s busy out of 10 s
    expect(cpuBusyFraction(before, after)).toBeCloseTo(0.3, 10);
    expect(cpuBusyFraction(before, before)).toBe(0);
    expect(cpuBusyFraction(after, before)).toBe(0);
  });

  it('reads memory and load average', async () => {
    await fixture(
      'proc/meminfo',
      'MemTotal:       24684084 kB\nMemFree:        23921500 kB\nMemAvailable:   24044704 kB\nBuffers:  1 kB\n',
    );
    await fixture('proc/loadavg', '1.25 0.50 0.05 3/150 10352\n');
    expect(await readHostMemory({ root })).toEqual({
      totalBytes: 24684084 * 1024,
      freeBytes: 23921500 * 1024,
      availableBytes: 24044704 * 1024,
    });
    expect(await readLoadAverage({ root })).toEqual({
      one: 1.25,
      five: 0.5,
      fifteen: 0.05,
      runnableTasks: 3,
      totalTasks: 150,
    });
  });

  it('fails with INVALID_STATE on missing or malformed host files', async () => {
    await fixture('proc/meminfo', 'MemTotal: 1 kB\n');
    expect((await failure(readHostMemory({ root }))).code).toBe('INVALID_STATE');
    expect((await failure(readLoadAverage({ root }))).code).toBe('INVALID_STATE');
    await fixture('proc/stat', 'intr 1\n');
    expect((await failure(readHostCpuTimes({ root, clockTicks: 100 }))).code).toBe('INVALID_STATE');
  });
});

describe('against the real /proc', () => {
  it('reports rising CPU time of this process and its main thread after a busy loop', async () => {
    const pid = process.pid;
    const processBefore = await readProcessCpuSeconds(pid);
    const threadBefore = await readThreadCpuSeconds(pid, pid);
    expect(processBefore).toBeGreaterThanOrEqual(0);
    expect(threadBefore).toBeGreaterThanOrEqual(0);
    burnCpu(400);
    const processAfter = await readProcessCpuSeconds(pid);
    const threadAfter = await readThreadCpuSeconds(pid, pid);
    expect(processAfter - processBefore).toBeGreaterThanOrEqual(0.2);
    expect(threadAfter - threadBefore).toBeGreaterThanOrEqual(0.2);
    expect(threadAfter).toBeLessThanOrEqual(processAfter + 0.02);
  });

  it('reports RSS matching /proc/self/statm', async () => {
    const rss = await readProcessRssBytes(process.pid);
    const statmPages = Number((await readFile('/proc/self/statm', 'utf8')).split(' ')[1]);
    expect(rss).toBeGreaterThan(10 * 1024 * 1024);
    // Same quantity from another file (pages of 4 KiB on x86-64), allowing for growth in between.
    expect(Math.abs(rss - statmPages * 4096)).toBeLessThan(8 * 1024 * 1024);
  });

  it('reads host CPU times, memory, load and filesystem space', async () => {
    const cpu = await readHostCpuTimes();
    expect(cpu.user + cpu.system + cpu.idle).toBeGreaterThan(0);
    burnCpu(200);
    const later = await readHostCpuTimes();
    const fraction = cpuBusyFraction(cpu, later);
    expect(fraction).toBeGreaterThan(0);
    expect(fraction).toBeLessThanOrEqual(1);

    const memory = await readHostMemory();
    expect(memory.totalBytes).toBeGreaterThan(memory.availableBytes);
    expect(memory.availableBytes).toBeGreaterThan(0);

    const load = await readLoadAverage();
    expect(load.one).toBeGreaterThanOrEqual(0);
    expect(load.totalTasks).toBeGreaterThan(0);

    const fs = await filesystemStats(root);
    expect(fs.totalBytes).toBeGreaterThan(0);
    expect(fs.freeBytes).toBeLessThanOrEqual(fs.totalBytes);
    expect(fs.availableBytes).toBeLessThanOrEqual(fs.freeBytes);
    expect((await failure(filesystemStats(join(root, 'missing')))).code).toBe('DISK_ERROR');
  });

  it('asks getconf for the clock tick rate once', async () => {
    const ticks = await clockTicksPerSecond();
    expect(Number.isInteger(ticks)).toBe(true);
    expect(ticks).toBeGreaterThan(0);
    expect(clockTicksPerSecond()).toBe(clockTicksPerSecond());
  });
});
