import { VmmError } from '../errors.js';
import { isProcessAlive } from '../util/process.js';
import { assertIfname, assertNetnsName, findLink, listNetns, type NetnsOption, runIp } from './ip.js';

/*
 * Thin typed wrappers over iproute2 for building simulated multi-host networks on one machine:
 * one network namespace per "host", bridges inside them, veth pairs joining them. Every function
 * is idempotent where that makes sense, so set-up scripts can be re-run and teardown can be
 * called on half-built state.
 */

/** Creates the named network namespace (if missing) and brings its loopback up. */
export async function createNamespace(name: string): Promise<void> {
  assertNetnsName(name);
  if (!(await namespaceExists(name))) {
    try {
      await runIp(['netns', 'add', name]);
    } catch (err) {
      // Another caller may have created it between the check and the add.
      if (!(await namespaceExists(name))) throw err;
    }
  }
  await runIp(['link', 'set', 'dev', 'lo', 'up'], { netns: name });
}

/**
 * Deletes the named network namespace with every interface in it; nothing when it does not exist.
 * A process still running inside keeps the namespace itself alive (without its name) until it exits.
 */
export async function deleteNamespace(name: string): Promise<void> {
  assertNetnsName(name);
  if (!(await namespaceExists(name))) return;
  try {
    await runIp(['netns', 'delete', name]);
  } catch (err) {
    if (await namespaceExists(name)) throw err;
  }
}

/** Whether a network namespace of this name exists. */
export async function namespaceExists(name: string): Promise<boolean> {
  return (await listNetns()).includes(name);
}

/** Where each end of a veth pair lives; the caller's own namespace when absent. */
export interface VethPairOptions {
  nsA?: string;
  nsB?: string;
}

/**
 * Creates the veth pair `a` (in `nsA`) ↔ `b` (in `nsB`), both down. Nothing when both ends
 * already exist; fails when only one does (a name clash, not a half-made pair: deleting one end
 * of a veth pair deletes the other).
 */
export async function createVethPair(a: string, b: string, options: VethPairOptions = {}): Promise<void> {
  assertIfname(a, 'veth');
  assertIfname(b, 'veth');
  const atA = options.nsA === undefined ? {} : { netns: options.nsA };
  const atB = options.nsB === undefined ? {} : { netns: options.nsB };
  const [endA, endB] = await Promise.all([findLink(a, atA), findLink(b, atB)]);
  if (endA?.kind === 'veth' && endB?.kind === 'veth') return;
  if (endA !== undefined || endB !== undefined) {
    throw new VmmError(
      'NETWORK_ERROR',
      `cannot create veth pair ${a}/${b}: ${endA !== undefined ? a : b} already exists and is not one end of it`,
      { details: { a, b, ...options } },
    );
  }
  // Both ends are created from inside nsA, so neither name ever has to be free in a third
  // namespace; the peer goes straight to nsB (or back to the caller's namespace, by our pid).
  const peerNs = options.nsB ?? String(process.pid);
  if (options.nsB !== undefined) assertNetnsName(options.nsB);
  await runIp(['link', 'add', 'name', a, 'type', 'veth', 'peer', 'name', b, 'netns', peerNs], atA);
}

/**
 * Adds an address (`10.0.0.1/24`, `fd00::1/64`) to an interface; nothing when it is already there
 * (`ip addr replace`).
 */
export async function addAddress(ifname: string, cidr: string, options: NetnsOption = {}): Promise<void> {
  assertIfname(ifname);
  if (!/^[0-9A-Fa-f.:]+\/\d{1,3}$/.test(cidr)) {
    throw new VmmError('INVALID_SPEC', `invalid address '${cidr}': expected ADDRESS/PREFIX`, {
      details: { cidr },
    });
  }
  await runIp(['addr', 'replace', cidr, 'dev', ifname], options);
}

/** Sets an interface administratively up. */
export async function setUp(ifname: string, options: NetnsOption = {}): Promise<void> {
  assertIfname(ifname);
  await runIp(['link', 'set', 'dev', ifname, 'up'], options);
}

/** Enslaves an interface to a bridge (both in the same namespace). */
export async function setMaster(ifname: string, bridge: string, options: NetnsOption = {}): Promise<void> {
  assertIfname(ifname);
  assertIfname(bridge, 'bridge');
  await runIp(['link', 'set', 'dev', ifname, 'master', bridge], options);
}

/**
 * Creates a Linux bridge (if missing) and sets it up. STP stays off, so a port forwards as soon
 * as it is up.
 *
 * @throws VmmError `NETWORK_ERROR` when an interface of that name exists and is not a bridge.
 */
export async function createBridge(name: string, options: NetnsOption = {}): Promise<void> {
  assertIfname(name, 'bridge');
  let link = await findLink(name, options);
  if (link === undefined) {
    try {
      await runIp(['link', 'add', 'name', name, 'type', 'bridge'], options);
    } catch (err) {
      link = await findLink(name, options);
      if (link === undefined) throw err;
    }
  }
  if (link !== undefined && link.kind !== 'bridge') {
    throw new VmmError(
      'NETWORK_ERROR',
      `interface ${name} exists${options.netns === undefined ? '' : ` in namespace ${options.netns}`} but is a ${link.kind ?? 'non-bridge'} device, not a bridge`,
      { details: { name, kind: link.kind, netns: options.netns } },
    );
  }
  await runIp(['link', 'set', 'dev', name, 'up'], options);
}

/** Deletes an interface (bridge, tap, veth end: a veth's peer goes with it); nothing when missing. */
export async function deleteLink(name: string, options: NetnsOption = {}): Promise<void> {
  assertIfname(name);
  if ((await findLink(name, options)) === undefined) return;
  try {
    await runIp(['link', 'delete', 'dev', name], options);
  } catch (err) {
    if ((await findLink(name, options)) !== undefined) throw err;
  }
}

/**
 * A namespace name that records its owner: `<prefix><pid>-<label>`, so that
 * {@link sweepOwnedNamespaces} can tell leftovers of a killed process from namespaces in use.
 */
export function ownedNamespaceName(prefix: string, label: string, pid = process.pid): string {
  const name = `${prefix}${pid}-${label}`;
  assertNetnsName(name);
  return name;
}

/**
 * Deletes the namespaces named `<prefix><pid>-…` whose owner process is gone (leftovers of a
 * killed run). Namespaces of live owners and names of any other shape are left alone.
 *
 * @returns the names deleted.
 */
export async function sweepOwnedNamespaces(prefix: string): Promise<string[]> {
  const swept: string[] = [];
  for (const name of await listNetns()) {
    if (!name.startsWith(prefix)) continue;
    const m = /^(\d+)-/.exec(name.slice(prefix.length));
    if (!m) continue;
    const owner = Number(m[1]);
    if (owner === process.pid || (await isProcessAlive(owner))) continue;
    await deleteNamespace(name);
    swept.push(name);
  }
  return swept;
}
