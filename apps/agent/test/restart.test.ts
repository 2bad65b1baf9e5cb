import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { agentv1 } from '@hangar/proto';
import { isProcessAlive, parseVmSpec } from '@hangar/vmm-core';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  eventually,
  lastTick,
  makeTestHost,
  type TestHost,
  tinySpec,
} from '../../../packages/vmm-core/test/support/test-host.js';
import { vmSpecToProto } from '../src/grpc/mappers.js';
import {
  agentMainJs,
  buildAgent,
  ChildAgent,
  hostAgentClient,
  qemuPidsOf,
  readVmRecord,
  rpc,
  testAgentConfig,
} from './support/agent-harness.js';
import { TestGateway } from './support/test-gateway.js';

const run = promisify(execFile);

/**
 * `hangar-agent` as a real child process: SIGKILL and SIGTERM it while guests run, start it again
 * and check that it re-adopts them (one QEMU each, still ticking) and remembers what they should be.
 */
describe('agent restarts', () => {
  let host: TestHost;
  let configFile: string;
  let children: ChildAgent[];
  let clients: agentv1.HostAgentClient[];
  let gateway: TestGateway | undefined;

  const startAgent = async () => {
    const child = await ChildAgent.start(
      {
        ...testAgentConfig(host, gateway ? { controlPlane: gateway.address, heartbeatIntervalMs: 300 } : {}),
        logLevel: 'info',
      },
      configFile,
    );
    children.push(child);
    const client = hostAgentClient(child.address);
    clients.push(client);
    return { child, client };
  };
  const serialTicks = async (id: string) =>
    lastTick(await readFile(path.join(host.runtimeDir, 'vms', id, 'serial.log'), 'utf8').catch(() => '')) ??
    0;
  /** Creates and starts a guest over gRPC and waits until its ticks show. */
  const bootGuest = async (client: agentv1.HostAgentClient, id: string) => {
    const spec = vmSpecToProto(parseVmSpec(tinySpec(id)));
    await rpc(client, client.createVm, { operationId: `create-${id}`, spec });
    const started = await rpc(client, client.startVm, { vmId: id, operationId: `start-${id}` });
    expect(started.vm?.state).toBe(agentv1.VmState.VM_STATE_RUNNING);
    return started.vm!.pid!;
  };
  const waitTicking = (id: string, above: number) =>
    eventually(async () => ((await serialTicks(id)) > above ? true : undefined), {
      timeoutMs: 90_000,
      what: `${id} ticking past ${above}`,
    });

  beforeAll(async () => {
    await buildAgent();
  }, 180_000);
  beforeEach(async () => {
    host = await makeTestHost({ label: 'agent-restart' });
    configFile = path.join(host.root, 'agent.json');
    children = [];
    clients = [];
    gateway = undefined;
  });
  afterEach(async () => {
    for (const c of clients) c.close();
    for (const child of children) await child.dispose();
    await gateway?.close();
    // Guests outlive agents by design: kill their QEMU by pid (every process under this host's root).
    await host.cleanup();
  });

  it('re-adopts two running guests after SIGKILL: RUNNING, one QEMU each, counters rising, desired state kept', {
    timeout: 240_000,
  }, async () => {
    const first = await startAgent();
    const pidA = await bootGuest(first.client, 'rs-a');
    const pidB = await bootGuest(first.client, 'rs-b');
    await waitTicking('rs-a', 1);
    await waitTicking('rs-b', 1);
    expect((await readVmRecord(path.join(host.root, 'state'), 'rs-a'))?.desiredState).toBe('RUNNING');

    first.child.kill('SIGKILL');
    expect((await first.child.waitForExit()).signal).toBe('SIGKILL');
    expect(await isProcessAlive(pidA)).toBe(true);
    expect(await isProcessAlive(pidB)).toBe(true);

    const second = await startAgent();
    for (const [id, pid] of [
      ['rs-a', pidA],
      ['rs-b', pidB],
    ] as const) {
      const adopted = await second.child.waitForLog((l) => l.msg === 're-adopted VM' && l.vmId === id);
      expect(adopted).toMatchObject({ state: 'RUNNING', pid, desiredState: 'RUNNING', drift: false });
      const { vm } = await rpc(second.client, second.client.getVm, { vmId: id });
      expect(vm?.state).toBe(agentv1.VmState.VM_STATE_RUNNING);
      expect(vm?.pid).toBe(pid);
      expect(await qemuPidsOf(host.runtimeDir, id)).toEqual([pid]);
      const { text } = await rpc(second.client, second.client.consoleLog, { vmId: id });
      await waitTicking(id, lastTick(text) ?? 0);
    }
    const listed = await rpc(second.client, second.client.listVms, {});
    expect(listed.vms.map((v) => [v.id, v.state])).toEqual([
      ['rs-a', agentv1.VmState.VM_STATE_RUNNING],
      ['rs-b', agentv1.VmState.VM_STATE_RUNNING],
    ]);
    expect(listed.orphans).toEqual([]);

    // The operation ids survived too: retrying the first StartVm replays, it starts no second QEMU.
    const retried = await rpc(second.client, second.client.startVm, {
      vmId: 'rs-a',
      operationId: 'start-rs-a',
    });
    expect(retried.vm?.pid).toBe(pidA);
    expect(await qemuPidsOf(host.runtimeDir, 'rs-a')).toEqual([pidA]);
  });

  it('exits 0 on SIGTERM and leaves the guest running', { timeout: 180_000 }, async () => {
    const { child, client } = await startAgent();
    const pid = await bootGuest(client, 'rs-term');
    await waitTicking('rs-term', 1);

    child.kill('SIGTERM');
    expect(await child.waitForExit()).toEqual({ code: 0, signal: null });
    expect(child.lines.some((l) => l.msg === 'agent stopped')).toBe(true);
    expect(await isProcessAlive(pid)).toBe(true);
    expect(await qemuPidsOf(host.runtimeDir, 'rs-term')).toEqual([pid]);
    await waitTicking('rs-term', await serialTicks('rs-term'));
  });

  it('exits 2 with the reason on a bad configuration', async () => {
    await writeFile(configFile, JSON.stringify({ controlPlane: '127.0.0.1:1', insecureLoopback: true }));
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith('HANGAR_AGENT_')),
    );
    const failed = await run(process.execPath, [agentMainJs, '--config', configFile], { env }).then(
      () => undefined,
      (err: { code?: number; stderr?: string }) => err,
    );
    expect(failed?.code).toBe(2);
    expect(failed?.stderr).toMatch(/invalid agent configuration: .*pools/);
  });
});
