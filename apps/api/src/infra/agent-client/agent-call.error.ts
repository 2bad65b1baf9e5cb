import { type ServiceError, status } from '@grpc/grpc-js';

/** Trailing metadata key with the agent's stable error code (agent.proto). */
export const AGENT_ERROR_CODE_KEY = 'hangar-error-code';

/** Status codes that say "the call did not complete, try again later", whoever produced them. */
const TRANSIENT_CODES: ReadonlySet<status> = new Set([
  status.UNAVAILABLE,
  status.DEADLINE_EXCEEDED,
  status.RESOURCE_EXHAUSTED,
]);

/**
 * Codes that are transient only when the agent did not produce them itself: grpc-js reports
 * broken connections as INTERNAL/UNKNOWN/CANCELLED without our trailer, while an agent's own
 * INTERNAL (QEMU_FAILED, DISK_ERROR, …) carries it and is recorded under the operation id, so
 * retrying it would only replay the same failure.
 */
const TRANSPORT_CODES: ReadonlySet<status> = new Set([status.INTERNAL, status.UNKNOWN, status.CANCELLED]);

/**
 * A failed HostAgent call: the gRPC status, the agent's stable code (from the
 * `hangar-error-code` trailer, or the status name when the agent did not answer) and whether a
 * retry may succeed. FAILED_PRECONDITION (INVALID_STATE), INVALID_ARGUMENT (INVALID_SPEC),
 * NOT_FOUND and the agent's own INTERNAL errors are permanent.
 */
export class AgentCallError extends Error {
  override readonly name = 'AgentCallError';
  /** The gRPC status code. */
  readonly grpcCode: status;
  /** The agent's stable code (`INVALID_STATE`, `VM_NOT_FOUND`, …) or the gRPC status name. */
  readonly code: string;
  /** True when the agent answered with its own code (the request reached it). */
  readonly fromAgent: boolean;
  /** A retry (with the same operation id) may succeed. */
  readonly transient: boolean;
  /** The agent's message (or the transport's) without our prefix. */
  readonly details: string;

  constructor(
    readonly method: string,
    readonly address: string,
    error: Partial<ServiceError> & { message?: string },
  ) {
    const grpcCode = typeof error.code === 'number' ? (error.code as status) : status.UNKNOWN;
    const trailer = error.metadata?.get(AGENT_ERROR_CODE_KEY)[0];
    const agentCode = trailer === undefined ? undefined : String(trailer);
    const details = error.details || error.message || 'no details';
    super(`${method} on agent ${address} failed: ${status[grpcCode] ?? grpcCode}: ${details}`, {
      cause: error,
    });
    this.grpcCode = grpcCode;
    this.fromAgent = agentCode !== undefined;
    this.code = agentCode ?? status[grpcCode] ?? 'UNKNOWN';
    this.transient = TRANSIENT_CODES.has(grpcCode) || (!this.fromAgent && TRANSPORT_CODES.has(grpcCode));
    this.details = details;
  }
}

/** Whether `error` is an {@link AgentCallError} a retry may fix. */
export function isTransientAgentError(error: unknown): error is AgentCallError {
  return error instanceof AgentCallError && error.transient;
}
