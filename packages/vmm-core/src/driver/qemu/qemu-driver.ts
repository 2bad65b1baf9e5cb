import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { defaultCpuModel, probeAccelerator, probeQemu } from '../../accel/index.js';
import { buildNoCloudSeed } from '../../cloud-init/index.js';
import * as qemuImg from '../../disk/index.js';
import { isVmmError, VmmError } from '../../errors.js';
import {
  readHostCpuTimes,
  readHostMemory,
  readLoadAverage,
  readNetDevCounters,
  readProcessRssBytes,
  readThreadCpuSeconds,
} from '../../metrics/index.js';
import { assertNetnsName } from '../../network/ip.js';
import { type MigrationInfo, QmpCommands, type QmpEvent, QmpMonitor } from '../../qmp/index.js';
import {
  type DiskSpec,
  type NicSpec,
  parseDiskSpec,
  parseNicSpec,
  parseVmSpec,
  type VmSpec,
  type VmSpecInput,
} from '../../spec/vm-spec.js';
import {
  assertActionAllowed,
  stateFromQemuStatus,
  type VmAction,
  type VmState,
} from '../../state/vm-state.js';
import { runCommand } from '../../util/exec.js';
import { KeyedMutex } from '../../util/mutex.js';
import {
  assertPlainPath,
  type PoolMap,
  resolvePoolPath,
  type VmRuntimePaths,
  vmRuntimePaths,
} from '../../util/paths.js';
import { isProcessAlive, isQemuWithPidfile, readPidfile, sleep, waitForExit } from '../../util/process.js';
import { Reverter } from '../../util/reverter.js';
import type {
  AdoptResult,
  HostSample,
  Hypervisor,
  HypervisorCapabilities,
  MigrateOptions,
  MigrationProgress,
  MigrationResult,
  OrphanInfo,
  PrepareIncomingOptions,
  SaveResult,
  SnapshotInfo,
  StoragePool,
  VmEvent,
  VmInfo,
  VmSample,
  VmSize,
} from '../hypervisor.js';
import { assertMigratable, assertSpecFitsHost } from '../spec-checks.js';
import { buildQemuArgv, diskBackendObjects, nicBackendObjects } from './argv.js';

export interface QemuDriverOptions {
  /** Per-host folder holding one sub-folder per VM (pidfile, QMP socket, serial log, seed). */
  runtimeDir: string;
  pools: Record<string, StoragePool>;
  qemuBinary?: string;
  accelerator?: 'auto' | 'kvm' | 'tcg';
  /** Default time a guest gets to power off after ACPI powerdown. */
  stopTimeoutMs?: number;
  /**
   * Launch QEMU inside this named network namespace (`ip netns exec NS qemu…`), where its tap
   * devices live. `ip` execs QEMU, so the guest's process is still QEMU with the same argv.
   */
  netns?: string;
}

/** What vmm-core persists per VM in its runtime folder (`vm.json`). */
interface VmManifest {
  version: 1;
  spec: VmSpec;
  /** External snapshot overlays created while running, per disk: newest last. */
  externalSnapshots: Record<string, Array<{ name: string; file: string; createdAt: string }>>;
  /** Power state to return to after `restore`. */
  savedState?: 'RUNNING' | 'PAUSED';
  createdAt: string;
}

interface Attached {
  pid: number;
  monitor: QmpMonitor;
  qmp: QmpCommands;
  lastShutdownReason: string | undefined;
  migrating: boolean;
}

const MANIFEST_VERSION = 1;

/**
 * The real driver: each VM is one daemonized `qemu-system-x86_64` whose runtime folder holds a
 * pidfile and QMP socket, so a new driver instance (after an agent restart) re-adopts it.
 * State is always read from QEMU, never remembered.
 */
export class QemuDriver implements Hypervisor {
  readonly driver = 'qemu' as const;
  private readonly binary: string;
  private readonly pools: PoolMap;
  private readonly attached = new Map<string, Attached>();
  private readonly attaching = new Map<string, Promise<Attached | undefined>>();
  private readonly listeners = new Set<(e: VmEvent) => void>();
  private readonly locks = new KeyedMutex();
  private capabilitiesCache: Promise<HypervisorCapabilities> | undefined;
  private closed = false;

  constructor(private readonly options: QemuDriverOptions) {
    this.binary = options.qemuBinary ?? 'qemu-system-x86_64';
    this.pools = options.pools;
    if (options.netns !== undefined) assertNetnsName(options.netns);
  }

  capabilities(): Promise<HypervisorCapabilities> {
    this.capabilitiesCache ??= (async () => {
      const accel = await probeAccelerator({ override: this.options.accelerator ?? 'auto' });
      const qemu = await probeQemu(this.binary);
      return {
        driver: 'qemu',
        accelerator: accel.accelerator,
        acceleratorReason: accel.reason,
        qemuVersion: `${qemu.version.major}.${qemu.version.minor}.${qemu.version.micro}`,
        machineTypes: qemu.machineTypes,
        defaultMachineType: qemu.defaultMachine ?? 'pc',
        cpuModels: qemu.cpuModels,
        defaultCpuModel: defaultCpuModel(accel.accelerator),
        features: {
          liveMigration: true,
          saveRestore: true,
          diskHotplug: true,
          nicHotplug: true,
          internalSnapshots: true,
          externalSnapshots: true,
        },
      } satisfies HypervisorCapabilities;
    })();
    return this.capabilitiesCache;
  }

  onEvent(handler: (event: VmEvent) => void): () => void {
    this.listeners.add(handler);
    return () => this.listeners.delete(handler);
  }

  // ---- lifecycle -------------------------------------------------------------------------

  async create(input: VmSpecInput): Promise<VmInfo> {
    const spec = parseVmSpec(input);
    return this.locks.run(spec.id, async () => {
      const boot = assertSpecFitsHost(spec, this.options.runtimeDir, this.pools, await this.capabilities());
      for (const file of [boot.kernel, boot.initrd]) {
        if (file !== undefined && !(await exists(file)))
          throw new VmmError('INVALID_SPEC', `${file} does not exist`);
      }
      const paths = vmRuntimePaths(this.options.runtimeDir, spec.id);
      if (await exists(paths.manifest)) {
        throw new VmmError('VM_EXISTS', `VM ${spec.id} already exists on this host`, {
          details: { id: spec.id },
        });
      }
      const reverter = new Reverter();
      try {
        await mkdir(paths.dir, { recursive: true, mode: 0o750 });
        reverter.add(() => rm(paths.dir, { recursive: true, force: true }));
        for (const disk of spec.disks) await this.prepareDisk(disk, reverter);
        await this.writeSeed(spec, paths);
        await this.writeManifest(paths, {
          version: MANIFEST_VERSION,
          spec,
          externalSnapshots: {},
          createdAt: new Date().toISOString(),
        });
        reverter.success();
      } finally {
        await reverter.fail();
      }
      return this.info(spec.id);
    });
  }

  async start(id: string): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'start');
      await this.launch(manifest, { incoming: false });
      return this.info(id);
    });
  }

  async stop(id: string, options: { timeoutMs?: number } = {}): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      await this.requireAction(id, 'stop');
      const att = await this.attach(id);
      if (att) {
        const timeoutMs = options.timeoutMs ?? this.options.stopTimeoutMs ?? 30_000;
        await att.qmp.systemPowerdown().catch((err: unknown) => ignoreDisconnect(err));
        if (!(await waitForExit(att.pid, timeoutMs))) await this.terminate(id, att);
      }
      return this.info(id);
    });
  }

  async forceStop(id: string): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      await this.requireAction(id, 'forceStop');
      const att = await this.attach(id);
      if (att) await this.terminate(id, att);
      return this.info(id);
    });
  }

  async reboot(id: string): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      await this.requireAction(id, 'reboot');
      const att = await this.requireAttached(id);
      await att.qmp.systemReset();
      return this.info(id);
    });
  }

  async pause(id: string): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      await this.requireAction(id, 'pause');
      await (await this.requireAttached(id)).qmp.stop();
      return this.info(id);
    });
  }

  async resume(id: string): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      await this.requireAction(id, 'resume');
      await (await this.requireAttached(id)).qmp.cont();
      return this.info(id);
    });
  }

  async resize(id: string, size: VmSize): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'resize');
      // Only the definition changes: QEMU reads -smp/-m from it at the next launch, and the
      // manifest is replaced by rename, so a crash leaves either the old size or the new one.
      const spec = parseVmSpec({ ...manifest.spec, vcpus: size.vcpus, memoryMiB: size.memoryMiB });
      assertSpecFitsHost(spec, this.options.runtimeDir, this.pools, await this.capabilities());
      await this.writeManifest(vmRuntimePaths(this.options.runtimeDir, id), { ...manifest, spec });
      return this.info(id);
    });
  }

  async delete(id: string): Promise<void> {
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'delete');
      const paths = vmRuntimePaths(this.options.runtimeDir, id);
      // Overlays vmm-core created (disks with a backing image) belong to the VM; plain volumes do not.
      for (const disk of manifest.spec.disks) {
        if (!disk.backing) continue;
        await rm(resolvePoolPath(this.pools, disk.file), { force: true });
        for (const snap of manifest.externalSnapshots[disk.name] ?? []) {
          await rm(resolvePoolPath(this.pools, { pool: disk.file.pool, path: snap.file }), { force: true });
        }
      }
      await rm(paths.dir, { recursive: true, force: true });
    });
  }

  async get(id: string): Promise<VmInfo> {
    return this.info(id);
  }

  async list(): Promise<VmInfo[]> {
    const out: VmInfo[] = [];
    for (const id of await this.knownIds()) {
      try {
        out.push(await this.info(id));
      } catch (err) {
        if (!isVmmError(err, 'VM_NOT_FOUND')) throw err;
      }
    }
    return out;
  }

  async adopt(): Promise<AdoptResult> {
    const adopted: VmInfo[] = [];
    const orphans: OrphanInfo[] = [];
    const vmsDir = path.join(this.options.runtimeDir, 'vms');
    let entries: string[] = [];
    try {
      entries = await readdir(vmsDir);
    } catch {
      return { adopted, orphans };
    }
    for (const entry of entries.sort()) {
      const dir = path.join(vmsDir, entry);
      let paths: VmRuntimePaths | undefined;
      try {
        paths = vmRuntimePaths(this.options.runtimeDir, entry);
      } catch {
        paths = undefined;
      }
      const pidfile = path.join(dir, 'qemu.pid');
      const pid = await readPidfile(pidfile);
      const running = pid !== undefined && (await isQemuWithPidfile(pid, pidfile));
      let manifestOk = false;
      if (paths) {
        try {
          await this.readManifest(entry);
          manifestOk = true;
        } catch {
          manifestOk = false;
        }
      }
      if (!manifestOk) {
        if (running || (await exists(pidfile))) {
          orphans.push({
            path: dir,
            pid: running ? pid : undefined,
            reason: 'runtime folder without a readable vm.json',
          });
        }
        continue;
      }
      adopted.push(await this.info(entry));
    }
    return { adopted, orphans };
  }

  async consoleLog(id: string, options: { tailBytes?: number } = {}): Promise<string> {
    await this.readManifest(id);
    const paths = vmRuntimePaths(this.options.runtimeDir, id);
    const tail = Math.max(0, Math.min(options.tailBytes ?? 64 * 1024, 16 * 1024 * 1024));
    try {
      const buf = await readFile(paths.serialLog);
      return buf.subarray(Math.max(0, buf.length - tail)).toString('utf8');
    } catch {
      return '';
    }
  }

  // ---- migration ---------------------------------------------------------------------------

  async prepareIncoming(
    input: VmSpecInput,
    options: PrepareIncomingOptions,
  ): Promise<{ uri: string; vm: VmInfo }> {
    const spec = parseVmSpec(input);
    assertMigratable(spec, this.pools);
    return this.locks.run(spec.id, async () => {
      const boot = assertSpecFitsHost(spec, this.options.runtimeDir, this.pools, await this.capabilities());
      for (const file of [boot.kernel, boot.initrd]) {
        if (file !== undefined && !(await exists(file)))
          throw new VmmError('INVALID_SPEC', `${file} does not exist`);
      }
      const paths = vmRuntimePaths(this.options.runtimeDir, spec.id);
      if (await exists(paths.manifest)) {
        throw new VmmError('VM_EXISTS', `VM ${spec.id} already exists on this host`, {
          details: { id: spec.id },
        });
      }
      for (const disk of spec.disks) {
        const file = resolvePoolPath(this.pools, disk.file);
        if (!(await exists(file))) {
          throw new VmmError(
            'MIGRATION_REFUSED',
            `disk ${disk.name} (${file}) is not visible on the destination`,
            {
              details: { disk: disk.name, file },
            },
          );
        }
      }
      const reverter = new Reverter();
      try {
        await mkdir(paths.dir, { recursive: true, mode: 0o750 });
        reverter.add(() => rm(paths.dir, { recursive: true, force: true }));
        await this.writeSeed(spec, paths);
        const manifest: VmManifest = {
          version: MANIFEST_VERSION,
          spec,
          externalSnapshots: {},
          createdAt: new Date().toISOString(),
        };
        await this.writeManifest(paths, manifest);
        const att = await this.launch(manifest, { incoming: true });
        reverter.add(() => this.terminate(spec.id, att));
        const host = options.listenHost.includes(':') ? `[${options.listenHost}]` : options.listenHost;
        await att.qmp.migrateSetCapabilities({ events: true });
        await att.qmp.migrateIncoming(`tcp:${host}:${options.port ?? 0}`);
        const info = await att.qmp.queryMigrate();
        const port = info.socketAddress?.find((a) => a.port !== undefined)?.port ?? options.port;
        if (!port)
          throw new VmmError('QEMU_FAILED', 'QEMU did not report the port it listens on for the migration');
        reverter.success();
        return { uri: `tcp:${host}:${port}`, vm: await this.info(spec.id) };
      } finally {
        await reverter.fail();
      }
    });
  }

  async migrate(
    id: string,
    uri: string,
    options: MigrateOptions = {},
    onProgress?: (p: MigrationProgress) => void,
  ): Promise<MigrationResult> {
    if (!/^tcp:(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(uri)) {
      throw new VmmError('INVALID_SPEC', `migration URI "${uri}" must be tcp:HOST:PORT`);
    }
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      assertMigratable(manifest.spec, this.pools);
      await this.requireAction(id, 'migrate');
      const att = await this.requireAttached(id);
      await att.qmp.migrateSetCapabilities({ events: true, 'auto-converge': options.autoConverge ?? true });
      await att.qmp.migrateSetParameters({
        downtimeLimitMs: options.downtimeLimitMs ?? 300,
        ...(options.maxBandwidth !== undefined ? { maxBandwidth: options.maxBandwidth } : {}),
      });
      att.migrating = true;
      this.emit({ vmId: id, type: 'state', state: 'MIGRATING', reason: 'migration-started', at: new Date() });
      const started = Date.now();
      try {
        await att.qmp.migrate(uri);
        return await this.followMigration(id, att, started, options, onProgress);
      } finally {
        att.migrating = false;
        const after = await this.info(id).catch(() => undefined);
        if (after)
          this.emit({
            vmId: id,
            type: 'state',
            state: after.state,
            reason: 'migration-ended',
            at: new Date(),
          });
      }
    });
  }

  private async followMigration(
    id: string,
    att: Attached,
    started: number,
    options: MigrateOptions,
    onProgress?: (p: MigrationProgress) => void,
  ): Promise<MigrationResult> {
    const interval = options.progressIntervalMs ?? 100;
    const stallMs = options.stallTimeoutMs ?? 30_000;
    let lowestRemaining = Number.POSITIVE_INFINITY;
    let lastImprovement = Date.now();
    let cancelReason: string | undefined;
    for (;;) {
      let info = await att.qmp.queryMigrate();
      const elapsed = Date.now() - started;
      // QEMU 7.2 can report `completed` a moment before it has filled in total-time and
      // downtime: ask again briefly rather than report zeros.
      for (let i = 0; info.status === 'completed' && !info.totalTimeMs && i < 50; i++) {
        await sleep(10);
        info = await att.qmp.queryMigrate();
      }
      if (info.status === 'completed') {
        const transferred = info.ram?.transferred ?? 0;
        onProgress?.(progressFrom(info, elapsed));
        return {
          downtimeMs: info.downtimeMs ?? 0,
          totalMs: info.totalTimeMs ?? elapsed,
          transferredBytes: transferred,
          setupMs: info.setupTimeMs,
        };
      }
      if (info.status === 'failed' || info.status === 'cancelled') {
        await this.resumeSourceAfterFailure(att);
        if (cancelReason) {
          throw new VmmError('MIGRATION_FAILED', cancelReason, { details: { qemuStatus: info.status } });
        }
        if (info.status === 'cancelled') {
          throw new VmmError(
            'MIGRATION_CANCELLED',
            `migration of ${id} was cancelled; the source keeps running`,
          );
        }
        throw new VmmError(
          'MIGRATION_FAILED',
          `migration of ${id} failed: ${info.errorDesc ?? 'QEMU gave no reason'}`,
          {
            details: { qemuError: info.errorDesc },
          },
        );
      }
      onProgress?.(progressFrom(info, elapsed));
      if (cancelReason === undefined) {
        const remaining = info.ram?.remaining;
        if (remaining !== undefined && remaining < lowestRemaining * 0.98) {
          lowestRemaining = remaining;
          lastImprovement = Date.now();
        }
        if (options.completionTimeoutMs !== undefined && elapsed > options.completionTimeoutMs) {
          cancelReason = `migration of ${id} did not complete within ${options.completionTimeoutMs} ms; cancelled, the source keeps running`;
        } else if (Date.now() - lastImprovement > stallMs) {
          cancelReason = `migration of ${id} stalled: remaining memory has not shrunk for ${stallMs} ms; cancelled, the source keeps running`;
        }
        if (cancelReason) await att.qmp.migrateCancel().catch(() => undefined);
      }
      await sleep(interval);
    }
  }

  private async resumeSourceAfterFailure(att: Attached): Promise<void> {
    // QEMU restarts the source itself after a failed/cancelled migration when it had been running,
    // but a failure during switchover can leave it paused: make sure the guest runs again.
    const status = await att.qmp.queryStatus().catch(() => undefined);
    if (status && (status.status === 'postmigrate' || status.status === 'finish-migrate')) {
      await att.qmp.cont().catch(() => undefined);
    }
  }

  async cancelMigration(id: string): Promise<void> {
    // Not under the VM lock: migrate() holds it for the whole migration.
    const att = await this.requireAttached(id);
    const info = await att.qmp.queryMigrate();
    if (
      !['setup', 'active', 'pre-switchover', 'device', 'wait-unplug', 'postcopy-active'].includes(
        info.status ?? '',
      )
    ) {
      throw new VmmError(
        'INVALID_STATE',
        `VM ${id} has no migration in progress (status ${info.status ?? 'none'})`,
      );
    }
    await att.qmp.migrateCancel();
  }

  async finishIncoming(id: string, options: { timeoutMs?: number } = {}): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const att = await this.requireAttached(id);
      const deadline = Date.now() + (options.timeoutMs ?? 30_000);
      for (;;) {
        const status = await att.qmp.queryStatus();
        if (status.status === 'running' || status.status === 'paused') {
          return this.info(id);
        }
        if (status.status !== 'inmigrate' && status.status !== 'finish-migrate') {
          throw new VmmError('MIGRATION_FAILED', `incoming VM ${id} ended in QEMU state ${status.status}`);
        }
        const mig = await att.qmp.queryMigrate();
        if (mig.status === 'failed') {
          throw new VmmError(
            'MIGRATION_FAILED',
            `incoming migration of ${id} failed: ${mig.errorDesc ?? 'no reason'}`,
          );
        }
        if (Date.now() > deadline)
          throw new VmmError('TIMEOUT', `incoming VM ${id} did not start running in time`);
        await sleep(25);
      }
    });
  }

  async completeOutgoing(id: string): Promise<void> {
    return this.locks.run(id, async () => {
      const att = await this.attach(id);
      if (att) {
        const status = await att.qmp.queryStatus().catch(() => undefined);
        if (status?.status === 'running') {
          throw new VmmError('INVALID_STATE', `VM ${id} still runs here; refusing to remove a live source`);
        }
        await this.terminate(id, att);
      }
      await rm(vmRuntimePaths(this.options.runtimeDir, id).dir, { recursive: true, force: true });
    });
  }

  async abortIncoming(id: string): Promise<void> {
    return this.locks.run(id, async () => {
      const att = await this.attach(id);
      if (att) await this.terminate(id, att);
      // Disks live on shared storage and belong to the source: only the runtime folder goes.
      await rm(vmRuntimePaths(this.options.runtimeDir, id).dir, { recursive: true, force: true });
    });
  }

  // ---- save / restore ----------------------------------------------------------------------

  async save(id: string, file: string): Promise<SaveResult> {
    assertPlainPath(file);
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      const state = (await this.info(id)).state;
      assertActionAllowed('save', state, id);
      const att = await this.requireAttached(id);
      const started = Date.now();
      await mkdir(path.dirname(file), { recursive: true });
      const partial = `${file}.partial`;
      await att.qmp.stop();
      try {
        await att.qmp.migrateSetCapabilities({ events: true, 'auto-converge': false });
        await att.qmp.migrate(`exec:cat > '${partial}'`);
        for (;;) {
          const info = await att.qmp.queryMigrate();
          if (info.status === 'completed') break;
          if (info.status === 'failed' || info.status === 'cancelled') {
            throw new VmmError('QEMU_FAILED', `saving ${id} failed: ${info.errorDesc ?? info.status}`);
          }
          await sleep(20);
        }
      } catch (err) {
        await rm(partial, { force: true });
        if (state === 'RUNNING') await att.qmp.cont().catch(() => undefined);
        throw err;
      }
      await rename(partial, file);
      await this.writeManifest(vmRuntimePaths(this.options.runtimeDir, id), {
        ...manifest,
        savedState: state === 'PAUSED' ? 'PAUSED' : 'RUNNING',
      });
      await this.terminate(id, att);
      const bytes = (await stat(file)).size;
      return { file, bytes, totalMs: Date.now() - started };
    });
  }

  async restore(id: string, file: string): Promise<VmInfo> {
    assertPlainPath(file);
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'restore');
      if (!(await exists(file))) throw new VmmError('INVALID_SPEC', `saved state ${file} does not exist`);
      const att = await this.launch(manifest, { incoming: true });
      try {
        await att.qmp.migrateSetCapabilities({ events: true });
        await att.qmp.migrateIncoming(`exec:cat '${file}'`);
        const deadline = Date.now() + 120_000;
        for (;;) {
          const info = await att.qmp.queryMigrate();
          if (info.status === 'completed') break;
          if (info.status === 'failed')
            throw new VmmError('QEMU_FAILED', `restoring ${id} failed: ${info.errorDesc}`);
          if (Date.now() > deadline) throw new VmmError('TIMEOUT', `restoring ${id} took too long`);
          await sleep(20);
        }
        if (manifest.savedState !== 'PAUSED') await att.qmp.cont();
      } catch (err) {
        await this.terminate(id, att);
        throw err;
      }
      return this.info(id);
    });
  }

  // ---- hot-plug ----------------------------------------------------------------------------

  async attachDisk(id: string, input: DiskSpec): Promise<VmInfo> {
    const disk = parseDiskSpec(input);
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'attachDevice');
      if (
        manifest.spec.disks.some((d) => d.name === disk.name) ||
        manifest.spec.nics.some((n) => n.name === disk.name)
      ) {
        throw new VmmError('INVALID_SPEC', `VM ${id} already has a device named ${disk.name}`);
      }
      const att = await this.requireAttached(id);
      const reverter = new Reverter();
      try {
        await this.prepareDisk(disk, reverter);
        const { file, format, device } = diskBackendObjects(disk, this.pools);
        await att.qmp.blockdevAdd(file);
        reverter.add(() => att.qmp.blockdevDel(`file-${disk.name}`));
        await att.qmp.blockdevAdd(format);
        reverter.add(() => att.qmp.blockdevDel(`disk-${disk.name}`));
        await att.qmp.deviceAdd(device);
        manifest.spec.disks.push(disk);
        await this.writeManifest(vmRuntimePaths(this.options.runtimeDir, id), manifest);
        reverter.success();
      } catch (err) {
        throw new VmmError(
          'DEVICE_ERROR',
          `attaching disk ${disk.name} to ${id} failed: ${errorMessage(err)}`,
          {
            cause: err,
          },
        );
      } finally {
        await reverter.fail();
      }
      return this.info(id);
    });
  }

  async detachDisk(id: string, name: string, options: { timeoutMs?: number } = {}): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'detachDevice');
      const disk = manifest.spec.disks.find((d) => d.name === name);
      if (!disk) throw new VmmError('INVALID_SPEC', `VM ${id} has no disk named ${name}`);
      const att = await this.requireAttached(id);
      await att.qmp.deviceDel(name, { timeoutMs: options.timeoutMs ?? 30_000 });
      await att.qmp.blockdevDel(`disk-${name}`);
      await att.qmp.blockdevDel(`file-${name}`);
      manifest.spec.disks = manifest.spec.disks.filter((d) => d.name !== name);
      await this.writeManifest(vmRuntimePaths(this.options.runtimeDir, id), manifest);
      return this.info(id);
    });
  }

  async attachNic(id: string, input: NicSpec): Promise<VmInfo> {
    const nic = parseNicSpec(input);
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'attachDevice');
      if (manifest.spec.nics.some((n) => n.name === nic.name || n.mac === nic.mac)) {
        throw new VmmError(
          'INVALID_SPEC',
          `VM ${id} already has a NIC named ${nic.name} or with MAC ${nic.mac}`,
        );
      }
      const att = await this.requireAttached(id);
      const { netdev, device } = nicBackendObjects(nic);
      await att.qmp.netdevAdd(netdev);
      try {
        await att.qmp.deviceAdd(device);
      } catch (err) {
        await att.qmp.netdevDel(`net-${nic.name}`).catch(() => undefined);
        throw err;
      }
      manifest.spec.nics.push(nic);
      await this.writeManifest(vmRuntimePaths(this.options.runtimeDir, id), manifest);
      return this.info(id);
    });
  }

  async detachNic(id: string, name: string, options: { timeoutMs?: number } = {}): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'detachDevice');
      if (!manifest.spec.nics.some((n) => n.name === name)) {
        throw new VmmError('INVALID_SPEC', `VM ${id} has no NIC named ${name}`);
      }
      const att = await this.requireAttached(id);
      await att.qmp.deviceDel(name, { timeoutMs: options.timeoutMs ?? 30_000 });
      await att.qmp.netdevDel(`net-${name}`);
      manifest.spec.nics = manifest.spec.nics.filter((n) => n.name !== name);
      await this.writeManifest(vmRuntimePaths(this.options.runtimeDir, id), manifest);
      return this.info(id);
    });
  }

  // ---- snapshots ---------------------------------------------------------------------------

  /**
   * Stopped: an internal qcow2 snapshot on every writable qcow2 disk (`qemu-img snapshot -c`).
   * Running: an external overlay per disk via `blockdev-snapshot-sync`; the old file becomes the
   * read-only snapshot and the guest writes into the new overlay.
   */
  async createSnapshot(id: string, name: string): Promise<SnapshotInfo[]> {
    assertSnapshotName(name);
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      const state = (await this.info(id)).state;
      assertActionAllowed('snapshot', state, id);
      const disks = manifest.spec.disks.filter((d) => d.format === 'qcow2' && !d.readOnly);
      if (disks.length === 0)
        throw new VmmError('INVALID_STATE', `VM ${id} has no writable qcow2 disk to snapshot`);
      const existing = await this.snapshotsOf(manifest);
      if (existing.some((s) => s.name === name)) {
        throw new VmmError('INVALID_SPEC', `VM ${id} already has a snapshot named ${name}`);
      }
      if (state === 'STOPPED') {
        for (const disk of disks) await qemuImg.createSnapshot(resolvePoolPath(this.pools, disk.file), name);
      } else {
        const att = await this.requireAttached(id);
        const blocks = await att.qmp.queryBlock();
        for (const disk of disks) {
          const current = activeDiskFile(manifest, disk);
          const overlay = `${current.replace(/\.qcow2$/, '')}.${name}.qcow2`;
          const overlayPath = resolvePoolPath(this.pools, { pool: disk.file.pool, path: overlay });
          // The disk's top node changes with every external snapshot (and is named anew after a
          // restart), so ask QEMU which node the guest device writes to now.
          const block = blocks.find(
            (b) => b.qdev === disk.name || b.qdev?.startsWith(`/machine/peripheral/${disk.name}/`),
          );
          const nodeName = block?.inserted?.nodeName;
          if (!nodeName)
            throw new VmmError('DEVICE_ERROR', `QEMU shows no block node for disk ${disk.name} of ${id}`);
          await att.qmp.blockdevSnapshotSync({
            nodeName,
            snapshotFile: overlayPath,
            snapshotNodeName: `snap-${disk.name}-${name}`.slice(0, 31),
            format: 'qcow2',
          });
          const chain = manifest.externalSnapshots[disk.name] ?? [];
          chain.push({ name, file: overlay, createdAt: new Date().toISOString() });
          manifest.externalSnapshots[disk.name] = chain;
        }
        await this.writeManifest(vmRuntimePaths(this.options.runtimeDir, id), manifest);
      }
      return this.snapshotsOf(manifest);
    });
  }

  async listSnapshots(id: string): Promise<SnapshotInfo[]> {
    return this.snapshotsOf(await this.readManifest(id));
  }

  async revertSnapshot(id: string, name: string): Promise<void> {
    assertSnapshotName(name);
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      await this.requireAction(id, 'revertSnapshot');
      const snaps = (await this.snapshotsOf(manifest)).filter((s) => s.name === name);
      if (snaps.length === 0) throw new VmmError('INVALID_SPEC', `VM ${id} has no snapshot named ${name}`);
      for (const disk of manifest.spec.disks) {
        const chain = manifest.externalSnapshots[disk.name] ?? [];
        const extIndex = chain.findIndex((s) => s.name === name);
        if (extIndex >= 0) {
          // The state at snapshot time is the file *below* the overlay created for it: drop that
          // overlay and everything newer, then start a fresh overlay so the snapshot stays reusable.
          const below = extIndex === 0 ? disk.file.path : chain[extIndex - 1]!.file;
          for (const s of chain.slice(extIndex)) {
            await rm(resolvePoolPath(this.pools, { pool: disk.file.pool, path: s.file }), { force: true });
          }
          const overlayRel = chain[extIndex]!.file;
          await qemuImg.createOverlay(
            resolvePoolPath(this.pools, { pool: disk.file.pool, path: overlayRel }),
            {
              backingFile: resolvePoolPath(this.pools, { pool: disk.file.pool, path: below }),
              backingFormat: 'qcow2',
            },
          );
          manifest.externalSnapshots[disk.name] = [...chain.slice(0, extIndex), chain[extIndex]!];
        } else if (snaps.some((s) => s.disk === disk.name)) {
          await qemuImg.revertSnapshot(resolvePoolPath(this.pools, disk.file), name);
        }
      }
      await this.writeManifest(vmRuntimePaths(this.options.runtimeDir, id), manifest);
    });
  }

  async deleteSnapshot(id: string, name: string): Promise<void> {
    assertSnapshotName(name);
    return this.locks.run(id, async () => {
      const manifest = await this.readManifest(id);
      const snaps = (await this.snapshotsOf(manifest)).filter((s) => s.name === name);
      if (snaps.length === 0) throw new VmmError('INVALID_SPEC', `VM ${id} has no snapshot named ${name}`);
      for (const disk of manifest.spec.disks) {
        if ((manifest.externalSnapshots[disk.name] ?? []).some((s) => s.name === name)) {
          throw new VmmError(
            'UNSUPPORTED',
            `snapshot ${name} of ${id} is an external overlay in use by the disk chain; revert to it or keep it`,
          );
        }
        if (snaps.some((s) => s.disk === disk.name)) {
          await this.requireAction(id, 'revertSnapshot');
          await qemuImg.deleteSnapshot(resolvePoolPath(this.pools, disk.file), name);
        }
      }
    });
  }

  private async snapshotsOf(manifest: VmManifest): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    for (const disk of manifest.spec.disks) {
      if (disk.format !== 'qcow2') continue;
      const file = resolvePoolPath(this.pools, disk.file);
      if (!(await exists(file))) continue;
      const info = await qemuImg.imageInfo(file, { forceShare: true });
      for (const s of info.snapshots) {
        out.push({
          name: s.name,
          disk: disk.name,
          vmStateBytes: s.vmStateSizeBytes,
          createdAt: new Date(s.dateSec * 1000),
        });
      }
      for (const s of manifest.externalSnapshots[disk.name] ?? []) {
        out.push({ name: s.name, disk: disk.name, vmStateBytes: 0, createdAt: new Date(s.createdAt) });
      }
    }
    return out;
  }

  // ---- metrics -----------------------------------------------------------------------------

  async sampleVm(id: string): Promise<VmSample> {
    const manifest = await this.readManifest(id);
    const att = await this.requireAttached(id);
    const cpus = await att.qmp.queryCpusFast();
    const vcpuSeconds: number[] = [];
    for (const cpu of cpus) vcpuSeconds.push(await readThreadCpuSeconds(att.pid, cpu.threadId));
    const blockstats = await att.qmp.queryBlockstats();
    const nics: VmSample['nics'] = [];
    for (const nic of manifest.spec.nics) {
      if (nic.backend.type !== 'tap') continue;
      // A tap inside the VM's network namespace is invisible in our /sys; QEMU's own
      // /proc/<pid>/net/dev shows the devices of the namespace it runs in.
      const c =
        this.options.netns === undefined
          ? await readNetDevCounters(nic.backend.ifname).catch(() => undefined)
          : await readNetDevOfProcess(att.pid, nic.backend.ifname);
      if (c) {
        nics.push({
          name: nic.name,
          ifname: nic.backend.ifname,
          // The tap's rx is what the guest sent.
          rxBytes: c.txBytes,
          txBytes: c.rxBytes,
          rxPackets: c.txPackets,
          txPackets: c.rxPackets,
        });
      }
    }
    return {
      vmId: id,
      at: new Date(),
      vcpuSeconds,
      cpuSecondsTotal: vcpuSeconds.reduce((a, b) => a + b, 0),
      rssBytes: await readProcessRssBytes(att.pid),
      block: blockstats.map((b) => ({
        device: b.qdev ?? b.device ?? b.nodeName ?? 'unknown',
        rdBytes: b.stats.rdBytes,
        wrBytes: b.stats.wrBytes,
        rdOps: b.stats.rdOperations,
        wrOps: b.stats.wrOperations,
      })),
      nics,
    };
  }

  async sampleHost(): Promise<HostSample> {
    const [cpu, mem, load] = await Promise.all([readHostCpuTimes(), readHostMemory(), readLoadAverage()]);
    const { availableParallelism } = await import('node:os');
    return {
      at: new Date(),
      cpuCount: availableParallelism(),
      cpuSeconds: {
        user: cpu.user + cpu.nice,
        system: cpu.system + cpu.irq + cpu.softirq,
        idle: cpu.idle,
        iowait: cpu.iowait,
        steal: cpu.steal,
      },
      memoryTotalBytes: mem.totalBytes,
      memoryAvailableBytes: mem.availableBytes,
      load1: load.one,
      load5: load.five,
      load15: load.fifteen,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const att of this.attached.values()) att.monitor.close();
    this.attached.clear();
    this.listeners.clear();
  }

  // ---- internals ---------------------------------------------------------------------------

  private async info(id: string): Promise<VmInfo> {
    const manifest = await this.readManifest(id);
    const att = await this.attach(id);
    let state: VmState = 'STOPPED';
    let qemuStatus: string | undefined;
    if (att) {
      try {
        qemuStatus = (await att.qmp.queryStatus()).status;
        state = stateFromQemuStatus(qemuStatus);
        if (state === 'RUNNING' && att.migrating) state = 'MIGRATING';
      } catch (err) {
        if (!isVmmError(err, 'QMP_DISCONNECTED')) throw err;
        // The process went away between attach and query: report what the process table says.
        state = (await isProcessAlive(att.pid)) ? 'ERROR' : 'STOPPED';
      }
    }
    return {
      id,
      name: manifest.spec.name,
      state,
      qemuStatus,
      pid: state === 'STOPPED' ? undefined : att?.pid,
      spec: manifest.spec,
    };
  }

  private async requireAction(id: string, action: VmAction): Promise<void> {
    assertActionAllowed(action, (await this.info(id)).state, id);
  }

  private async requireAttached(id: string): Promise<Attached> {
    const att = await this.attach(id);
    if (!att)
      throw new VmmError('INVALID_STATE', `VM ${id} is not running`, { details: { state: 'STOPPED' } });
    return att;
  }

  /** Returns the live QMP connection of a running VM, connecting (re-adopting) when needed. */
  private async attach(id: string): Promise<Attached | undefined> {
    const current = this.attached.get(id);
    if (current && (await isProcessAlive(current.pid))) return current;
    if (current) this.detach(id, current);
    let pending = this.attaching.get(id);
    if (!pending) {
      pending = this.connect(id).finally(() => this.attaching.delete(id));
      this.attaching.set(id, pending);
    }
    return pending;
  }

  private async connect(id: string): Promise<Attached | undefined> {
    const paths = vmRuntimePaths(this.options.runtimeDir, id);
    const pid = await readPidfile(paths.pidfile);
    if (pid === undefined || !(await isQemuWithPidfile(pid, paths.pidfile))) return undefined;
    let monitor: QmpMonitor;
    try {
      monitor = await QmpMonitor.connect(paths.qmpSocket, { connectTimeoutMs: 5_000 });
    } catch (err) {
      if (!(await isProcessAlive(pid))) return undefined;
      throw new VmmError('QEMU_FAILED', `QEMU ${pid} of VM ${id} runs but its QMP socket does not answer`, {
        cause: err,
      });
    }
    const att: Attached = {
      pid,
      monitor,
      qmp: new QmpCommands(monitor),
      lastShutdownReason: undefined,
      migrating: false,
    };
    monitor.onEvent('*', (ev) => this.onQmpEvent(id, att, ev));
    monitor.onDisconnect(() => {
      if (this.attached.get(id) === att) this.attached.delete(id);
      if (!this.closed) {
        void waitForExit(pid, 2_000).then((gone) => {
          if (gone) {
            this.emit({
              vmId: id,
              type: 'state',
              state: 'STOPPED',
              reason: att.lastShutdownReason ?? 'qemu-exited',
              at: new Date(),
            });
          }
        });
      }
    });
    this.attached.set(id, att);
    return att;
  }

  private detach(id: string, att: Attached): void {
    this.attached.delete(id);
    att.monitor.close();
  }

  private onQmpEvent(id: string, att: Attached, ev: QmpEvent): void {
    const at = new Date();
    const data = (ev.data ?? {}) as Record<string, unknown>;
    switch (ev.event) {
      case 'SHUTDOWN':
        att.lastShutdownReason = typeof data.reason === 'string' ? data.reason : 'shutdown';
        break;
      case 'STOP':
        this.emit({ vmId: id, type: 'state', state: 'PAUSED', reason: 'stop', at });
        break;
      case 'RESUME':
        this.emit({
          vmId: id,
          type: 'state',
          state: att.migrating ? 'MIGRATING' : 'RUNNING',
          reason: 'resume',
          at,
        });
        break;
      case 'RESET':
        this.emit({
          vmId: id,
          type: 'reset',
          reason: typeof data.reason === 'string' ? data.reason : 'reset',
          at,
        });
        break;
      case 'DEVICE_DELETED':
        this.emit({ vmId: id, type: 'device-deleted', detail: data, at });
        break;
      case 'MIGRATION':
        this.emit({ vmId: id, type: 'migration', detail: data, at });
        break;
      default:
        break;
    }
  }

  private emit(event: VmEvent): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch {
        // a listener's failure must not break the driver
      }
    }
  }

  private async launch(manifest: VmManifest, opts: { incoming: boolean }): Promise<Attached> {
    const { spec } = manifest;
    const paths = vmRuntimePaths(this.options.runtimeDir, spec.id);
    const caps = await this.capabilities();
    if (caps.accelerator === 'fake') throw new VmmError('UNSUPPORTED', 'fake accelerator on the qemu driver');
    const disks = spec.disks.map((d) => ({
      ...d,
      file: { pool: d.file.pool, path: activeDiskFile(manifest, d) },
    }));
    const argv = buildQemuArgv(
      { ...spec, disks },
      {
        binary: this.binary,
        accelerator: caps.accelerator,
        paths,
        pools: this.pools,
        seed: await exists(paths.seed),
        incoming: opts.incoming,
      },
    );
    await rm(paths.pidfile, { force: true });
    await rm(paths.qmpSocket, { force: true });
    await rm(paths.consoleSocket, { force: true });
    await rm(paths.shellSocket, { force: true });
    await appendMark(paths.serialLog);
    try {
      // -daemonize: the parent exits once the guest is set up; the guest outlives us.
      const [file, ...args] =
        this.options.netns === undefined ? argv : ['ip', 'netns', 'exec', this.options.netns, ...argv];
      await runCommand(file!, args, { timeoutMs: 60_000 });
    } catch (err) {
      const stderr = isVmmError(err) ? String(err.details?.stderr ?? err.message) : errorMessage(err);
      throw new VmmError('QEMU_FAILED', `QEMU refused to start VM ${spec.id}: ${stderr.trim()}`, {
        cause: err,
        details: { argv },
      });
    }
    const att = await this.attach(spec.id);
    if (!att) throw new VmmError('QEMU_FAILED', `QEMU for VM ${spec.id} exited right after start`);
    if (!opts.incoming)
      this.emit({ vmId: spec.id, type: 'state', state: 'RUNNING', reason: 'started', at: new Date() });
    return att;
  }

  /** quit, then SIGKILL by the verified pid if QEMU does not go. */
  private async terminate(id: string, att: Attached): Promise<void> {
    await att.qmp.quit().catch(() => undefined);
    if (!(await waitForExit(att.pid, 5_000))) {
      const pidfile = vmRuntimePaths(this.options.runtimeDir, id).pidfile;
      if (await isQemuWithPidfile(att.pid, pidfile)) process.kill(att.pid, 'SIGKILL');
      if (!(await waitForExit(att.pid, 5_000))) {
        throw new VmmError('QEMU_FAILED', `QEMU ${att.pid} of VM ${id} survived SIGKILL`);
      }
    }
    this.detach(id, att);
  }

  private async prepareDisk(disk: DiskSpec, reverter: Reverter): Promise<void> {
    const file = resolvePoolPath(this.pools, disk.file);
    if (await exists(file)) return;
    if (!disk.backing) {
      if (!disk.sizeBytes) {
        throw new VmmError(
          'INVALID_SPEC',
          `disk ${disk.name}: ${file} does not exist and has neither backing nor size`,
        );
      }
      await mkdir(path.dirname(file), { recursive: true });
      await qemuImg.createImage(file, { format: disk.format, sizeBytes: disk.sizeBytes });
    } else {
      if (disk.format !== 'qcow2')
        throw new VmmError('INVALID_SPEC', `disk ${disk.name}: an overlay must be qcow2`);
      const backing = resolvePoolPath(this.pools, disk.backing);
      if (!(await exists(backing))) {
        throw new VmmError('INVALID_SPEC', `disk ${disk.name}: base image ${backing} does not exist`);
      }
      await mkdir(path.dirname(file), { recursive: true });
      await qemuImg.createOverlay(file, {
        backingFile: backing,
        backingFormat: disk.backing.format,
        ...(disk.sizeBytes !== undefined ? { sizeBytes: disk.sizeBytes } : {}),
      });
    }
    reverter.add(() => rm(file, { force: true }));
  }

  private async writeSeed(spec: VmSpec, paths: VmRuntimePaths): Promise<void> {
    if (!spec.cloudInit) return;
    await buildNoCloudSeed(paths.seed, {
      instanceId: spec.cloudInit.instanceId ?? spec.id,
      hostname: spec.cloudInit.hostname,
      ...(spec.cloudInit.userData !== undefined ? { userData: spec.cloudInit.userData } : {}),
      ...(spec.cloudInit.networkConfig !== undefined ? { networkConfig: spec.cloudInit.networkConfig } : {}),
    });
  }

  private async knownIds(): Promise<string[]> {
    try {
      const entries = await readdir(path.join(this.options.runtimeDir, 'vms'));
      return entries.filter((e) => /^[a-z0-9-]+$/.test(e)).sort();
    } catch {
      return [];
    }
  }

  private async readManifest(id: string): Promise<VmManifest> {
    const paths = vmRuntimePaths(this.options.runtimeDir, id);
    let raw: string;
    try {
      raw = await readFile(paths.manifest, 'utf8');
    } catch {
      throw new VmmError('VM_NOT_FOUND', `VM ${id} does not exist on this host`, { details: { id } });
    }
    const parsed = JSON.parse(raw) as VmManifest;
    if (parsed.version !== MANIFEST_VERSION) {
      throw new VmmError('UNSUPPORTED', `VM ${id}: vm.json version ${parsed.version} is not supported`);
    }
    return { ...parsed, spec: parseVmSpec(parsed.spec) };
  }

  private async writeManifest(paths: VmRuntimePaths, manifest: VmManifest): Promise<void> {
    const tmp = `${paths.manifest}.tmp`;
    await writeFile(tmp, `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o640 });
    await rename(tmp, paths.manifest);
  }
}

function progressFrom(info: MigrationInfo, elapsedMs: number): MigrationProgress {
  const total = info.ram?.total ?? 0;
  const remaining = info.ram?.remaining ?? 0;
  const transferred = info.ram?.transferred ?? 0;
  const percent =
    info.status === 'completed'
      ? 100
      : total > 0
        ? Math.min(99, Math.floor(((total - remaining) / total) * 100))
        : 0;
  return {
    status: info.status ?? 'unknown',
    transferredBytes: transferred,
    remainingBytes: remaining,
    totalBytes: total,
    dirtyPagesRate: info.ram?.dirtyPagesRate ?? 0,
    expectedDowntimeMs: info.expectedDowntimeMs,
    cpuThrottlePercent: info.cpuThrottlePercentage,
    percent,
    elapsedMs,
  };
}

/** Counters of one interface from /proc/<pid>/net/dev (the process's network namespace). */
async function readNetDevOfProcess(
  pid: number,
  ifname: string,
): Promise<{ rxBytes: number; rxPackets: number; txBytes: number; txPackets: number } | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/net/dev`, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const [name, rest] = line.split(':');
    if (name?.trim() !== ifname || rest === undefined) continue;
    const f = rest.trim().split(/\s+/).map(Number);
    return { rxBytes: f[0] ?? 0, rxPackets: f[1] ?? 0, txBytes: f[8] ?? 0, txPackets: f[9] ?? 0 };
  }
  return undefined;
}

function activeDiskFile(manifest: VmManifest, disk: DiskSpec): string {
  const chain = manifest.externalSnapshots[disk.name] ?? [];
  return chain.length > 0 ? chain[chain.length - 1]!.file : disk.file.path;
}

function assertSnapshotName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$/.test(name)) {
    throw new VmmError(
      'INVALID_SPEC',
      `snapshot name "${name}" must be 1-31 letters, digits, ".", "_" or "-"`,
    );
  }
}

function ignoreDisconnect(err: unknown): void {
  if (!isVmmError(err, 'QMP_DISCONNECTED')) throw err;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

/** Separates boots in the serial log so a reader can tell one boot from the next. */
async function appendMark(serialLog: string): Promise<void> {
  await writeFile(serialLog, `\n--- hangar: qemu start ${new Date().toISOString()} ---\n`, { flag: 'a' });
}
