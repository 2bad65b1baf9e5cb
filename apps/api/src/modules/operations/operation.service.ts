import { Injectable, type OnApplicationShutdown } from '@nestjs/common';
import type { Redis } from 'ioredis';
import { type Page, type PageRequest, pageClauses, toPage } from '../../common/pagination/pagination.js';
import type { Operation, Prisma } from '../../gen/prisma/client.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { RedisService } from '../../infra/redis/redis.service.js';
import { changeVmState } from '../vms/vm-state.writer.js';
import { operationNotCancellable, operationNotFound } from './operation.errors.js';
import { isTerminal, type ListOperationsQuery } from './operation.types.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** How often a waiter re-reads the row even without a notification (a lost pub/sub message). */
const WAIT_POLL_MS = 1_000;

/**
 * Operations: reads for the api (get, list, long-poll wait, cancel) and the status transitions
 * the conductor makes (PENDING → RUNNING → SUCCEEDED/FAILED, with progress). Every terminal
 * transition is published on Redis so waiters in any api replica wake at once; they also re-read
 * the row every second, so a lost message only costs latency.
 */
@Injectable()
export class OperationService implements OnApplicationShutdown {
  private subscriber: Redis | undefined;
  private subscribed: Promise<void> | undefined;
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(
    private readonly prisma: PrismaService,
    private readonly redis: RedisService,
  ) {}

  /** The Redis channel terminal transitions are announced on. */
  get finishedChannel(): string {
    return this.redis.key('operations', 'finished');
  }

  // --- reads -------------------------------------------------------------------------------

  /** An operation; another project's operation is not found (no existence leak). */
  async get(operationId: string, projectId?: string): Promise<Operation> {
    if (!UUID.test(operationId)) throw operationNotFound(operationId);
    const operation = await this.prisma.operation.findUnique({ where: { id: operationId } });
    if (!operation || (projectId !== undefined && operation.projectId !== projectId)) {
      throw operationNotFound(operationId);
    }
    return operation;
  }

  /** In creation order, keyset-paged. */
  async list(query: ListOperationsQuery, page: PageRequest): Promise<Page<Operation>> {
    const scope = { list: 'operations', ...query };
    const clauses = pageClauses('createdAt', page, scope);
    const filters: Prisma.OperationWhereInput = {
      ...(query.projectId !== undefined ? { projectId: query.projectId } : {}),
      ...(query.vmId !== undefined ? { vmId: query.vmId } : {}),
      ...(query.status !== undefined ? { status: query.status } : {}),
      ...(query.kind !== undefined ? { kind: query.kind } : {}),
    };
    const rows = await this.prisma.operation.findMany({
      where: { AND: [filters, clauses.where] },
      orderBy: clauses.orderBy,
      take: clauses.take,
    });
    return toPage(
      rows,
      page,
      scope,
      (o) => ({ at: o.createdAt, id: o.id }),
      (o) => o,
    );
  }

  /**
   * Long-poll: resolves with the operation once it is finished, or as it is when `timeoutMs`
   * runs out (the caller tells the two apart by its status).
   */
  async wait(operationId: string, timeoutMs: number, projectId?: string): Promise<Operation> {
    const deadline = Date.now() + Math.max(0, timeoutMs);
    let operation = await this.get(operationId, projectId);
    if (isTerminal(operation) || timeoutMs <= 0) return operation;
    await this.ensureSubscribed().catch(() => undefined);
    while (!isTerminal(operation)) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      await this.nextSignal(operationId, Math.min(left, WAIT_POLL_MS));
      operation = await this.get(operationId, projectId);
    }
    return operation;
  }

  /** Cancels an operation that has not started yet (a running VM action cannot be undone). */
  async cancel(operationId: string, projectId?: string): Promise<Operation> {
    const operation = await this.get(operationId, projectId);
    const cancelled = await this.prisma.operation.updateManyAndReturn({
      where: { id: operationId, status: 'PENDING' },
      data: {
        status: 'CANCELLED',
        cancelRequestedAt: new Date(),
        finishedAt: new Date(),
        errorCode: 'CANCELLED',
        errorMessage: 'cancelled before it started',
      },
    });
    const row = cancelled[0];
    if (!row) {
      const current = await this.get(operationId, projectId);
      if (current.status === 'CANCELLED') return current;
      throw operationNotCancellable(operationId, current.status);
    }
    await this.recordEvent(row, 'operation.cancelled', {});
    if (operation.vmId) await this.restoreDesiredStateAfterCancel(row);
    await this.announce(operationId);
    return row;
  }

  // --- transitions (conductor) ---------------------------------------------------------------

  /**
   * Marks a run of the operation as started: PENDING → RUNNING (first run) or RUNNING again
   * (a retry, or a new worker after a crash), counting the attempt. Null when the operation is
   * already finished or cancelled: the job has nothing to do.
   */
  async beginAttempt(operationId: string): Promise<Operation | null> {
    const rows = await this.prisma.$queryRaw<{ id: string }[]>`
      UPDATE operations
         SET status = 'RUNNING', attempts = attempts + 1, started_at = coalesce(started_at, now()),
             updated_at = now()
       WHERE id = ${operationId}::uuid AND status IN ('PENDING', 'RUNNING')
      RETURNING id::text AS id`;
    if (rows.length === 0) return null;
    return this.prisma.operation.findUnique({ where: { id: operationId } });
  }

  /** Records progress (0..100) and the phase the operation is in. */
  async progress(
    operationId: string,
    percent: number,
    phase: string,
    detail: Record<string, unknown> = {},
  ): Promise<void> {
    await this.prisma.operation.updateMany({
      where: { id: operationId, status: 'RUNNING' },
      data: {
        percent: Math.max(0, Math.min(100, Math.round(percent))),
        progress: { phase, ...detail } as Prisma.InputJsonObject,
      },
    });
  }

  /** Notes a transient failure that will be retried (the operation stays RUNNING). */
  async noteRetry(
    operationId: string,
    attempt: number,
    code: string,
    message: string,
    retryInMs: number,
  ): Promise<void> {
    const operation = await this.prisma.operation.findUnique({
      where: { id: operationId },
      select: { progress: true },
    });
    const progress = (operation?.progress ?? {}) as Prisma.JsonObject;
    await this.prisma.operation.updateMany({
      where: { id: operationId, status: 'RUNNING' },
      data: {
        progress: { ...progress, lastError: { attempt, code, message, retryInMs } } as Prisma.InputJsonObject,
      },
    });
  }

  /** RUNNING → SUCCEEDED with a result. */
  async succeed(operationId: string, result: Record<string, unknown> = {}): Promise<Operation | null> {
    const rows = await this.prisma.operation.updateManyAndReturn({
      where: { id: operationId, status: { in: ['PENDING', 'RUNNING'] } },
      data: {
        status: 'SUCCEEDED',
        percent: 100,
        result: result as Prisma.InputJsonObject,
        errorCode: null,
        errorMessage: null,
        finishedAt: new Date(),
      },
    });
    const row = rows[0] ?? null;
    if (row) {
      await this.recordEvent(row, 'operation.succeeded', {});
      await this.announce(operationId);
    }
    return row;
  }

  /** → FAILED with a stable code and a message saying why. */
  async fail(
    operationId: string,
    code: string,
    message: string,
    result?: Record<string, unknown>,
  ): Promise<Operation | null> {
    const rows = await this.prisma.operation.updateManyAndReturn({
      where: { id: operationId, status: { in: ['PENDING', 'RUNNING'] } },
      data: {
        status: 'FAILED',
        errorCode: code.slice(0, 64),
        errorMessage: message,
        finishedAt: new Date(),
        ...(result === undefined ? {} : { result: result as Prisma.InputJsonObject }),
      },
    });
    const row = rows[0] ?? null;
    if (row) {
      await this.recordEvent(row, 'operation.failed', { code, message });
      await this.announce(operationId);
    }
    return row;
  }

  async onApplicationShutdown(): Promise<void> {
    for (const set of this.waiters.values()) for (const wake of set) wake();
    this.waiters.clear();
    const subscriber = this.subscriber;
    this.subscriber = undefined;
    this.subscribed = undefined;
    await subscriber?.quit().catch(() => subscriber.disconnect());
  }

  // --- internals -----------------------------------------------------------------------------

  /** Publishes that the operation finished; a Redis outage only delays waiters to their poll. */
  private async announce(operationId: string): Promise<void> {
    await this.redis.client.publish(this.finishedChannel, operationId).catch(() => undefined);
  }

  private async recordEvent(
    operation: Operation,
    kind: string,
    data: Record<string, unknown>,
  ): Promise<void> {
    await this.prisma.event.create({
      data: {
        resourceType: 'operation',
        resourceId: operation.id,
        projectId: operation.projectId,
        kind,
        data: { kind: operation.kind, vmId: operation.vmId, ...data } as Prisma.InputJsonObject,
      },
    });
  }

  /**
   * A cancelled action never ran: the VM's desired state goes back to what it observably is. A
   * cancelled create leaves a VM that will never be built: it goes to ERROR, where it can be
   * deleted (and keeps counting against the quota until it is).
   */
  private async restoreDesiredStateAfterCancel(operation: Operation): Promise<void> {
    if (!operation.vmId) return;
    if (operation.kind === 'create') {
      await changeVmState(this.prisma, {
        vmId: operation.vmId,
        to: 'ERROR',
        source: 'api',
        operationId: operation.id,
        reason: 'the create operation was cancelled before it started',
      });
      return;
    }
    const vm = await this.prisma.vm.findUnique({
      where: { id: operation.vmId },
      select: { observedState: true, deletedAt: true },
    });
    if (!vm || vm.deletedAt !== null) return;
    const desired =
      vm.observedState === 'STOPPED' ? 'STOPPED' : vm.observedState === 'PAUSED' ? 'PAUSED' : 'RUNNING';
    await this.prisma.vm.updateMany({
      where: { id: operation.vmId, deletedAt: null },
      data: { desiredState: desired },
    });
  }

  private ensureSubscribed(): Promise<void> {
    this.subscribed ??= (async () => {
      const subscriber = this.redis.duplicate();
      this.subscriber = subscriber;
      subscriber.on('message', (_channel: string, operationId: string) => {
        const set = this.waiters.get(operationId);
        if (!set) return;
        this.waiters.delete(operationId);
        for (const wake of set) wake();
      });
      await subscriber.subscribe(this.finishedChannel);
    })().catch((error: unknown) => {
      this.subscribed = undefined;
      throw error;
    });
    return this.subscribed;
  }

  private nextSignal(operationId: string, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let set = this.waiters.get(operationId);
      if (!set) {
        set = new Set();
        this.waiters.set(operationId, set);
      }
      const wake = () => {
        clearTimeout(timer);
        const current = this.waiters.get(operationId);
        current?.delete(wake);
        if (current?.size === 0) this.waiters.delete(operationId);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      set.add(wake);
    });
  }
}
