import { Inject, Injectable, Logger, Optional } from '@nestjs/common';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { changeVmState } from '../vms/vm-state.writer.js';

/** Nest injection token for {@link HostLivenessOptions}. */
export const HOST_LIVENESS_OPTIONS = Symbol('HOST_LIVENESS_OPTIONS');

/** When a host counts as DOWN. */
export interface HostLivenessOptions {
  /** The interval agents heartbeat at (the gateway's setting; default 5 s). */
  readonly heartbeatIntervalMs?: number;
  /** Missed heartbeats before DOWN (default 3, ARCHITECTURE.md). */
  readonly missedHeartbeats?: number;
}

/** A host this check marked DOWN. */
export interface DownedHost {
  readonly id: string;
  readonly name: string;
  /** Its VMs that became UNKNOWN. */
  readonly vms: number;
}

/**
 * States of VMs that run (or sit stopped) on a host: while the host is unreachable they become
 * UNKNOWN, never silently STOPPED. The next heartbeat puts each back to what its agent observes.
 */
const UNREACHABLE_STATES = ['STOPPED', 'RUNNING', 'PAUSED', 'MIGRATING', 'INCOMING', 'ERROR'] as const;

/**
 * Marks hosts DOWN after `missedHeartbeats` heartbeat intervals of silence (plus half an interval
 * of slack for a heartbeat in flight) and their VMs UNKNOWN, with an event row for each change.
 * Idempotent and safe to run from several workers at once: the UP → DOWN switch is one
 * conditional UPDATE, so only one run acts on a host.
 */
@Injectable()
export class HostLivenessService {
  readonly heartbeatIntervalMs: number;
  readonly missedHeartbeats: number;
  private readonly log = new Logger('HostLiveness');

  constructor(
    private readonly prisma: PrismaService,
    @Optional() @Inject(HOST_LIVENESS_OPTIONS) options?: HostLivenessOptions,
  ) {
    this.heartbeatIntervalMs = options?.heartbeatIntervalMs ?? 5_000;
    this.missedHeartbeats = options?.missedHeartbeats ?? 3;
  }

  /** Silence after which a host is DOWN. */
  get downAfterMs(): number {
    return Math.round(this.heartbeatIntervalMs * (this.missedHeartbeats + 0.5));
  }

  /** One check: returns the hosts it marked DOWN. */
  async check(now: Date = new Date()): Promise<DownedHost[]> {
    const threshold = new Date(now.getTime() - this.downAfterMs);
    const downed = await this.prisma.host.updateManyAndReturn({
      where: { state: 'UP', OR: [{ lastHeartbeatAt: null }, { lastHeartbeatAt: { lt: threshold } }] },
      data: { state: 'DOWN' },
      select: { id: true, name: true, lastHeartbeatAt: true },
    });
    const out: DownedHost[] = [];
    for (const host of downed) {
      await this.prisma.event.create({
        data: {
          resourceType: 'host',
          resourceId: host.id,
          kind: 'host.state_changed',
          data: {
            from: 'UP',
            to: 'DOWN',
            reason: `no heartbeat for ${this.missedHeartbeats} intervals of ${this.heartbeatIntervalMs} ms`,
            lastHeartbeatAt: host.lastHeartbeatAt?.toISOString() ?? null,
          },
        },
      });
      const vms = await this.prisma.vm.findMany({
        where: { hostId: host.id, deletedAt: null, observedState: { in: [...UNREACHABLE_STATES] } },
        select: { id: true },
      });
      let unknown = 0;
      for (const vm of vms) {
        const result = await changeVmState(this.prisma, {
          vmId: vm.id,
          to: 'UNKNOWN',
          source: 'host-liveness',
          onlyFrom: UNREACHABLE_STATES,
          reason: `host ${host.name} is DOWN`,
        });
        if (result.changed) unknown += 1;
      }
      this.log.warn(`host ${host.name} (${host.id}) is DOWN: ${unknown} VMs are UNKNOWN`);
      out.push({ id: host.id, name: host.name, vms: unknown });
    }
    return out;
  }
}
