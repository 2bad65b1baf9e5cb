import { isDeepStrictEqual } from 'node:util';
import {
  type DiskSpecInput,
  type HostSample,
  type Hypervisor,
  isVmmError,
  KeyedMutex,
  type MigrateOptions,
  type MigrationProgress,
  type MigrationResult,
  macFromVmId,
  type NicSpecInput,
  type OrphanInfo,
  type PoolPath,
  parseVmSpec,
  resolvePoolPath,
  type SnapshotInfo,
  type StoragePool,
  VM_ID_PATTERN,
  type VmEvent,
  type VmInfo,
  VmmError,
  type VmSample,
  type VmSize,
  type VmSpec,
  type VmSpecInput,
  type VmState,
} from '@hangar/vmm-core';
import type { Logger } from '../log.js';
import { DriftTracker } from '../reconciler/drift.js';
import type { AgentInventory, InventoryVm, PoolSample } from '../session/inventory.js';
import { AgentError, isAgentError } from './agent-error.js';
import { type HostNetwork, NoopHostNetwork } from './host-network.js';
import { samplePools } from './host-probe.js';
import {
  DEFAULT_OPERATION_HISTORY,
  fingerprint,
  HOST_BUCKET,
  type OperationOutcome,
  type VmRecord,
  VmStateStore,
} from './state-store.js';
import {
  checkStorageToken,
  isStorageTokenPath,
  removeStorageToken,
  STORAGE_TOKEN_TTL_MS,
  sweepStorageTokens,
  writeStorageToken,
} from './storage-token.js';

/** Operation ids: the api's Operation ids (UUIDs) and anything similarly plain. */
export const OPERATION_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Per-call information from the transport: who is asking, and until when the answer matters. */
export interface CallContext {
  /** The api's operation id; mutating calls with the same (VM, method, id) run once. */
  operationId: string;
  /** Epoch milliseconds after which the caller no longer waits; the call is not started after it. */
  deadline?: number;
  /** Aborted when the caller went away; a call still queued behind another is then not started. */
  signal?: AbortSignal;
}

export interface VmRuntimeOptions {
  hypervisor: Hypervisor;
  /** Where desired state and operation outcomes are kept (one JSON file per VM). */
  stateDir: string;
  pools: Record<string, StoragePool>;
  /** Creates taps for NICs that ask for one; {@link NoopHostNetwork} when unset. */
  hostNetwork?: HostNetwork;
  logger: Logger;
  /** Operation outcomes kept per VM (default 64). */
  operationHistory?: number;
}

/** What {@link VmRuntime.start} found on the host. */
export interface StartupReport {
  vms: InventoryVm[];
  orphans: OrphanInfo[];
  drifting: string[];
}

interface InflightMigration {
  fingerprint: string;
  listeners: Set<(p: MigrationProgress) => void>;
  done: Promise<MigrationResult>;
}

interface MutationPlan<T> {
  vmId: string;
  method: string;
  /** The request as the runtime received it: its fingerprint detects operation-id reuse. */
  args: unknown;
  ctx: CallContext;
  run: () => Promise<T>;
  /** Record changes committed in the same write as the outcome (desired state, taps). */
  after?: (result: T, record: VmRecord) => void;
  /** The VM left this host: drop its record (desired state and operation history). */
  forget?: boolean;
  /** Turns a replayed JSON result back into T (dates). */
  revive?: (raw: unknown) => T;
}

/**
 * The agent's view of its host: a vmm-core hypervisor plus what only the agent knows — the
 * desired state of each guest and the outcome of each operation, both kept on disk so they
 * survive a restart. Every mutating call is idempotent per (VM, method, operation id) and runs
 * under a per-VM lock; calls on different VMs run in parallel.
 */
export class VmRuntime implements AgentInventory {
  readonly hypervisor: Hypervisor;
  private readonly store: VmStateStore;
  private readonly drift: DriftTracker;
  private readonly locks = new KeyedMutex();
  private readonly busy = new Map<string, number>();
  private readonly listeners = new Set<(event: VmEvent) => void>();
  private readonly migrations = new Map<string, InflightMigration>();
  private readonly tokenTimers = new Set<NodeJS.Timeout>();
  private readonly network: HostNetwork;
  private readonly log: Logger;
  private bridgeReady: Promise<void> | undefined;
  private unsubscribe: (() => void) | undefined;
  private closed = false;

  constructor(private readonly options: VmRuntimeOptions) {
    this.hypervisor = options.hypervisor;
    this.network = options.hostNetwork ?? new NoopHostNetwork();
    this.log = options.logger.child({ component: 'runtime' });
    this.store = new VmStateStore(options.stateDir, options.operationHistory ?? DEFAULT_OPERATION_HISTORY);
    this.drift = new DriftTracker(this.log);
  }

  /**
   * Loads desired state, re-adopts the guests that run on this host and reports what it found:
   * orphans are reported (never killed), drift is logged once and reported, never repaired.
   */
  async start(): Promise<StartupReport> {
    const { loaded, corrupt } = await this.store.load();
    for (const file of corrupt) this.log.error({ file }, 'unreadable VM state file moved aside');
    this.unsubscribe = this.hypervisor.onEvent((event) => this.handleEvent(event));
    const { adopted, orphans } = await this.hypervisor.adopt();
    for (const vm of adopted) {
      const desired = this.store.get(vm.id)?.desiredState;
      const drift = this.drift.observe(vm.id, desired, vm.state);
      this.log.info(
        { vmId: vm.id, state: vm.state, pid: vm.pid, desiredState: desired, drift },
        're-adopted VM',
      );
    }
    const missing = this.missingOrphans(new Set(adopted.map((v) => v.id)));
    for (const orphan of [...orphans, ...missing]) {
      this.log.warn(
        { path: orphan.path, pid: orphan.pid, reason: orphan.reason },
        'orphan found; left alone',
      );
    }
    for (const [name, pool] of Object.entries(this.options.pools)) {
      await sweepStorageTokens(pool.path).catch((err: unknown) =>
        this.log.debug({ pool: name, err }, 'storage token sweep failed'),
      );
    }
    this.log.info(
      { vms: adopted.length, orphans: orphans.length + missing.length, stateRecords: loaded },
      'runtime started',
    );
    return {
      vms: adopted.map((vm) => this.inventoryVm(vm)),
      orphans: [...orphans, ...missing],
      drifting: this.drift.current(),
    };
  }

  /** Disconnects from QEMU monitors; guests keep running. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe?.();
    for (const t of this.tokenTimers) clearTimeout(t);
    this.tokenTimers.clear();
    this.listeners.clear();
    await this.hypervisor.close();
  }

  // ---- AgentInventory ----------------------------------------------------------------------

  async snapshot(): Promise<{ vms: InventoryVm[]; orphans: OrphanInfo[] }> {
    const { adopted, orphans } = await this.hypervisor.adopt();
    return {
      vms: adopted.map((vm) => this.inventoryVm(vm)),
      orphans: [...orphans, ...this.missingOrphans(new Set(adopted.map((v) => v.id)))],
    };
  }

  onEvent(handler: (event: VmEvent) => void): () => void {
    this.listeners.add(handler);
    return () => this.listeners.delete(handler);
  }

  async sampleMetrics(): Promise<{ host: HostSample; vms: VmSample[]; pools: PoolSample[] }> {
    const host = await this.hypervisor.sampleHost();
    const pools = await samplePools(this.options.pools);
    const vms: VmSample[] = [];
    for (const vm of await this.hypervisor.list()) {
      if (vm.pid === undefined || vm.state === 'STOPPED') continue;
      try {
        vms.push(await this.hypervisor.sampleVm(vm.id));
      } catch (err) {
        // The guest stopped between list and sample: it has no sample this round.
        if (!isVmmError(err)) throw err;
      }
    }
    return { host, vms, pools };
  }

  // ---- reads --------------------------------------------------------------------------------

  async getVm(vmId: string): Promise<VmInfo> {
    return this.hypervisor.get(assertVmId(vmId));
  }

  /** Every VM with its desired state, plus orphans. */
  async listVms(): Promise<{ vms: VmInfo[]; inventory: InventoryVm[]; orphans: OrphanInfo[] }> {
    const { adopted, orphans } = await this.hypervisor.adopt();
    return {
      vms: adopted,
      inventory: adopted.map((vm) => this.inventoryVm(vm)),
      orphans: [...orphans, ...this.missingOrphans(new Set(adopted.map((v) => v.id)))],
    };
  }

  /** The VM's desired state as persisted on this host. */
  desiredState(vmId: string): VmState | undefined {
    return this.store.get(assertVmId(vmId))?.desiredState;
  }

  async consoleLog(vmId: string, options: { tailBytes?: number } = {}): Promise<string> {
    return this.hypervisor.consoleLog(assertVmId(vmId), options);
  }

  async listSnapshots(vmId: string): Promise<SnapshotInfo[]> {
    return this.hypervisor.listSnapshots(assertVmId(vmId));
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  /**
   * Creates a VM (STOPPED). For a VM this host already has, a spec that differs from its
   * definition only in vCPUs and memory resizes it (vmm-core `resize`: STOPPED only, the next
   * start uses the new size; disks, seed, taps and console log stay) — the api's resize sends
   * the host's own spec with the new size. Any other spec for an existing VM is VM_EXISTS.
   */
  async createVm(input: VmSpecInput, ctx: CallContext): Promise<VmInfo> {
    const vmId = assertVmId(input.id);
    let taps: VmRecord['taps'] = {};
    let resized = false;
    return this.mutate({
      vmId,
      method: 'createVm',
      args: input,
      ctx,
      run: async () => {
        const checked = this.checkedSpec(input);
        const existing = await this.existing(vmId);
        const size = existing ? sizeChangeOnly(existing.spec, checked) : undefined;
        if (size) {
          resized = true;
          return this.hypervisor.resize(vmId, size);
        }
        if (existing) throw vmExists(vmId);
        const wired = await this.wireNics(vmId, checked);
        taps = wired.taps;
        try {
          return await this.hypervisor.create(wired.spec);
        } catch (err) {
          if (Object.keys(taps).length > 0) await this.deleteTapsQuietly(vmId);
          throw err;
        }
      },
      after: (_vm, record) => {
        // A resize changes the definition only: the desired state and taps stay as they are.
        if (resized) return;
        setDesired(record, 'STOPPED');
        record.taps = taps;
      },
    });
  }

  async startVm(vmId: string, ctx: CallContext): Promise<VmInfo> {
    return this.lifecycle(vmId, 'startVm', {}, ctx, () => this.hypervisor.start(vmId), 'RUNNING');
  }

  async stopVm(
    vmId: string,
    options: { force?: boolean; timeoutMs?: number },
    ctx: CallContext,
  ): Promise<VmInfo> {
    const args = { force: options.force ?? false, timeoutMs: options.timeoutMs };
    return this.lifecycle(
      vmId,
      'stopVm',
      args,
      ctx,
      () =>
        args.force
          ? this.hypervisor.forceStop(vmId)
          : this.hypervisor.stop(vmId, args.timeoutMs === undefined ? {} : { timeoutMs: args.timeoutMs }),
      'STOPPED',
    );
  }

  async rebootVm(vmId: string, ctx: CallContext): Promise<VmInfo> {
    return this.lifecycle(vmId, 'rebootVm', {}, ctx, () => this.hypervisor.reboot(vmId), 'RUNNING');
  }

  async pauseVm(vmId: string, ctx: CallContext): Promise<VmInfo> {
    return this.lifecycle(vmId, 'pauseVm', {}, ctx, () => this.hypervisor.pause(vmId), 'PAUSED');
  }

  async resumeVm(vmId: string, ctx: CallContext): Promise<VmInfo> {
    return this.lifecycle(vmId, 'resumeVm', {}, ctx, () => this.hypervisor.resume(vmId), 'RUNNING');
  }

  /** Deletes the VM and its taps, and forgets its desired state. Unknown VMs succeed. */
  async deleteVm(vmId: string, ctx: CallContext): Promise<void> {
    assertVmId(vmId);
    await this.mutate({
      vmId,
      method: 'deleteVm',
      args: {},
      ctx,
      forget: true,
      run: async () => {
        try {
          await this.hypervisor.delete(vmId);
        } catch (err) {
          if (!isVmmError(err, 'VM_NOT_FOUND')) throw err;
        }
        await this.network.deleteTaps(vmId);
      },
    });
  }

  // ---- migration ----------------------------------------------------------------------------

  async prepareIncoming(
    input: VmSpecInput,
    options: { listenHost: string; port?: number },
    ctx: CallContext,
  ): Promise<{ uri: string; vm: VmInfo }> {
    const vmId = assertVmId(input.id);
    let taps: VmRecord['taps'] = {};
    return this.mutate({
      vmId,
      method: 'prepareIncoming',
      args: { spec: input, ...options },
      ctx,
      run: async () => {
        const checked = this.checkedSpec(input);
        await this.assertAbsent(vmId);
        const wired = await this.wireNics(vmId, checked);
        taps = wired.taps;
        try {
          return await this.hypervisor.prepareIncoming(wired.spec, options);
        } catch (err) {
          if (Object.keys(taps).length > 0) await this.deleteTapsQuietly(vmId);
          throw err;
        }
      },
      after: (_r, record) => {
        setDesired(record, 'INCOMING');
        record.taps = taps;
      },
    });
  }

  /**
   * Source side of a live migration. A retry with the same operation id while the migration runs
   * re-attaches to its progress; after it ended, the retry gets the recorded result only.
   * Past the caller's deadline the migration is cancelled (the source keeps running).
   */
  async migrate(
    vmId: string,
    uri: string,
    options: MigrateOptions,
    ctx: CallContext,
    onProgress?: (p: MigrationProgress) => void,
  ): Promise<MigrationResult> {
    assertVmId(vmId);
    const args = { uri, options };
    const key = `${vmId}\n${ctx.operationId}`;
    const running = this.migrations.get(key);
    if (running) {
      if (running.fingerprint !== fingerprint('migrate', args))
        throw conflict(ctx.operationId, 'migrate', vmId);
      if (onProgress) running.listeners.add(onProgress);
      try {
        return await running.done;
      } finally {
        if (onProgress) running.listeners.delete(onProgress);
      }
    }
    return this.mutate({
      vmId,
      method: 'migrate',
      args,
      ctx,
      run: async () => {
        const listeners = new Set<(p: MigrationProgress) => void>(onProgress ? [onProgress] : []);
        const done = this.hypervisor.migrate(vmId, uri, options, (p) => {
          for (const l of listeners) {
            try {
              l(p);
            } catch {
              // one dead stream must not stop the migration
            }
          }
        });
        this.migrations.set(key, { fingerprint: fingerprint('migrate', args), listeners, done });
        const budget = ctx.deadline === undefined ? undefined : ctx.deadline - Date.now();
        const timer =
          budget !== undefined && Number.isFinite(budget)
            ? setTimeout(
                () => {
                  this.log.warn({ vmId }, 'migration deadline passed; cancelling, the source keeps running');
                  void this.hypervisor.cancelMigration(vmId).catch(() => undefined);
                },
                Math.max(0, budget),
              )
            : undefined;
        try {
          return await done;
        } finally {
          if (timer) clearTimeout(timer);
          this.migrations.delete(key);
        }
      },
      // The source QEMU sits in `postmigrate` until CompleteOutgoing: the guest runs elsewhere.
      after: (_r, record) => setDesired(record, 'STOPPED'),
    });
  }

  /** Cancels a running outgoing migration; a no-op when none runs. Not serialised behind Migrate. */
  async abortMigration(vmId: string, ctx: CallContext): Promise<void> {
    assertVmId(vmId);
    assertOperationId(ctx.operationId);
    await this.hypervisor.get(vmId);
    try {
      await this.hypervisor.cancelMigration(vmId);
    } catch (err) {
      if (!isVmmError(err, 'INVALID_STATE')) throw err;
    }
  }

  async finishIncoming(vmId: string, options: { timeoutMs?: number }, ctx: CallContext): Promise<VmInfo> {
    assertVmId(vmId);
    return this.mutate({
      vmId,
      method: 'finishIncoming',
      args: options,
      ctx,
      run: () => {
        // Waiting past the caller's deadline helps nobody: the shorter of the two bounds the wait.
        const remaining = ctx.deadline === undefined ? Number.POSITIVE_INFINITY : ctx.deadline - Date.now();
        const timeoutMs = Math.max(0, Math.min(options.timeoutMs ?? 30_000, remaining));
        return this.hypervisor.finishIncoming(vmId, { timeoutMs });
      },
      after: (vm, record) => setDesired(record, vm.state === 'PAUSED' ? 'PAUSED' : 'RUNNING'),
    });
  }

  async completeOutgoing(vmId: string, ctx: CallContext): Promise<void> {
    assertVmId(vmId);
    await this.mutate({
      vmId,
      method: 'completeOutgoing',
      args: {},
      ctx,
      forget: true,
      run: async () => {
        await this.hypervisor.completeOutgoing(vmId);
        await this.network.deleteTaps(vmId);
      },
    });
  }

  async abortIncoming(vmId: string, ctx: CallContext): Promise<void> {
    assertVmId(vmId);
    await this.mutate({
      vmId,
      method: 'abortIncoming',
      args: {},
      ctx,
      forget: true,
      run: async () => {
        await this.hypervisor.abortIncoming(vmId);
        await this.network.deleteTaps(vmId);
      },
    });
  }

  // ---- snapshots ----------------------------------------------------------------------------

  async createSnapshot(vmId: string, name: string, ctx: CallContext): Promise<SnapshotInfo[]> {
    assertVmId(vmId);
    return this.mutate({
      vmId,
      method: 'createSnapshot',
      args: { name },
      ctx,
      run: () => this.hypervisor.createSnapshot(vmId, name),
      revive: reviveSnapshots,
    });
  }

  async revertSnapshot(vmId: string, name: string, ctx: CallContext): Promise<VmInfo> {
    assertVmId(vmId);
    return this.mutate({
      vmId,
      method: 'revertSnapshot',
      args: { name },
      ctx,
      run: async () => {
        await this.requireSnapshot(vmId, name);
        await this.hypervisor.revertSnapshot(vmId, name);
        return this.hypervisor.get(vmId);
      },
    });
  }

  async deleteSnapshot(vmId: string, name: string, ctx: CallContext): Promise<void> {
    assertVmId(vmId);
    await this.mutate({
      vmId,
      method: 'deleteSnapshot',
      args: { name },
      ctx,
      run: async () => {
        await this.requireSnapshot(vmId, name);
        await this.hypervisor.deleteSnapshot(vmId, name);
      },
    });
  }

  // ---- hot-plug -----------------------------------------------------------------------------

  async attachDisk(vmId: string, disk: DiskSpecInput, ctx: CallContext): Promise<VmInfo> {
    assertVmId(vmId);
    return this.mutate({
      vmId,
      method: 'attachDisk',
      args: disk,
      ctx,
      // vmm-core parses the disk again; the cast only widens the input type it accepts.
      run: () => this.hypervisor.attachDisk(vmId, disk as Parameters<Hypervisor['attachDisk']>[1]),
    });
  }

  async detachDisk(
    vmId: string,
    name: string,
    options: { timeoutMs?: number },
    ctx: CallContext,
  ): Promise<VmInfo> {
    assertVmId(vmId);
    return this.mutate({
      vmId,
      method: 'detachDisk',
      args: { name, ...options },
      ctx,
      run: () => this.hypervisor.detachDisk(vmId, name, options),
    });
  }

  async attachNic(vmId: string, nic: NicSpecInput, ctx: CallContext): Promise<VmInfo> {
    assertVmId(vmId);
    let tap: { name: string; index: number; ifname: string } | undefined;
    return this.mutate({
      vmId,
      method: 'attachNic',
      args: nic,
      ctx,
      run: async () => {
        const current = await this.hypervisor.get(vmId);
        // After a detach, `nics.length` may name an index still in use: take one past every index
        // seen, and skip derived MACs another NIC already has.
        const used = Object.values(this.store.get(vmId)?.taps ?? {}).map((t) => t.index);
        let index = Math.max(current.spec.nics.length - 1, ...used) + 1;
        const macs = new Set(current.spec.nics.map((n) => n.mac));
        while (!nic.mac && macs.has(macFromVmId(vmId, index))) index++;
        let wired = nic;
        if (!nic.mac) wired = { ...wired, mac: macFromVmId(vmId, index) };
        if (nic.backend.type === 'tap' && nic.backend.ifname === '') {
          const ifname = await this.createTap(vmId, index);
          tap = { name: nic.name, index, ifname };
          wired = { ...wired, backend: { type: 'tap', ifname } };
        }
        return this.hypervisor.attachNic(vmId, wired as Parameters<Hypervisor['attachNic']>[1]);
      },
      after: (_vm, record) => {
        if (tap) record.taps[tap.name] = { index: tap.index, ifname: tap.ifname };
      },
    });
  }

  async detachNic(
    vmId: string,
    name: string,
    options: { timeoutMs?: number },
    ctx: CallContext,
  ): Promise<VmInfo> {
    assertVmId(vmId);
    return this.mutate({
      vmId,
      method: 'detachNic',
      args: { name, ...options },
      ctx,
      run: () => this.hypervisor.detachNic(vmId, name, options),
    });
  }

  // ---- save / restore -----------------------------------------------------------------------

  async saveVm(
    vmId: string,
    file: PoolPath,
    ctx: CallContext,
  ): Promise<{ file: PoolPath; bytes: number; totalMs: number; vm: VmInfo }> {
    assertVmId(vmId);
    return this.mutate({
      vmId,
      method: 'saveVm',
      args: { file },
      ctx,
      run: async () => {
        const result = await this.hypervisor.save(vmId, resolvePoolPath(this.options.pools, file));
        return { file, bytes: result.bytes, totalMs: result.totalMs, vm: await this.hypervisor.get(vmId) };
      },
      after: (_r, record) => setDesired(record, 'STOPPED'),
    });
  }

  async restoreVm(vmId: string, file: PoolPath, ctx: CallContext): Promise<VmInfo> {
    assertVmId(vmId);
    return this.mutate({
      vmId,
      method: 'restoreVm',
      args: { file },
      ctx,
      run: () => this.hypervisor.restore(vmId, resolvePoolPath(this.options.pools, file)),
      after: (vm, record) => setDesired(record, vm.state === 'PAUSED' ? 'PAUSED' : 'RUNNING'),
    });
  }

  // ---- shared-storage proof -----------------------------------------------------------------

  /** Writes a random token into a pool; the file is removed again after a few minutes. */
  async writeStorageToken(
    pool: string,
    ctx: CallContext,
  ): Promise<{ path: string; token: string; poolPath: string }> {
    const poolPath = this.poolPath(pool);
    return this.mutate({
      vmId: HOST_BUCKET,
      method: 'writeStorageToken',
      args: { pool },
      ctx,
      run: async () => {
        const written = await writeStorageToken(poolPath);
        const timer = setTimeout(() => {
          this.tokenTimers.delete(timer);
          void removeStorageToken(poolPath, written.path).catch(() => undefined);
        }, STORAGE_TOKEN_TTL_MS);
        timer.unref();
        this.tokenTimers.add(timer);
        return { ...written, poolPath };
      },
    });
  }

  async checkStorageToken(
    pool: string,
    relative: string,
    token: string,
  ): Promise<{ shared: boolean; reason: string; poolPath: string }> {
    if (!isStorageTokenPath(relative)) {
      throw new AgentError(
        'INVALID_REQUEST',
        `"${relative}" is not a storage token path written by an agent`,
      );
    }
    const known = this.options.pools[pool];
    if (!known) return { shared: false, reason: 'pool unknown', poolPath: '' };
    return { ...(await checkStorageToken(known.path, relative, token)), poolPath: known.path };
  }

  // ---- internals ----------------------------------------------------------------------------

  private lifecycle(
    vmId: string,
    method: string,
    args: Record<string, unknown>,
    ctx: CallContext,
    run: () => Promise<VmInfo>,
    desired: VmState,
  ): Promise<VmInfo> {
    assertVmId(vmId);
    return this.mutate({ vmId, method, args, ctx, run, after: (_vm, record) => setDesired(record, desired) });
  }

  /**
   * Runs one mutating call at most once per (VM, method, operation id): under the VM's lock, a
   * recorded outcome is replayed, a reused id with another request is refused, and a call whose
   * caller already gave up is not started. The outcome and the desired state are written together.
   */
  private async mutate<T>(plan: MutationPlan<T>): Promise<T> {
    const { vmId, method, ctx } = plan;
    assertOperationId(ctx.operationId);
    const fp = fingerprint(method, plan.args);
    return this.locks.run(vmId, async () => {
      const prior = this.store.findOperation(vmId, method, ctx.operationId);
      if (prior) {
        if (prior.fingerprint !== fp) throw conflict(ctx.operationId, method, vmId);
        this.log.debug({ vmId, method, operationId: ctx.operationId }, 'replaying recorded outcome');
        return replay(prior.outcome, plan.revive);
      }
      assertCallable(ctx, this.closed);
      this.busy.set(vmId, (this.busy.get(vmId) ?? 0) + 1);
      try {
        let result: T;
        try {
          result = await plan.run();
        } catch (err) {
          if (shouldRecordFailure(method, err)) {
            await this.record(vmId, method, ctx.operationId, fp, failureOutcome(err)).catch((e: unknown) =>
              this.log.error({ vmId, method, err: e }, 'could not record a failed operation'),
            );
          }
          throw err;
        }
        if (plan.forget) {
          await this.store.remove(vmId);
          this.drift.forget(vmId);
        } else {
          await this.record(
            vmId,
            method,
            ctx.operationId,
            fp,
            { ok: true, result: jsonCopy(result) },
            (record) => plan.after?.(result, record),
          );
        }
        return result;
      } finally {
        const n = (this.busy.get(vmId) ?? 1) - 1;
        if (n > 0) this.busy.set(vmId, n);
        else this.busy.delete(vmId);
        if (!plan.forget && vmId !== HOST_BUCKET) await this.reobserve(vmId);
      }
    });
  }

  private async record(
    vmId: string,
    method: string,
    operationId: string,
    fp: string,
    outcome: OperationOutcome,
    also?: (record: VmRecord) => void,
  ): Promise<void> {
    await this.store.update(vmId, (record) => {
      record.operations.push({ operationId, method, fingerprint: fp, at: new Date().toISOString(), outcome });
      also?.(record);
    });
  }

  /** Re-evaluates drift once a call finished (calls in flight are transitions, not drift). */
  private async reobserve(vmId: string): Promise<void> {
    try {
      const vm = await this.hypervisor.get(vmId);
      this.drift.observe(vmId, this.store.get(vmId)?.desiredState, vm.state);
    } catch {
      // gone or unreadable: the next snapshot says so
    }
  }

  private handleEvent(event: VmEvent): void {
    if (event.type === 'state' && event.state && !this.busy.has(event.vmId)) {
      this.drift.observe(event.vmId, this.store.get(event.vmId)?.desiredState, event.state);
    }
    for (const l of this.listeners) {
      try {
        l(event);
      } catch (err) {
        this.log.error({ err }, 'VM event listener failed');
      }
    }
  }

  private inventoryVm(vm: VmInfo): InventoryVm {
    const desiredState = this.store.get(vm.id)?.desiredState;
    // A VM with a call in flight is moving on purpose: not drift.
    const drift = this.busy.has(vm.id) ? false : this.drift.observe(vm.id, desiredState, vm.state);
    return { vmId: vm.id, state: vm.state, qemuStatus: vm.qemuStatus, pid: vm.pid, desiredState, drift };
  }

  /** Desired state recorded for a VM that no longer exists here: reported like an orphan. */
  private missingOrphans(present: Set<string>): OrphanInfo[] {
    const out: OrphanInfo[] = [];
    for (const id of this.store.ids()) {
      const record = this.store.get(id);
      if (!record?.desiredState || present.has(id) || this.busy.has(id)) continue;
      out.push({
        path: `${this.options.stateDir}/vms/${id}.json`,
        pid: undefined,
        reason: `desired state ${record.desiredState} recorded for VM ${id}, which does not exist on this host`,
      });
    }
    return out;
  }

  /** Validates a spec as vmm-core will, before any tap is created for it. */
  private checkedSpec(input: VmSpecInput): VmSpecInput {
    const nics = (input.nics ?? []).map((nic, i) => ({ ...nic, mac: nic.mac || macFromVmId(input.id, i) }));
    const probe = {
      ...input,
      nics: nics.map((nic) =>
        nic.backend.type === 'tap' && nic.backend.ifname === ''
          ? { ...nic, backend: { type: 'tap' as const, ifname: 'pending' } }
          : nic,
      ),
    };
    const spec = parseVmSpec(probe);
    // Unknown pools and paths that leave a pool fail here, before anything is written.
    for (const disk of spec.disks) {
      resolvePoolPath(this.options.pools, disk.file);
      if (disk.backing) resolvePoolPath(this.options.pools, disk.backing);
    }
    if (spec.boot.type === 'kernel') {
      resolvePoolPath(this.options.pools, spec.boot.kernel);
      if (spec.boot.initrd) resolvePoolPath(this.options.pools, spec.boot.initrd);
    }
    return { ...input, nics };
  }

  /**
   * The VM if this host has it. Checked before any tap is made: cleaning up after a failed create
   * removes the VM's taps, which must never hit a VM that already runs here. Safe from races:
   * callers hold the VM's lock.
   */
  private async existing(vmId: string): Promise<VmInfo | undefined> {
    try {
      return await this.hypervisor.get(vmId);
    } catch (err) {
      if (isVmmError(err, 'VM_NOT_FOUND')) return undefined;
      throw err;
    }
  }

  /** VM_EXISTS when this host has the VM (see {@link existing}). */
  private async assertAbsent(vmId: string): Promise<void> {
    if (await this.existing(vmId)) throw vmExists(vmId);
  }

  /** Creates a tap on the host bridge for every NIC that asks for one (empty ifname). */
  private async wireNics(
    vmId: string,
    input: VmSpecInput,
  ): Promise<{ spec: VmSpecInput; taps: VmRecord['taps'] }> {
    const taps: VmRecord['taps'] = {};
    const nics: NicSpecInput[] = [];
    try {
      for (const [index, nic] of (input.nics ?? []).entries()) {
        if (nic.backend.type === 'tap' && nic.backend.ifname === '') {
          const ifname = await this.createTap(vmId, index);
          taps[nic.name] = { index, ifname };
          nics.push({ ...nic, backend: { type: 'tap', ifname } });
        } else {
          nics.push(nic);
        }
      }
    } catch (err) {
      if (Object.keys(taps).length > 0) await this.deleteTapsQuietly(vmId);
      throw err;
    }
    return { spec: { ...input, nics }, taps };
  }

  private async createTap(vmId: string, index: number): Promise<string> {
    try {
      this.bridgeReady ??= this.network.ensureBridge().catch((err: unknown) => {
        this.bridgeReady = undefined;
        throw err;
      });
      await this.bridgeReady;
      return await this.network.createTap(vmId, index);
    } catch (err) {
      if (isVmmError(err) || isAgentError(err)) throw err;
      throw new AgentError(
        'HOST_NETWORK_FAILED',
        `could not create a tap for NIC ${index} of VM ${vmId}: ${err instanceof Error ? err.message : String(err)}`,
        { cause: err },
      );
    }
  }

  private async deleteTapsQuietly(vmId: string): Promise<void> {
    await this.network
      .deleteTaps(vmId)
      .catch((err: unknown) => this.log.error({ vmId, err }, 'could not remove the taps of a VM'));
  }

  private async requireSnapshot(vmId: string, name: string): Promise<void> {
    const snapshots = await this.hypervisor.listSnapshots(vmId);
    if (!snapshots.some((s) => s.name === name)) {
      throw new AgentError('SNAPSHOT_NOT_FOUND', `VM ${vmId} has no snapshot named ${name}`, {
        details: { vmId, name },
      });
    }
  }

  private poolPath(pool: string): string {
    const known = this.options.pools[pool];
    if (!known) {
      throw new AgentError('POOL_NOT_FOUND', `unknown storage pool "${pool}"`, {
        details: { pool, known: Object.keys(this.options.pools) },
      });
    }
    return known.path;
  }
}

function vmExists(vmId: string): VmmError {
  return new VmmError('VM_EXISTS', `VM ${vmId} already exists on this host`, { details: { id: vmId } });
}

/**
 * The new size when `requested` is `current` with other vCPUs and/or memory and nothing else
 * changed (tap NICs asking for a new tap — empty ifname — match the tap they already have);
 * undefined otherwise, also when nothing changed at all.
 */
export function sizeChangeOnly(current: VmSpec, requested: VmSpecInput): VmSize | undefined {
  let wanted: VmSpec;
  try {
    wanted = parseVmSpec({
      ...requested,
      nics: (requested.nics ?? []).map((nic) => {
        const had = current.nics.find((n) => n.name === nic.name);
        return nic.backend.type === 'tap' && nic.backend.ifname === '' && had?.backend.type === 'tap'
          ? { ...nic, backend: had.backend }
          : nic;
      }),
    });
  } catch {
    return undefined;
  }
  if (wanted.vcpus === current.vcpus && wanted.memoryMiB === current.memoryMiB) return undefined;
  // JSON round trips drop undefined members, which the stored definition never has.
  const rest = (spec: VmSpec): unknown => JSON.parse(JSON.stringify({ ...spec, vcpus: 0, memoryMiB: 0 }));
  if (!isDeepStrictEqual(rest(wanted), rest(current))) return undefined;
  return { vcpus: wanted.vcpus, memoryMiB: wanted.memoryMiB };
}

function setDesired(record: VmRecord, state: VmState): void {
  if (record.desiredState !== state) {
    record.desiredState = state;
    record.desiredSince = new Date().toISOString();
  }
}

/** Throws INVALID_REQUEST unless `id` is a VM id (ids become file names: nothing else passes). */
export function assertVmId(id: unknown): string {
  if (typeof id !== 'string' || !VM_ID_PATTERN.test(id)) {
    throw new AgentError(
      'INVALID_REQUEST',
      `vm id ${JSON.stringify(id)} is invalid: lowercase letters, digits and "-", at most 64 characters`,
    );
  }
  return id;
}

/** Throws INVALID_REQUEST unless `id` is a plausible operation id. */
export function assertOperationId(id: unknown): string {
  if (typeof id !== 'string' || id === '') {
    throw new AgentError('INVALID_REQUEST', 'operation_id is required on every mutating call');
  }
  if (!OPERATION_ID_PATTERN.test(id)) {
    throw new AgentError(
      'INVALID_REQUEST',
      `operation_id ${JSON.stringify(id)} is invalid: letters, digits and ".:_-", at most 128 characters`,
    );
  }
  return id;
}

function assertCallable(ctx: CallContext, closed: boolean): void {
  if (closed) throw new AgentError('SHUTTING_DOWN', 'the agent is shutting down and takes no new work');
  if (ctx.deadline !== undefined && Date.now() >= ctx.deadline) {
    throw new AgentError(
      'DEADLINE_EXCEEDED',
      "the call's deadline passed before it could start; nothing was done",
    );
  }
  if (ctx.signal?.aborted) {
    throw new AgentError(
      'CANCELLED',
      'the caller cancelled the call before it could start; nothing was done',
    );
  }
}

function conflict(operationId: string, method: string, vmId: string): AgentError {
  return new AgentError(
    'OPERATION_CONFLICT',
    `operation_id ${operationId} was already used for a different ${method} request on ${vmId === HOST_BUCKET ? 'this host' : `VM ${vmId}`}`,
    { details: { operationId, method, vmId } },
  );
}

/**
 * Failures worth replaying. Not recorded: creates that failed (vmm-core undid everything, so a
 * retry is as good as new) and calls on VMs that do not exist (nothing happened to anything).
 */
function shouldRecordFailure(method: string, err: unknown): boolean {
  if (method === 'createVm' || method === 'prepareIncoming') return false;
  if (isVmmError(err, 'VM_NOT_FOUND')) return false;
  if (isAgentError(err, 'DEADLINE_EXCEEDED') || isAgentError(err, 'CANCELLED')) return false;
  return true;
}

function failureOutcome(err: unknown): OperationOutcome {
  if (isVmmError(err)) return { ok: false, error: { kind: 'vmm', code: err.code, message: err.message } };
  if (isAgentError(err)) return { ok: false, error: { kind: 'agent', code: err.code, message: err.message } };
  return {
    ok: false,
    error: { kind: 'internal', code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) },
  };
}

function replay<T>(outcome: OperationOutcome, revive?: (raw: unknown) => T): T {
  if (outcome.ok) return revive ? revive(outcome.result) : (outcome.result as T);
  const { kind, code, message } = outcome.error;
  if (kind === 'vmm') throw new VmmError(code as VmmError['code'], message);
  if (kind === 'agent') throw new AgentError(code as AgentError['code'], message);
  throw new Error(message);
}

/** What a result looks like after a trip through the state file, so replays from memory and disk agree. */
function jsonCopy(value: unknown): unknown {
  return value === undefined ? undefined : (JSON.parse(JSON.stringify(value)) as unknown);
}

function reviveSnapshots(raw: unknown): SnapshotInfo[] {
  return (raw as Array<Omit<SnapshotInfo, 'createdAt'> & { createdAt: string | Date }>).map((s) => ({
    ...s,
    createdAt: new Date(s.createdAt),
  }));
}
