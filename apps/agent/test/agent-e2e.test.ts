import { agentv1 } from '@hangar/proto';
import { isProcessAlive, parseVmSpec, vmRuntimePaths } from '@hangar/vmm-core';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { GuestShell } from '../../../packages/vmm-core/test/support/guest-shell.js';
import {
  eventually,
  makeTestHost,
  type TestHost,
  tinySpec,
} from '../../../packages/vmm-core/test/support/test-host.js';
import { vmSpecToProto } from '../src/grpc/mappers.js';
import { buildAgent, ChildAgent, hostAgentClient, rpc, testAgentConfig } from './support/agent-harness.js';
import { TestGateway } from './support/test-gateway.js';

const { VmState } = agentv1;

/**
 * The whole agent as operators run it (`hangar-agent` child process) against a gateway: a guest
 * created over gRPC powers itself off from inside, and the agent reports STOPPED by an event
 * within 2 s of QEMU exiting, then in its heartbeats.
 */
describe('hangar-agent end to end', () => {
  let host: TestHost;
  let gateway: TestGateway;
  let child: ChildAgent | undefined;

  beforeAll(async () => {
    await buildAgent();
  });
  beforeEach(async () => {
    host = await makeTestHost({ label: 'agent-e2e' });
    gateway = await TestGateway.start();
  });
  afterEach(async () => {
    await child?.dispose();
    await gateway.close();
    await host.cleanup();
  });

  it('registers, reports the guest RUNNING with vCPU time, then STOPPED within 2 s of an in-guest power-off', async () => {
    child = await ChildAgent.start(
      {
        ...testAgentConfig(host, {
          controlPlane: gateway.address,
          heartbeatIntervalMs: 300,
          metricsIntervalMs: 500,
        }),
        logLevel: 'info',
      },
      `${host.root}/agent.json`,
    );
    const client = hostAgentClient(child.address);
    try {
      const reg = await gateway.waitFor(() => gateway.registers[0], 'Register');
      expect(reg.request.host?.hostname).toBe('agent-test');

      await rpc(client, client.createVm, {
        operationId: 'c1',
        spec: vmSpecToProto(parseVmSpec(tinySpec('e2e'))),
      });
      const started = await rpc(client, client.startVm, { vmId: 'e2e', operationId: 's1' });
      const pid = started.vm?.pid;
      expect(pid).toBeGreaterThan(0);
      await eventually(
        async () =>
          (await rpc(client, client.consoleLog, { vmId: 'e2e', tailBytes: 65536 })).text.includes(
            'HANGAR-READY',
          )
            ? true
            : undefined,
        { timeoutMs: 60_000, what: 'guest boot' },
      );
      const sample = await gateway.waitFor(
        () =>
          gateway
            .metrics()
            .flatMap((m) => m.metrics.vms.filter((v) => v.vmId === 'e2e' && v.vcpuSeconds.length))[0],
        'metrics for the guest',
        10_000,
      );
      expect(sample.vcpuSeconds.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);

      const sh = await GuestShell.connect(vmRuntimePaths(host.runtimeDir, 'e2e').shellSocket);
      try {
        await sh.run('(sleep 0.5; poweroff -f) >/dev/null 2>&1 & true');
      } finally {
        sh.close();
      }
      let exitedAt = 0;
      await eventually(
        async () => {
          if (await isProcessAlive(pid!)) return undefined;
          exitedAt = Date.now();
          return true;
        },
        { timeoutMs: 20_000, intervalMs: 10, what: 'QEMU to exit' },
      );
      const stopped = await gateway.waitFor(
        () =>
          gateway.events().find((e) => e.event.vmId === 'e2e' && e.event.state === VmState.VM_STATE_STOPPED),
        'the STOPPED event',
        5_000,
      );
      expect(stopped.at - exitedAt).toBeLessThan(2_000);
      await gateway.waitFor(
        () =>
          gateway
            .heartbeats()
            .find(
              (h) =>
                h.at > stopped.at &&
                h.heartbeat.inventory.find((v) => v.vmId === 'e2e')?.state === VmState.VM_STATE_STOPPED,
            ),
        'a heartbeat with the guest stopped',
      );
      expect((await rpc(client, client.getVm, { vmId: 'e2e' })).vm?.state).toBe(VmState.VM_STATE_STOPPED);
    } finally {
      client.close();
    }
  });
});
