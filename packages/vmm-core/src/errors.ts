/**
 * Every failure vmm-core reports is a VmmError with a stable code. Layers above map codes to
 * HTTP / gRPC statuses in one table; messages are for humans and may change.
 */
export type VmmErrorCode =
  | 'INVALID_SPEC'
  | 'PATH_ESCAPE'
  | 'VM_NOT_FOUND'
  | 'VM_EXISTS'
  | 'INVALID_STATE'
  | 'QEMU_FAILED'
  | 'QMP_ERROR'
  | 'QMP_DISCONNECTED'
  | 'QMP_TIMEOUT'
  | 'QMP_PROTOCOL'
  | 'DISK_ERROR'
  | 'SEED_ERROR'
  | 'COMMAND_FAILED'
  | 'MIGRATION_REFUSED'
  | 'MIGRATION_FAILED'
  | 'MIGRATION_CANCELLED'
  | 'DEVICE_ERROR'
  | 'NETWORK_ERROR'
  | 'UNSUPPORTED'
  | 'TIMEOUT';

export class VmmError extends Error {
  readonly code: VmmErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: VmmErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'VmmError';
    this.code = code;
    this.details = options?.details;
  }
}

export function isVmmError(err: unknown, code?: VmmErrorCode): err is VmmError {
  return err instanceof VmmError && (code === undefined || err.code === code);
}
