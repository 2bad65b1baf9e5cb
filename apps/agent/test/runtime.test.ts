import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { FakeDriver, FakeHost, isVmmError, type StoragePool, type VmSpecInput } from '@hangar/vmm-core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeOwnedTempDir, tinySpec } from '../../../packages/vmm-core/test/support/test-host.js';
import { isAgentError } from '../src/runtime/agent-error.js';
import type { HostNetwork } from '../src/runtime/host-network.js';
import { VmRuntime } from '../src/runtime/vm-runtime.js';
import { LogCapture, readVmRecord } from './support/agent-harness.js';

/**
 * The runtime's own rules (idempotency, desired state, drift, locking, deadlines, taps, storage
 * tokens) on the fake driver, where they do not depend on QEMU's timing. The real-QEMU paths are
 * covered by grpc.test.ts and restart.test.ts.
 */
describe('VmRuntime', () => {
  let root: string;
  let stateDir: string;
  let pools: Record<string, StoragePool>;
  let fakeHost: FakeHost;
  let runtimes: VmRuntime[];

  /** One "agent process": a new driver over the same FakeHost (guests survive) and the same state dir. */
  const open = async (
    opts: { latencyMs?: number; network?: HostNetwork; logs?: LogCapture; history?: number } = {},
  ) => {
    const logs = opts.logs ?? new LogCapture();
    const runtime = new VmRuntime({
      hypervisor: new FakeDriver({
        runtimeDir: path.join(root, 'run'),
        pools,
        host: fakeHost,
        ...(opts.latencyMs ? { latencyMs: opts.latencyMs } : {}),
      }),
      stateDir,
      pools,
      logger: logs.logger,
      ...(opts.network ? { hostNetwork: opts.network } : {}),
      ...(opts.history ? { operationHistory: opts.history } : {}),
    });
    runtimes.push(runtime);
    const report = await runtime.start();
    return { runtime, logs, report };
  };
  const op = (operationId: string) => ({ operationId });

  beforeEach(async () => {
    root = await makeOwnedTempDir('agent-rt');
    stateDir = path.join(root, 'state');
    pools = {
      images: { path: path.join(root, 'images'), shared: true },
      shared: { path: path.join(root, 'shared'), shared: true },
    };
    await Promise.all(Object.values(pools).map((p) => mkdir(p.path, { recursive: true })));
    fakeHost = new FakeHost();
    runtimes = [];
  });
  afterEach(async () => {
    for (const r of runtimes) await r.close();
    await rm(root, { recursive: true, force: true });
  });

  it('replays CreateVm with the same operation id, also after a restart, and refuses a different request', async () => {
    const a = await open();
    const first = await a.runtime.createVm(tinySpec('idem'), op('op-1'));
    expect(first.state).toBe('STOPPED');
    const again = await a.runtime.createVm(tinySpec('idem'), op('op-1'));
    expect(again).toEqual(first);
    await a.runtime.close();

    const b = await open();
    expect(await b.runtime.createVm(tinySpec('idem'), op('op-1'))).toEqual(first);
    expect(fakeHost.vms.size).toBe(1);

    const conflict = await b.runtime
      .createVm(tinySpec('idem', { memoryMiB: 512 }), op('op-1'))
      .catch((e) => e);
    expect(isAgentError(conflict, 'OPERATION_CONFLICT')).toBe(true);
    expect(String(conflict.message)).toMatch(
      /op-1 was already used for a different createVm request on VM idem/,
    );

    const second = await b.runtime.createVm(tinySpec('idem'), op('op-2')).catch((e) => e);
    expect(isVmmError(second, 'VM_EXISTS')).toBe(true);

    // One api operation may send several RPCs to one VM (create, then start): keyed by method too.
    expect((await b.runtime.startVm('idem', op('op-1'))).state).toBe('RUNNING');
    expect((await readVmRecord(stateDir, 'idem'))?.desiredState).toBe('RUNNING');
  });

  it('replays a recorded failure and keeps at most N outcomes per VM; delete forgets them all', async () => {
    const { runtime } = await open({ history: 4 });
    await runtime.createVm(tinySpec('hist'), op('c'));
    const failed = await runtime.pauseVm('hist', op('p')).catch((e) => e);
    expect(isVmmError(failed, 'INVALID_STATE')).toBe(true);
    expect(String(failed.message)).toMatch(/while it is STOPPED/);
    await runtime.startVm('hist', op('s1'));
    // The same operation id replays the first outcome (the error), although a pause would work now.
    const replayed = await runtime.pauseVm('hist', op('p')).catch((e) => e);
    expect(isVmmError(replayed, 'INVALID_STATE')).toBe(true);
    expect(fakeHost.vms.get('hist')?.state).toBe('RUNNING');

    for (const i of [2, 3, 4]) {
      await runtime.stopVm('hist', { force: true }, op(`t${i}`));
      await runtime.startVm('hist', op(`s${i}`));
    }
    const record = await readVmRecord(stateDir, 'hist');
    const ops = record?.operations as Array<{ operationId: string }>;
    expect(ops.map((o) => o.operationId)).toEqual(['t3', 's3', 't4', 's4']);
    // `p` was forgotten: the same id now really pauses.
    expect((await runtime.pauseVm('hist', op('p'))).state).toBe('PAUSED');

    await runtime.stopVm('hist', { force: true }, op('t5'));
    await runtime.deleteVm('hist', op('d'));
    expect(await readVmRecord(stateDir, 'hist')).toBeUndefined();
    // Deleting what is not there succeeds (idempotent delete), with or without the old id.
    await runtime.deleteVm('hist', op('d'));
    await runtime.deleteVm('hist', op('d2'));
  });

  it('re-adopts after a restart, reports drift once and never repairs it, reports orphans', async () => {
    const a = await open();
    await a.runtime.createVm(tinySpec('up'), op('c1'));
    await a.runtime.startVm('up', op('s1'));
    await a.runtime.createVm(tinySpec('down'), op('c2'));
    await a.runtime.createVm(tinySpec('gone'), op('c3'));
    await a.runtime.startVm('gone', op('s3'));
    await a.runtime.close();

    // While the agent is away: one guest powers off, one VM disappears behind its back.
    fakeHost.vms.get('up')!.state = 'STOPPED';
    fakeHost.vms.get('up')!.pid = undefined;
    fakeHost.vms.delete('gone');

    const logs = new LogCapture();
    const b = await open({ logs });
    expect(b.report.drifting).toEqual(['up']);
    for (let i = 0; i < 3; i++) {
      const inv = await b.runtime.snapshot();
      const up = inv.vms.find((v) => v.vmId === 'up');
      expect(up).toMatchObject({ state: 'STOPPED', desiredState: 'RUNNING', drift: true });
      expect(inv.vms.find((v) => v.vmId === 'down')).toMatchObject({ desiredState: 'STOPPED', drift: false });
      expect(inv.orphans).toEqual([
        expect.objectContaining({
          reason: expect.stringMatching(/desired state RUNNING recorded for VM gone/),
        }),
      ]);
    }
    expect(fakeHost.vms.get('up')?.state).toBe('STOPPED');
    expect(logs.find('VM drift').length).toBe(1);

    // The control plane restarts it: drift clears, logged once.
    await b.runtime.startVm('up', op('s2'));
    expect((await b.runtime.snapshot()).vms.find((v) => v.vmId === 'up')?.drift).toBe(false);
    expect(logs.find('VM drift cleared').length).toBe(1);
  });

  it('runs calls on one VM one at a time and different VMs in parallel; a call past its deadline is not started', async () => {
    const { runtime } = await open({ latencyMs: 400 });
    await runtime.createVm(tinySpec('p1'), op('c1'));
    await runtime.createVm(tinySpec('p2'), op('c2'));

    const t0 = Date.now();
    await Promise.all([runtime.startVm('p1', op('s1')), runtime.startVm('p2', op('s2'))]);
    const parallel = Date.now() - t0;
    // Serialised they would take 800 ms.
    expect(parallel).toBeLessThan(700);

    const t1 = Date.now();
    const stopping = runtime.stopVm('p1', { force: true }, op('t1'));
    const late = runtime.startVm('p1', { operationId: 's1b', deadline: Date.now() + 50 }).catch((e) => e);
    await stopping;
    const lateErr = await late;
    expect(Date.now() - t1).toBeGreaterThanOrEqual(390);
    expect(isAgentError(lateErr, 'DEADLINE_EXCEEDED')).toBe(true);
    expect(fakeHost.vms.get('p1')?.state).toBe('STOPPED');
    // Not started, so not recorded: a retry with time left does run.
    expect((await runtime.startVm('p1', op('s1b'))).state).toBe('RUNNING');

    const aborted = new AbortController();
    const blocker = runtime.pauseVm('p2', op('pz'));
    const cancelled = runtime.stopVm('p2', {}, { operationId: 'x', signal: aborted.signal }).catch((e) => e);
    aborted.abort();
    await blocker;
    expect(isAgentError(await cancelled, 'CANCELLED')).toBe(true);
    expect(fakeHost.vms.get('p2')?.state).toBe('PAUSED');
  });

  it('creates taps for NICs that ask for one, keeps them on failure-free paths and removes them on delete', async () => {
    const calls: string[] = [];
    const network: HostNetwork = {
      async ensureBridge() {
        calls.push('bridge');
      },
      async createTap(vmId, index) {
        calls.push(`tap ${vmId} ${index}`);
        return `tp-${vmId}-${index}`;
      },
      async deleteTaps(vmId) {
        calls.push(`delete ${vmId}`);
      },
    };
    const { runtime } = await open({ network });
    const spec: VmSpecInput = {
      ...tinySpec('net'),
      nics: [
        { name: 'eth0', mac: '', backend: { type: 'tap', ifname: '' } },
        { name: 'eth1', mac: '52:54:00:aa:bb:cc', backend: { type: 'user' } },
      ],
    };
    const vm = await runtime.createVm(spec, op('c'));
    expect(vm.spec.nics[0]).toMatchObject({ backend: { type: 'tap', ifname: 'tp-net-0' } });
    expect(vm.spec.nics[0]?.mac).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(calls).toEqual(['bridge', 'tap net 0']);
    // A retry of the same create neither creates another tap nor a second VM.
    await runtime.createVm(spec, op('c'));
    expect(calls).toEqual(['bridge', 'tap net 0']);
    // A create that cannot succeed (VM exists) must not touch the existing VM's taps.
    const exists = await runtime.createVm(spec, op('c-again')).catch((e) => e);
    expect(isVmmError(exists, 'VM_EXISTS')).toBe(true);
    expect(calls).toEqual(['bridge', 'tap net 0']);
    // Validation happens before any tap is made.
    const bad = await runtime
      .createVm(
        { ...spec, id: 'net2', disks: [{ ...spec.disks![0]!, file: { pool: 'nope', path: 'x.qcow2' } }] },
        op('c2'),
      )
      .catch((e) => e);
    expect(isVmmError(bad, 'INVALID_SPEC')).toBe(true);
    expect(String(bad.message)).toMatch(/unknown storage pool "nope"/);
    expect(calls).toEqual(['bridge', 'tap net 0']);

    await runtime.startVm('net', op('s'));
    const attached = await runtime.attachNic(
      'net',
      { name: 'eth2', mac: '', backend: { type: 'tap', ifname: '' } },
      op('a'),
    );
    expect(attached.spec.nics.map((n) => n.name)).toEqual(['eth0', 'eth1', 'eth2']);
    expect(calls).toEqual(['bridge', 'tap net 0', 'tap net 2']);
    await runtime.stopVm('net', { force: true }, op('t'));
    await runtime.deleteVm('net', op('d'));
    expect(calls.at(-1)).toBe('delete net');
  });

  it('samples the host and running guests only', async () => {
    const { runtime } = await open();
    await runtime.createVm(tinySpec('m1'), op('c1'));
    await runtime.createVm(tinySpec('m2'), op('c2'));
    await runtime.startVm('m1', op('s1'));
    const { host, vms } = await runtime.sampleMetrics();
    expect(host.cpuCount).toBeGreaterThan(0);
    expect(vms.map((v) => v.vmId)).toEqual(['m1']);
  });

  it('writes and checks shared-storage tokens inside the pool only', async () => {
    const { runtime } = await open();
    const written = await runtime.writeStorageToken('shared', op('tok'));
    expect(written.poolPath).toBe(pools.shared!.path);
    expect(await readFile(path.join(written.poolPath, written.path), 'utf8')).toBe(written.token);
    expect(await runtime.writeStorageToken('shared', op('tok'))).toEqual(written);

    expect(await runtime.checkStorageToken('shared', written.path, written.token)).toMatchObject({
      shared: true,
    });
    expect(await runtime.checkStorageToken('images', written.path, written.token)).toMatchObject({
      shared: false,
      reason: 'token file not found',
    });
    expect(await runtime.checkStorageToken('shared', written.path, 'f'.repeat(64))).toMatchObject({
      shared: false,
      reason: 'token differs',
    });
    expect(await runtime.checkStorageToken('elsewhere', written.path, written.token)).toMatchObject({
      shared: false,
      reason: 'pool unknown',
    });
    const tricked = await runtime.checkStorageToken('shared', '../../etc/passwd', 'x').catch((e) => e);
    expect(isAgentError(tricked, 'INVALID_REQUEST')).toBe(true);
    const unknown = await runtime.writeStorageToken('nope', op('tok2')).catch((e) => e);
    expect(isAgentError(unknown, 'POOL_NOT_FOUND')).toBe(true);
  });
});
