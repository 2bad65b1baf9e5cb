import type { VmState } from '@hangar/vmm-core';
import type { Logger } from '../log.js';

const UP: readonly VmState[] = ['RUNNING', 'PAUSED'];

/**
 * Whether a VM's observed power state contradicts what the control plane asked for: desired up
 * (RUNNING/PAUSED) but found STOPPED, or desired STOPPED but a guest runs. Other differences
 * (PAUSED vs RUNNING, a migration in progress, ERROR) are states the control plane sees anyway.
 */
export function isDrift(desired: VmState | undefined, observed: VmState): boolean {
  if (desired === undefined) return false;
  if (UP.includes(desired)) return observed === 'STOPPED';
  if (desired === 'STOPPED') return UP.includes(observed);
  return false;
}

/**
 * Remembers which VMs are drifting so each drift is logged once when it appears and once when it
 * clears, however often the inventory is read (heartbeats every few seconds must not flood logs).
 * The agent reports drift and never repairs it (docs/adr/0003).
 */
export class DriftTracker {
  private readonly drifting = new Map<string, string>();

  constructor(private readonly logger: Logger) {}

  /** Records the current view of one VM and returns whether it drifts. */
  observe(vmId: string, desired: VmState | undefined, observed: VmState): boolean {
    const drift = isDrift(desired, observed);
    const signature = `${desired}->${observed}`;
    const previous = this.drifting.get(vmId);
    if (drift && previous !== signature) {
      this.drifting.set(vmId, signature);
      this.logger.warn(
        { vmId, desiredState: desired, observedState: observed },
        'VM drift: observed state differs from desired state; reported to the control plane, not repaired',
      );
    } else if (!drift && previous !== undefined) {
      this.drifting.delete(vmId);
      this.logger.info({ vmId, desiredState: desired, observedState: observed }, 'VM drift cleared');
    }
    return drift;
  }

  /** Forgets a VM that left this host. */
  forget(vmId: string): void {
    this.drifting.delete(vmId);
  }

  /** VMs currently drifting. */
  current(): string[] {
    return [...this.drifting.keys()].sort();
  }
}
