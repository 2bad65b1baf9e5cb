import { existsSync } from 'node:fs';
import path from 'node:path';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { type Client, credentials, makeGenericClientConstructor, status } from '@grpc/grpc-js';
import { agentv1 } from '@hangar/proto';
import { parseVmSpec, type VmSpecInput } from '@hangar/vmm-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  eventually,
  lastTick,
  makeTestHost,
  type TestHost,
  tinySpec,
} from '../../../packages/vmm-core/test/support/test-host.js';
import { vmSpecToProto } from '../src/grpc/mappers.js';
import {
  errorCodeOf,
  healthCheck,
  type InProcessAgent,
  qemuPidsOf,
  rpc,
  rpcError,
  startInProcessAgent,
  testAgentConfig,
} from './support/agent-harness.js';

const protoSpec = (input: VmSpecInput): agentv1.VmSpec => vmSpecToProto(parseVmSpec(input));

/**
 * A real grpc-js client against an in-process agent on 127.0.0.1 driving real QEMU guests.
 * One host and one agent for the file; the lifecycle test boots a single guest and checks the
 * idempotency, state and deadline rules on it.
 */
describe('HostAgent over gRPC', () => {
  let host: TestHost;
  let agent: InProcessAgent;
  let client: agentv1.HostAgentClient;

  beforeAll(async () => {
    host = await makeTestHost({ label: 'agent-grpc' });
    agent = await startInProcessAgent(testAgentConfig(host));
    client = agent.client;
  });
  afterAll(async () => {
    await agent?.stop();
    await host?.cleanup();
  });

  it('reports SERVING on grpc.health.v1 for the server and the HostAgent service', async () => {
    expect(await healthCheck(agent.address)).toBe('SERVING');
    expect(await healthCheck(agent.address, 'hangar.agent.v1.HostAgent')).toBe('SERVING');
  });

  it('answers malformed requests with INVALID_ARGUMENT and a message naming the problem', async () => {
    const create = (spec: agentv1.VmSpec | undefined, operationId = 'op-bad') =>
      rpcError(rpc(client, client.createVm, { operationId, spec }));
    const cases: Array<[string, Promise<Awaited<ReturnType<typeof rpcError>>>, RegExp]> = [
      ['missing spec', create(undefined), /spec is required/],
      [
        'bad id',
        create({ ...protoSpec(tinySpec('bad')), id: 'Bad_ID/..' }),
        /vm id "Bad_ID\/\.\." is invalid/,
      ],
      ['zero memory', create({ ...protoSpec(tinySpec('zero')), memoryMib: 0 }), /memoryMiB/],
      [
        'unknown pool',
        create(
          protoSpec(
            tinySpec('pool', {
              disks: [{ name: 'data', file: { pool: 'nope', path: 'a.qcow2' }, sizeBytes: 1 << 20 }],
            }),
          ),
        ),
        /unknown storage pool "nope"/,
      ],
      [
        'path leaving the pool',
        create({
          ...protoSpec(tinySpec('esc')),
          disks: [
            {
              name: 'data',
              file: { pool: 'shared', path: '../../etc/passwd' },
              format: 0,
              backing: undefined,
              cache: 0,
              readOnly: false,
            },
          ],
        }),
        /must not contain "\.\."/,
      ],
      ['missing operation id', create(protoSpec(tinySpec('noop')), ''), /operation_id is required/],
      [
        'bad vm id on GetVm',
        rpcError(rpc(client, client.getVm, { vmId: '../../etc' })),
        /vm id "\.\.\/\.\.\/etc" is invalid/,
      ],
    ];
    for (const [what, pending, message] of cases) {
      const err = await pending;
      expect(err.code, what).toBe(status.INVALID_ARGUMENT);
      expect(err.details, what).toMatch(message);
    }
    expect(errorCodeOf(await create(undefined))).toBe('INVALID_REQUEST');
    expect(errorCodeOf(await create({ ...protoSpec(tinySpec('zero')), memoryMib: 0 }))).toBe('INVALID_SPEC');
  });

  it('refuses negative numbers sent on the wire (proto3 clients that put -1 in a uint field)', async () => {
    // A well-behaved TS client cannot encode a negative uint32, so the bytes are written by hand:
    // memory_mib as int32 -256 (what a client in another language sends), size_bytes as int64 -1.
    const raw = makeGenericClientConstructor(
      {
        createVm: {
          path: '/hangar.agent.v1.HostAgent/CreateVm',
          requestStream: false,
          responseStream: false,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => agentv1.CreateVmResponse.decode(b),
        },
      },
      'hangar.agent.v1.HostAgent',
    );
    const rawClient = new raw(agent.address, credentials.createInsecure()) as unknown as Client & {
      createVm: Parameters<typeof rpc<Buffer, agentv1.CreateVmResponse>>[1];
    };
    const request = (spec: Uint8Array) =>
      Buffer.from(
        new BinaryWriter()
          .uint32((1 << 3) | 2)
          .string('op-neg')
          .uint32((2 << 3) | 2)
          .bytes(spec)
          .finish(),
      );
    try {
      const base = agentv1.VmSpec.encode({ ...protoSpec(tinySpec('neg')), memoryMib: 0 }).finish();
      const negMemory = Buffer.concat([
        base,
        new BinaryWriter()
          .uint32((4 << 3) | 0)
          .int32(-256)
          .finish(),
      ]);
      const memErr = await rpcError(rpc(rawClient, rawClient.createVm, request(negMemory)));
      expect(memErr.code).toBe(status.INVALID_ARGUMENT);
      expect(memErr.details).toMatch(/spec\.memory_mib must not be negative/);

      const disk = new BinaryWriter()
        .uint32((1 << 3) | 2)
        .string('data')
        .uint32((2 << 3) | 2)
        .bytes(agentv1.PoolPath.encode({ pool: 'shared', path: 'neg.qcow2' }).finish())
        .uint32((5 << 3) | 0)
        .int64(-1)
        .finish();
      const negSize = Buffer.concat([
        agentv1.VmSpec.encode(protoSpec(tinySpec('neg2', { disks: [] }))).finish(),
        new BinaryWriter()
          .uint32((9 << 3) | 2)
          .bytes(disk)
          .finish(),
      ]);
      const sizeErr = await rpcError(rpc(rawClient, rawClient.createVm, request(negSize)));
      expect(sizeErr.code).toBe(status.INVALID_ARGUMENT);
      expect(sizeErr.details).toMatch(/malformed request/);
    } finally {
      rawClient.close();
    }
  });

  it('answers NOT_FOUND for a VM this host does not know, and deletes it idempotently', async () => {
    const err = await rpcError(rpc(client, client.getVm, { vmId: 'no-such-vm' }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(errorCodeOf(err)).toBe('VM_NOT_FOUND');
    await rpc(client, client.deleteVm, { vmId: 'no-such-vm', operationId: 'del-unknown' });
  });

  it('creates, starts, stops and deletes a real guest; one operation id never makes a second guest', {
    timeout: 180_000,
  }, async () => {
    const id = 'grpc-life';
    const spec = protoSpec(tinySpec(id, { cloudInit: { hostname: 'grpc-guest' } }));

    // The same CreateVm twice, even concurrently: one VM, the same answer.
    const [c1, c2] = await Promise.all([
      rpc(client, client.createVm, { operationId: 'op-create', spec }),
      rpc(client, client.createVm, { operationId: 'op-create', spec }),
    ]);
    expect(c1.vm?.state).toBe(agentv1.VmState.VM_STATE_STOPPED);
    expect(c2).toEqual(c1);
    const conflict = await rpcError(
      rpc(client, client.createVm, { operationId: 'op-create', spec: { ...spec, memoryMib: 512 } }),
    );
    expect(conflict.code).toBe(status.ALREADY_EXISTS);
    expect(conflict.details).toMatch(/op-create was already used for a different createVm request/);
    const exists = await rpcError(rpc(client, client.createVm, { operationId: 'op-create-2', spec }));
    expect(exists.code).toBe(status.ALREADY_EXISTS);
    expect(errorCodeOf(exists)).toBe('VM_EXISTS');

    // The same StartVm twice: one QEMU.
    const [s1, s2] = await Promise.all([
      rpc(client, client.startVm, { vmId: id, operationId: 'op-start' }),
      rpc(client, client.startVm, { vmId: id, operationId: 'op-start' }),
    ]);
    expect(s1.vm?.state).toBe(agentv1.VmState.VM_STATE_RUNNING);
    expect(s2).toEqual(s1);
    const pids = await qemuPidsOf(host.runtimeDir, id);
    expect(pids).toEqual([s1.vm?.pid]);

    await eventually(
      async () => {
        const { text } = await rpc(client, client.consoleLog, { vmId: id });
        return /HANGAR-READY hostname=grpc-guest/.test(text) && (lastTick(text) ?? 0) >= 1 ? true : undefined;
      },
      { timeoutMs: 90_000, what: 'the guest marker in ConsoleLog' },
    );

    const listed = await rpc(client, client.listVms, {});
    expect(listed.vms.map((v) => [v.id, v.state])).toEqual([[id, agentv1.VmState.VM_STATE_RUNNING]]);
    expect(listed.orphans).toEqual([]);

    const wrongState = await rpcError(
      rpc(client, client.startVm, { vmId: id, operationId: 'op-start-again' }),
    );
    expect(wrongState.code).toBe(status.FAILED_PRECONDITION);
    expect(wrongState.details).toMatch(/while it is RUNNING/);
    expect(errorCodeOf(wrongState)).toBe('INVALID_STATE');

    // A paused guest ignores ACPI powerdown, so a graceful stop holds the VM's lock for its whole
    // timeout. A StartVm queued behind it with a short deadline must not be started when its turn
    // comes (else the VM would run again after the stop).
    const paused = await rpc(client, client.pauseVm, { vmId: id, operationId: 'op-pause' });
    expect(paused.vm?.state).toBe(agentv1.VmState.VM_STATE_PAUSED);
    const stopping = rpc(client, client.stopVm, {
      vmId: id,
      operationId: 'op-stop',
      force: false,
      timeoutMs: 1_500,
    });
    await new Promise((r) => setTimeout(r, 50));
    const late = await rpcError(
      rpc(client, client.startVm, { vmId: id, operationId: 'op-late' }, { timeoutMs: 300 }),
    );
    expect(late.code).toBe(status.DEADLINE_EXCEEDED);
    const stopped = await stopping;
    expect(stopped.vm?.state).toBe(agentv1.VmState.VM_STATE_STOPPED);
    await new Promise((r) => setTimeout(r, 500));
    expect((await rpc(client, client.getVm, { vmId: id })).vm?.state).toBe(agentv1.VmState.VM_STATE_STOPPED);
    expect(await qemuPidsOf(host.runtimeDir, id)).toEqual([]);
    expect(await rpc(client, client.consoleLog, { vmId: id })).toMatchObject({
      text: expect.stringMatching(/HANGAR-READY/),
    });

    await rpc(client, client.deleteVm, { vmId: id, operationId: 'op-delete' });
    expect((await rpcError(rpc(client, client.getVm, { vmId: id }))).code).toBe(status.NOT_FOUND);
    expect(existsSync(path.join(host.runtimeDir, 'vms', id))).toBe(false);
    // A retry of the delete succeeds and still creates nothing.
    await rpc(client, client.deleteVm, { vmId: id, operationId: 'op-delete' });
    expect((await rpc(client, client.listVms, {})).vms).toEqual([]);
  });
});
