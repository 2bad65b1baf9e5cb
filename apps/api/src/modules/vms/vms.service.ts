import { ACTION_ALLOWED_FROM, isActionAllowed, type VmAction, type VmState } from '@hangar/vmm-core';
import { Injectable, Logger } from '@nestjs/common';
import { type Page, type PageRequest, pageAfter, toPage } from '../../common/pagination/pagination.js';
import { DomainError } from '../../errors/domain-error.js';
import type { Operation, Vm, VmDesiredState } from '../../gen/prisma/client.js';
import { AgentCallError } from '../../infra/agent-client/agent-call.error.js';
import { AgentClientPool } from '../../infra/agent-client/agent-client.pool.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { updateVm, VersionConflictError, VmNotFoundError } from '../../infra/prisma/vm-version.js';
import { OperationQueue } from '../../infra/queue/operation-queue.js';
import type { VmOperationKind } from '../operations/operation.types.js';
import { requestResize } from './usecases/resize-vm.js';
import {
  agentFailed,
  flavorNotFound,
  hostUnreachable,
  imageNotFound,
  invalidState,
  operationInProgress,
  projectNotFound,
  quotaExceeded,
  vmNameTaken,
} from './vm.errors.js';

/** A VM as lists show it: every column but the user-data and the deletion time. */
export type VmSummary = Omit<Vm, 'userData' | 'deletedAt'>;

/** The SELECT list of a {@link VmSummary}, columns aliased to the model's field names. */
const VM_SUMMARY_COLUMNS = `id, project_id AS "projectId", name, flavor_id AS "flavorId", image_id AS "imageId",
  host_id AS "hostId", vcpus, memory_mib AS "memoryMib", disk_gib AS "diskGib",
  desired_state AS "desiredState", observed_state AS "observedState", version, labels,
  anti_affinity_group AS "antiAffinityGroup", cpu_model AS "cpuModel", machine_type AS "machineType",
  error_message AS "errorMessage", created_at AS "createdAt", updated_at AS "updatedAt"`;

/** What a client asks for when creating a VM. */
export interface CreateVmInput {
  readonly projectId: string;
  /** Unique among the project's live VMs; becomes the guest's host name. */
  readonly name: string;
  /** A flavor id or name. */
  readonly flavor: string;
  /** An image id or name. */
  readonly image: string;
  readonly labels?: Readonly<Record<string, string>>;
  /** cloud-init user-data (a `#!` script runs at first boot). */
  readonly userData?: string;
  /** No two VMs of the project's group share a host. */
  readonly antiAffinityGroup?: string;
  /** A named QEMU CPU model (default `qemu64`); `host`/`max` are refused (they cannot migrate). */
  readonly cpuModel?: string;
  readonly machineType?: string;
}

/** The power actions of `POST /v1/vms/{id}/{action}`. */
export const VM_POWER_ACTIONS = ['start', 'stop', 'reboot', 'pause', 'resume'] as const;
/** A power action of a VM. */
export type VmPowerAction = (typeof VM_POWER_ACTIONS)[number];

/** Who asks: the caller's project (undefined for an admin, who sees every project). */
export interface VmScope {
  readonly projectId?: string | undefined;
}

/** A VM action answered with 202: the VM as it is now and the operation that will act on it. */
export interface AcceptedVmOperation {
  readonly vm: Vm;
  readonly operation: Operation;
}

/** Filters of the VM list. */
export interface ListVmsQuery extends VmScope {
  readonly status?: VmState;
  readonly hostId?: string;
  readonly name?: string;
}

/** What `PATCH /v1/vms/{id}` may change. */
export interface UpdateVmInput {
  readonly name?: string;
  readonly labels?: Readonly<Record<string, string>>;
}

/** The VM console's tail. */
export interface VmConsole {
  readonly vmId: string;
  readonly hostId: string;
  readonly text: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** A DNS label, like every resource name of the api: it becomes the guest's host name too. */
const VM_NAME = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const LABEL_KEY = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/;
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MACHINE_TYPE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const MAX_LABELS = 64;
const MAX_LABEL_VALUE = 255;
/** Nova's limit on user-data; the guest's NoCloud seed holds it. */
export const MAX_USER_DATA_BYTES = 64 * 1024;

/** The state-table action and the desired state of each power action. */
const POWER_ACTIONS: Readonly<Record<VmPowerAction, { desired: VmDesiredState }>> = {
  start: { desired: 'RUNNING' },
  stop: { desired: 'STOPPED' },
  reboot: { desired: 'RUNNING' },
  pause: { desired: 'PAUSED' },
  resume: { desired: 'RUNNING' },
};

/**
 * The VM use cases, without HTTP: create (quota, VM row and its operation in one transaction),
 * power actions and delete (state-table check, one action per VM at a time), patch, get/list and
 * the console. Actions only record intent and enqueue the operation; the conductor acts.
 */
@Injectable()
export class VmsService {
  private readonly log = new Logger('VmsService');

  constructor(
    private readonly prisma: PrismaService,
    private readonly queue: OperationQueue,
    private readonly agents: AgentClientPool,
  ) {}

  /**
   * Creates a VM: validates the request, flavor, image and the project's quota, then writes the
   * VM (PENDING, desired RUNNING) and its `create` operation in one transaction that holds the
   * project's row lock, so concurrent creates cannot together exceed the quota. Enqueues the
   * operation after the commit (if Redis is down the sweeper enqueues it later).
   */
  async create(input: CreateVmInput): Promise<AcceptedVmOperation> {
    validateName(input.name);
    validateLabels(input.labels);
    if (input.userData !== undefined && Buffer.byteLength(input.userData, 'utf8') > MAX_USER_DATA_BYTES) {
      throw DomainError.invalid(
        'user_data',
        'body',
        `must be at most ${MAX_USER_DATA_BYTES} bytes`,
        'too_big',
      );
    }
    if (
      input.cpuModel !== undefined &&
      (!MODEL_NAME.test(input.cpuModel) || ['host', 'max'].includes(input.cpuModel))
    ) {
      throw DomainError.invalid(
        'cpu_model',
        'body',
        'must be a named CPU model (host and max cannot migrate)',
      );
    }
    if (input.machineType !== undefined && !MACHINE_TYPE.test(input.machineType)) {
      throw DomainError.invalid('machine_type', 'body', 'must be a QEMU machine type such as pc or q35');
    }
    if (input.antiAffinityGroup !== undefined && !VM_NAME.test(input.antiAffinityGroup)) {
      throw DomainError.invalid(
        'anti_affinity_group',
        'body',
        'lowercase letters, digits and "-", at most 63',
      );
    }
    const [flavor, image] = await Promise.all([
      this.prisma.flavor.findFirst({
        where: UUID.test(input.flavor) ? { id: input.flavor } : { name: input.flavor },
      }),
      this.prisma.image.findFirst({
        where: UUID.test(input.image) ? { id: input.image } : { name: input.image },
      }),
    ]);
    if (!flavor) throw flavorNotFound(input.flavor);
    if (!image) throw imageNotFound(input.image);

    let created: AcceptedVmOperation;
    try {
      created = await this.prisma.$transaction(async (tx) => {
        const projects = await tx.$queryRaw<
          { quotaVcpus: number; quotaMemoryMib: number; quotaVms: number }[]
        >`
          SELECT quota_vcpus AS "quotaVcpus", quota_memory_mib AS "quotaMemoryMib", quota_vms AS "quotaVms"
            FROM projects WHERE id = ${input.projectId}::uuid FOR UPDATE`;
        const project = projects[0];
        if (!project) throw projectNotFound(input.projectId);
        const usage = await tx.$queryRaw<{ vms: number; vcpus: number; memoryMib: number }[]>`
          SELECT count(*)::int AS vms, coalesce(sum(vcpus), 0)::int AS vcpus,
                 coalesce(sum(memory_mib), 0)::int AS "memoryMib"
            FROM vms WHERE project_id = ${input.projectId}::uuid AND deleted_at IS NULL`;
        const used = usage[0] ?? { vms: 0, vcpus: 0, memoryMib: 0 };
        if (used.vms + 1 > project.quotaVms) throw quotaExceeded('vms', project.quotaVms, used.vms, 1);
        if (used.vcpus + flavor.vcpus > project.quotaVcpus) {
          throw quotaExceeded('vcpus', project.quotaVcpus, used.vcpus, flavor.vcpus);
        }
        if (used.memoryMib + flavor.memoryMib > project.quotaMemoryMib) {
          throw quotaExceeded('memory_mib', project.quotaMemoryMib, used.memoryMib, flavor.memoryMib);
        }
        const vm = await tx.vm.create({
          data: {
            projectId: input.projectId,
            name: input.name,
            flavorId: flavor.id,
            imageId: image.id,
            vcpus: flavor.vcpus,
            memoryMib: flavor.memoryMib,
            diskGib: flavor.diskGib,
            desiredState: 'RUNNING',
            observedState: 'PENDING',
            labels: { ...input.labels },
            userData: input.userData ?? null,
            antiAffinityGroup: input.antiAffinityGroup ?? null,
            ...(input.cpuModel !== undefined ? { cpuModel: input.cpuModel } : {}),
            ...(input.machineType !== undefined ? { machineType: input.machineType } : {}),
          },
        });
        const operation = await tx.operation.create({
          data: { projectId: input.projectId, kind: 'create', vmId: vm.id, params: {} },
        });
        await tx.event.create({
          data: {
            resourceType: 'vm',
            resourceId: vm.id,
            projectId: input.projectId,
            kind: 'vm.created',
            data: { name: vm.name, flavor: flavor.name, image: image.name, operationId: operation.id },
          },
        });
        return { vm, operation };
      });
    } catch (error) {
      if (isUniqueViolation(error)) throw vmNameTaken(input.name);
      throw error;
    }
    await this.enqueue(created.operation);
    return created;
  }

  /**
   * Requests a power action. Under the VM's row lock: refuses while another operation of the VM
   * is PENDING/RUNNING (OPERATION_IN_PROGRESS), checks the state table (INVALID_STATE naming the
   * current state), inserts the operation only if still no other one is active, and records the
   * new desired state. `force` makes `stop` skip the guest's ACPI shutdown.
   */
  async requestAction(
    vmId: string,
    action: VmPowerAction,
    scope: VmScope & { force?: boolean; expectedVersion?: number },
  ): Promise<AcceptedVmOperation> {
    const stateAction: VmAction = action === 'stop' && scope.force ? 'forceStop' : action;
    const params = action === 'stop' ? { force: scope.force === true } : {};
    return this.startOperation(vmId, action, stateAction, POWER_ACTIONS[action].desired, params, scope);
  }

  /**
   * Requests a resize of a STOPPED VM to another flavor (see {@link requestResize}: quota and the
   * host's room are checked now and claimed by the conductor's `resize` step).
   */
  async resize(vmId: string, flavor: string, scope: VmScope): Promise<AcceptedVmOperation> {
    const accepted = await requestResize(this.prisma, { vmId, flavor, projectId: scope.projectId });
    await this.enqueue(accepted.operation);
    return accepted;
  }

  /**
   * Requests deletion (allowed from the states of the state table's `delete`: STOPPED, ERROR,
   * PENDING, CREATING); honours If-Match through `expectedVersion`.
   */
  async delete(vmId: string, scope: VmScope & { expectedVersion?: number }): Promise<AcceptedVmOperation> {
    return this.startOperation(vmId, 'delete', 'delete', 'DELETED', {}, scope);
  }

  /** Renames and/or relabels a VM (compare-and-set on its version when `expectedVersion` is given). */
  async update(
    vmId: string,
    input: UpdateVmInput,
    scope: VmScope & { expectedVersion?: number },
  ): Promise<Vm> {
    if (input.name !== undefined) validateName(input.name);
    if (input.labels !== undefined) validateLabels(input.labels);
    await this.get(vmId, scope);
    try {
      return await this.prisma.$transaction(async (tx) => {
        const vm = await updateVm(tx, vmId, scope.expectedVersion, {
          ...(input.name !== undefined ? { name: input.name } : {}),
          ...(input.labels !== undefined ? { labels: { ...input.labels } } : {}),
        });
        await tx.event.create({
          data: {
            resourceType: 'vm',
            resourceId: vm.id,
            projectId: vm.projectId,
            kind: 'vm.updated',
            data: {
              ...(input.name !== undefined ? { name: input.name } : {}),
              labels: input.labels !== undefined,
            },
          },
        });
        return vm;
      });
    } catch (error) {
      if (isUniqueViolation(error) && input.name !== undefined) throw vmNameTaken(input.name);
      throw error;
    }
  }

  /** A live VM; another project's VM, a deleted VM and a malformed id are all VM_NOT_FOUND. */
  async get(vmId: string, scope: VmScope = {}): Promise<Vm> {
    if (!UUID.test(vmId)) throw new VmNotFoundError(vmId);
    const vm = await this.prisma.vm.findUnique({ where: { id: vmId } });
    if (!vm || vm.deletedAt !== null || (scope.projectId !== undefined && vm.projectId !== scope.projectId)) {
      throw new VmNotFoundError(vmId);
    }
    return vm;
  }

  /** Live VMs in creation order, keyset-paged. */
  /**
   * A page of live VMs in the stable order (created_at, id). Read with one SQL statement on the
   * pg pool rather than `vm.findMany`: Prisma's per-value result mapping cost 2.1 ms of CPU per
   * page of 100 against 0.8 ms for the same query through node-postgres, and made the list reach
   * only 0.36 of a bare Fastify + pg handler's throughput (BENCHMARKS.md "API"). The columns are
   * the ones a VM's representation shows (no user-data, up to 64 KiB a row).
   */
  async list(query: ListVmsQuery, page: PageRequest): Promise<Page<VmSummary>> {
    const scope = {
      list: 'vms',
      projectId: query.projectId,
      status: query.status,
      hostId: query.hostId,
      name: query.name,
    };
    const after = pageAfter(page, scope);
    const params: unknown[] = [];
    const param = (value: unknown, cast: string): string => {
      params.push(value);
      return `$${params.length}::${cast}`;
    };
    const where = ['deleted_at IS NULL'];
    if (query.projectId !== undefined) where.push(`project_id = ${param(query.projectId, 'uuid')}`);
    if (query.status !== undefined) where.push(`observed_state = ${param(query.status, 'vm_state')}`);
    if (query.hostId !== undefined) where.push(`host_id = ${param(query.hostId, 'uuid')}`);
    if (query.name !== undefined) where.push(`name = ${param(query.name, 'text')}`);
    if (after !== undefined) {
      where.push(`(created_at, id) > (${param(after.at, 'timestamptz')}, ${param(after.id, 'uuid')})`);
    }
    const sql = `SELECT ${VM_SUMMARY_COLUMNS} FROM vms WHERE ${where.join(' AND ')}
      ORDER BY created_at, id LIMIT ${param(page.page_size + 1, 'int')}`;
    const { rows } = await this.prisma.pool.query<VmSummary>(sql, params);
    return toPage(
      rows,
      page,
      scope,
      (vm) => ({ at: vm.createdAt, id: vm.id }),
      (vm) => vm,
    );
  }

  /** The tail of the VM's serial console, read from its host's agent. */
  async consoleLog(vmId: string, scope: VmScope & { tailBytes?: number }): Promise<VmConsole> {
    const vm = await this.get(vmId, scope);
    if (!vm.hostId) {
      throw invalidState(vm.id, 'read the console of', vm.observedState, [
        'RUNNING',
        'PAUSED',
        'STOPPED',
        'ERROR',
      ]);
    }
    const host = await this.prisma.host.findUnique({
      where: { id: vm.hostId },
      select: { id: true, name: true, state: true, agentAddress: true },
    });
    if (!host)
      throw invalidState(vm.id, 'read the console of', vm.observedState, ['RUNNING', 'PAUSED', 'STOPPED']);
    if (host.state === 'DOWN')
      throw hostUnreachable(host.id, `host ${host.name} is DOWN: its agent stopped reporting`);
    try {
      const response = await this.agents.consoleLog(host.agentAddress, {
        vmId: vm.id,
        ...(scope.tailBytes !== undefined ? { tailBytes: scope.tailBytes } : {}),
      });
      return { vmId: vm.id, hostId: host.id, text: response.text };
    } catch (error) {
      if (error instanceof AgentCallError) {
        if (error.transient)
          throw hostUnreachable(host.id, `the agent of host ${host.name} does not answer: ${error.details}`);
        throw agentFailed(
          `the agent of host ${host.name} cannot read the console: ${error.details}`,
          error.code,
        );
      }
      throw error;
    }
  }

  private async startOperation(
    vmId: string,
    kind: VmOperationKind,
    stateAction: VmAction,
    desired: VmDesiredState,
    params: Record<string, unknown>,
    scope: VmScope & { expectedVersion?: number },
  ): Promise<AcceptedVmOperation> {
    if (!UUID.test(vmId)) throw new VmNotFoundError(vmId);
    let accepted: AcceptedVmOperation;
    try {
      accepted = await this.prisma.$transaction(async (tx) => {
        // The row lock serialises every action request on this VM (and its quota-free checks).
        const rows = await tx.$queryRaw<
          { projectId: string; hostId: string | null; state: VmState; version: number }[]
        >`
          SELECT project_id::text AS "projectId", host_id::text AS "hostId", observed_state::text AS state, version
            FROM vms WHERE id = ${vmId}::uuid AND deleted_at IS NULL FOR UPDATE`;
        const row = rows[0];
        if (!row || (scope.projectId !== undefined && row.projectId !== scope.projectId)) {
          throw new VmNotFoundError(vmId);
        }
        // Preconditions come before the action's own checks (RFC 9110 §13.2.2).
        if (scope.expectedVersion !== undefined && row.version !== scope.expectedVersion) {
          throw new VersionConflictError(vmId, scope.expectedVersion, row.version);
        }
        const active = await tx.operation.findFirst({
          where: { vmId, status: { in: ['PENDING', 'RUNNING'] } },
          select: { id: true, kind: true },
        });
        if (active) throw operationInProgress(vmId, active);
        if (!isActionAllowed(stateAction, row.state)) {
          throw invalidState(vmId, stateAction, row.state, ACTION_ALLOWED_FROM[stateAction]);
        }
        // Conditional insert: the operation exists only if no other active one does, whatever
        // path inserted that one (the lock above makes this a guarantee, not a race).
        const inserted = await tx.$queryRaw<{ id: string }[]>`
          INSERT INTO operations (project_id, kind, vm_id, host_id, params)
          SELECT ${row.projectId}::uuid, ${kind}, ${vmId}::uuid, ${row.hostId}::uuid, ${JSON.stringify(params)}::jsonb
           WHERE NOT EXISTS (
             SELECT 1 FROM operations WHERE vm_id = ${vmId}::uuid AND status IN ('PENDING', 'RUNNING'))
          RETURNING id::text AS id`;
        const operationId = inserted[0]?.id;
        if (!operationId) throw operationInProgress(vmId);
        const vm = await updateVm(tx, vmId, scope.expectedVersion, { desiredState: desired });
        await tx.event.create({
          data: {
            resourceType: 'vm',
            resourceId: vmId,
            projectId: row.projectId,
            kind: 'vm.action_requested',
            data: { action: kind, ...params, operationId, state: row.state },
          },
        });
        const operation = await tx.operation.findUniqueOrThrow({ where: { id: operationId } });
        return { vm, operation };
      });
    } catch (error) {
      // A partial unique index on operations (vm_id) of active operations would say the same.
      if (isUniqueViolation(error)) throw operationInProgress(vmId);
      throw error;
    }
    await this.enqueue(accepted.operation);
    return accepted;
  }

  private async enqueue(operation: Operation): Promise<void> {
    try {
      await this.queue.enqueue(operation);
    } catch (error) {
      // The operation is committed: the sweeper enqueues it once Redis answers again.
      this.log.warn(
        `could not enqueue operation ${operation.id} (${operation.kind}); the sweeper will: ${(error as Error).message}`,
      );
    }
  }
}

function validateName(name: string): void {
  if (!VM_NAME.test(name)) {
    throw DomainError.invalid(
      'name',
      'body',
      'must be 1..63 lowercase letters, digits and "-", not at either end',
    );
  }
}

function validateLabels(labels: Readonly<Record<string, string>> | undefined): void {
  if (labels === undefined) return;
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS) {
    throw DomainError.invalid('labels', 'body', `at most ${MAX_LABELS} labels`, 'too_big');
  }
  for (const [key, value] of entries) {
    if (!LABEL_KEY.test(key)) {
      throw DomainError.invalid(
        `labels.${key}`,
        'body',
        'label keys are letters, digits, ".", "_", "-" and "/", at most 63',
      );
    }
    if (typeof value !== 'string' || value.length > MAX_LABEL_VALUE) {
      throw DomainError.invalid(
        `labels.${key}`,
        'body',
        `label values are strings of at most ${MAX_LABEL_VALUE} characters`,
      );
    }
  }
}

/** A unique constraint refused the write (Prisma P2002, or SQLSTATE 23505 from a raw query). */
export function isUniqueViolation(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const e = error as Error & {
    code?: unknown;
    meta?: { code?: unknown; driverAdapterError?: { cause?: { originalCode?: unknown } } };
  };
  return (
    e.code === 'P2002' ||
    e.meta?.code === '23505' ||
    e.meta?.driverAdapterError?.cause?.originalCode === '23505' ||
    /\b23505\b|unique constraint/i.test(e.message)
  );
}
