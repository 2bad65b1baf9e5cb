import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Hypervisor, VmEvent } from '../../src/driver/hypervisor.js';
import { isVmmError, type VmmErrorCode } from '../../src/errors.js';
import type { VmSpecInput } from '../../src/spec/vm-spec.js';

/** What each driver's contract run provides. */
export interface ContractHarness {
  /** Host A's driver. */
  driver: Hypervisor;
  /** A second host sharing the `shared` pool, for migration. */
  peer: Hypervisor;
  /** A new driver instance over host A's state, as after an agent restart. */
  reopen(): Promise<Hypervisor>;
  spec(id: string, pool?: 'local' | 'shared'): VmSpecInput;
  /** Resolves once the guest can react (ACPI etc.); immediate for the fake driver. */
  waitReady(driver: Hypervisor, id: string): Promise<void>;
  listenHost: string;
  cleanup(): Promise<void>;
}

export async function expectVmmError(
  p: Promise<unknown>,
  code: VmmErrorCode,
  message?: RegExp,
): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (!isVmmError(err)) throw err;
    expect(err.code, err.message).toBe(code);
    if (message) expect(err.message).toMatch(message);
    return;
  }
  throw new Error(`expected VmmError ${code}, but the call succeeded`);
}

let counter = 0;
function newId(tag: string): string {
  return `ct-${tag}-${process.pid.toString(36)}-${(counter++).toString(36)}`;
}

/**
 * One behavioural contract for every Hypervisor driver: the fake driver must behave like the
 * real one as seen from the layers above.
 */
export function describeHypervisorContract(name: string, makeHarness: () => Promise<ContractHarness>): void {
  describe(`Hypervisor contract: ${name}`, () => {
    let h: ContractHarness;
    beforeEach(async () => {
      h = await makeHarness();
    });
    afterEach(async () => {
      await h.cleanup();
    });

    it('reports its capabilities', async () => {
      const caps = await h.driver.capabilities();
      expect(caps.qemuVersion).toMatch(/^\d+\.\d+\.\d+$/);
      expect(caps.cpuModels).toContain('qemu64');
      expect(caps.cpuModels).not.toContain('host-passthrough');
      expect(caps.machineTypes).toContain('pc');
      expect(['kvm', 'tcg', 'fake']).toContain(caps.accelerator);
      expect(caps.acceleratorReason.length).toBeGreaterThan(0);
      expect(caps.features.liveMigration).toBe(true);
    });

    it('runs the lifecycle create → start → pause → resume → stop → start → force stop → delete', async () => {
      const id = newId('life');
      const events: VmEvent[] = [];
      h.driver.onEvent((e) => events.push(e));
      const created = await h.driver.create(h.spec(id));
      expect(created.state).toBe('STOPPED');
      expect(created.pid).toBeUndefined();
      expect((await h.driver.list()).map((v) => v.id)).toContain(id);

      const started = await h.driver.start(id);
      expect(started.state).toBe('RUNNING');
      expect(started.pid).toBeGreaterThan(0);
      await h.waitReady(h.driver, id);
      expect((await h.driver.pause(id)).state).toBe('PAUSED');
      expect((await h.driver.get(id)).qemuStatus).toBe('paused');
      expect((await h.driver.resume(id)).state).toBe('RUNNING');
      expect((await h.driver.stop(id, { timeoutMs: 20_000 })).state).toBe('STOPPED');
      expect((await h.driver.start(id)).state).toBe('RUNNING');
      expect((await h.driver.forceStop(id)).state).toBe('STOPPED');
      await h.driver.delete(id);
      await expectVmmError(h.driver.get(id), 'VM_NOT_FOUND');
      expect((await h.driver.list()).map((v) => v.id)).not.toContain(id);
      expect(events.some((e) => e.vmId === id && e.state === 'RUNNING')).toBe(true);
    });

    it('refuses actions that the state table does not allow, naming the state', async () => {
      const id = newId('state');
      await h.driver.create(h.spec(id));
      await expectVmmError(h.driver.pause(id), 'INVALID_STATE', /STOPPED/);
      await expectVmmError(h.driver.resume(id), 'INVALID_STATE', /STOPPED/);
      await h.driver.start(id);
      await expectVmmError(h.driver.start(id), 'INVALID_STATE', /RUNNING/);
      await expectVmmError(h.driver.delete(id), 'INVALID_STATE', /RUNNING/);
      await expectVmmError(h.driver.revertSnapshot(id, 'nope'), 'INVALID_STATE', /RUNNING/);
      await expectVmmError(h.driver.cancelMigration(id), 'INVALID_STATE');
      expect((await h.driver.get(id)).state).toBe('RUNNING');
      await h.driver.forceStop(id);
    });

    it('resizes a stopped VM and refuses to resize a running one', async () => {
      const id = newId('resize');
      await h.driver.create(h.spec(id));
      const resized = await h.driver.resize(id, { vcpus: 2, memoryMiB: 384 });
      expect([resized.spec.vcpus, resized.spec.memoryMiB]).toEqual([2, 384]);
      await expectVmmError(h.driver.resize(id, { vcpus: 0, memoryMiB: 384 }), 'INVALID_SPEC');
      const started = await h.driver.start(id);
      expect([started.spec.vcpus, started.spec.memoryMiB]).toEqual([2, 384]);
      expect((await h.driver.sampleVm(id)).vcpuSeconds).toHaveLength(2);
      await expectVmmError(h.driver.resize(id, { vcpus: 1, memoryMiB: 256 }), 'INVALID_STATE', /RUNNING/);
      await h.driver.forceStop(id);
    });

    it('answers VM_NOT_FOUND for unknown VMs and VM_EXISTS for a second create', async () => {
      await expectVmmError(h.driver.get('no-such-vm'), 'VM_NOT_FOUND');
      await expectVmmError(h.driver.start('no-such-vm'), 'VM_NOT_FOUND');
      await expectVmmError(h.driver.delete('no-such-vm'), 'VM_NOT_FOUND');
      const id = newId('dup');
      await h.driver.create(h.spec(id));
      await expectVmmError(h.driver.create(h.spec(id)), 'VM_EXISTS');
    });

    it('rejects bad specs with clear errors and leaves nothing behind', async () => {
      const before = (await h.driver.list()).length;
      const base = h.spec(newId('bad'));
      const cases: Array<[unknown, RegExp]> = [
        [{ ...base, id: '../etc' }, /id/],
        [{ ...base, id: 'UPPER' }, /id/],
        [{ ...base, vcpus: 0 }, /vcpus/],
        [{ ...base, memoryMiB: -256 }, /memoryMiB/],
        [{ ...base, cpuModel: 'host' }, /named CPU model/],
        [{ ...base, cpuModel: 'no-such-cpu' }, /CPU model/],
        [{ ...base, unknownField: 1 }, /unknownField|Unrecognized/i],
        [{ ...base, disks: [{ name: 'd', file: { pool: 'shared', path: '../../etc/passwd' } }] }, /\.\./],
        [{ ...base, disks: [{ name: 'd', file: { pool: 'shared', path: '/etc/passwd' } }] }, /relative/],
        [
          { ...base, disks: [{ name: 'd', file: { pool: 'nowhere', path: 'x.qcow2' }, sizeBytes: 1 }] },
          /pool/,
        ],
        [{ ...base, name: 'a'.repeat(200) }, /name/],
        [{ ...base, nics: [{ name: 'n0', mac: 'zz:zz', backend: { type: 'user' } }] }, /MAC/],
      ];
      for (const [spec, message] of cases) {
        await expectVmmError(h.driver.create(spec as VmSpecInput), 'INVALID_SPEC', message);
      }
      expect((await h.driver.list()).length).toBe(before);
    });

    it('is re-adopted by a new driver instance with the guest still running', async () => {
      const id = newId('adopt');
      await h.driver.create(h.spec(id));
      const { pid } = await h.driver.start(id);
      await h.driver.close();
      const again = await h.reopen();
      const { adopted, orphans } = await again.adopt();
      const vm = adopted.find((v) => v.id === id);
      expect(vm?.state).toBe('RUNNING');
      expect(vm?.pid).toBe(pid);
      expect(orphans).toEqual([]);
      await again.forceStop(id);
      await again.close();
    });

    it('refuses live migration of a VM with a disk on non-shared storage before touching it', async () => {
      const id = newId('local');
      await h.driver.create(h.spec(id, 'local'));
      await h.driver.start(id);
      await expectVmmError(h.driver.migrate(id, 'tcp:127.0.0.1:1'), 'MIGRATION_REFUSED', /not shared/);
      await expectVmmError(
        h.peer.prepareIncoming(h.spec(id, 'local'), { listenHost: h.listenHost }),
        'MIGRATION_REFUSED',
        /not shared/,
      );
      expect((await h.driver.get(id)).state).toBe('RUNNING');
      await h.driver.forceStop(id);
    });

    it('refuses live migration of a VM whose disk is not opened with cache=none', async () => {
      const id = newId('cache');
      const spec = h.spec(id);
      const disks = (spec.disks ?? []).map((d) => ({ ...d, cache: 'writeback' as const }));
      await h.driver.create({ ...spec, disks });
      await h.driver.start(id);
      await expectVmmError(h.driver.migrate(id, 'tcp:127.0.0.1:1'), 'MIGRATION_REFUSED', /cache=none/);
      expect((await h.driver.get(id)).state).toBe('RUNNING');
      await h.driver.forceStop(id);
    });

    it('live-migrates a running VM to a peer: destination runs, source is gone', async () => {
      const id = newId('mig');
      await h.driver.create(h.spec(id));
      await h.driver.start(id);
      await h.waitReady(h.driver, id);
      const { uri, vm } = await h.peer.prepareIncoming((await h.driver.get(id)).spec, {
        listenHost: h.listenHost,
      });
      expect(vm.state).toBe('INCOMING');
      const progress: number[] = [];
      const result = await h.driver.migrate(id, uri, { downtimeLimitMs: 100 }, (p) =>
        progress.push(p.percent),
      );
      expect(result.totalMs).toBeGreaterThan(0);
      expect(result.transferredBytes).toBeGreaterThan(0);
      expect(progress.at(-1)).toBe(100);
      expect((await h.peer.finishIncoming(id)).state).toBe('RUNNING');
      expect((await h.driver.get(id)).state).toBe('STOPPED');
      await h.driver.completeOutgoing(id);
      await expectVmmError(h.driver.get(id), 'VM_NOT_FOUND');
      await h.peer.forceStop(id);
    });

    it('takes, lists and deletes a snapshot of a stopped VM', async () => {
      const id = newId('snap');
      await h.driver.create(h.spec(id));
      await h.driver.createSnapshot(id, 's1');
      expect((await h.driver.listSnapshots(id)).map((s) => s.name)).toEqual(['s1']);
      await expectVmmError(h.driver.createSnapshot(id, 's1'), 'INVALID_SPEC', /already/);
      await expectVmmError(h.driver.createSnapshot(id, 'bad name!'), 'INVALID_SPEC');
      await h.driver.revertSnapshot(id, 's1');
      await h.driver.deleteSnapshot(id, 's1');
      expect(await h.driver.listSnapshots(id)).toEqual([]);
      await expectVmmError(h.driver.revertSnapshot(id, 's1'), 'INVALID_SPEC', /no snapshot/);
    });

    it('hot-plugs and unplugs a disk on a running VM', async () => {
      const id = newId('hot');
      await h.driver.create(h.spec(id));
      await h.driver.start(id);
      await h.waitReady(h.driver, id);
      const extra = {
        name: 'extra',
        file: { pool: 'local', path: `${id}-extra.qcow2` },
        format: 'qcow2' as const,
        sizeBytes: 16 * 1024 * 1024,
        cache: 'none' as const,
        readOnly: false,
      };
      const withDisk = await h.driver.attachDisk(id, extra);
      expect(withDisk.spec.disks.map((d) => d.name)).toContain('extra');
      await expectVmmError(h.driver.attachDisk(id, extra), 'INVALID_SPEC', /already/);
      const without = await h.driver.detachDisk(id, 'extra');
      expect(without.spec.disks.map((d) => d.name)).not.toContain('extra');
      await expectVmmError(h.driver.detachDisk(id, 'extra'), 'INVALID_SPEC', /no disk/);
      await h.driver.forceStop(id);
    });

    it('hot-plugs and unplugs a NIC on a running VM', async () => {
      const id = newId('nic');
      await h.driver.create(h.spec(id));
      await h.driver.start(id);
      await h.waitReady(h.driver, id);
      const nic = {
        name: 'net1',
        mac: '52:54:00:aa:bb:01',
        backend: { type: 'user' as const },
        model: 'virtio-net-pci' as const,
      };
      expect((await h.driver.attachNic(id, nic)).spec.nics.map((n) => n.name)).toEqual(['net1']);
      await expectVmmError(h.driver.attachNic(id, nic), 'INVALID_SPEC', /already/);
      expect((await h.driver.detachNic(id, 'net1')).spec.nics).toEqual([]);
      await h.driver.forceStop(id);
    });

    it('samples metrics of a running VM and of the host', async () => {
      const id = newId('metrics');
      await h.driver.create(h.spec(id));
      await h.driver.start(id);
      await h.waitReady(h.driver, id);
      const s = await h.driver.sampleVm(id);
      expect(s.vcpuSeconds).toHaveLength(1);
      expect(s.cpuSecondsTotal).toBeGreaterThan(0);
      expect(s.rssBytes).toBeGreaterThan(0);
      expect(s.block.length).toBeGreaterThanOrEqual(1);
      const host = await h.driver.sampleHost();
      expect(host.cpuCount).toBeGreaterThan(0);
      expect(host.memoryTotalBytes).toBeGreaterThan(host.memoryAvailableBytes);
      await h.driver.forceStop(id);
      await expectVmmError(h.driver.sampleVm(id), 'INVALID_STATE');
    });
  });
}
