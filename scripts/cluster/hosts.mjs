// The network of a multi-host cluster on one machine (`scripts/up.sh --hosts N`, docs/adr/0044):
// one network namespace per host, each joined by a veth pair to one bridge in the root namespace,
// which holds the only root-side address (the control plane's). Every name starts with the
// cluster's tag (`hgc` + 4 characters derived from the cluster folder), so a teardown finds every
// piece by name, also after a run that was killed before it recorded anything; nothing without
// that shape is ever touched. Addresses are in 10.231.X.0/24, X chosen per cluster among the
// subnets nothing on this machine uses yet.
//
//   node scripts/cluster/hosts.mjs list          the fabrics on this machine, one JSON line each
//   node scripts/cluster/hosts.mjs sweep         removes fabrics whose owner process is gone (tests)
//   node scripts/cluster/hosts.mjs tag DIR       the tag of the cluster folder DIR
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  addAddress,
  createBridge,
  createNamespace,
  createVethPair,
  deleteLink,
  deleteNamespace,
  findLink,
  listLinks,
  listNetns,
  runIp,
  setMaster,
  setUp,
} from '../../packages/vmm-core/dist/index.js';
import { log, markedProcesses, procStartTime, sleep, writePrivate } from './lib.mjs';

/** Largest `--hosts` (addresses .11 to .42): every host is a whole agent process on this one machine. */
export const MAX_HOSTS = 32;
/** Tags: `hgc` + 4 base-36 characters; interface names stay within Linux's 15 bytes. */
export const TAG_PATTERN = /^hgc[0-9a-z]{4}$/;
/** Names a fabric creates: `<tag>-br` (bridge), `<tag>-v<i>` (root-side veth), `<tag>-h<i>` (namespace). */
const NAME_PATTERN = /^(hgc[0-9a-z]{4})-(br|v\d{1,2}|h\d{1,2})$/;
/** The interface each host namespace sees (the other end of its veth). */
const HOST_IFNAME = 'eth0';
/** Subnets 10.231.X.0/24 with X in this range (10.231.0-1 are vmm-core's own test subnets). */
const SUBNET_FIRST = 16;
const SUBNET_LAST = 250;
/** Host i gets 10.231.X.(10 + i); the bridge (control plane) gets .1. */
const HOST_OFFSET = 10;
/** The bridge's alias says which cluster folder made it and, for tests, which process owns it. */
const ALIAS_PATTERN = /^hangar-cluster(?: owner=(\d+):(\d+))? dir=(\/.*)$/;
/** Creating, sweeping and removing fabrics happen one at a time on a machine. */
const LOCK_FILE = '/run/lock/hangar-cluster-fabric.lock';

/**
 * @typedef {{ name: string, index: number, namespace: string, veth: string, address: string }} FabricHost
 * @typedef {{
 *   version: 1, tag: string, clusterDir: string, subnet: string, bridge: string, gateway: string,
 *   hosts: FabricHost[],
 * }} Fabric
 * @typedef {{ owner?: { pid: number, startTime: string }, dir: string }} FabricAlias
 */

/** The tag of the cluster in `clusterDir`: the same folder always gets the same names. */
export function fabricTag(clusterDir) {
  const n = Number.parseInt(createHash('sha256').update(clusterDir).digest('hex').slice(0, 6), 16);
  return `hgc${(n % 36 ** 4).toString(36).padStart(4, '0')}`;
}

/** The name host `index` (1-based) registers with. */
export const hostName = (index) => `host${index}`;
export const bridgeName = (tag) => `${tag}-br`;
export const namespaceName = (tag, index) => `${tag}-h${index}`;
const vethName = (tag, index) => `${tag}-v${index}`;

/** The fabric record of a cluster, or undefined when it has none (single host, or torn down). */
export async function readFabric(file) {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8'));
    return parsed && parsed.version === 1 && TAG_PATTERN.test(parsed.tag) ? parsed : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs `fn` holding the machine-wide fabric lock: flock(1) locks a descriptor of this process
 * (the shell's `exec 8>lock; flock 8`), so the lock lasts until it is closed here, and a killed
 * run never leaves it taken.
 */
export async function withFabricLock(fn) {
  mkdirSync(path.dirname(LOCK_FILE), { recursive: true });
  const fd = openSync(LOCK_FILE, 'a', 0o600);
  try {
    await new Promise((resolve, reject) => {
      const child = spawn('flock', ['-x', '-w', '120', '3'], { stdio: ['ignore', 'ignore', 'pipe', fd] });
      let err = '';
      child.stderr.on('data', (chunk) => {
        err += chunk.toString('utf8');
      });
      child.once('error', reject);
      child.once('exit', (code) =>
        code === 0
          ? resolve(undefined)
          : reject(new Error(`could not take ${LOCK_FILE} within 120 s (flock exit ${code}) ${err.trim()}`)),
      );
    });
    return await fn();
  } finally {
    closeSync(fd);
  }
}

/** The bridge's alias text for `clusterDir`, with the owner process when there is one. */
function aliasText(clusterDir, ownerPid) {
  if (ownerPid === undefined) return `hangar-cluster dir=${clusterDir}`;
  const startTime = procStartTime(ownerPid);
  if (startTime === undefined) throw new Error(`the owner process ${ownerPid} does not run`);
  return `hangar-cluster owner=${ownerPid}:${startTime} dir=${clusterDir}`;
}

/** @returns {FabricAlias | undefined} */
function parseAlias(text) {
  const m = ALIAS_PATTERN.exec(text ?? '');
  if (!m) return undefined;
  return { ...(m[1] ? { owner: { pid: Number(m[1]), startTime: m[2] } } : {}), dir: m[3] };
}

/** IPv4 [address, prefix length] pairs as numbers. */
function ipv4(text) {
  const parts = text.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) return undefined;
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

function overlaps(a, aLen, b, bLen) {
  const len = Math.min(aLen, bLen);
  if (len === 0) return true;
  const mask = len === 32 ? 0xffffffff : ~(0xffffffff >>> len) >>> 0;
  return (a & mask) >>> 0 === (b & mask) >>> 0;
}

/**
 * The IPv4 prefixes the root namespace already uses (addresses and routes, the default route
 * aside), except those on `ownBridge`.
 */
async function prefixesInUse(ownBridge) {
  /** @type {[number, number][]} */
  const used = [];
  const addrs = JSON.parse((await runIp(['-j', '-4', 'addr', 'show'])) || '[]');
  for (const link of addrs) {
    if (link.ifname === ownBridge) continue;
    for (const a of link.addr_info ?? []) {
      const n = ipv4(a.local ?? '');
      if (n !== undefined) used.push([n, a.prefixlen ?? 32]);
    }
  }
  const routes = JSON.parse((await runIp(['-j', '-4', 'route', 'show', 'table', 'all'])) || '[]');
  for (const r of routes) {
    if (r.dev === ownBridge || !r.dst || r.dst === 'default') continue;
    const [dst, len] = r.dst.split('/');
    const n = ipv4(dst);
    // Local and broadcast entries of the local table are covered by the addresses above.
    if (n !== undefined && r.type !== 'local' && r.type !== 'broadcast') used.push([n, Number(len ?? 32)]);
  }
  return used;
}

/** Whether 10.231.`x`.0/24 is free of every prefix in `used`. */
function subnetFree(x, used) {
  const net = ipv4(`10.231.${x}.0`);
  return used.every(([n, len]) => !overlaps(net, 24, n, len));
}

/**
 * The third byte of the cluster's subnet: the recorded one while it is still free (or already on
 * our bridge), else the first free one from a start derived from the tag.
 */
async function chooseSubnet(tag, previous) {
  const bridge = bridgeName(tag);
  const used = await prefixesInUse(bridge);
  if (previous !== undefined && subnetFree(previous, used)) return previous;
  const span = SUBNET_LAST - SUBNET_FIRST + 1;
  const start = Number.parseInt(createHash('sha256').update(tag).digest('hex').slice(0, 8), 16) % span;
  for (let i = 0; i < span; i++) {
    const x = SUBNET_FIRST + ((start + i) % span);
    if (subnetFree(x, used)) return x;
  }
  throw new Error(`no free subnet in 10.231.${SUBNET_FIRST}-${SUBNET_LAST}.0/24 on this machine`);
}

/**
 * Creates (or completes) the fabric of the cluster in `clusterDir` with `count` hosts and records
 * it in `fabricFile`. Idempotent: a re-run keeps the namespaces, addresses and subnet it finds.
 * The caller holds {@link withFabricLock}. `ownerPid`: the process whose death makes the fabric
 * a leftover for {@link sweepFabrics} (tests); none for clusters an operator brought up.
 * @returns {Promise<Fabric>}
 */
export async function ensureFabric({ clusterDir, fabricFile, count, ownerPid }) {
  if (!Number.isInteger(count) || count < 2 || count > MAX_HOSTS) {
    throw new Error(`a multi-host fabric has 2 to ${MAX_HOSTS} hosts, not ${count}`);
  }
  const tag = fabricTag(clusterDir);
  const bridge = bridgeName(tag);
  const existing = await findLink(bridge);
  if (existing !== undefined) {
    const alias = parseAlias(existing.ifalias);
    if (alias !== undefined && alias.dir !== clusterDir) {
      throw new Error(
        `the bridge ${bridge} belongs to the cluster in ${alias.dir}, whose tag is the same as this one's; use another HANGAR_DATA_DIR`,
      );
    }
  }
  const previous = await readFabric(fabricFile);
  const previousX = previous?.tag === tag ? Number(previous.subnet.split('.')[2]) : undefined;
  const x = await chooseSubnet(tag, previousX);
  const gateway = `10.231.${x}.1`;
  /** @type {Fabric} */
  const fabric = {
    version: 1,
    tag,
    clusterDir,
    subnet: `10.231.${x}.0/24`,
    bridge,
    gateway,
    hosts: Array.from({ length: count }, (_, i) => ({
      name: hostName(i + 1),
      index: i + 1,
      namespace: namespaceName(tag, i + 1),
      veth: vethName(tag, i + 1),
      address: `10.231.${x}.${HOST_OFFSET + i + 1}`,
    })),
  };
  // The record first: a run killed from here on leaves nothing a teardown could not name.
  await writePrivate(fabricFile, `${JSON.stringify(fabric, null, 2)}\n`);

  await createBridge(bridge);
  await runIp(['link', 'set', 'dev', bridge, 'alias', aliasText(clusterDir, ownerPid)]);
  const moved = previousX !== undefined && previousX !== x;
  if (moved) await runIp(['addr', 'flush', 'dev', bridge]);
  await addAddress(bridge, `${gateway}/24`);
  for (const host of fabric.hosts) {
    await createNamespace(host.namespace);
    await createVethPair(host.veth, HOST_IFNAME, { nsB: host.namespace });
    await setMaster(host.veth, bridge);
    await setUp(host.veth);
    if (moved) await runIp(['addr', 'flush', 'dev', HOST_IFNAME], { netns: host.namespace });
    await addAddress(HOST_IFNAME, `${host.address}/24`, { netns: host.namespace });
    await setUp(HOST_IFNAME, { netns: host.namespace });
  }
  return fabric;
}

/** Pids of the processes inside network namespace `name` (`ip netns pids`). */
export async function namespacePids(name) {
  const out = await runIp(['netns', 'pids', name]).catch(() => '');
  return out
    .split('\n')
    .map((l) => Number.parseInt(l.trim(), 10))
    .filter((pid) => Number.isInteger(pid) && pid > 0);
}

/** The namespaces and root-namespace links named after `tag`. */
export async function fabricResources(tag) {
  const ours = (name) => NAME_PATTERN.exec(name)?.[1] === tag;
  const [namespaces, links] = await Promise.all([listNetns(), listLinks()]);
  return {
    namespaces: namespaces.filter(ours),
    links: links.filter((l) => ours(l.ifname)),
  };
}

/**
 * Removes the fabric of `tag`: the processes still inside its namespaces (SIGKILL, each one
 * logged: the caller has stopped what it knows of first), the root-side veths (which take their
 * namespace end along), the namespaces, then the bridge. Waits until the kernel has let go of
 * every one of them. The caller holds {@link withFabricLock}.
 * @returns {Promise<{ killed: number[], namespaces: string[], links: string[] }>}
 */
export async function destroyFabric(tag, { say = log } = {}) {
  if (!TAG_PATTERN.test(tag)) throw new Error(`not a fabric tag: ${tag}`);
  const { namespaces, links } = await fabricResources(tag);
  const killed = [];
  for (const ns of namespaces) {
    for (const pid of await namespacePids(ns)) {
      const argv0 = await readFile(`/proc/${pid}/cmdline`, 'utf8').then(
        (s) => s.split('\0')[0] ?? '?',
        () => '?',
      );
      say(`killing process ${pid} (${argv0}) left in namespace ${ns}`);
      try {
        process.kill(pid, 'SIGKILL');
        killed.push(pid);
      } catch {
        // gone meanwhile
      }
    }
  }
  const deadline = Date.now() + 10_000;
  while (killed.some((pid) => procStartTime(pid) !== undefined) && Date.now() < deadline) await sleep(50);
  for (const link of links) if (link.kind === 'veth') await deleteLink(link.ifname);
  for (const ns of namespaces) await deleteNamespace(ns);
  for (const link of links) if (link.kind !== 'veth') await deleteLink(link.ifname);
  // A namespace is destroyed asynchronously once its last user is gone; so are its interfaces.
  for (;;) {
    const left = await fabricResources(tag);
    if (left.namespaces.length === 0 && left.links.length === 0) break;
    if (Date.now() > deadline) {
      throw new Error(
        `fabric ${tag} still has ${[...left.namespaces, ...left.links.map((l) => l.ifname)].join(', ')}`,
      );
    }
    for (const link of left.links) await deleteLink(link.ifname);
    await sleep(100);
  }
  return { killed, namespaces, links: links.map((l) => l.ifname) };
}

/**
 * Every fabric on this machine, by tag: its namespaces, links and the bridge's alias.
 * @returns {Promise<Map<string, { namespaces: string[], links: string[], alias: FabricAlias | undefined, bridge: boolean }>>}
 */
export async function listFabrics() {
  const fabrics = new Map();
  const entry = (tag) => {
    if (!fabrics.has(tag)) fabrics.set(tag, { namespaces: [], links: [], alias: undefined, bridge: false });
    return fabrics.get(tag);
  };
  for (const ns of await listNetns()) {
    const tag = NAME_PATTERN.exec(ns)?.[1];
    if (tag) entry(tag).namespaces.push(ns);
  }
  for (const link of await listLinks()) {
    const m = NAME_PATTERN.exec(link.ifname);
    if (!m) continue;
    const e = entry(m[1]);
    e.links.push(link.ifname);
    if (m[2] === 'br') {
      e.bridge = true;
      e.alias = parseAlias(link.ifalias);
    }
  }
  return fabrics;
}

/**
 * Why the fabric is a leftover of a killed run, or undefined when it is in use. Leftovers: its
 * owner process is gone, its cluster folder is gone, or it has no bridge or an unmarked one
 * (the bridge is made first and removed last, under the lock, so only a killed run leaves
 * that). Fabrics of clusters an operator brought up have no owner: only down.sh removes them.
 */
export function leftoverReason(fabric) {
  if (!fabric.bridge) return 'it has no bridge';
  if (!fabric.alias) return 'its bridge carries no cluster mark';
  const { owner, dir } = fabric.alias;
  if (owner && procStartTime(owner.pid) !== owner.startTime) return `its owner (pid ${owner.pid}) is gone`;
  if (!existsSync(dir)) return `its cluster folder ${dir} is gone`;
  return undefined;
}

/**
 * Removes the fabrics that killed runs left (see {@link leftoverReason}), with the api, worker
 * and agent processes of their clusters (found by their environment mark) and everything inside
 * their namespaces (guests, agents). Fabrics in use are never touched.
 * @returns {Promise<{ tag: string, reason: string, dir: string | undefined }[]>}
 */
export async function sweepFabrics({ say = log } = {}) {
  return withFabricLock(async () => {
    const swept = [];
    for (const [tag, fabric] of await listFabrics()) {
      const reason = leftoverReason(fabric);
      if (reason === undefined) continue;
      say(`sweeping fabric ${tag}: ${reason}`);
      if (fabric.alias) {
        for (const p of markedProcesses(fabric.alias.dir)) {
          if (procStartTime(p.pid) !== p.startTime) continue;
          say(`  killing ${p.entryPoint} (pid ${p.pid}) of ${fabric.alias.dir}`);
          try {
            process.kill(p.pid, 'SIGKILL');
          } catch {
            // gone meanwhile
          }
        }
      }
      await destroyFabric(tag, { say: (m) => say(`  ${m}`) });
      swept.push({ tag, reason, dir: fabric.alias?.dir });
    }
    return swept;
  });
}

/** Removes the fabric record of a cluster (after {@link destroyFabric}). */
export async function forgetFabric(fabricFile) {
  await rm(fabricFile, { force: true });
}

async function cli(argv) {
  const [command] = argv;
  if (command === 'sweep') {
    const swept = await sweepFabrics();
    process.stdout.write(`${JSON.stringify(swept)}\n`);
    return 0;
  }
  if (command === 'tag' && argv[1]) {
    process.stdout.write(`${fabricTag(argv[1])}\n`);
    return 0;
  }
  if (command === 'list') {
    for (const [tag, f] of await listFabrics()) {
      process.stdout.write(`${JSON.stringify({ tag, ...f, leftover: leftoverReason(f) ?? null })}\n`);
    }
    return 0;
  }
  process.stderr.write('usage: node scripts/cluster/hosts.mjs list | sweep | tag CLUSTER_DIR\n');
  return 2;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  cli(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error) => {
      process.stderr.write(`hosts: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
