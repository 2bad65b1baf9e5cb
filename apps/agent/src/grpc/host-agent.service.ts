import type {
  Server,
  ServerUnaryCall,
  ServerWritableStream,
  ServiceDefinition,
  UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { agentv1 } from '@hangar/proto';
import type { Logger } from '../log.js';
import { AgentError } from '../runtime/agent-error.js';
import type { CallContext, VmRuntime } from '../runtime/vm-runtime.js';
import {
  diskFromProto,
  migrateOptionsFromProto,
  migrationResultToProto,
  nicFromProto,
  orphanToProto,
  poolPathArg,
  progressToProto,
  snapshotToProto,
  timeoutArg,
  vmSpecFromProto,
  vmToProto,
} from './mappers.js';
import { toGrpcStatus } from './status-map.js';

/** The largest console tail one ConsoleLog returns (gRPC clients accept 4 MiB messages by default). */
export const MAX_CONSOLE_TAIL_BYTES = 1024 * 1024;

const MALFORMED = Symbol('malformed-request');

interface MalformedRequest {
  [MALFORMED]: string;
}

function malformedReason(request: unknown): string | undefined {
  return typeof request === 'object' && request !== null && MALFORMED in request
    ? (request as MalformedRequest)[MALFORMED]
    : undefined;
}

/**
 * The generated service definition with lenient request decoding: a request that does not decode
 * (a negative number in a uint64, a truncated message) reaches the handler as a marker and is
 * answered INVALID_ARGUMENT with the decoder's reason, instead of grpc-js's bare INTERNAL.
 */
function lenientDefinition(definition: ServiceDefinition): ServiceDefinition {
  const out: Record<string, ServiceDefinition[string]> = {};
  for (const [name, method] of Object.entries(definition)) {
    out[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return method.requestDeserialize(bytes);
        } catch (err) {
          return { [MALFORMED]: err instanceof Error ? err.message : String(err) } satisfies MalformedRequest;
        }
      },
    };
  }
  return out;
}

type AnyCall = ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>;

/** Deadline and cancellation of one call, in the runtime's terms. */
function callContext(call: AnyCall, operationId: string): CallContext {
  const raw = call.getDeadline();
  const deadline = raw instanceof Date ? raw.getTime() : raw;
  const controller = new AbortController();
  if (call.cancelled) controller.abort();
  else call.once('cancelled', () => controller.abort());
  return {
    operationId,
    ...(Number.isFinite(deadline) ? { deadline } : {}),
    signal: controller.signal,
  };
}

/**
 * `hangar.agent.v1.HostAgent` over a {@link VmRuntime}: each RPC maps its request to vmm-core
 * types, calls the runtime and maps the answer back; every failure goes through the one status
 * table (status-map.ts) with the stable code in the `hangar-error-code` trailer.
 */
export class HostAgentService {
  private readonly log: Logger;

  constructor(
    private readonly runtime: VmRuntime,
    logger: Logger,
  ) {
    this.log = logger.child({ component: 'grpc' });
  }

  /** Registers the service on `server`. */
  addTo(server: Server): void {
    server.addService(
      lenientDefinition(agentv1.HostAgentService as unknown as ServiceDefinition),
      this.implementation() as unknown as UntypedServiceImplementation,
    );
  }

  /** The handlers, one per RPC of agent.proto. */
  implementation(): agentv1.HostAgentServer {
    const rt = this.runtime;
    return {
      createVm: this.unary('CreateVm', async (req: agentv1.CreateVmRequest, call) => ({
        vm: vmToProto(await rt.createVm(vmSpecFromProto(req.spec), callContext(call, req.operationId))),
      })),
      startVm: this.unary('StartVm', async (req: agentv1.StartVmRequest, call) => ({
        vm: vmToProto(await rt.startVm(req.vmId, callContext(call, req.operationId))),
      })),
      stopVm: this.unary('StopVm', async (req: agentv1.StopVmRequest, call) => {
        const timeoutMs = timeoutArg(req.timeoutMs, 'timeout_ms');
        const options = { force: req.force, ...(timeoutMs !== undefined ? { timeoutMs } : {}) };
        return { vm: vmToProto(await rt.stopVm(req.vmId, options, callContext(call, req.operationId))) };
      }),
      rebootVm: this.unary('RebootVm', async (req: agentv1.RebootVmRequest, call) => ({
        vm: vmToProto(await rt.rebootVm(req.vmId, callContext(call, req.operationId))),
      })),
      pauseVm: this.unary('PauseVm', async (req: agentv1.PauseVmRequest, call) => ({
        vm: vmToProto(await rt.pauseVm(req.vmId, callContext(call, req.operationId))),
      })),
      resumeVm: this.unary('ResumeVm', async (req: agentv1.ResumeVmRequest, call) => ({
        vm: vmToProto(await rt.resumeVm(req.vmId, callContext(call, req.operationId))),
      })),
      deleteVm: this.unary('DeleteVm', async (req: agentv1.DeleteVmRequest, call) => {
        await rt.deleteVm(req.vmId, callContext(call, req.operationId));
        return {};
      }),
      getVm: this.unary('GetVm', async (req: agentv1.GetVmRequest) => ({
        vm: vmToProto(await rt.getVm(req.vmId)),
      })),
      listVms: this.unary('ListVms', async () => {
        const { vms, orphans } = await rt.listVms();
        return { vms: vms.map(vmToProto), orphans: orphans.map(orphanToProto) };
      }),

      prepareIncoming: this.unary('PrepareIncoming', async (req: agentv1.PrepareIncomingRequest, call) => {
        if (!/^[A-Za-z0-9.:-]{1,253}$/.test(req.listenHost)) {
          throw new AgentError(
            'INVALID_REQUEST',
            `listen_host ${JSON.stringify(req.listenHost)} is not a host name or IP address`,
          );
        }
        if (req.port > 65_535) throw new AgentError('INVALID_REQUEST', `port ${req.port} is not a TCP port`);
        const { uri, vm } = await rt.prepareIncoming(
          vmSpecFromProto(req.spec),
          { listenHost: req.listenHost, ...(req.port ? { port: req.port } : {}) },
          callContext(call, req.operationId),
        );
        return { uri, vm: vmToProto(vm) };
      }),
      migrate: (call: ServerWritableStream<agentv1.MigrateRequest, agentv1.MigrateResponse>) => {
        this.migrate(call);
      },
      abortMigration: this.unary('AbortMigration', async (req: agentv1.AbortMigrationRequest, call) => {
        await rt.abortMigration(req.vmId, callContext(call, req.operationId));
        return {};
      }),
      finishIncoming: this.unary('FinishIncoming', async (req: agentv1.FinishIncomingRequest, call) => {
        const timeoutMs = timeoutArg(req.timeoutMs, 'timeout_ms');
        return {
          vm: vmToProto(
            await rt.finishIncoming(
              req.vmId,
              timeoutMs !== undefined ? { timeoutMs } : {},
              callContext(call, req.operationId),
            ),
          ),
        };
      }),
      completeOutgoing: this.unary('CompleteOutgoing', async (req: agentv1.CompleteOutgoingRequest, call) => {
        await rt.completeOutgoing(req.vmId, callContext(call, req.operationId));
        return {};
      }),
      abortIncoming: this.unary('AbortIncoming', async (req: agentv1.AbortIncomingRequest, call) => {
        await rt.abortIncoming(req.vmId, callContext(call, req.operationId));
        return {};
      }),

      consoleLog: this.unary('ConsoleLog', async (req: agentv1.ConsoleLogRequest) => {
        const tail = timeoutArg(req.tailBytes, 'tail_bytes');
        const tailBytes = Math.min(tail ?? 64 * 1024, MAX_CONSOLE_TAIL_BYTES);
        return { text: await rt.consoleLog(req.vmId, { tailBytes }) };
      }),

      createSnapshot: this.unary('CreateSnapshot', async (req: agentv1.CreateSnapshotRequest, call) => ({
        snapshots: (await rt.createSnapshot(req.vmId, req.name, callContext(call, req.operationId))).map(
          snapshotToProto,
        ),
      })),
      listSnapshots: this.unary('ListSnapshots', async (req: agentv1.ListSnapshotsRequest) => ({
        snapshots: (await rt.listSnapshots(req.vmId)).map(snapshotToProto),
      })),
      revertSnapshot: this.unary('RevertSnapshot', async (req: agentv1.RevertSnapshotRequest, call) => ({
        vm: vmToProto(await rt.revertSnapshot(req.vmId, req.name, callContext(call, req.operationId))),
      })),
      deleteSnapshot: this.unary('DeleteSnapshot', async (req: agentv1.DeleteSnapshotRequest, call) => {
        await rt.deleteSnapshot(req.vmId, req.name, callContext(call, req.operationId));
        return {};
      }),

      attachDisk: this.unary('AttachDisk', async (req: agentv1.AttachDiskRequest, call) => ({
        vm: vmToProto(
          await rt.attachDisk(req.vmId, diskFromProto(req.disk, 'disk'), callContext(call, req.operationId)),
        ),
      })),
      detachDisk: this.unary('DetachDisk', async (req: agentv1.DetachDiskRequest, call) => {
        if (req.diskName === '') throw new AgentError('INVALID_REQUEST', 'disk_name is required');
        const timeoutMs = timeoutArg(req.timeoutMs, 'timeout_ms');
        return {
          vm: vmToProto(
            await rt.detachDisk(
              req.vmId,
              req.diskName,
              timeoutMs !== undefined ? { timeoutMs } : {},
              callContext(call, req.operationId),
            ),
          ),
        };
      }),
      attachNic: this.unary('AttachNic', async (req: agentv1.AttachNicRequest, call) => ({
        vm: vmToProto(
          await rt.attachNic(req.vmId, nicFromProto(req.nic, 'nic'), callContext(call, req.operationId)),
        ),
      })),
      detachNic: this.unary('DetachNic', async (req: agentv1.DetachNicRequest, call) => {
        if (req.nicName === '') throw new AgentError('INVALID_REQUEST', 'nic_name is required');
        const timeoutMs = timeoutArg(req.timeoutMs, 'timeout_ms');
        return {
          vm: vmToProto(
            await rt.detachNic(
              req.vmId,
              req.nicName,
              timeoutMs !== undefined ? { timeoutMs } : {},
              callContext(call, req.operationId),
            ),
          ),
        };
      }),

      saveVm: this.unary('SaveVm', async (req: agentv1.SaveVmRequest, call) => {
        const saved = await rt.saveVm(
          req.vmId,
          poolPathArg(req.file, 'file'),
          callContext(call, req.operationId),
        );
        return { file: saved.file, bytes: saved.bytes, totalMs: saved.totalMs, vm: vmToProto(saved.vm) };
      }),
      restoreVm: this.unary('RestoreVm', async (req: agentv1.RestoreVmRequest, call) => ({
        vm: vmToProto(
          await rt.restoreVm(req.vmId, poolPathArg(req.file, 'file'), callContext(call, req.operationId)),
        ),
      })),

      writeStorageToken: this.unary(
        'WriteStorageToken',
        async (req: agentv1.WriteStorageTokenRequest, call) =>
          rt.writeStorageToken(req.pool, callContext(call, req.operationId)),
      ),
      checkStorageToken: this.unary('CheckStorageToken', async (req: agentv1.CheckStorageTokenRequest) =>
        rt.checkStorageToken(req.pool, req.path, req.token),
      ),
    };
  }

  private unary<Req, Res>(
    rpc: string,
    handler: (request: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res>,
  ): (
    call: ServerUnaryCall<Req, Res>,
    callback: (err: ReturnType<typeof toGrpcStatus> | null, value?: Res) => void,
  ) => void {
    return (call, callback) => {
      const started = Date.now();
      void (async () => {
        const malformed = malformedReason(call.request);
        if (malformed !== undefined)
          throw new AgentError('INVALID_REQUEST', `malformed request: ${malformed}`);
        return handler(call.request, call);
      })().then(
        (response) => {
          this.log.debug({ rpc, ms: Date.now() - started }, 'rpc ok');
          callback(null, response);
        },
        (err: unknown) => {
          const st = toGrpcStatus(err);
          this.logFailure(rpc, st, err, started);
          callback(st);
        },
      );
    };
  }

  private migrate(call: ServerWritableStream<agentv1.MigrateRequest, agentv1.MigrateResponse>): void {
    const started = Date.now();
    const req = call.request;
    const send = (message: agentv1.MigrateResponse) => {
      // A caller that went away may re-attach with a retry; its dead stream just stops receiving.
      if (!call.cancelled && call.writable) call.write(message);
    };
    void (async () => {
      const malformed = malformedReason(req);
      if (malformed !== undefined) throw new AgentError('INVALID_REQUEST', `malformed request: ${malformed}`);
      const result = await this.runtime.migrate(
        req.vmId,
        req.uri,
        migrateOptionsFromProto(req.options),
        callContext(call, req.operationId),
        (p) => send({ update: { $case: 'progress', value: progressToProto(p) } }),
      );
      send({ update: { $case: 'result', value: migrationResultToProto(result) } });
      if (!call.cancelled) call.end();
      this.log.info({ rpc: 'Migrate', vmId: req.vmId, ms: Date.now() - started }, 'migration completed');
    })().catch((err: unknown) => {
      const st = toGrpcStatus(err);
      this.logFailure('Migrate', st, err, started);
      if (!call.cancelled) call.emit('error', st);
    });
  }

  private logFailure(rpc: string, st: ReturnType<typeof toGrpcStatus>, err: unknown, started: number): void {
    const fields = {
      rpc,
      grpcStatus: status[st.code],
      errorCode: st.metadata.get('hangar-error-code')[0],
      ms: Date.now() - started,
    };
    if (st.code === status.INTERNAL) this.log.error({ ...fields, err }, st.details);
    else this.log.info(fields, st.details);
  }
}
