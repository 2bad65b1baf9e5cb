import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../../../packages/vmm-core/test/support/test-host.js';
import {
  type ClusterHost,
  type ClusterLeftovers,
  type ClusterRun,
  createClusterRun,
  execInNamespace,
  leftoversOf,
  type MultiHostCluster,
  namespacePids,
  type RunningScript,
  spawnInNamespace,
  startMultiHostCluster,
  startTimeOf,
  sweepFabrics,
  sweepMultiHostLeftovers,
} from './support/multihost.js';

interface HostRow {
  id: string;
  name: string;
  state: string;
  agent_address: string;
  pools: { name: string; path: string | null; shared: boolean }[];
}

interface VmRow {
  status: string;
  host_id: string;
}

/** Resolves once `child` printed `text` on stdout. */
function outputOf(child: ChildProcess, text: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(
      () => reject(new Error(`no "${text}" within ${timeoutMs} ms: ${out}`)),
      timeoutMs,
    );
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      if (out.includes(text)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited (${code}) before printing "${text}": ${out}`));
    });
  });
}

const NOTHING: ClusterLeftovers = { namespaces: [], links: [], processes: [], qemu: [] };

/** Waits until nothing of the run is left (namespaces are destroyed asynchronously by the kernel). */
async function expectNothingLeft(run: Pick<ClusterRun, 'tag' | 'clusterDir' | 'dataDir'>): Promise<void> {
  let last: ClusterLeftovers = NOTHING;
  await eventually(
    async () => {
      last = await leftoversOf(run);
      return last.namespaces.length + last.links.length + last.processes.length + last.qemu.length === 0
        ? true
        : undefined;
    },
    { timeoutMs: 15_000, intervalMs: 200, what: 'the run to leave nothing behind' },
  ).catch(() => undefined);
  expect(last, `leftovers of ${run.tag}`).toEqual(NOTHING);
}

/**
 * Issue 5's cluster on one machine: scripts/cluster/up.mjs --hosts 2 makes two hosts, each a
 * network namespace with a real QEMU agent, the api and worker in the root namespace, mTLS
 * between them; scripts/cluster/down.mjs removes all of it again.
 */
describe('a two-host cluster in network namespaces (scripts/cluster/up.mjs --hosts 2)', () => {
  let cluster: MultiHostCluster | undefined;

  beforeAll(async () => {
    await sweepMultiHostLeftovers();
    cluster = await startMultiHostCluster({ hosts: 2 });
  }, 240_000);

  afterAll(async () => {
    await cluster?.teardown();
  }, 180_000);

  it('runs a guest on one host, joins the hosts, outlives a killed agent and leaves nothing behind', async () => {
    const c = cluster as MultiHostCluster;
    expect(c.hosts).toHaveLength(2);

    // --- both hosts UP, each agent inside its own namespace, at its namespace's address --------
    const hosts = (await c.api<{ items: HostRow[] }>('GET', '/v1/hosts')).body.items;
    expect(hosts.map((h) => [h.name, h.state]).sort()).toEqual([
      ['host1', 'UP'],
      ['host2', 'UP'],
    ]);
    for (const h of c.hosts) {
      const row = hosts.find((r) => r.id === h.hostId);
      expect(h.address).toMatch(/^10\.231\.\d{1,3}\.\d{1,3}$/);
      expect(row?.agent_address).toBe(`${h.address}:7443`);
      // Every host has the same shared pool folder: what live migration's storage proof needs.
      expect(row?.pools.find((p) => p.name === 'shared')).toMatchObject({
        path: c.sharedPoolDir,
        shared: true,
      });
      expect(await namespacePids(h.namespace)).toEqual([h.agentPid]);
    }
    expect(new Set(c.hosts.map((h) => h.namespace)).size).toBe(2);
    expect(new Set(c.hosts.map((h) => h.address)).size).toBe(2);

    // --- a VM through the REST api reaches RUNNING and prints its marker -----------------------
    const created = await c.api<{ vm: { id: string } }>('POST', '/v1/vms', {
      name: 'mh-vm',
      flavor: 'tiny',
      image: 'hangar-tiny',
    });
    expect(created.status, JSON.stringify(created.body)).toBe(202);
    const vmId = created.body.vm.id;
    const op = await c.api<{ status: string }>('GET', `${created.headers.get('location')}/wait?timeout=60s`);
    expect(op.body.status, JSON.stringify(op.body)).toBe('SUCCEEDED');
    const consoleText = await eventually(
      async () => {
        const text = (await c.api<{ text?: string }>('GET', `/v1/vms/${vmId}/console`)).body.text ?? '';
        return text.includes('HANGAR-READY') ? text : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 250, what: "the VM's HANGAR-READY marker" },
    );
    expect(consoleText).toMatch(new RegExp(`HANGAR-READY hostname=mh-vm instance=${vmId}`));
    const vm = (await c.api<VmRow>('GET', `/v1/vms/${vmId}`)).body;
    expect(vm.status).toBe('RUNNING');

    // --- the guest is on exactly the host the api names, and nowhere on the other -------------
    const home = c.hosts.find((h) => h.hostId === vm.host_id);
    const other = c.hosts.find((h) => h.hostId !== vm.host_id);
    if (!home || !other) throw new Error(`the VM's host ${vm.host_id} is not one of the cluster's`);
    const vmDir = (h: ClusterHost) => path.join(h.runtimeDir, 'vms', vmId);
    const qemuPid = Number(readFileSync(path.join(vmDir(home), 'qemu.pid'), 'utf8').trim());
    expect(startTimeOf(qemuPid)).toBeDefined();
    expect((await namespacePids(home.namespace)).sort()).toEqual([home.agentPid, qemuPid].sort());
    expect(await namespacePids(other.namespace)).toEqual([other.agentPid]);
    expect(readFileSync(path.join(vmDir(home), 'serial.log'), 'utf8')).toContain(`instance=${vmId}`);
    expect(existsSync(vmDir(other))).toBe(false);

    // --- one namespace reaches the other's migration address -----------------------------------
    const listener = spawnInNamespace(other.namespace, [
      process.execPath,
      '-e',
      `require('net').createServer((s) => s.end('hello ' + s.remoteAddress + '\\n'))
         .listen(47123, ${JSON.stringify(other.address)}, () => console.log('listening'));`,
    ]);
    try {
      await outputOf(listener, 'listening', 20_000);
      const { stdout } = await execInNamespace(home.namespace, [
        process.execPath,
        '-e',
        `const s = require('net').connect(47123, ${JSON.stringify(other.address)});
         s.on('data', (d) => process.stdout.write(d));
         s.on('error', (e) => { console.error(e.message); process.exit(1); });`,
      ]);
      // The peer saw the connection come from the first namespace's own address.
      expect(stdout.trim()).toBe(`hello ${home.address}`);
    } finally {
      listener.kill('SIGKILL');
    }

    // --- the guest's agent is SIGKILLed: the guest runs on; up starts that agent again --------
    const killedPid = await c.killAgent(home.name);
    expect(startTimeOf(qemuPid)).toBeDefined();
    expect(await namespacePids(home.namespace)).toEqual([qemuPid]);
    const back = await c.restartAgent(home.name);
    expect(back.agentPid).not.toBe(killedPid);
    expect(c.host(other.name).agentPid).toBe(other.agentPid); // the other agent was left alone
    expect((await namespacePids(home.namespace)).sort()).toEqual([back.agentPid, qemuPid].sort());
    expect((await c.api<HostRow>('GET', `/v1/hosts/${home.hostId}`)).body.state).toBe('UP');
    await eventually(
      async () => {
        const now = (await c.api<VmRow>('GET', `/v1/vms/${vmId}`)).body;
        return now.status === 'RUNNING' && now.host_id === home.hostId ? true : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 250, what: 'the VM RUNNING on its host after the restart' },
    );

    // --- teardown: the guest stopped through the api, then every piece of the run is gone ------
    const run = c.run;
    const down = await run.down();
    expect(down.code, down.stderr).toBe(0);
    expect(down.stderr).toMatch(
      new RegExp(`stopping 1 guest\\(s\\) of host ${home.name} through the api: mh-vm`),
    );
    expect(down.stderr).toContain("removed the hosts' network: namespaces");
    expect(startTimeOf(qemuPid)).toBeUndefined();
    const stopped = await run.db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } });
    expect(stopped.observedState).toBe('STOPPED');
    await expectNothingLeft(run);
    await c.teardown();
    await expectNothingLeft(run);
  }, 240_000);
});

/**
 * A killed `up` leaves a half-made cluster: down.mjs still removes it all; and the sweep removes
 * the cluster of a run whose owner died, without touching a run whose owner lives. Two runs
 * come up at the same time, so their names and subnets must not collide either.
 */
describe('teardown after a killed up, and the sweep of a dead owner’s cluster', () => {
  const runs: ClusterRun[] = [];
  const ups: RunningScript[] = [];
  let owner: ChildProcess | undefined;

  afterAll(async () => {
    for (const up of ups) up.child.kill('SIGKILL');
    owner?.kill('SIGKILL');
    for (const run of runs) await run.dispose();
  }, 180_000);

  it('removes every namespace, veth, bridge and process of both', async () => {
    await sweepMultiHostLeftovers();
    // Stands in for a test process that will be killed.
    owner = spawn('sleep', ['600'], { stdio: 'ignore' });
    const ownerPid = owner.pid as number;
    const mine = await createClusterRun();
    runs.push(mine);
    const orphan = await createClusterRun({ ownerPid });
    runs.push(orphan);
    expect(mine.tag).not.toBe(orphan.tag);

    // Both ups run at once; each is SIGKILLed as soon as its first agent is recorded, and so is that agent.
    const killMidway = async (run: ClusterRun) => {
      const up = run.startUp(2);
      ups.push(up);
      const agent = await eventually(() => run.recorded('agent-host1'), {
        timeoutMs: 120_000,
        intervalMs: 20,
        what: `${run.tag}: the first agent recorded`,
      });
      up.child.kill('SIGKILL');
      process.kill(agent.pid, 'SIGKILL');
      const res = await up.done;
      expect(res.signal).toBe('SIGKILL');
    };
    await Promise.all([killMidway(mine), killMidway(orphan)]);

    // Half-made, but made: both fabrics, in distinct subnets, and api/worker processes running.
    const subnets = new Set<string>();
    for (const run of [mine, orphan]) {
      const left = await leftoversOf(run);
      expect(left.namespaces.sort()).toEqual([`${run.tag}-h1`, `${run.tag}-h2`]);
      expect(left.links).toContain(`${run.tag}-br`);
      expect(left.processes.length, JSON.stringify(left.processes)).toBeGreaterThanOrEqual(2);
      const fabric = JSON.parse(readFileSync(path.join(run.clusterDir, 'fabric.json'), 'utf8'));
      subnets.add(fabric.subnet);
    }
    expect(subnets.size).toBe(2);

    // The orphan's owner dies: the sweep takes its cluster and leaves the live run alone.
    owner.kill('SIGKILL');
    await eventually(() => (startTimeOf(ownerPid) === undefined ? true : undefined), {
      what: 'the owner gone',
    });
    const swept = await sweepFabrics();
    expect(swept.map((s) => s.tag)).toContain(orphan.tag);
    expect(swept.map((s) => s.tag)).not.toContain(mine.tag);
    await expectNothingLeft(orphan);
    const stillThere = await leftoversOf(mine);
    expect(stillThere.namespaces.sort()).toEqual([`${mine.tag}-h1`, `${mine.tag}-h2`]);
    expect(stillThere.processes.length).toBeGreaterThanOrEqual(2);

    // down.mjs on the killed run's folder removes everything, pid files or not.
    const down = await mine.down();
    expect(down.code, down.stderr).toBe(0);
    await expectNothingLeft(mine);
  }, 240_000);
});
