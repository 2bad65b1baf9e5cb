import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { QemuDriver } from '../src/driver/qemu/qemu-driver.js';
import { isVmmError } from '../src/errors.js';
import { LinuxHostNetwork, MAX_NIC_INDEX, tapName, tapOwnerAlias } from '../src/network/host-network.js';
import { findLink, listLinks, listNetns } from '../src/network/ip.js';
import {
  addAddress,
  createBridge,
  createNamespace,
  createVethPair,
  deleteLink,
  deleteNamespace,
  namespaceExists,
  ownedNamespaceName,
  setMaster,
  setUp,
  sweepOwnedNamespaces,
} from '../src/network/netns.js';
import { macFromVmId } from '../src/spec/vm-spec.js';
import { vmRuntimePaths } from '../src/util/paths.js';
import { GuestShell } from './support/guest-shell.js';
import { eventually, makeTestHost, type TestHost, tinySpec } from './support/test-host.js';

const run = promisify(execFile);

/**
 * Every namespace this file creates is `hgt-<our pid>-<label>`: the pid lets a later run sweep what
 * a killed run left, and nothing without this shape is ever touched.
 */
const NS_PREFIX = 'hgt-';
const ns = (label: string) => ownedNamespaceName(NS_PREFIX, label);

/** `ip -n NS -o link` as text, to check what the kernel really has (not what our parser says). */
async function ipLinkText(netns: string): Promise<string> {
  return (await run('ip', ['-n', netns, '-o', 'link', 'show'])).stdout;
}

async function expectVmmError(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isVmmError(err), `expected a VmmError ${code}, got ${String(err)}`).toBe(true);
  if (!isVmmError(err)) return;
  expect(err.code).toBe(code);
  if (message) expect(err.message).toMatch(message);
}

beforeAll(async () => {
  const swept = await sweepOwnedNamespaces(NS_PREFIX);
  if (swept.length > 0) console.log(`swept leftover namespaces: ${swept.join(' ')}`);
});

describe('tap names', () => {
  it('are deterministic, at most 15 bytes, and differ per VM and NIC index', () => {
    const a0 = tapName('vm-a', 0);
    expect(a0).toBe(tapName('vm-a', 0));
    expect(a0).toMatch(/^hg[0-9a-f]{10}n0$/);
    const names = new Set<string>();
    for (const id of ['vm-a', 'vm-b', '3f1c9a2e-7b4d-4e8a-9c1f-0d2b6a7e5f41']) {
      for (const i of [0, 1, 7, MAX_NIC_INDEX]) {
        const n = tapName(id, i);
        expect(Buffer.byteLength(n)).toBeLessThanOrEqual(15);
        names.add(n);
      }
    }
    expect(names.size).toBe(12);
    expect(tapName('vm-a', 9, 'abc')).toMatch(/^abc[0-9a-f]{10}n9$/);
  });

  it('refuse bad VM ids, indexes and prefixes', () => {
    const bad: Array<() => unknown> = [
      () => tapName('Bad_Id', 0),
      () => tapName('../x', 0),
      () => tapName('vm-a', -1),
      () => tapName('vm-a', 1.5),
      () => tapName('vm-a', MAX_NIC_INDEX + 1),
      () => tapName('vm-a', 0, 'toolong'),
      () => tapName('vm-a', 0, '-x'),
      () => tapName('vm-a', 10, 'abc'), // 16 bytes
    ];
    for (const f of bad) expect(f).toThrowError(expect.objectContaining({ code: 'INVALID_SPEC' }));
    expect(() => new LinuxHostNetwork({ bridge: 'a-bridge-name-too-long' })).toThrowError(
      expect.objectContaining({ code: 'INVALID_SPEC' }),
    );
    expect(() => new LinuxHostNetwork({ bridge: 'br0', netns: '../etc' })).toThrowError(
      expect.objectContaining({ code: 'INVALID_SPEC' }),
    );
    expect(() => new LinuxHostNetwork({ bridge: 'br0', tapPrefix: 'HG' })).toThrowError(
      expect.objectContaining({ code: 'INVALID_SPEC' }),
    );
  });
});

describe('LinuxHostNetwork in a network namespace', () => {
  let netns: string;
  let net: LinuxHostNetwork;

  beforeEach(async () => {
    netns = ns('u');
    await createNamespace(netns);
    net = new LinuxHostNetwork({ bridge: 'hgbr0', netns });
  });
  afterEach(async () => {
    await deleteNamespace(netns);
  });

  it('creates the bridge once, and taps attached to it; deleteTaps removes only that VM’s taps', async () => {
    await net.ensureBridge();
    await net.ensureBridge(); // idempotent
    const bridge = await findLink('hgbr0', { netns });
    expect(bridge?.kind).toBe('bridge');
    expect(bridge?.flags).toContain('UP');

    const a0 = await net.createTap('vm-a', 0);
    const a1 = await net.createTap('vm-a', 1);
    const b0 = await net.createTap('vm-b', 0);
    expect(await net.createTap('vm-a', 0)).toBe(a0); // re-creating is harmless
    expect([a0, a1, b0]).toEqual([tapName('vm-a', 0), tapName('vm-a', 1), tapName('vm-b', 0)]);

    const text = await ipLinkText(netns);
    for (const tap of [a0, a1, b0]) {
      const line = text.split('\n').find((l) => l.includes(` ${tap}: `));
      expect(line, `${tap} in ip link output`).toBeDefined();
      expect(line).toContain('master hgbr0');
      expect(line).toMatch(/<[^>]*\bUP\b[^>]*>/);
    }
    expect(text).toContain(`alias ${tapOwnerAlias('vm-a')}`);
    const details = (await run('ip', ['-n', netns, '-d', 'link', 'show', 'dev', a0])).stdout;
    expect(details).toMatch(/tun type tap/);
    // Nothing leaked into this process's own namespace.
    expect((await run('ip', ['-o', 'link', 'show'])).stdout).not.toContain(a0);

    await net.deleteTaps('vm-a');
    const after = await ipLinkText(netns);
    expect(after).not.toContain(a0);
    expect(after).not.toContain(a1);
    expect(after).toContain(` ${b0}: `);
    await net.deleteTaps('vm-a'); // idempotent
    await net.deleteTaps('vm-never-existed');
    expect(await ipLinkText(netns)).toContain(` ${b0}: `);
    await net.deleteTaps('vm-b');
    expect((await listLinks({ netns })).map((l) => l.ifname).sort()).toEqual(['hgbr0', 'lo']);
  });

  it('leaves alone a tap of its name scheme that another VM marked as its own', async () => {
    await net.ensureBridge();
    const name = tapName('vm-a', 0);
    await run('ip', ['-n', netns, 'tuntap', 'add', 'dev', name, 'mode', 'tap']);
    await run('ip', ['-n', netns, 'link', 'set', 'dev', name, 'alias', tapOwnerAlias('someone-else')]);
    await expectVmmError(net.createTap('vm-a', 0), 'NETWORK_ERROR', /not a tap of VM vm-a/);
    await net.deleteTaps('vm-a');
    expect(await ipLinkText(netns)).toContain(` ${name}: `);
  });

  it('reports ip failures as NETWORK_ERROR with ip’s message, and bad names as INVALID_SPEC', async () => {
    // No bridge yet: attaching the tap fails, and the half-made tap is removed again.
    await expectVmmError(net.createTap('vm-a', 0), 'NETWORK_ERROR', /hgbr0.*(does not exist|Cannot find)/i);
    expect(await ipLinkText(netns)).not.toContain(tapName('vm-a', 0));

    const ghost = new LinuxHostNetwork({ bridge: 'hgbr0', netns: `${netns}-missing` });
    await expectVmmError(ghost.ensureBridge(), 'NETWORK_ERROR', /Cannot open network namespace/);

    await run('ip', ['-n', netns, 'tuntap', 'add', 'dev', 'notabr', 'mode', 'tap']);
    await expectVmmError(
      new LinuxHostNetwork({ bridge: 'notabr', netns }).ensureBridge(),
      'NETWORK_ERROR',
      /not a bridge/,
    );

    await expectVmmError(net.createTap('Not/AnId', 0), 'INVALID_SPEC');
    await expectVmmError(net.deleteTaps('../..'), 'INVALID_SPEC');
    await expectVmmError(createBridge('x'.repeat(16), { netns }), 'INVALID_SPEC');
    await expectVmmError(addAddress('lo', '10.0.0.1; reboot', { netns }), 'INVALID_SPEC');
  });
});

describe('namespace helpers', () => {
  const created: string[] = [];
  afterEach(async () => {
    for (const n of created.splice(0)) await deleteNamespace(n);
  });

  it('are idempotent: namespaces, bridges, veth pairs, addresses, links', async () => {
    const [n1, n2] = [ns('h1'), ns('h2')];
    created.push(n1, n2);
    await createNamespace(n1);
    await createNamespace(n1);
    await createNamespace(n2);
    expect(await namespaceExists(n1)).toBe(true);
    expect(await ipLinkText(n1)).toMatch(/ lo: <LOOPBACK,UP/);

    await createBridge('br0', { netns: n1 });
    await createBridge('br0', { netns: n1 });
    await createVethPair('v1', 'v2', { nsA: n1, nsB: n2 });
    await createVethPair('v1', 'v2', { nsA: n1, nsB: n2 });
    expect((await findLink('v1', { netns: n1 }))?.kind).toBe('veth');
    expect((await findLink('v2', { netns: n2 }))?.kind).toBe('veth');
    await setMaster('v1', 'br0', { netns: n1 });
    await setUp('v1', { netns: n1 });
    expect(await ipLinkText(n1)).toMatch(/ v1@\S+: <[^>]*UP[^>]*>.* master br0/);
    await addAddress('v2', '10.231.1.2/24', { netns: n2 });
    await addAddress('v2', '10.231.1.2/24', { netns: n2 });
    const addrs = (await run('ip', ['-n', n2, '-o', 'addr', 'show', 'dev', 'v2'])).stdout;
    expect(addrs.match(/10\.231\.1\.2\/24/g)).toHaveLength(1);

    // Deleting one end of the pair takes the other with it.
    await deleteLink('v1', { netns: n1 });
    await deleteLink('v1', { netns: n1 });
    expect(await findLink('v2', { netns: n2 })).toBeUndefined();

    await deleteNamespace(n1);
    await deleteNamespace(n1);
    expect(await namespaceExists(n1)).toBe(false);
  });

  it('sweeps namespaces whose owner process is gone, and only those', async () => {
    const child = execFile('true');
    const deadPid = await new Promise<number>((resolve) => child.once('exit', () => resolve(child.pid ?? 0)));
    expect(deadPid).toBeGreaterThan(0);
    const dead = ownedNamespaceName(NS_PREFIX, 'stale', deadPid);
    const live = ns('live');
    created.push(dead, live);
    await createNamespace(dead);
    await createNamespace(live);

    const swept = await sweepOwnedNamespaces(NS_PREFIX);
    expect(swept).toContain(dead);
    expect(swept).not.toContain(live);
    const names = await listNetns();
    expect(names).not.toContain(dead);
    expect(names).toContain(live);
  });
});

/**
 * Two simulated hosts, one network namespace each, with a bridge, a tap per guest and a QEMU
 * launched inside the namespace; the bridges are joined by a veth pair as a physical uplink would.
 */
describe('guests on two hosts', () => {
  const BRIDGE = 'hgbr0';
  let nsA: string;
  let nsB: string;
  let hosts: TestHost[] = [];
  let drivers: QemuDriver[] = [];
  let shells: GuestShell[] = [];
  let nets: Array<{ net: LinuxHostNetwork; vmId: string }> = [];

  beforeEach(() => {
    nsA = ns('a');
    nsB = ns('b');
  });
  afterEach(async () => {
    for (const s of shells) s.close();
    for (const d of drivers) await d.close();
    // Kills each QEMU under the host's folder by pid, then removes the folder.
    for (const h of hosts) await h.cleanup();
    for (const { net, vmId } of nets) await net.deleteTaps(vmId).catch(() => undefined);
    await deleteLink('hgv-a', { netns: nsA }).catch(() => undefined);
    await deleteLink(BRIDGE, { netns: nsA }).catch(() => undefined);
    await deleteLink(BRIDGE, { netns: nsB }).catch(() => undefined);
    await deleteNamespace(nsA);
    await deleteNamespace(nsB);
    hosts = [];
    drivers = [];
    shells = [];
    nets = [];
  });

  it('reach each other when the hosts’ bridges are joined (tests: network namespaces + veth)', async () => {
    // Host networking: a namespace and bridge per host, the bridges joined by a veth pair.
    await createNamespace(nsA);
    await createNamespace(nsB);
    const netA = new LinuxHostNetwork({ bridge: BRIDGE, netns: nsA });
    const netB = new LinuxHostNetwork({ bridge: BRIDGE, netns: nsB });
    await netA.ensureBridge();
    await netB.ensureBridge();
    await createVethPair('hgv-a', 'hgv-b', { nsA, nsB });
    await setMaster('hgv-a', BRIDGE, { netns: nsA });
    await setMaster('hgv-b', BRIDGE, { netns: nsB });
    await setUp('hgv-a', { netns: nsA });
    await setUp('hgv-b', { netns: nsB });

    const guests = [
      { vmId: 'net-a', netns: nsA, net: netA, addr: '10.231.0.11' },
      { vmId: 'net-b', netns: nsB, net: netB, addr: '10.231.0.12' },
    ];
    // allSettled: when one boot fails, the other must finish starting before afterEach cleans up.
    const settled = await Promise.allSettled(
      guests.map(async (g) => {
        const host = await makeTestHost({ label: `net-${g.vmId}` });
        hosts.push(host);
        const driver = new QemuDriver({
          runtimeDir: host.runtimeDir,
          pools: host.pools,
          accelerator: 'tcg',
          netns: g.netns,
        });
        drivers.push(driver);
        nets.push({ net: g.net, vmId: g.vmId });
        const tap = await g.net.createTap(g.vmId, 0);
        await driver.create(
          tinySpec(g.vmId, {
            nics: [{ name: 'eth0', mac: macFromVmId(g.vmId, 0), backend: { type: 'tap', ifname: tap } }],
            cloudInit: {
              hostname: g.vmId,
              userData: `#!/bin/sh\nip addr add ${g.addr}/24 dev eth0\nip link set eth0 up\n`,
            },
            debugShell: true,
          }),
        );
        const vm = await driver.start(g.vmId);
        await eventually(
          async () => ((await driver.consoleLog(g.vmId)).includes('HANGAR-READY') ? true : undefined),
          { timeoutMs: 90_000, what: `${g.vmId} boot` },
        );
        return { ...g, host, driver, tap, pid: vm.pid };
      }),
    );
    const booted = settled.map((r) => {
      if (r.status === 'rejected') throw r.reason;
      return r.value;
    });

    for (const g of booted) {
      // QEMU runs inside its host's namespace, and the driver still recognises it as its guest.
      expect(g.pid).toBeGreaterThan(0);
      expect((await run('ip', ['netns', 'identify', String(g.pid)])).stdout.trim()).toBe(g.netns);
      expect((await g.driver.get(g.vmId)).state).toBe('RUNNING');
      expect(await g.driver.consoleLog(g.vmId)).toContain('HANGAR-USERDATA exit=0');
      const tapLine = (await ipLinkText(g.netns)).split('\n').find((l) => l.includes(` ${g.tap}: `));
      expect(tapLine).toMatch(/master hgbr0 state UP/);
    }

    const shellOf = async (g: (typeof booted)[number]) => {
      const sh = await GuestShell.connect(vmRuntimePaths(g.host.runtimeDir, g.vmId).shellSocket);
      shells.push(sh);
      return sh;
    };
    const [a, b] = booted as [(typeof booted)[number], (typeof booted)[number]];
    const shA = await shellOf(a);
    const shB = await shellOf(b);

    for (const [g, sh] of [
      [a, shA],
      [b, shB],
    ] as const) {
      expect(await sh.run('grep -o ^virtio_net /proc/modules')).toContain('virtio_net');
      expect((await sh.run('basename $(readlink /sys/class/net/eth0/device/driver)')).trim()).toBe(
        'virtio_net',
      );
      expect((await sh.run('cat /sys/class/net/eth0/address')).trim()).toBe(macFromVmId(g.vmId, 0));
    }

    const ab = await shA.run(`ping -c 3 -W 2 ${b.addr}`, 30_000);
    expect(ab).toMatch(/3 packets transmitted, [1-3] packets received/);
    const ba = await shB.run(`ping -c 3 -W 2 ${a.addr}`, 30_000);
    expect(ba).toMatch(/3 packets transmitted, [1-3] packets received/);
    // NIC counters are read in the guest's namespace: the pings show up as guest tx and rx.
    const sample = await a.driver.sampleVm(a.vmId);
    expect(sample.nics).toHaveLength(1);
    expect(sample.nics[0]!.txPackets).toBeGreaterThanOrEqual(3);
    expect(sample.nics[0]!.rxPackets).toBeGreaterThanOrEqual(1);

    // The path really is the veth between the bridges: cut it and the guests are apart.
    await deleteLink('hgv-a', { netns: nsA });
    await expect(shA.run(`ping -c 2 -W 1 ${b.addr}`, 30_000)).rejects.toThrow(/0 packets received/);

    // Removing a guest's taps on delete.
    for (const g of booted) {
      await g.driver.forceStop(g.vmId);
      await g.driver.delete(g.vmId);
      await g.net.deleteTaps(g.vmId);
      expect(await ipLinkText(g.netns)).not.toContain(g.tap);
    }
  }, 240_000);
});

afterAll(async () => {
  // Whatever a failed hook left with our own pid in the name.
  for (const name of await listNetns()) {
    if (name.startsWith(`${NS_PREFIX}${process.pid}-`)) await deleteNamespace(name);
  }
});
