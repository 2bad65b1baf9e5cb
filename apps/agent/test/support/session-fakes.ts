import type { HostSample, OrphanInfo, VmEvent, VmSample } from '@hangar/vmm-core';
import type { SessionLogger } from '../../src/session/control-session.js';
import type { AgentInventory, InventoryVm } from '../../src/session/inventory.js';

/**
 * An in-memory AgentInventory: the ControlSession's collaborator, so session tests control
 * exactly which VMs exist and when events happen. (The real runtime is tested with QEMU.)
 */
export class FakeInventory implements AgentInventory {
  vms: InventoryVm[] = [];
  orphans: OrphanInfo[] = [];
  samples = 0;
  private readonly handlers = new Set<(event: VmEvent) => void>();

  async snapshot(): Promise<{ vms: InventoryVm[]; orphans: OrphanInfo[] }> {
    return { vms: this.vms.map((v) => ({ ...v })), orphans: this.orphans.map((o) => ({ ...o })) };
  }

  onEvent(handler: (event: VmEvent) => void): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  get subscribers(): number {
    return this.handlers.size;
  }

  emit(event: Omit<VmEvent, 'at'> & { at?: Date }): void {
    const full: VmEvent = { ...event, at: event.at ?? new Date() };
    for (const h of this.handlers) h(full);
  }

  async sampleMetrics(): Promise<{ host: HostSample; vms: VmSample[] }> {
    const n = ++this.samples;
    const at = new Date();
    return {
      host: {
        at,
        cpuCount: 2,
        cpuSeconds: { user: 100 + n, system: 50 + n, idle: 1000 + n, iowait: 1, steal: 0 },
        memoryTotalBytes: 8 * 2 ** 30,
        memoryAvailableBytes: 6 * 2 ** 30,
        load1: 0.5,
        load5: 0.4,
        load15: 0.3,
      },
      vms: this.vms
        .filter((v) => v.state === 'RUNNING')
        .map((v) => ({
          vmId: v.vmId,
          at,
          vcpuSeconds: [n * 0.25],
          cpuSecondsTotal: n * 0.3,
          rssBytes: 200 * 2 ** 20,
          block: [{ device: 'data', rdBytes: 4096 * n, wrBytes: 0, rdOps: n, wrOps: 0 }],
          nics: [],
        })),
    };
  }
}

/** A logger that keeps what it was told, for assertions on warnings. */
export class MemoryLogger implements SessionLogger {
  readonly lines: Array<{ level: string; msg: string | undefined; obj: object }> = [];
  debug(obj: object, msg?: string): void {
    this.lines.push({ level: 'debug', msg, obj });
  }
  info(obj: object, msg?: string): void {
    this.lines.push({ level: 'info', msg, obj });
  }
  warn(obj: object, msg?: string): void {
    this.lines.push({ level: 'warn', msg, obj });
  }
  error(obj: object, msg?: string): void {
    this.lines.push({ level: 'error', msg, obj });
  }
  messages(level: string): string[] {
    return this.lines.filter((l) => l.level === level).map((l) => l.msg ?? '');
  }
}
