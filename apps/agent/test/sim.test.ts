import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { agentv1, controlv1 } from '@hangar/proto';
import { parseVmSpec } from '@hangar/vmm-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { makeOwnedTempDir, tinySpec } from '../../../packages/vmm-core/test/support/test-host.js';
import { vmSpecToProto } from '../src/grpc/mappers.js';
import { AgentSimulator, type SimulatorOptions } from '../src/sim/simulator.js';
import { createClusterCa, issueControlPlaneCert } from '../src/tls/certs.js';
import { readTlsFiles } from '../src/tls/credentials.js';
import {
  agentMainJs,
  buildAgent,
  healthCheck,
  hostAgentClient,
  LogCapture,
  repoRoot,
  rpc,
} from './support/agent-harness.js';
import { TestGateway } from './support/test-gateway.js';

const { VmState } = agentv1;
const HEARTBEAT_MS = 300;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Open TCP sockets and listeners of this process (what would keep it from exiting). */
function tcpHandles(): number {
  return process.getActiveResourcesInfo().filter((t) => t === 'TCPSocketWrap' || t === 'TCPServerWrap')
    .length;
}

/** Established TCP connections from this machine to `address` (127.0.0.1:port), from /proc/net/tcp. */
async function establishedTo(address: string): Promise<number> {
  const port = Number(address.split(':')[1]).toString(16).toUpperCase().padStart(4, '0');
  const rows = (await readFile('/proc/net/tcp', 'utf8')).split('\n').slice(1);
  // Columns: sl local_address rem_address st ...; st 01 = ESTABLISHED; 0100007F = 127.0.0.1.
  return rows.filter((row) => {
    const [, , remote, st] = row.trim().split(/\s+/);
    return remote === `0100007F:${port}` && st === '01';
  }).length;
}

/** host name → host id, from the Registers the gateway accepted. */
function hostIds(gw: TestGateway): Map<string, string> {
  const out = new Map<string, string>();
  for (const r of gw.registers) {
    if (r.hostId && r.request.host) out.set(r.request.host.hostname, r.hostId);
  }
  return out;
}

function heartbeatsOf(gw: TestGateway, hostId: string, after = 0) {
  return gw.heartbeats().filter((h) => h.request.hostId === hostId && h.at > after);
}

/** Runs `node` on `args`, collecting stdout lines; the caller kills it by pid if it outlives the test. */
function spawnNode(args: string[]): {
  child: ChildProcess;
  lines: string[];
  stderr: () => string;
  exit: Promise<number | null>;
} {
  const child = spawn(process.execPath, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let buffered = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    buffered += chunk.toString('utf8');
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    lines.push(...parts.filter((l) => l.trim()));
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, lines, stderr: () => stderr, exit };
}

async function waitForLine(
  lines: string[],
  text: string,
  timeoutMs: number,
  stderr: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!lines.some((l) => l.includes(text))) {
    if (Date.now() > deadline) {
      throw new Error(
        `no "${text}" within ${timeoutMs} ms; stdout: ${lines.slice(-5).join('\n')}; stderr: ${stderr()}`,
      );
    }
    await sleep(50);
  }
}

function killIfRunning(child: ChildProcess | undefined): void {
  if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
    process.kill(child.pid, 'SIGKILL');
  }
}

/**
 * Simulation mode against the in-test AgentGateway over real gRPC on loopback: 20 agents on the
 * fake driver in this process, each its own host on the wire.
 */
describe('simulation mode: N agents in one process', () => {
  let dir: string;
  let gw: TestGateway;
  let sim: AgentSimulator | undefined;
  let handlesBefore = 0;
  const logs = new LogCapture('warn');

  const baseOptions = (over: Partial<SimulatorOptions> = {}): SimulatorOptions => ({
    count: 20,
    controlPlane: gw.address,
    stateDir: path.join(dir, 'fleet'),
    pools: {
      images: { path: path.join(dir, 'pools', 'images'), shared: true },
      local: { path: path.join(dir, 'pools', 'local'), shared: false },
      shared: { path: path.join(dir, 'pools', 'shared'), shared: true },
    },
    heartbeatIntervalMs: HEARTBEAT_MS,
    metricsIntervalMs: 400,
    reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
    logger: logs.logger,
    ...over,
  });

  beforeAll(async () => {
    dir = await makeOwnedTempDir('sim');
    for (const p of ['images', 'local', 'shared'])
      await mkdir(path.join(dir, 'pools', p), { recursive: true });
    gw = await TestGateway.start();
    handlesBefore = tcpHandles();
    sim = new AgentSimulator();
    await sim.start(baseOptions());
    await sim.whenConnected(30_000);
  });
  afterAll(async () => {
    await sim?.stop();
    await gw?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('registers 20 distinct hosts with distinct, reachable HostAgent addresses', async () => {
    const sim_ = sim!;
    expect(sim_.agents).toHaveLength(20);
    const accepted = gw.registers.filter((r) => !r.refused);
    const names = accepted.map((r) => r.request.host?.hostname);
    expect(new Set(names)).toEqual(new Set(Array.from({ length: 20 }, (_, i) => `sim-${i}`)));
    expect(accepted).toHaveLength(20);
    const addresses = accepted.map((r) => r.request.host?.agentAddress ?? '');
    expect(new Set(addresses).size).toBe(20);
    expect(new Set(accepted.map((r) => r.hostId)).size).toBe(20);
    for (const r of accepted) {
      const host = r.request.host!;
      expect(host.agentAddress).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(host.agentAddress).not.toBe('127.0.0.1:0');
      expect(host.driver).toBe(controlv1.HypervisorDriver.HYPERVISOR_DRIVER_FAKE);
      expect(host.labels['hangar.io/simulated']).toBe('true');
      expect(host.cores).toBe(64);
      expect(host.pools.map((p) => p.name).sort()).toEqual(['images', 'local', 'shared']);
    }
    // Every advertised address answers HostAgent calls and health checks as a real agent would.
    await Promise.all(
      accepted.map(async (r) => {
        const address = r.request.host!.agentAddress;
        const client = hostAgentClient(address);
        try {
          const res = await rpc(client, client.listVms, {}, { timeoutMs: 5_000 });
          expect(res.vms).toEqual([]);
        } finally {
          client.close();
        }
        expect(await healthCheck(address, 'hangar.agent.v1.HostAgent')).toBe('SERVING');
      }),
    );
  });

  it('sends heartbeats from every agent, in order, with staggered timers', async () => {
    const ids = hostIds(gw);
    expect(ids.size).toBe(20);
    const since = Date.now();
    await gw.waitFor(
      () => ([...ids.values()].every((id) => heartbeatsOf(gw, id, since).length >= 2) ? true : undefined),
      'two fresh heartbeats from every simulated agent',
      10_000,
    );
    expect(gw.violations).toEqual([]);
    expect(gw.openSessions).toBe(20);
    // One TCP connection per agent, as 20 real hosts would have, not one shared HTTP/2 channel.
    expect(await establishedTo(gw.address)).toBe(20);
    // Staggered: the first heartbeats of the 20 sessions did not all land in the same 50 ms.
    const firsts = [...ids.values()].map((id) => heartbeatsOf(gw, id)[0]!.at).sort((a, b) => a - b);
    expect(firsts.at(-1)! - firsts[0]!).toBeGreaterThan(HEARTBEAT_MS / 3);
  });

  it('runs a VM created over gRPC and reports it RUNNING in heartbeat, event, metrics and GetVm', async () => {
    const target = sim!.agent('sim-7');
    const hostId = hostIds(gw).get('sim-7')!;
    expect(target.hostId).toBe(hostId);
    const client = hostAgentClient(target.advertisedAddress);
    try {
      const spec = vmSpecToProto(parseVmSpec(tinySpec('simvm1')));
      const created = await rpc(client, client.createVm, { operationId: 'op-create-1', spec });
      expect(created.vm?.state).toBe(VmState.VM_STATE_STOPPED);
      await rpc(client, client.startVm, { operationId: 'op-start-1', vmId: 'simvm1' });
      const startedAt = Date.now();

      const hb = await gw.waitFor(
        () =>
          heartbeatsOf(gw, hostId, startedAt).find((h) =>
            h.heartbeat.inventory.some((v) => v.vmId === 'simvm1'),
          ),
        'a heartbeat of sim-7 with the VM',
        5_000,
      );
      expect(hb.heartbeat.inventory).toEqual([
        expect.objectContaining({
          vmId: 'simvm1',
          state: VmState.VM_STATE_RUNNING,
          desiredState: VmState.VM_STATE_RUNNING,
          drift: false,
        }),
      ]);
      const got = await rpc(client, client.getVm, { vmId: 'simvm1' });
      expect(got.vm?.state).toBe(VmState.VM_STATE_RUNNING);
      expect(got.vm?.pid).toBeGreaterThan(0);

      const event = gw
        .events()
        .find(
          (e) =>
            e.request.hostId === hostId &&
            e.event.vmId === 'simvm1' &&
            e.event.state === VmState.VM_STATE_RUNNING,
        );
      expect(event, 'a RUNNING event from sim-7').toBeDefined();
      const batch = await gw.waitFor(
        () =>
          gw
            .metrics()
            .find((m) => m.request.hostId === hostId && m.metrics.vms.some((v) => v.vmId === 'simvm1')),
        'a metrics batch of sim-7 with the VM',
        5_000,
      );
      const sample = batch.metrics.vms.find((v) => v.vmId === 'simvm1')!;
      expect(sample.cpuSecondsTotal).toBeGreaterThan(0);
      expect(sample.vcpuSeconds).toHaveLength(1);
      expect(batch.metrics.host?.cpuCount).toBe(64);

      // Each simulated host has its own inventory: nobody else reports the VM.
      const others = gw.heartbeats().filter((h) => h.request.hostId !== hostId && h.at > startedAt);
      expect(others.length).toBeGreaterThan(0);
      expect(others.some((h) => h.heartbeat.inventory.length > 0)).toBe(false);
      // And its own desired state on disk, so a repeated CreateVm with the same operation is idempotent.
      const again = await rpc(client, client.createVm, {
        operationId: 'op-create-1',
        spec: vmSpecToProto(parseVmSpec(tinySpec('simvm1'))),
      });
      expect(again.vm?.id).toBe('simvm1');
    } finally {
      client.close();
    }
  });

  it('silences 3 agents (no heartbeats, servers still serve) while the others go on, then resumes them', async () => {
    const ids = hostIds(gw);
    const silentNames = ['sim-3', 'sim-4', 'sim-5'];
    const silent = await sim!.silence(silentNames);
    expect(silent.map((a) => a.silenced)).toEqual([true, true, true]);
    const silencedAt = Date.now();
    await sleep(HEARTBEAT_MS * 4);

    for (const name of silentNames) {
      expect(heartbeatsOf(gw, ids.get(name)!, silencedAt), name).toHaveLength(0);
    }
    for (const [name, id] of ids) {
      if (silentNames.includes(name)) continue;
      expect(heartbeatsOf(gw, id, silencedAt).length, name).toBeGreaterThanOrEqual(2);
    }
    expect(gw.openSessions).toBe(17);
    expect(sim!.summary()).toMatchObject({ agents: 20, connected: 17, silenced: 3 });
    // Silent on the control channel, not dead: HostAgent still answers.
    for (const agent of silent) {
      const client = hostAgentClient(agent.advertisedAddress);
      try {
        expect((await rpc(client, client.listVms, {}, { timeoutMs: 5_000 })).vms).toEqual([]);
      } finally {
        client.close();
      }
    }

    const registersBefore = gw.registers.length;
    const resumedAt = Date.now();
    await sim!.resume(silentNames);
    await sim!.whenConnected(10_000);
    for (const name of silentNames) {
      const id = ids.get(name)!;
      await gw.waitFor(
        () => (heartbeatsOf(gw, id, resumedAt).length > 0 ? true : undefined),
        `${name} back`,
        5_000,
      );
      expect(sim!.agent(name).hostId).toBe(id);
    }
    // They re-joined as the same hosts (host id from their state folders), not as new ones.
    const rejoined = gw.registers.slice(registersBefore);
    expect(rejoined.map((r) => r.request.host?.hostname).sort()).toEqual(silentNames);
    expect(rejoined.map((r) => r.request.hostId).sort()).toEqual(silentNames.map((n) => ids.get(n)).sort());
    expect(gw.openSessions).toBe(20);
    expect(gw.violations).toEqual([]);
  });

  it('stop() ends every session cleanly and closes every socket it opened', async () => {
    const endsBefore = gw.cleanEnds;
    await sim!.stop();
    sim = undefined;
    expect(gw.cleanEnds - endsBefore).toBe(20);
    const deadline = Date.now() + 5_000;
    while (tcpHandles() > handlesBefore && Date.now() < deadline) await sleep(50);
    expect(tcpHandles()).toBeLessThanOrEqual(handlesBefore);
    expect(logs.lines.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
  });
});

/**
 * The api's join tokens are single-use: a fleet that joins it needs one token per agent, and each
 * agent must keep presenting its own on every re-Register.
 */
describe('simulation mode with one join token per agent', () => {
  let dir: string;
  let gw: TestGateway | undefined;
  let sim: AgentSimulator | undefined;

  afterEach(async () => {
    await sim?.stop();
    sim = undefined;
    await gw?.close();
    gw = undefined;
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('gives the k-th agent the k-th token, and it presents that token again when it re-registers', async () => {
    dir = await makeOwnedTempDir('sim-tokens');
    gw = await TestGateway.start();
    const tokens = ['hgj_token-a', 'hgj_token-b', 'hgj_token-c', 'hgj_token-d'];
    sim = new AgentSimulator();
    await sim.start({
      count: 4,
      firstIndex: 10,
      controlPlane: gw.address,
      stateDir: path.join(dir, 'fleet'),
      joinTokens: tokens,
      heartbeatIntervalMs: HEARTBEAT_MS,
      reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
      logger: new LogCapture('warn').logger,
    });
    await sim.whenConnected(20_000);
    const tokenOf = () =>
      Object.fromEntries(gw!.registers.map((r) => [r.request.host?.hostname, r.request.joinToken]));
    expect(gw.registers).toHaveLength(4);
    expect(tokenOf()).toEqual({
      'sim-10': 'hgj_token-a',
      'sim-11': 'hgj_token-b',
      'sim-12': 'hgj_token-c',
      'sim-13': 'hgj_token-d',
    });

    await sim.silence(['sim-12']);
    await sim.resume(['sim-12']);
    await sim.whenConnected(10_000);
    const again = gw.registers.slice(4);
    expect(again.map((r) => [r.request.host?.hostname, r.request.joinToken])).toEqual([
      ['sim-12', 'hgj_token-c'],
    ]);
    expect(again[0]?.request.hostId).toBe(sim.agent('sim-12').hostId);
  });

  it('refuses a token list that does not match the fleet, or one given with a shared token', async () => {
    dir = await makeOwnedTempDir('sim-tokens-bad');
    const base: SimulatorOptions = {
      count: 3,
      controlPlane: '127.0.0.1:1',
      stateDir: path.join(dir, 'fleet'),
      logger: new LogCapture('warn').logger,
    };
    sim = new AgentSimulator();
    await expect(sim.start({ ...base, joinTokens: ['hgj_a', 'hgj_b'] })).rejects.toThrow(
      /one token per agent: 2 tokens for 3 agents/,
    );
    await expect(
      sim.start({ ...base, joinToken: 'hgj_shared', joinTokens: ['hgj_a', 'hgj_b', 'hgj_c'] }),
    ).rejects.toThrow(/not both/);
    // An empty token is refused by the agent configuration's own rules, naming the agent.
    await expect(sim.start({ ...base, joinTokens: ['hgj_a', '', 'hgj_c'] })).rejects.toThrow(
      /invalid simulated agent configuration for sim-1: joinToken/,
    );
    expect(sim.agents).toHaveLength(0);
  });
});

describe('simulation mode with per-host certificates', () => {
  let dir: string;
  let gw: TestGateway | undefined;
  let sim: AgentSimulator | undefined;

  afterEach(async () => {
    await sim?.stop();
    await gw?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('issues each agent its own certificate; the gateway verifies every host identity over mTLS', async () => {
    dir = await makeOwnedTempDir('sim-tls');
    const ca = await createClusterCa(path.join(dir, 'pki'));
    const api = await issueControlPlaneCert(ca.dir, path.join(dir, 'api'));
    gw = await TestGateway.start({ tls: await readTlsFiles(api), requireVerifiedIdentity: true });
    sim = new AgentSimulator();
    await sim.start({
      count: 3,
      controlPlane: gw.address,
      stateDir: path.join(dir, 'fleet'),
      tls: { mode: 'per-host', caDir: ca.dir },
      heartbeatIntervalMs: HEARTBEAT_MS,
      logger: new LogCapture('warn').logger,
    });
    await sim.whenConnected(20_000);
    expect(gw.registers.filter((r) => r.refused)).toEqual([]);
    expect(gw.registers.map((r) => [r.request.host?.hostname, r.identity?.verified]).sort()).toEqual([
      ['sim-0', true],
      ['sim-1', true],
      ['sim-2', true],
    ]);
  });
});

describe('simulation mode as a process', () => {
  let dir: string;
  let gw: TestGateway | undefined;
  let child: ChildProcess | undefined;

  beforeAll(async () => {
    await buildAgent();
  });
  afterEach(async () => {
    killIfRunning(child);
    child = undefined;
    await gw?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('`hangar-agent --simulate 3` reads the agent config, joins as sim-0..2 and stops cleanly on SIGTERM', async () => {
    dir = await makeOwnedTempDir('sim-cli');
    gw = await TestGateway.start();
    const configFile = path.join(dir, 'agent.json');
    await mkdir(path.join(dir, 'pool'));
    await writeFile(
      configFile,
      JSON.stringify({
        controlPlane: gw.address,
        listen: '127.0.0.1:7443',
        stateDir: path.join(dir, 'state'),
        runtimeDir: path.join(dir, 'run'),
        pools: { local: { path: path.join(dir, 'pool') } },
        insecureLoopback: true,
        heartbeatIntervalMs: HEARTBEAT_MS,
      }),
    );
    const proc = spawnNode([agentMainJs, '--simulate', '3', '--config', configFile]);
    child = proc.child;
    await waitForLine(proc.lines, '"simulation running"', 20_000, proc.stderr);
    await gw.waitFor(() => (gw!.openSessions === 3 ? true : undefined), '3 sessions', 10_000);
    expect(gw.registers.map((r) => r.request.host?.hostname).sort()).toEqual(['sim-0', 'sim-1', 'sim-2']);
    // Port 7443 from the config is not reused: every agent got its own port.
    const addresses = gw.registers.map((r) => r.request.host?.agentAddress);
    expect(new Set(addresses).size).toBe(3);
    expect(addresses).not.toContain('127.0.0.1:7443');

    process.kill(proc.child.pid!, 'SIGTERM');
    expect(await proc.exit).toBe(0);
    expect(gw.cleanEnds).toBe(3);
  });

  it('`--sim-join-tokens FILE` gives each agent its own token; a count mismatch is exit code 2', async () => {
    dir = await makeOwnedTempDir('sim-cli-tokens');
    gw = await TestGateway.start();
    const tokensFile = path.join(dir, 'tokens.txt');
    await writeFile(tokensFile, 'hgj_first\n\n  hgj_second  \n');
    const common = [
      '--control-plane',
      gw.address,
      '--listen',
      '127.0.0.1:0',
      '--state-dir',
      path.join(dir, 'state'),
      '--runtime-dir',
      path.join(dir, 'run'),
      '--pools',
      JSON.stringify({ local: { path: path.join(dir, 'pool') } }),
      '--insecure-loopback',
      'true',
      '--heartbeat-interval-ms',
      String(HEARTBEAT_MS),
    ];
    await mkdir(path.join(dir, 'pool'));
    const proc = spawnNode([agentMainJs, '--simulate', '2', '--sim-join-tokens', tokensFile, ...common]);
    child = proc.child;
    await gw.waitFor(() => (gw!.openSessions === 2 ? true : undefined), '2 sessions', 20_000);
    expect(gw.registers.map((r) => [r.request.host?.hostname, r.request.joinToken]).sort()).toEqual([
      ['sim-0', 'hgj_first'],
      ['sim-1', 'hgj_second'],
    ]);
    process.kill(proc.child.pid!, 'SIGTERM');
    expect(await proc.exit).toBe(0);

    const bad = spawnNode([agentMainJs, '--simulate', '3', '--sim-join-tokens', tokensFile, ...common]);
    child = bad.child;
    expect(await bad.exit).toBe(2);
    expect(bad.stderr()).toMatch(/holds 2 tokens for 3 agents/);
  });

  it('refuses bad simulation flags with exit code 2', async () => {
    const proc = spawnNode([agentMainJs, '--simulate', 'lots', '--control-plane', '127.0.0.1:1']);
    child = proc.child;
    expect(await proc.exit).toBe(2);
    expect(proc.stderr()).toMatch(/--simulate must be an integer/);
  });

  it('after stop() nothing keeps the process alive: it exits by itself', async () => {
    dir = await makeOwnedTempDir('sim-exit');
    gw = await TestGateway.start();
    const simulatorJs = pathToFileURL(path.join(repoRoot, 'apps/agent/dist/sim/simulator.js')).href;
    // No process.exit() anywhere: the script ends only if stop() released every handle.
    const script = `
      import { AgentSimulator } from ${JSON.stringify(simulatorJs)};
      const sim = new AgentSimulator();
      await sim.start({
        count: 5, controlPlane: ${JSON.stringify(gw.address)}, stateDir: ${JSON.stringify(path.join(dir, 'fleet'))},
        heartbeatIntervalMs: 200, metricsIntervalMs: 200, logLevel: 'warn',
      });
      await sim.whenConnected(20000);
      await sim.silence([1]);
      await sim.resume([1]);
      await sim.whenConnected(20000);
      await sim.stop();
      console.log('stopped');
    `;
    const proc = spawnNode(['--input-type=module', '-e', script]);
    child = proc.child;
    await waitForLine(proc.lines, 'stopped', 30_000, proc.stderr);
    const exited = await Promise.race([proc.exit, sleep(5_000).then(() => 'still running' as const)]);
    expect(exited, `stderr: ${proc.stderr()}`).toBe(0);
    expect(gw.cleanEnds).toBeGreaterThanOrEqual(5);
  });
});
