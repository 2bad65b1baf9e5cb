import { Metadata, status } from '@grpc/grpc-js';
import { isVmmError, type VmmErrorCode } from '@hangar/vmm-core';
import { type AgentErrorCode, isAgentError } from '../runtime/agent-error.js';

/** Trailing metadata key carrying the stable error code (agent.proto's header). */
export const ERROR_CODE_METADATA_KEY = 'hangar-error-code';

/**
 * The one table from stable error codes to gRPC statuses, as agent.proto documents it.
 * Typed as a full Record so a new VmmError code does not compile until it is placed here.
 */
export const VMM_ERROR_STATUS: Readonly<Record<VmmErrorCode, status>> = {
  INVALID_SPEC: status.INVALID_ARGUMENT,
  PATH_ESCAPE: status.INVALID_ARGUMENT,
  VM_NOT_FOUND: status.NOT_FOUND,
  VM_EXISTS: status.ALREADY_EXISTS,
  INVALID_STATE: status.FAILED_PRECONDITION,
  MIGRATION_REFUSED: status.FAILED_PRECONDITION,
  MIGRATION_FAILED: status.ABORTED,
  MIGRATION_CANCELLED: status.ABORTED,
  TIMEOUT: status.DEADLINE_EXCEEDED,
  QMP_TIMEOUT: status.DEADLINE_EXCEEDED,
  UNSUPPORTED: status.UNIMPLEMENTED,
  QEMU_FAILED: status.INTERNAL,
  QMP_ERROR: status.INTERNAL,
  QMP_DISCONNECTED: status.INTERNAL,
  QMP_PROTOCOL: status.INTERNAL,
  DISK_ERROR: status.INTERNAL,
  SEED_ERROR: status.INTERNAL,
  COMMAND_FAILED: status.INTERNAL,
  DEVICE_ERROR: status.INTERNAL,
  NETWORK_ERROR: status.INTERNAL,
};

/** The agent's own codes, in the same table. */
export const AGENT_ERROR_STATUS: Readonly<Record<AgentErrorCode, status>> = {
  INVALID_REQUEST: status.INVALID_ARGUMENT,
  OPERATION_CONFLICT: status.ALREADY_EXISTS,
  SNAPSHOT_NOT_FOUND: status.NOT_FOUND,
  POOL_NOT_FOUND: status.NOT_FOUND,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  CANCELLED: status.CANCELLED,
  SHUTTING_DOWN: status.UNAVAILABLE,
  HOST_NETWORK_FAILED: status.INTERNAL,
};

/** A gRPC error status ready for a unary callback or a stream's `error` event. */
export interface GrpcErrorStatus {
  code: status;
  details: string;
  metadata: Metadata;
}

/** Maps any thrown value to a status; unknown errors become INTERNAL with their message. */
export function toGrpcStatus(err: unknown): GrpcErrorStatus {
  let code: status;
  let errorCode: string;
  let message: string;
  if (isVmmError(err)) {
    code = VMM_ERROR_STATUS[err.code] ?? status.INTERNAL;
    errorCode = err.code;
    message = err.message;
  } else if (isAgentError(err)) {
    code = AGENT_ERROR_STATUS[err.code] ?? status.INTERNAL;
    errorCode = err.code;
    message = err.message;
  } else {
    code = status.INTERNAL;
    errorCode = 'INTERNAL';
    message = err instanceof Error ? err.message : String(err);
  }
  const metadata = new Metadata();
  metadata.set(ERROR_CODE_METADATA_KEY, errorCode);
  return { code, details: message, metadata };
}
