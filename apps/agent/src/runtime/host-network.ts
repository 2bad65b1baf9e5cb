/**
 * What the runtime needs from host networking: a bridge per host and one tap per NIC on it.
 * The real implementation lives in vmm-core (`network/`); the agent only calls this interface, so
 * the fake driver and tests without NICs run without touching the host.
 */
export interface HostNetwork {
  /** Creates the host bridge when it is missing; idempotent. */
  ensureBridge(): Promise<void>;
  /** Creates a tap for NIC `nicIndex` of `vmId`, attached to the bridge, and returns its name. */
  createTap(vmId: string, nicIndex: number): Promise<string>;
  /** Removes every tap created for `vmId`; succeeds when there is none. */
  deleteTaps(vmId: string): Promise<void>;
}

/**
 * Host networking that does nothing: for the fake driver and for hosts whose guests only use
 * QEMU's user-mode network. A NIC that asks for an agent-made tap is refused, because a guest
 * wired to a tap nobody created would boot without a network and nobody would notice.
 */
export class NoopHostNetwork implements HostNetwork {
  /** Names handed out by {@link createTap} when `fakeTaps` is set (fake driver: no device is made). */
  constructor(private readonly options: { fakeTaps?: boolean } = {}) {}

  async ensureBridge(): Promise<void> {}

  async createTap(vmId: string, nicIndex: number): Promise<string> {
    if (!this.options.fakeTaps) {
      throw new Error(
        `this agent has no host networking configured: NIC ${nicIndex} of VM ${vmId} needs a tap on the bridge`,
      );
    }
    return fakeTapName(vmId, nicIndex);
  }

  async deleteTaps(_vmId: string): Promise<void> {}
}

/** A stable, valid interface name for fake taps (15 bytes at most, like the kernel's limit). */
function fakeTapName(vmId: string, nicIndex: number): string {
  let h = 2166136261;
  for (const c of vmId) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return `ft${h.toString(16).padStart(8, '0')}n${nicIndex}`.slice(0, 15);
}
