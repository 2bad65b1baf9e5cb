import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { QmpCommandError, QmpCommands, QmpMonitor } from '../../src/qmp/index.js';

// Real QEMU 7.2 under TCG, paused before the guest starts (-S): no guest image needed.

interface RunningQemu {
  process: ChildProcess;
  dir: string;
  socketPath: string;
  stderr: () => string;
}

const started: RunningQemu[] = [];
const monitors: QmpMonitor[] = [];

afterEach(async () => {
  await Promise.all(monitors.splice(0).map((m) => m.close()));
  for (const qemu of started.splice(0)) {
    if (isRunning(qemu.process)) {
      const exited = waitForExit(qemu.process, 5_000);
      qemu.process.kill('SIGKILL');
      await exited;
    }
    await rm(qemu.dir, { recursive: true, force: true });
  }
});

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<number | string | null> {
  if (!isRunning(child)) return Promise.resolve(child.exitCode ?? child.signalCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`QEMU pid ${child.pid} still running after ${timeoutMs} ms`)),
      timeoutMs,
    );
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? signal);
    });
  });
}

async function startQemu(extraArgs: string[] = []): Promise<RunningQemu> {
  const dir = await mkdtemp(join(tmpdir(), 'hangar-test-qemu-'));
  const socketPath = join(dir, 'qmp.sock');
  const child = spawn(
    'qemu-system-x86_64',
    [
      '-accel',
      'tcg',
      '-M',
      'pc',
      '-nodefaults',
      '-display',
      'none',
      '-S',
      '-name',
      'hangar-test-vm',
      '-qmp',
      `unix:${socketPath},server=on,wait=off`,
      ...extraArgs,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr += chunk;
  });
  const qemu: RunningQemu = { process: child, dir, socketPath, stderr: () => stderr };
  started.push(qemu);
  return qemu;
}

async function connect(qemu: RunningQemu): Promise<{ monitor: QmpMonitor; qmp: QmpCommands }> {
  const monitor = await QmpMonitor.connect(qemu.socketPath, { connectTimeoutMs: 10_000 }).catch(
    (err: unknown) => {
      throw new Error(`QMP connect failed; QEMU stderr: ${qemu.stderr()}`, { cause: err });
    },
  );
  monitors.push(monitor);
  return { monitor, qmp: new QmpCommands(monitor) };
}

describe('QMP against real QEMU', () => {
  it('reports status, version, accelerator and name', async () => {
    const qemu = await startQemu();
    const { monitor, qmp } = await connect(qemu);
    await expect(qmp.queryStatus()).resolves.toMatchObject({ status: 'prelaunch', running: false });
    const version = await qmp.queryVersion();
    expect(version.qemu).toMatchObject({ major: 7, minor: 2 });
    expect(monitor.qemuVersion).toEqual(version.qemu);
    await expect(qmp.queryKvm()).resolves.toEqual({ enabled: false, present: expect.any(Boolean) });
    await expect(qmp.queryName()).resolves.toBe('hangar-test-vm');
  });

  it('gives the host thread id of each vCPU', async () => {
    const qemu = await startQemu(['-smp', '2']);
    const { qmp } = await connect(qemu);
    const cpus = await qmp.queryCpusFast();
    expect(cpus.map((c) => c.cpuIndex)).toEqual([0, 1]);
    for (const cpu of cpus) {
      expect(cpu.target).toBe('x86_64');
      expect(cpu.threadId).toBeGreaterThan(0);
      expect(existsSync(`/proc/${qemu.process.pid}/task/${cpu.threadId}`)).toBe(true);
    }
    const slots = await qmp.queryHotpluggableCpus();
    expect(slots.filter((s) => s.qomPath !== undefined)).toHaveLength(2);
  });

  it('turns an unknown command into QmpCommandError with class CommandNotFound', async () => {
    const qemu = await startQemu();
    const { monitor, qmp } = await connect(qemu);
    const err = await monitor.execute('hangar-no-such-command').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toMatchObject({ errorClass: 'CommandNotFound', command: 'hangar-no-such-command' });
    await expect(qmp.queryStatus()).resolves.toMatchObject({ status: 'prelaunch' });
  });

  it('starts and pauses the VM, seeing RESUME and STOP', async () => {
    const qemu = await startQemu();
    const { monitor, qmp } = await connect(qemu);
    const resumed = monitor.expectEvent('RESUME', { timeoutMs: 5_000 });
    await qmp.cont();
    await resumed.promise;
    await expect(qmp.queryStatus()).resolves.toMatchObject({ status: 'running', running: true });
    const stopped = monitor.expectEvent('STOP', { timeoutMs: 5_000 });
    await qmp.stop();
    await stopped.promise;
    await expect(qmp.queryStatus()).resolves.toMatchObject({ status: 'paused', running: false });
    await expect(qmp.humanMonitorCommand('info status')).resolves.toMatch(/paused/);
  });

  it('sets migration parameters and capabilities under the names QEMU expects', async () => {
    const qemu = await startQemu();
    const { qmp } = await connect(qemu);
    await qmp.migrateSetParameters({
      downtimeLimitMs: 123,
      maxBandwidth: 5_000_000,
      cpuThrottleInitial: 30,
      cpuThrottleIncrement: 5,
      multifdChannels: 4,
    });
    await expect(qmp.queryMigrateParameters()).resolves.toMatchObject({
      downtimeLimitMs: 123,
      maxBandwidth: 5_000_000,
      cpuThrottleInitial: 30,
      cpuThrottleIncrement: 5,
      multifdChannels: 4,
    });
    await qmp.migrateSetCapabilities({ events: true, 'auto-converge': true });
    await expect(qmp.queryMigrateCapabilities()).resolves.toMatchObject({
      events: true,
      'auto-converge': true,
      xbzrle: false,
    });
    await expect(qmp.queryMigrate()).resolves.toEqual({ status: 'none' });
  });

  it('listens for an incoming migration and reports the port it chose', async () => {
    const qemu = await startQemu(['-incoming', 'defer']);
    const { qmp } = await connect(qemu);
    await expect(qmp.queryStatus()).resolves.toMatchObject({ status: 'inmigrate' });
    await qmp.migrateIncoming('tcp:127.0.0.1:0');
    const info = await qmp.queryMigrate();
    const address = info.socketAddress?.[0];
    expect(address).toMatchObject({ type: 'inet', host: '127.0.0.1' });
    expect(Number(address?.port)).toBeGreaterThan(0);
  });

  it('adds block nodes and devices, snapshots a qcow2 node and reads block stats', async () => {
    const qemu = await startQemu();
    const { qmp } = await connect(qemu);
    const base = join(qemu.dir, 'base.qcow2');
    const overlay = join(qemu.dir, 'overlay.qcow2');
    await promisify(execFile)('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);

    await qmp.blockdevAdd({ driver: 'file', 'node-name': 'file-root', filename: base });
    await qmp.blockdevAdd({ driver: 'qcow2', 'node-name': 'disk-root', file: 'file-root' });
    await qmp.deviceAdd({ driver: 'virtio-blk-pci', id: 'root', drive: 'disk-root' });
    await qmp.blockdevSnapshotSync({
      nodeName: 'disk-root',
      snapshotFile: overlay,
      snapshotNodeName: 'snap-root-1',
      format: 'qcow2',
    });
    expect(existsSync(overlay)).toBe(true);

    const block = await qmp.queryBlock();
    const root = block.find((b) => b.inserted?.nodeName === 'snap-root-1');
    expect(root?.inserted).toMatchObject({
      driver: 'qcow2',
      file: overlay,
      backingFileDepth: 1,
      readOnly: false,
    });
    expect(root?.inserted?.image).toMatchObject({ format: 'qcow2', virtualSize: 16 * 1024 * 1024 });

    const pci = await qmp.queryPci();
    expect(pci[0]?.devices.some((d) => d.qdevId === 'root' && d.id.vendor === 0x1af4)).toBe(true);

    const stats = await qmp.queryBlockstats({ queryNodes: true });
    expect(stats.find((s) => s.nodeName === 'snap-root-1')?.stats).toMatchObject({ rdBytes: 0, wrBytes: 0 });
  });

  it('deviceDel resolves once QEMU has really deleted the device', async () => {
    const qemu = await startQemu();
    const { qmp } = await connect(qemu);
    // A virtio-serial port unplugs without guest cooperation, unlike a PCI device under ACPI.
    await qmp.deviceAdd({ driver: 'virtio-serial-pci', id: 'vser0' });
    await qmp.deviceAdd({ driver: 'virtserialport', id: 'port0', bus: 'vser0.0' });
    await qmp.deviceDel('port0', { timeoutMs: 5_000 });
    await expect(qmp.deviceDel('port0', { timeoutMs: 1_000 })).rejects.toMatchObject({
      errorClass: 'DeviceNotFound',
    });
  });

  it('lists machine types and CPU models', async () => {
    const qemu = await startQemu();
    const { qmp } = await connect(qemu);
    const machines = await qmp.queryMachines();
    expect(machines.some((m) => m.name === 'pc' || m.alias === 'pc')).toBe(true);
    expect(machines.filter((m) => m.isDefault)).toHaveLength(1);
    const cpus = await qmp.queryCpuDefinitions();
    expect(cpus.some((c) => c.name === 'qemu64')).toBe(true);
  });

  it('quit makes QEMU exit', async () => {
    const qemu = await startQemu();
    const { monitor, qmp } = await connect(qemu);
    const exited = waitForExit(qemu.process, 10_000);
    await qmp.quit();
    expect(monitor.closed).toBe(true);
    await expect(exited).resolves.toBe(0);
  });
});
