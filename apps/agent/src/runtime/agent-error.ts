/**
 * Failures the agent itself decides (as opposed to vmm-core's VmmError): malformed requests,
 * operation-id reuse, missing pools/snapshots/tokens, calls that ran out of time before they
 * started. The gRPC layer maps both kinds through one table (grpc/status-map.ts).
 */
export type AgentErrorCode =
  /** A request field is missing or malformed. */
  | 'INVALID_REQUEST'
  /** An operation id was reused with a different request. */
  | 'OPERATION_CONFLICT'
  | 'SNAPSHOT_NOT_FOUND'
  | 'POOL_NOT_FOUND'
  /** The call's deadline passed before the agent could start it. */
  | 'DEADLINE_EXCEEDED'
  /** The caller went away before the agent could start the call. */
  | 'CANCELLED'
  /** The agent is stopping and takes no new work. */
  | 'SHUTTING_DOWN'
  /** Host networking (bridge or tap) could not be set up. */
  | 'HOST_NETWORK_FAILED';

/** An error with a stable code, raised by the agent outside vmm-core. */
export class AgentError extends Error {
  readonly code: AgentErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: AgentErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AgentError';
    this.code = code;
    this.details = options?.details;
  }
}

/** True when `err` is an AgentError (optionally with the given code). */
export function isAgentError(err: unknown, code?: AgentErrorCode): err is AgentError {
  return err instanceof AgentError && (code === undefined || err.code === code);
}
