import { z } from 'zod';
import { isVmmError, VmmError } from '../errors.js';
import { IFNAME_PATTERN } from '../spec/vm-spec.js';
import { runCommand } from '../util/exec.js';

/** The iproute2 binary; looked up on PATH like every other host tool vmm-core runs. */
const IP_BINARY = 'ip';
/** iproute2 answers in milliseconds; a hung netlink call must not hang an agent request. */
const IP_TIMEOUT_MS = 15_000;

/**
 * Names `ip netns` accepts and that cannot be mistaken for an option or a path: they become file
 * names under /run/netns.
 */
export const NETNS_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Where an `ip` command runs: the caller's network namespace, or a named one (`ip -n NAME`). */
export interface NetnsOption {
  /** A named network namespace (`ip netns add`); the caller's own namespace when absent. */
  netns?: string;
}

/** One network interface as `ip -j -d link show` reports it (only the fields vmm-core reads). */
export interface IpLink {
  ifindex: number;
  ifname: string;
  flags: string[];
  /** The bridge (or bond) this link is enslaved to. */
  master?: string;
  operstate?: string;
  address?: string;
  /** `ip link set X alias …`: vmm-core keeps its owner marker on taps here. */
  ifalias?: string;
  /** Link kind: `bridge`, `tun` (tap and tun devices), `veth`, …; absent for physical NICs and lo. */
  kind?: string;
}

const IpLinkJsonSchema = z.array(
  z.object({
    ifindex: z.number(),
    ifname: z.string(),
    flags: z.array(z.string()).default([]),
    master: z.string().optional(),
    operstate: z.string().optional(),
    address: z.string().optional(),
    ifalias: z.string().optional(),
    linkinfo: z.object({ info_kind: z.string().optional() }).optional(),
  }),
);

const NetnsListJsonSchema = z.array(z.object({ name: z.string() }));

/** Throws `INVALID_SPEC` unless `name` is a valid Linux interface name (at most 15 bytes). */
export function assertIfname(name: string, what = 'interface'): void {
  if (!IFNAME_PATTERN.test(name) || name === '.' || name === '..') {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid ${what} name '${name}': 1-15 letters, digits, '_', '.' or '-'`,
      { details: { name } },
    );
  }
}

/** Throws `INVALID_SPEC` unless `name` is a usable network namespace name. */
export function assertNetnsName(name: string): void {
  if (!NETNS_NAME_PATTERN.test(name)) {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid network namespace name '${name}': 1-64 letters, digits, '_', '.' or '-', not starting with '.', '_' or '-'`,
      { details: { name } },
    );
  }
}

/**
 * Runs `ip [-n NETNS] ARGS…` and returns its stdout.
 *
 * @throws VmmError `NETWORK_ERROR` carrying ip's own message when the command fails or times out.
 */
export async function runIp(args: readonly string[], options: NetnsOption = {}): Promise<string> {
  if (options.netns !== undefined) assertNetnsName(options.netns);
  const argv = options.netns === undefined ? [...args] : ['-n', options.netns, ...args];
  try {
    return (await runCommand(IP_BINARY, argv, { timeoutMs: IP_TIMEOUT_MS })).stdout;
  } catch (err) {
    const stderr = isVmmError(err) && typeof err.details?.stderr === 'string' ? err.details.stderr : '';
    const reason = stderr !== '' ? stderr : err instanceof Error ? err.message : String(err);
    throw new VmmError('NETWORK_ERROR', `ip ${argv.join(' ')}: ${reason}`, {
      cause: err,
      details: { args: argv, netns: options.netns, stderr },
    });
  }
}

/** Every interface of a network namespace. */
export async function listLinks(options: NetnsOption = {}): Promise<IpLink[]> {
  const out = await runIp(['-j', '-d', 'link', 'show'], options);
  const parsed = IpLinkJsonSchema.safeParse(parseJson(out, 'ip -j link show'));
  if (!parsed.success) {
    throw new VmmError('NETWORK_ERROR', `unexpected output of ip -j link show: ${parsed.error.message}`);
  }
  return parsed.data.map((l) => ({
    ifindex: l.ifindex,
    ifname: l.ifname,
    flags: l.flags,
    ...(l.master !== undefined ? { master: l.master } : {}),
    ...(l.operstate !== undefined ? { operstate: l.operstate } : {}),
    ...(l.address !== undefined ? { address: l.address } : {}),
    ...(l.ifalias !== undefined ? { ifalias: l.ifalias } : {}),
    ...(l.linkinfo?.info_kind !== undefined ? { kind: l.linkinfo.info_kind } : {}),
  }));
}

/** One interface by name, or undefined when the namespace has none of that name. */
export async function findLink(ifname: string, options: NetnsOption = {}): Promise<IpLink | undefined> {
  // Listing everything (rather than `link show dev X`) tells "no such device" from real failures
  // without parsing ip's error messages.
  return (await listLinks(options)).find((l) => l.ifname === ifname);
}

/** The named network namespaces (`ip netns list`). */
export async function listNetns(): Promise<string[]> {
  const out = await runIp(['-j', 'netns', 'list']);
  // Without any namespace (no /run/netns yet) ip prints nothing at all.
  if (out.trim() === '') return [];
  const parsed = NetnsListJsonSchema.safeParse(parseJson(out, 'ip -j netns list'));
  if (!parsed.success) {
    throw new VmmError('NETWORK_ERROR', `unexpected output of ip -j netns list: ${parsed.error.message}`);
  }
  return parsed.data.map((n) => n.name);
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new VmmError('NETWORK_ERROR', `${what} printed invalid JSON`, { cause: err });
  }
}
