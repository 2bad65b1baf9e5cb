import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QemuDriver } from '../src/driver/qemu/qemu-driver.js';
import { isVmmError } from '../src/errors.js';
import { vmRuntimePaths } from '../src/util/paths.js';
import { isProcessAlive } from '../src/util/process.js';
import { GuestShell } from './support/guest-shell.js';
import {
  eventually,
  killQemuUnder,
  lastTick,
  makeSharedDir,
  makeTestHost,
  type TestHost,
  tinySpec,
} from './support/test-host.js';

const run = promisify(execFile);

/** Real guests under TCG: each test boots its own and removes everything in afterEach. */
describe('qemu driver with real guests', () => {
  let shared: Awaited<ReturnType<typeof makeSharedDir>>;
  let a: TestHost;
  let b: TestHost;
  let drivers: QemuDriver[];
  const open = (host: TestHost) => {
    const d = new QemuDriver({ runtimeDir: host.runtimeDir, pools: host.pools, accelerator: 'tcg' });
    drivers.push(d);
    return d;
  };
  const waitFor = (d: QemuDriver, id: string, re: RegExp, timeoutMs = 60_000) =>
    eventually(async () => ((await d.consoleLog(id)).match(re) ? true : undefined), {
      timeoutMs,
      what: `${re} from ${id}`,
    });
  const ticks = async (d: QemuDriver, id: string) => lastTick(await d.consoleLog(id)) ?? 0;
  const readyCount = async (d: QemuDriver, id: string) =>
    (await d.consoleLog(id, { tailBytes: 1 << 24 })).split('HANGAR-READY').length - 1;
  /** Starts the VM and waits for this boot's marker (the serial log keeps earlier boots). */
  const boot = async (d: QemuDriver, id: string) => {
    const n = await readyCount(d, id);
    const vm = await d.start(id);
    await eventually(async () => ((await readyCount(d, id)) > n ? true : undefined), {
      timeoutMs: 60_000,
      what: `${id} boot`,
    });
    return vm;
  };
  const shell = (host: TestHost, id: string) =>
    GuestShell.connect(vmRuntimePaths(host.runtimeDir, id).shellSocket);

  beforeEach(async () => {
    drivers = [];
    shared = await makeSharedDir();
    a = await makeTestHost({ sharedDir: shared.dir, label: 'ga' });
    b = await makeTestHost({ sharedDir: shared.dir, label: 'gb' });
  });
  afterEach(async () => {
    for (const d of drivers) await d.close();
    await a.cleanup();
    await b.cleanup();
    await shared.cleanup();
  });

  it('boots to the marker, pauses and resumes, stops by ACPI, starts again and is deleted', async () => {
    const d = open(a);
    await d.create(
      tinySpec('life', { cloudInit: { hostname: 'guest-one', userData: '#!/bin/sh\necho user-data-ran\n' } }),
    );
    const { pid } = await d.start('life');
    await waitFor(d, 'life', /HANGAR-READY hostname=guest-one/);
    const log = await d.consoleLog('life');
    expect(log).toContain('user-data-ran');
    expect(log).toMatch(/HANGAR-DATA mounted=\/mnt\/data/);
    await eventually(async () => ((await ticks(d, 'life')) >= 2 ? true : undefined), { what: 'ticks' });

    await d.pause('life');
    const frozen = await ticks(d, 'life');
    await new Promise((r) => setTimeout(r, 2_500));
    expect(await ticks(d, 'life')).toBeLessThanOrEqual(frozen + 1);
    await d.resume('life');
    await eventually(async () => ((await ticks(d, 'life')) >= frozen + 2 ? true : undefined), {
      what: 'ticks after resume',
    });

    const stopped = await d.stop('life', { timeoutMs: 20_000 });
    expect(stopped.state).toBe('STOPPED');
    expect(await isProcessAlive(pid!)).toBe(false);
    expect(await d.consoleLog('life')).toMatch(/HANGAR-POWEROFF|reboot: Power down/);

    await boot(d, 'life');
    // The data disk kept the first boot's line.
    const sh = await shell(a, 'life');
    try {
      expect(await sh.run('cat /mnt/data/boot-log')).toMatch(/boot 1\s+boot 2/);
    } finally {
      sh.close();
    }
    await d.forceStop('life');
    await d.delete('life');
    expect(existsSync(path.join(shared.dir, 'life'))).toBe(true); // the folder; the overlay is gone
    expect(existsSync(path.join(shared.dir, 'life', 'data.qcow2'))).toBe(false);
    expect(existsSync(vmRuntimePaths(a.runtimeDir, 'life').dir)).toBe(false);
  });

  it('keeps the guest running when the controlling process is SIGKILLed, and re-adopts it', async () => {
    const dist = path.resolve(import.meta.dirname, '../dist/index.js');
    expect(existsSync(dist), 'build vmm-core first (npm run build)').toBe(true);
    const script = `
      const { QemuDriver } = await import(${JSON.stringify(dist)});
      const d = new QemuDriver(${JSON.stringify({ runtimeDir: a.runtimeDir, pools: a.pools, accelerator: 'tcg' })});
      await d.create(${JSON.stringify(tinySpec('adopt'))});
      const vm = await d.start('adopt');
      console.log('PID ' + vm.pid);
      setInterval(() => {}, 1000);`;
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
    });
    const qemuPid = await eventually(
      () => {
        const m = /PID (\d+)/.exec(out);
        return m ? Number(m[1]) : undefined;
      },
      { what: 'child to start the VM', timeoutMs: 60_000 },
    );
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));

    const d = open(a);
    const { adopted, orphans } = await d.adopt();
    expect(orphans).toEqual([]);
    expect(adopted.map((v) => [v.id, v.state, v.pid])).toEqual([['adopt', 'RUNNING', qemuPid]]);
    await waitFor(d, 'adopt', /HANGAR-READY/);
    const t1 = await ticks(d, 'adopt');
    await eventually(async () => ((await ticks(d, 'adopt')) > t1 + 1 ? true : undefined), {
      what: 'ticks rising',
    });
    const { stdout } = await run('pgrep', ['-f', vmRuntimePaths(a.runtimeDir, 'adopt').pidfile]);
    expect(stdout.trim().split('\n')).toEqual([String(qemuPid)]);
    await d.forceStop('adopt');
  });

  it('live-migrates over loopback with shared storage: counter continues, source gone, stats recorded', async () => {
    const src = open(a);
    const dst = open(b);
    await src.create(tinySpec('mig'));
    const { pid: srcPid } = await src.start('mig');
    await waitFor(src, 'mig', /HANGAR-READY/);
    const sh = await shell(a, 'mig');
    await sh.run('echo migrated-value > /mnt/data/value && sync');
    sh.close();
    await eventually(async () => ((await ticks(src, 'mig')) >= 3 ? true : undefined), { what: 'ticks' });

    const { uri } = await dst.prepareIncoming((await src.get('mig')).spec, { listenHost: '127.0.0.1' });
    expect(uri).toMatch(/^tcp:127\.0\.0\.1:\d+$/);
    const progress: string[] = [];
    const result = await src.migrate('mig', uri, { downtimeLimitMs: 50 }, (p) => progress.push(p.status));
    const before = await ticks(src, 'mig');
    expect(result.totalMs).toBeGreaterThan(0);
    expect(result.downtimeMs).toBeGreaterThanOrEqual(0);
    expect(result.transferredBytes).toBeGreaterThan(0);
    expect(progress).toContain('completed');

    const vm = await dst.finishIncoming('mig');
    expect(vm.state).toBe('RUNNING');
    await src.completeOutgoing('mig');
    expect(await isProcessAlive(srcPid!)).toBe(false);

    await eventually(async () => ((await ticks(dst, 'mig')) > before ? true : undefined), {
      what: 'ticks on destination',
    });
    const destLog = await dst.consoleLog('mig');
    const firstOnDest = Number(/HANGAR-TICK (\d+)/.exec(destLog)?.[1]);
    expect(firstOnDest).toBeGreaterThanOrEqual(before);
    expect(destLog).not.toContain('HANGAR-READY'); // no reboot: the same guest continued
    const sh2 = await shell(b, 'mig');
    try {
      expect((await sh2.run('cat /mnt/data/value')).trim()).toBe('migrated-value');
    } finally {
      sh2.close();
    }
    await dst.forceStop('mig');
  });

  it('cancelling a migration keeps the source running and leaves nothing on the destination', async () => {
    const src = open(a);
    const dst = open(b);
    await src.create(tinySpec('cancel'));
    await src.start('cancel');
    await waitFor(src, 'cancel', /HANGAR-READY/);
    const { uri } = await dst.prepareIncoming((await src.get('cancel')).spec, { listenHost: '127.0.0.1' });
    const dstPid = (await dst.get('cancel')).pid!;
    let cancelled = false;
    const migration = src.migrate(
      'cancel',
      uri,
      { maxBandwidth: 512 * 1024, progressIntervalMs: 50 },
      (p) => {
        if (!cancelled && p.transferredBytes > 0) {
          cancelled = true;
          void src.cancelMigration('cancel');
        }
      },
    );
    const err = await migration.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isVmmError(err, 'MIGRATION_CANCELLED'), String(err)).toBe(true);
    expect((await src.get('cancel')).state).toBe('RUNNING');
    const t = await ticks(src, 'cancel');
    await eventually(async () => ((await ticks(src, 'cancel')) > t ? true : undefined), {
      what: 'source still ticking',
    });
    await dst.abortIncoming('cancel');
    expect(await isProcessAlive(dstPid)).toBe(false);
    expect(existsSync(vmRuntimePaths(b.runtimeDir, 'cancel').dir)).toBe(false);
    expect(existsSync(path.join(shared.dir, 'cancel', 'data.qcow2'))).toBe(true);
    await src.forceStop('cancel');
  });

  it('snapshots round-trip: write, snapshot, write, revert, read the first value (internal and external)', async () => {
    const d = open(a);
    await d.create(tinySpec('snap'));
    const write = async (value: string) => {
      await boot(d, 'snap');
      const sh = await shell(a, 'snap');
      try {
        await sh.run(`echo ${value} > /mnt/data/value && sync`);
      } finally {
        sh.close();
      }
    };
    const readBack = async () => {
      await boot(d, 'snap');
      const sh = await shell(a, 'snap');
      try {
        return (await sh.run('cat /mnt/data/value')).trim();
      } finally {
        sh.close();
      }
    };
    // Internal snapshot while stopped.
    await write('first');
    await d.stop('snap', { timeoutMs: 20_000 });
    await d.createSnapshot('snap', 'one');
    await write('second');
    await d.stop('snap', { timeoutMs: 20_000 });
    await d.revertSnapshot('snap', 'one');
    expect(await readBack()).toBe('first');

    // External snapshot while running.
    const sh = await shell(a, 'snap');
    await sh.run('echo third > /mnt/data/value && sync');
    sh.close();
    await d.createSnapshot('snap', 'two');
    const sh2 = await shell(a, 'snap');
    await sh2.run('echo fourth > /mnt/data/value && sync');
    sh2.close();
    await d.stop('snap', { timeoutMs: 20_000 });
    await d.revertSnapshot('snap', 'two');
    expect(await readBack()).toBe('third');
    expect((await d.listSnapshots('snap')).map((s) => s.name).sort()).toEqual(['one', 'two']);
    await d.forceStop('snap');
  });

  it('save → restore keeps the counter going from where it was', async () => {
    const d = open(a);
    await d.create(tinySpec('save'));
    await d.start('save');
    await waitFor(d, 'save', /HANGAR-READY/);
    await eventually(async () => ((await ticks(d, 'save')) >= 3 ? true : undefined), { what: 'ticks' });
    const file = path.join(a.pools.local!.path, 'save.state');
    const saved = await d.save('save', file);
    expect(saved.bytes).toBeGreaterThan(1024);
    expect((await d.get('save')).state).toBe('STOPPED');
    const atSave = await ticks(d, 'save');
    const restored = await d.restore('save', file);
    expect(restored.state).toBe('RUNNING');
    await eventually(async () => ((await ticks(d, 'save')) > atSave ? true : undefined), {
      what: 'ticks after restore',
    });
    const log = await d.consoleLog('save');
    const afterMark = log.slice(log.lastIndexOf('--- hangar: qemu start'));
    const firstAfter = Number(/HANGAR-TICK (\d+)/.exec(afterMark)?.[1]);
    expect(firstAfter).toBeGreaterThanOrEqual(atSave);
    expect(afterMark).not.toContain('HANGAR-READY');
    await d.forceStop('save');
  });

  it('hot-plugs a disk that shows up inside the guest and unplugs cleanly', async () => {
    const d = open(a);
    await d.create(tinySpec('hot'));
    await d.start('hot');
    await waitFor(d, 'hot', /HANGAR-READY/);
    const sh = await shell(a, 'hot');
    try {
      const before = (await sh.run('ls /sys/block')).split(/\s+/).filter((x) => x.startsWith('vd'));
      await d.attachDisk('hot', {
        name: 'extra',
        file: { pool: 'local', path: 'hot-extra.qcow2' },
        format: 'qcow2',
        sizeBytes: 32 * 1024 * 1024,
        cache: 'none',
        readOnly: false,
      });
      const added = await eventually(
        async () => {
          const now = (await sh.run('ls /sys/block')).split(/\s+/).filter((x) => x.startsWith('vd'));
          return now.length > before.length ? now.filter((x) => !before.includes(x)) : undefined;
        },
        { what: 'new disk in the guest' },
      );
      expect(added).toHaveLength(1);
      expect((await sh.run(`cat /sys/block/${added[0]}/size`)).trim()).toBe(String((32 * 1024 * 1024) / 512));
      await d.detachDisk('hot', 'extra');
      const after = (await sh.run('ls /sys/block')).split(/\s+/).filter((x) => x.startsWith('vd'));
      expect(after.sort()).toEqual(before.sort());
    } finally {
      sh.close();
    }
    await d.forceStop('hot');
  });

  it('boots a BIOS-bootable qcow2 disk (no -kernel), as stock cloud images boot', async () => {
    const d = open(a);
    await d.create(
      tinySpec('diskboot', {
        boot: { type: 'disk' },
        disks: [
          {
            name: 'root',
            file: { pool: 'local', path: 'diskboot.qcow2' },
            backing: { pool: 'images', path: 'boot.qcow2', format: 'qcow2' },
            cache: 'writeback',
            bootIndex: 0,
          },
        ],
      }),
    );
    await d.start('diskboot');
    await waitFor(d, 'diskboot', /HANGAR-READY hostname=h-diskboot/, 90_000);
    await d.forceStop('diskboot');
  });

  it('reports an unexplained QEMU in the runtime folder as an orphan and never kills it', async () => {
    const d = open(a);
    await d.create(tinySpec('orphan'));
    const { pid } = await d.start('orphan');
    await d.close();
    // Lose the manifest, as if someone deleted it by hand.
    const { rm } = await import('node:fs/promises');
    await rm(vmRuntimePaths(a.runtimeDir, 'orphan').manifest);
    const again = open(a);
    const { adopted, orphans } = await again.adopt();
    expect(adopted).toEqual([]);
    expect(orphans).toEqual([
      { path: vmRuntimePaths(a.runtimeDir, 'orphan').dir, pid, reason: expect.stringContaining('vm.json') },
    ]);
    expect(await isProcessAlive(pid!)).toBe(true);
    process.kill(pid!, 'SIGKILL');
  });

  it('samples vCPU time that grows while the guest runs', async () => {
    const d = open(a);
    await d.create(tinySpec('cpu'));
    await boot(d, 'cpu');
    const first = await d.sampleVm('cpu');
    const sh = await shell(a, 'cpu');
    try {
      await sh.run('i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done');
    } finally {
      sh.close();
    }
    const second = await d.sampleVm('cpu');
    expect(second.cpuSecondsTotal).toBeGreaterThan(first.cpuSecondsTotal);
    expect(second.block.find((b) => b.device.includes('data'))?.wrBytes ?? 0).toBeGreaterThan(0);
    await d.forceStop('cpu');
  });

  it('reports a VM whose QEMU died under it as STOPPED', async () => {
    const d = open(a);
    await d.create(tinySpec('left'));
    const { pid } = await d.start('left');
    const killed = await killQemuUnder(a.root);
    expect(killed).toContain(pid);
    expect(await eventually(async () => ((await isProcessAlive(pid!)) ? undefined : true))).toBe(true);
    expect((await d.get('left')).state).toBe('STOPPED');
  });
});
