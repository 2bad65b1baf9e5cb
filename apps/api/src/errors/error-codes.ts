import { status as GrpcStatus } from '@grpc/grpc-js';

/** One row of {@link ERROR_TABLE}: how a domain error code travels over HTTP and gRPC. */
export interface ErrorCodeInfo {
  /** HTTP status of the problem+json response. */
  readonly http: number;
  /** gRPC status code (AgentGateway, agent client). */
  readonly grpc: GrpcStatus;
  /** The problem's `title`: a short summary that never changes between occurrences. */
  readonly title: string;
}

/**
 * THE table: every stable error code of the control plane, its HTTP status and its gRPC status
 * (Firecracker/Incus: one error type, turned into a status in one place). Codes never change
 * meaning once released; add a row to add a code. See docs/adr/0020.
 */
export const ERROR_TABLE = {
  // 400: the request itself is wrong; resending it unchanged fails again.
  VALIDATION_FAILED: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT, title: 'The request is not valid' },
  MALFORMED_REQUEST: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT, title: 'The request cannot be parsed' },
  // 401 / 403: who you are, and what your key may do.
  UNAUTHENTICATED: { http: 401, grpc: GrpcStatus.UNAUTHENTICATED, title: 'Authentication is required' },
  FORBIDDEN: { http: 403, grpc: GrpcStatus.PERMISSION_DENIED, title: 'The API key may not do this' },
  QUOTA_EXCEEDED: {
    http: 403,
    grpc: GrpcStatus.RESOURCE_EXHAUSTED,
    title: "The project's quota is exceeded",
  },
  // 404: absent, or in another project (never told apart: no existence leak).
  NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'Not found' },
  PROJECT_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'Project not found' },
  API_KEY_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'API key not found' },
  FLAVOR_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'Flavor not found' },
  IMAGE_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'Image not found' },
  HOST_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'Host not found' },
  JOIN_TOKEN_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'Join token not found' },
  VM_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'VM not found' },
  OPERATION_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'Operation not found' },
  MIGRATION_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND, title: 'Migration not found' },
  // 409: valid request, but the current state of something forbids it now.
  ALREADY_EXISTS: { http: 409, grpc: GrpcStatus.ALREADY_EXISTS, title: 'A resource with this name exists' },
  CONFLICT: {
    http: 409,
    grpc: GrpcStatus.FAILED_PRECONDITION,
    title: 'The request conflicts with the current state',
  },
  INVALID_STATE: {
    http: 409,
    grpc: GrpcStatus.FAILED_PRECONDITION,
    title: 'The resource is not in a state that allows this',
  },
  OPERATION_IN_PROGRESS: {
    http: 409,
    grpc: GrpcStatus.ABORTED,
    title: 'Another operation on this resource is running',
  },
  NO_VALID_HOST: { http: 409, grpc: GrpcStatus.RESOURCE_EXHAUSTED, title: 'No host can take this VM' },
  PROJECT_NOT_EMPTY: { http: 409, grpc: GrpcStatus.FAILED_PRECONDITION, title: 'The project still has VMs' },
  HOST_NOT_EMPTY: {
    http: 409,
    grpc: GrpcStatus.FAILED_PRECONDITION,
    title: 'The host still has VMs or allocations',
  },
  FLAVOR_IN_USE: { http: 409, grpc: GrpcStatus.FAILED_PRECONDITION, title: 'VMs refer to this flavor' },
  IMAGE_IN_USE: { http: 409, grpc: GrpcStatus.FAILED_PRECONDITION, title: 'VMs refer to this image' },
  IDEMPOTENCY_IN_FLIGHT: {
    http: 409,
    grpc: GrpcStatus.ABORTED,
    title: 'A request with this Idempotency-Key is still running',
  },
  // 412 / 413 / 415 / 422: HTTP-level preconditions and payloads.
  PRECONDITION_FAILED: {
    http: 412,
    grpc: GrpcStatus.FAILED_PRECONDITION,
    title: 'The resource changed (If-Match does not match)',
  },
  PAYLOAD_TOO_LARGE: { http: 413, grpc: GrpcStatus.INVALID_ARGUMENT, title: 'The request body is too large' },
  UNSUPPORTED_MEDIA_TYPE: {
    http: 415,
    grpc: GrpcStatus.INVALID_ARGUMENT,
    title: 'The request body must be JSON',
  },
  IDEMPOTENCY_KEY_REUSED: {
    http: 422,
    grpc: GrpcStatus.INVALID_ARGUMENT,
    title: 'The Idempotency-Key was used for another request',
  },
  // 5xx: the server's side; retrying later may help.
  INTERNAL: { http: 500, grpc: GrpcStatus.INTERNAL, title: 'Internal error' },
  AGENT_ERROR: { http: 502, grpc: GrpcStatus.UNAVAILABLE, title: "The host's agent failed the command" },
  HOST_UNREACHABLE: { http: 503, grpc: GrpcStatus.UNAVAILABLE, title: "The host's agent cannot be reached" },
  SERVICE_UNAVAILABLE: { http: 503, grpc: GrpcStatus.UNAVAILABLE, title: 'The service is unavailable' },
  MIGRATION_FAILED: { http: 500, grpc: GrpcStatus.INTERNAL, title: 'The migration failed' },
} as const satisfies Record<string, ErrorCodeInfo>;

/** A stable, UPPER_SNAKE error code of the control plane. */
export type ErrorCode = keyof typeof ERROR_TABLE;

/** Every code, in table order (the OpenAPI document enumerates them). */
export const ERROR_CODES = Object.keys(ERROR_TABLE) as ErrorCode[];

/**
 * Codes other layers use for the same meaning (the data layer's `VersionConflictError` says
 * `ETAG_MISMATCH`); they are reported under the code they alias.
 */
export const ERROR_CODE_ALIASES: Readonly<Record<string, ErrorCode>> = {
  ETAG_MISMATCH: 'PRECONDITION_FAILED',
};

/** Whether `code` is a code of the table. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_TABLE, code);
}

/** The table's code for `code`, following aliases; undefined for codes the table does not know. */
export function resolveErrorCode(code: unknown): ErrorCode | undefined {
  if (isErrorCode(code)) return code;
  if (typeof code === 'string' && Object.hasOwn(ERROR_CODE_ALIASES, code)) return ERROR_CODE_ALIASES[code];
  return undefined;
}

/** HTTP status of a code. */
export function httpStatusOf(code: ErrorCode): number {
  return ERROR_TABLE[code].http;
}

/** gRPC status of a code. */
export function grpcStatusOf(code: ErrorCode): GrpcStatus {
  return ERROR_TABLE[code].grpc;
}

/** Every code that maps to `status` (documentation of an endpoint's responses). */
export function codesWithStatus(status: number): ErrorCode[] {
  return ERROR_CODES.filter((code) => ERROR_TABLE[code].http === status);
}
