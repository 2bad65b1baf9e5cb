import { controlv1, PROTOCOL_VERSION } from '@hangar/proto';
import type { VmState } from '@hangar/vmm-core';
import { Inject, Injectable, Logger, Optional } from '@nestjs/common';
import { DomainError } from '../../errors/domain-error.js';
import type { Host, Prisma } from '../../gen/prisma/client.js';
import { vmStateFromProto } from '../../infra/agent-client/vm-state.mapping.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { hashJoinToken, redeemJoinToken } from '../hosts/join-token.js';
import { MetricsStore } from '../metrics/metrics.store.js';
import { changeVmState } from '../vms/vm-state.writer.js';

/** Nest injection token for {@link GatewayOptions}. */
export const GATEWAY_OPTIONS = Symbol('GATEWAY_OPTIONS');

/** What the gateway tells agents, and how it judges them. */
export interface GatewayOptions {
  /** Sent to agents on Register (default 5 s); the liveness checker must use the same value. */
  readonly heartbeatIntervalMs?: number;
  /** Sent to agents on Register (default 10 s). */
  readonly metricsIntervalMs?: number;
}

/** The settings every agent gets, with defaults applied. */
export interface ResolvedGatewaySettings {
  readonly heartbeatIntervalMs: number;
  readonly metricsIntervalMs: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const HOST_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/;
const MIB = 1024 * 1024;

/**
 * States in which the VM exists on its host: a heartbeat that no longer lists such a VM means it
 * is gone from there. (PENDING…CREATING are not there yet, DELETING is on its way out.)
 */
const ON_HOST_STATES: ReadonlySet<VmState> = new Set([
  'STOPPED',
  'RUNNING',
  'PAUSED',
  'MIGRATING',
  'INCOMING',
  'UNKNOWN',
]);

const ACCELERATORS: Readonly<Record<number, string>> = {
  [controlv1.Accelerator.ACCELERATOR_KVM]: 'kvm',
  [controlv1.Accelerator.ACCELERATOR_TCG]: 'tcg',
  [controlv1.Accelerator.ACCELERATOR_FAKE]: 'fake',
};

const EVENT_KINDS: Readonly<Record<number, string>> = {
  [controlv1.VmEventType.VM_EVENT_TYPE_DEVICE_DELETED]: 'vm.device_deleted',
  [controlv1.VmEventType.VM_EVENT_TYPE_MIGRATION]: 'vm.migration_event',
  [controlv1.VmEventType.VM_EVENT_TYPE_RESET]: 'vm.reset',
};

/** What a heartbeat changed, for logs and tests. */
export interface HeartbeatOutcome {
  /** The host came back from DOWN with this heartbeat. */
  readonly hostCameBack: boolean;
  /** VMs whose observed state changed. */
  readonly changed: number;
}

/**
 * The AgentGateway's domain side, without gRPC: Register (join token, protocol version, host
 * upsert) and the reports of a Session (heartbeats reconcile observed VM states, VM events,
 * metrics, dropped-report notices). Every handler is idempotent, because the agent re-sends
 * unacknowledged reports (at-least-once delivery).
 */
@Injectable()
export class GatewayService {
  readonly settings: ResolvedGatewaySettings;
  private readonly log = new Logger('AgentGateway');

  constructor(
    private readonly prisma: PrismaService,
    private readonly metrics: MetricsStore,
    @Optional() @Inject(GATEWAY_OPTIONS) options?: GatewayOptions,
  ) {
    this.settings = {
      heartbeatIntervalMs: options?.heartbeatIntervalMs ?? 5_000,
      metricsIntervalMs: options?.metricsIntervalMs ?? 10_000,
    };
  }

  /**
   * Registers (or re-registers) a host. Refuses another protocol version (CONFLICT →
   * FAILED_PRECONDITION) and a bad join token (UNAUTHENTICATED). Join tokens are single-use (the
   * admin API issues them): a new host redeems one in the same transaction that creates its row;
   * a host that already joined keeps re-registering with the token it joined with (expired or
   * not, until an admin revokes it), or redeems a fresh one (an agent reinstalled). The host row
   * is upserted by name, or found by the id the agent kept when it was renamed.
   */
  async register(request: controlv1.RegisterRequest): Promise<controlv1.RegisterResponse> {
    if (request.protocolVersion !== PROTOCOL_VERSION) {
      throw new DomainError(
        'CONFLICT',
        `unsupported protocol version ${request.protocolVersion}; this control plane speaks ${PROTOCOL_VERSION}`,
      );
    }
    const info = request.host;
    if (!info || !HOST_NAME.test(info.hostname)) {
      throw DomainError.invalid('host.hostname', 'body', 'a host name (letters, digits, "." and "-")');
    }
    if (!/^[^\s]{3,300}$/.test(info.agentAddress) || !/:\d{1,5}$/.test(info.agentAddress)) {
      throw DomainError.invalid('host.agent_address', 'body', 'host:port of the HostAgent server');
    }
    if (!Number.isInteger(info.cores) || info.cores < 1 || info.memoryBytes < MIB) {
      throw DomainError.invalid('host.cores', 'body', 'the host must report its cores and memory');
    }
    if (!request.joinToken || request.joinToken.length > 4096) {
      throw new DomainError('UNAUTHENTICATED', 'a join token is required to register');
    }
    const data = hostColumns(info);
    const { host, joined } = await this.prisma.$transaction(async (tx) => {
      const byName = await tx.host.findUnique({ where: { name: info.hostname } });
      const byId =
        !byName && UUID.test(request.hostId)
          ? await tx.host.findUnique({ where: { id: request.hostId } })
          : null;
      const existing = byName ?? byId;
      if (!existing) {
        const created = await tx.host.create({ data: { ...data, state: 'DOWN' } });
        // Throws UNAUTHENTICATED (and so rolls the new row back) unless the token is unused and valid.
        await redeemJoinToken(tx, request.joinToken, created.id);
        return { host: created, joined: true };
      }
      const own = await tx.joinToken.findUnique({ where: { tokenHash: hashJoinToken(request.joinToken) } });
      if (!own || own.revokedAt !== null || own.hostId !== existing.id) {
        await redeemJoinToken(tx, request.joinToken, existing.id);
      }
      return { host: await tx.host.update({ where: { id: existing.id }, data }), joined: false };
    });
    await this.prisma.event.create({
      data: {
        resourceType: 'host',
        resourceId: host.id,
        kind: joined ? 'host.registered' : 'host.reregistered',
        data: { name: host.name, agentAddress: host.agentAddress, agentVersion: host.agentVersion },
      },
    });
    this.log.log(
      `host ${host.name} (${host.id}) ${joined ? 'registered' : 're-registered'} from ${host.agentAddress}`,
    );
    return {
      hostId: host.id,
      settings: { ...this.settings },
      protocolVersion: PROTOCOL_VERSION,
    };
  }

  /** The host a Session belongs to; NOT_FOUND when it was removed (the agent registers again). */
  async sessionHost(hostId: string): Promise<Host> {
    const host = UUID.test(hostId) ? await this.prisma.host.findUnique({ where: { id: hostId } }) : null;
    if (!host) throw DomainError.notFound('HOST_NOT_FOUND', 'host', hostId || '(none)');
    return host;
  }

  /**
   * A heartbeat: the host is alive (DOWN → UP, with an event row), and each of its VMs takes
   * the observed state the inventory reports. VMs with an operation in progress are left to the
   * conductor, which writes their state when its step finishes; a VM the api places on this host
   * that the inventory lacks is gone from it (ERROR, never silently STOPPED).
   */
  async heartbeat(hostId: string, heartbeat: controlv1.Heartbeat): Promise<HeartbeatOutcome> {
    const cameBack = await this.prisma.host.updateManyAndReturn({
      where: { id: hostId, state: 'DOWN' },
      data: { state: 'UP', lastHeartbeatAt: new Date() },
      select: { id: true, name: true },
    });
    if (cameBack.length > 0) {
      await this.prisma.event.create({
        data: {
          resourceType: 'host',
          resourceId: hostId,
          kind: 'host.state_changed',
          data: { from: 'DOWN', to: 'UP' },
        },
      });
      this.log.log(`host ${cameBack[0]?.name ?? hostId} is UP`);
    } else {
      await this.prisma.host.updateMany({ where: { id: hostId }, data: { lastHeartbeatAt: new Date() } });
    }

    const vms = await this.prisma.vm.findMany({
      where: { hostId, deletedAt: null },
      select: { id: true, observedState: true, updatedAt: true },
    });
    // The inventory was taken when the agent sent the heartbeat: a VM written since (by the
    // conductor, say) is newer than this report and waits for the next one.
    const takenAt = heartbeat.sentAt?.getTime() ?? Date.now();
    if (vms.length === 0) return { hostCameBack: cameBack.length > 0, changed: 0 };
    const busy = new Set(
      (
        await this.prisma.operation.findMany({
          where: { vmId: { in: vms.map((v) => v.id) }, status: { in: ['PENDING', 'RUNNING'] } },
          select: { vmId: true },
        })
      ).flatMap((o) => (o.vmId ? [o.vmId] : [])),
    );
    const reported = new Map(heartbeat.inventory.map((s) => [s.vmId, s]));
    let changed = 0;
    for (const vm of vms) {
      if (busy.has(vm.id) || vm.updatedAt.getTime() > takenAt) continue;
      const status = reported.get(vm.id);
      if (status) {
        const observed = vmStateFromProto(status.state);
        if (!observed || observed === vm.observedState) continue;
        const result = await changeVmState(this.prisma, {
          vmId: vm.id,
          to: observed,
          source: 'heartbeat',
          onlyFrom: [vm.observedState],
          ...(observed === 'ERROR'
            ? { reason: `the agent reports QEMU status ${status.qemuStatus ?? 'unknown'}` }
            : {}),
        });
        if (result.changed) changed += 1;
      } else if (ON_HOST_STATES.has(vm.observedState)) {
        const result = await changeVmState(this.prisma, {
          vmId: vm.id,
          to: 'ERROR',
          source: 'heartbeat',
          onlyFrom: [vm.observedState],
          reason: 'the VM is missing from its host: the agent does not report it any more',
        });
        if (result.changed) changed += 1;
      }
    }
    return { hostCameBack: cameBack.length > 0, changed };
  }

  /**
   * A VM event: a state change updates the observed state at once (unless an operation is in
   * progress); other events (reset, device removed, migration) become event rows. Events of VMs
   * that are not on this host are ignored. A re-sent event finds its change already made, or its
   * row already written, and does nothing.
   */
  async vmEvent(hostId: string, event: controlv1.VmEvent): Promise<void> {
    if (!UUID.test(event.vmId)) return;
    const vm = await this.prisma.vm.findFirst({
      where: { id: event.vmId, hostId, deletedAt: null },
      select: { id: true, projectId: true, updatedAt: true },
    });
    if (!vm) return;
    if (event.type === controlv1.VmEventType.VM_EVENT_TYPE_STATE) {
      const to = vmStateFromProto(event.state);
      // A re-sent event older than the row's last write would move the state backwards.
      if (!to || (event.at !== undefined && event.at.getTime() < vm.updatedAt.getTime())) return;
      const busy = await this.prisma.operation.count({
        where: { vmId: vm.id, status: { in: ['PENDING', 'RUNNING'] } },
      });
      if (busy > 0) return;
      await changeVmState(this.prisma, {
        vmId: vm.id,
        to,
        source: 'agent-event',
        ...(event.reason ? { reason: event.reason } : {}),
      });
      return;
    }
    const kind = EVENT_KINDS[event.type];
    if (!kind) return;
    const at = (event.at ?? new Date()).toISOString();
    const seen = await this.prisma.event.findFirst({
      where: { resourceType: 'vm', resourceId: vm.id, kind, data: { path: ['agentAt'], equals: at } },
      select: { id: true },
    });
    if (seen) return;
    await this.prisma.event.create({
      data: {
        resourceType: 'vm',
        resourceId: vm.id,
        projectId: vm.projectId,
        kind,
        data: {
          agentAt: at,
          hostId,
          ...(event.reason ? { reason: event.reason } : {}),
          ...(event.detail ? { detail: event.detail as Prisma.InputJsonObject } : {}),
        },
      },
    });
  }

  /** A metrics batch: the host's sample and those of the VMs the api places on this host, into Redis. */
  async metricsBatch(hostId: string, batch: controlv1.MetricsBatch): Promise<void> {
    const ids = batch.vms.map((v) => v.vmId).filter((id) => UUID.test(id));
    const known =
      ids.length === 0
        ? []
        : await this.prisma.vm.findMany({
            where: { id: { in: ids }, hostId, deletedAt: null },
            select: { id: true },
          });
    await this.metrics.storeBatch(hostId, batch, new Set(known.map((v) => v.id)));
  }

  /** The agent lost reports to its buffer limit: say so where an operator looks. */
  async droppedReports(hostId: string, dropped: controlv1.DroppedReport): Promise<void> {
    this.log.warn(
      `host ${hostId} dropped ${dropped.eventsDropped} VM events and ${dropped.metricsDropped} metrics batches while disconnected`,
    );
    await this.prisma.event.create({
      data: {
        resourceType: 'host',
        resourceId: hostId,
        kind: 'host.reports_dropped',
        data: { events: dropped.eventsDropped, metrics: dropped.metricsDropped },
      },
    });
  }
}

/** The host columns an agent's HostInfo sets. */
function hostColumns(info: controlv1.HostInfo): Prisma.HostCreateInput {
  return {
    name: info.hostname,
    agentAddress: info.agentAddress,
    cores: info.cores,
    memoryMib: Math.floor(info.memoryBytes / MIB),
    driver: info.driver === controlv1.HypervisorDriver.HYPERVISOR_DRIVER_FAKE ? 'fake' : 'qemu',
    accelerator: ACCELERATORS[info.accelerator] ?? 'tcg',
    qemuVersion: info.qemuVersion.slice(0, 64),
    machineTypes: info.machineTypes,
    cpuModels: info.cpuModels,
    pools: info.pools.map((p) => ({
      name: p.name,
      path: p.path,
      shared: p.shared,
      totalBytes: p.totalBytes,
      freeBytes: p.freeBytes,
    })),
    features: { ...(info.features ?? {}) },
    labels: { ...info.labels },
    agentVersion: info.agentVersion.slice(0, 64),
  };
}
