import { createHash } from 'node:crypto';
import { VmmError } from '../errors.js';
import { VM_ID_PATTERN } from '../spec/vm-spec.js';
import { Reverter } from '../util/reverter.js';
import { assertIfname, assertNetnsName, findLink, listLinks, type NetnsOption, runIp } from './ip.js';
import { createBridge } from './netns.js';

/**
 * The host side of guest networking the agent needs: one bridge per host, one tap per NIC.
 * Guests on different hosts share a layer-2 segment when the hosts' bridges are joined (by a
 * physical uplink, a VXLAN, or a veth pair between network namespaces in tests).
 */
export interface HostNetwork {
  /** Idempotent: creates the bridge if missing and sets it up. */
  ensureBridge(): Promise<void>;
  /** Creates (or re-uses) the tap of one NIC, attached to the bridge and up; returns its name. */
  createTap(vmId: string, nicIndex: number): Promise<string>;
  /** Removes every tap of that VM; idempotent. */
  deleteTaps(vmId: string): Promise<void>;
}

/** Options of {@link LinuxHostNetwork}. */
export interface LinuxHostNetworkOptions {
  /** The host bridge every tap is attached to. */
  bridge: string;
  /** Run every `ip` command in this named network namespace (simulated hosts in tests). */
  netns?: string;
  /** First characters of every tap name (default `hg`): 1-3 lowercase letters or digits, a letter first. */
  tapPrefix?: string;
}

/** Default first characters of tap names. */
export const DEFAULT_TAP_PREFIX = 'hg';
/** Highest NIC index a tap name can carry (two digits keep a 2-character prefix within 15 bytes). */
export const MAX_NIC_INDEX = 99;
const TAP_PREFIX_PATTERN = /^[a-z][a-z0-9]{0,2}$/;
const HASH_CHARS = 10;
const OWNER_ALIAS_PREFIX = 'hangar:';

/**
 * The tap name of a VM's NIC: `<prefix><10 hex chars of sha256(vmId)>n<index>`, e.g.
 * `hg3f2a9c01d7n0`. Deterministic, so an agent that restarts finds the taps of its guests again,
 * and within Linux's 15-byte limit.
 *
 * @throws VmmError `INVALID_SPEC` for a malformed VM id, index or prefix, or a name over 15 bytes
 *   (a 3-character prefix leaves room for indexes 0-9 only).
 */
export function tapName(vmId: string, nicIndex: number, prefix: string = DEFAULT_TAP_PREFIX): string {
  assertVmId(vmId);
  assertTapPrefix(prefix);
  if (!Number.isInteger(nicIndex) || nicIndex < 0 || nicIndex > MAX_NIC_INDEX) {
    throw new VmmError(
      'INVALID_SPEC',
      `NIC index ${nicIndex} must be an integer from 0 to ${MAX_NIC_INDEX}`,
      {
        details: { nicIndex },
      },
    );
  }
  const name = `${tapStem(vmId, prefix)}${nicIndex}`;
  if (name.length > 15) {
    throw new VmmError(
      'INVALID_SPEC',
      `tap name ${name} would exceed 15 bytes: use a shorter prefix than '${prefix}' or a NIC index below 10`,
      { details: { vmId, nicIndex, prefix } },
    );
  }
  return name;
}

/** The owner marker kept in a tap's alias (`ip link set X alias …`). */
export function tapOwnerAlias(vmId: string): string {
  return `${OWNER_ALIAS_PREFIX}${vmId}`;
}

/**
 * {@link HostNetwork} on Linux with iproute2: a Linux bridge and persistent tap devices, optionally
 * inside a named network namespace. Each tap carries its VM in its name (a hash of the VM id) and
 * in its alias (`hangar:<vmId>`), so {@link LinuxHostNetwork.deleteTaps} removes only that VM's taps.
 */
export class LinuxHostNetwork implements HostNetwork {
  readonly bridge: string;
  readonly netns: string | undefined;
  readonly tapPrefix: string;
  private readonly at: NetnsOption;

  /** @throws VmmError `INVALID_SPEC` for a malformed bridge, namespace or prefix. */
  constructor(options: LinuxHostNetworkOptions) {
    assertIfname(options.bridge, 'bridge');
    if (options.netns !== undefined) assertNetnsName(options.netns);
    const prefix = options.tapPrefix ?? DEFAULT_TAP_PREFIX;
    assertTapPrefix(prefix);
    this.bridge = options.bridge;
    this.netns = options.netns;
    this.tapPrefix = prefix;
    this.at = options.netns === undefined ? {} : { netns: options.netns };
  }

  async ensureBridge(): Promise<void> {
    await createBridge(this.bridge, this.at);
  }

  /**
   * Creates the tap `tapName(vmId, nicIndex)` (or re-uses it when it is already this VM's), marks
   * it as the VM's, attaches it to the bridge and sets it up. QEMU opens it by name with
   * `script=no`, so it needs no privileges of its own.
   *
   * @throws VmmError `NETWORK_ERROR` when ip fails (e.g. the bridge is missing) or when an
   *   interface of that name exists that belongs to another VM or is not a tap.
   */
  async createTap(vmId: string, nicIndex: number): Promise<string> {
    const name = tapName(vmId, nicIndex, this.tapPrefix);
    const marker = tapOwnerAlias(vmId);
    const existing = await findLink(name, this.at);
    if (existing !== undefined && (existing.kind !== 'tun' || !ownedBy(existing.ifalias, marker))) {
      throw new VmmError(
        'NETWORK_ERROR',
        `interface ${name} already exists and is not a tap of VM ${vmId} (kind ${existing.kind ?? 'unknown'}, alias ${existing.ifalias ?? 'none'})`,
        { details: { vmId, nicIndex, ifname: name, netns: this.netns } },
      );
    }
    const reverter = new Reverter();
    try {
      if (existing === undefined) {
        await runIp(['tuntap', 'add', 'dev', name, 'mode', 'tap'], this.at);
        reverter.add(async () => {
          await runIp(['link', 'delete', 'dev', name], this.at);
        }, `delete tap ${name}`);
      }
      // The marker goes on before the tap joins the bridge: a tap that carries traffic is always
      // attributable to its VM.
      await runIp(['link', 'set', 'dev', name, 'alias', marker], this.at);
      await runIp(['link', 'set', 'dev', name, 'master', this.bridge, 'up'], this.at);
      reverter.success();
    } finally {
      await reverter.fail();
    }
    return name;
  }

  /**
   * Deletes every tap whose name is this VM's (any NIC index) and whose alias does not name
   * another VM. Taps QEMU still holds are deleted too (the guest's NIC then loses its link).
   */
  async deleteTaps(vmId: string): Promise<void> {
    assertVmId(vmId);
    const stem = tapStem(vmId, this.tapPrefix);
    const marker = tapOwnerAlias(vmId);
    const mine = (await listLinks(this.at)).filter(
      (l) =>
        l.ifname.startsWith(stem) &&
        /^\d{1,2}$/.test(l.ifname.slice(stem.length)) &&
        l.kind === 'tun' &&
        ownedBy(l.ifalias, marker),
    );
    for (const tap of mine) {
      try {
        await runIp(['link', 'delete', 'dev', tap.ifname], this.at);
      } catch (err) {
        // Gone meanwhile (a concurrent delete) is what we wanted.
        if ((await findLink(tap.ifname, this.at)) !== undefined) throw err;
      }
    }
  }
}

function tapStem(vmId: string, prefix: string): string {
  const hash = createHash('sha256').update(vmId).digest('hex').slice(0, HASH_CHARS);
  return `${prefix}${hash}n`;
}

/** A tap without any alias is ours too: creation may have stopped between `tuntap add` and `alias`. */
function ownedBy(alias: string | undefined, marker: string): boolean {
  return alias === undefined || alias === marker;
}

function assertVmId(vmId: string): void {
  if (!VM_ID_PATTERN.test(vmId)) {
    throw new VmmError('INVALID_SPEC', `invalid VM id '${vmId}'`, { details: { vmId } });
  }
}

function assertTapPrefix(prefix: string): void {
  if (!TAP_PREFIX_PATTERN.test(prefix)) {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid tap prefix '${prefix}': 1-3 lowercase letters or digits, starting with a letter`,
      { details: { prefix } },
    );
  }
}
