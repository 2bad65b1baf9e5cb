import { Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { agentv1 } from '@hangar/proto';
import { parseVmSpec } from '@hangar/vmm-core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  eventually,
  lastTick,
  makeSharedDir,
  makeTestHost,
  type TestHost,
  tinySpec,
} from '../../../packages/vmm-core/test/support/test-host.js';
import { vmSpecToProto } from '../src/grpc/mappers.js';
import {
  errorCodeOf,
  type InProcessAgent,
  qemuPidsOf,
  rpc,
  rpcError,
  startInProcessAgent,
  testAgentConfig,
} from './support/agent-harness.js';

/** Reads a whole Migrate stream: every message, then the status it ended with. */
function migrateStream(
  client: agentv1.HostAgentClient,
  request: agentv1.MigrateRequest,
): Promise<{ messages: agentv1.MigrateResponse[]; error: ServiceError | undefined }> {
  return new Promise((resolve) => {
    const messages: agentv1.MigrateResponse[] = [];
    const call = client.migrate(request, new Metadata(), { deadline: Date.now() + 120_000 });
    call.on('data', (m: agentv1.MigrateResponse) => messages.push(m));
    call.on('error', (error: ServiceError) => resolve({ messages, error }));
    call.on('end', () => resolve({ messages, error: undefined }));
  });
}

/**
 * Live migration between two agents (two simulated hosts sharing one pool) over their HostAgent
 * services, with a real guest: the storage proof, PrepareIncoming, Migrate's progress stream,
 * FinishIncoming, CompleteOutgoing, and a Migrate retry that replays instead of migrating again.
 */
describe('HostAgent live migration over gRPC', () => {
  let shared: Awaited<ReturnType<typeof makeSharedDir>>;
  let hostA: TestHost;
  let hostB: TestHost;
  let a: InProcessAgent;
  let b: InProcessAgent;

  beforeEach(async () => {
    shared = await makeSharedDir();
    hostA = await makeTestHost({ sharedDir: shared.dir, label: 'agent-mig-a' });
    hostB = await makeTestHost({ sharedDir: shared.dir, label: 'agent-mig-b' });
    a = await startInProcessAgent(testAgentConfig(hostA, { hostName: 'host-a' }));
    b = await startInProcessAgent(testAgentConfig(hostB, { hostName: 'host-b' }));
  });
  afterEach(async () => {
    await a?.stop();
    await b?.stop();
    await hostA?.cleanup();
    await hostB?.cleanup();
    await shared?.cleanup();
  });

  it('proves the pool is shared, migrates a running guest with streamed progress and replays a retry', {
    timeout: 180_000,
  }, async () => {
    const token = await rpc(a.client, a.client.writeStorageToken, { operationId: 'tok', pool: 'shared' });
    expect(
      await rpc(b.client, b.client.checkStorageToken, {
        pool: 'shared',
        path: token.path,
        token: token.token,
      }),
    ).toMatchObject({ shared: true, poolPath: shared.dir });
    const local = await rpc(a.client, a.client.writeStorageToken, {
      operationId: 'tok-local',
      pool: 'local',
    });
    expect(
      await rpc(b.client, b.client.checkStorageToken, {
        pool: 'local',
        path: local.path,
        token: local.token,
      }),
    ).toMatchObject({ shared: false, reason: 'token file not found' });
    const noPool = await rpcError(
      rpc(a.client, a.client.writeStorageToken, { operationId: 'tok-x', pool: 'nope' }),
    );
    expect(noPool.code).toBe(status.NOT_FOUND);

    const id = 'mig';
    const spec = vmSpecToProto(parseVmSpec(tinySpec(id)));
    await rpc(a.client, a.client.createVm, { operationId: 'op-c', spec });
    const started = await rpc(a.client, a.client.startVm, { vmId: id, operationId: 'op-s' });
    const sourcePid = started.vm!.pid!;
    const ticks = async (client: agentv1.HostAgentClient) =>
      lastTick((await rpc(client, client.consoleLog, { vmId: id })).text) ?? 0;
    await eventually(async () => ((await ticks(a.client)) >= 1 ? true : undefined), {
      timeoutMs: 90_000,
      what: 'the guest ticking on host A',
    });

    const prepared = await rpc(b.client, b.client.prepareIncoming, {
      operationId: 'op-m',
      spec,
      listenHost: '127.0.0.1',
      port: 0,
    });
    expect(prepared.uri).toMatch(/^tcp:127\.0\.0\.1:\d+$/);
    expect(prepared.vm?.state).toBe(agentv1.VmState.VM_STATE_INCOMING);

    const request: agentv1.MigrateRequest = {
      vmId: id,
      operationId: 'op-m',
      uri: prepared.uri,
      options: { progressIntervalMs: 50 },
    };
    const first = await migrateStream(a.client, request);
    expect(first.error).toBeUndefined();
    const last = first.messages.at(-1)?.update;
    expect(last?.$case).toBe('result');
    expect(first.messages.slice(0, -1).every((m) => m.update?.$case === 'progress')).toBe(true);
    expect(first.messages.length).toBeGreaterThan(1);
    if (last?.$case !== 'result') throw new Error('no result');
    expect(last.value.transferredBytes).toBeGreaterThan(0);

    const finished = await rpc(b.client, b.client.finishIncoming, { vmId: id, operationId: 'op-m' });
    expect(finished.vm?.state).toBe(agentv1.VmState.VM_STATE_RUNNING);

    // A retry of the same Migrate replays the recorded result: no progress, no second migration.
    const retry = await migrateStream(a.client, request);
    expect(retry.error).toBeUndefined();
    expect(retry.messages).toEqual([first.messages.at(-1)]);

    await rpc(a.client, a.client.completeOutgoing, { vmId: id, operationId: 'op-m' });
    const gone = await rpcError(rpc(a.client, a.client.getVm, { vmId: id }));
    expect(errorCodeOf(gone)).toBe('VM_NOT_FOUND');
    expect(await qemuPidsOf(hostA.runtimeDir, id)).toEqual([]);
    expect(await qemuPidsOf(hostB.runtimeDir, id)).toEqual([finished.vm?.pid]);
    expect(finished.vm?.pid).not.toBe(sourcePid);

    const before = await ticks(b.client);
    await eventually(async () => ((await ticks(b.client)) > before ? true : undefined), {
      timeoutMs: 30_000,
      what: 'the guest ticking on host B',
    });
    // Nothing to abort any more: AbortMigration is a no-op on B's running guest.
    await rpc(b.client, b.client.abortMigration, { vmId: id, operationId: 'op-abort' });
  });
});
