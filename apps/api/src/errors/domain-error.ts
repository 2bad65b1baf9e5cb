import { ERROR_TABLE, type ErrorCode } from './error-codes.js';

/** Where an offending value was in the request. */
export type FieldLocation = 'body' | 'query' | 'path' | 'header';

/** One offending value of a 4xx problem. */
export interface FieldError {
  /** Dotted path of the field (`quota.vcpus`, `labels.env`, `items.2.name`) or the header name. */
  readonly field: string;
  readonly in: FieldLocation;
  /** A machine-readable reason (zod issue codes: `too_big`, `invalid_type`, `unrecognized_keys`, …). */
  readonly reason: string;
  readonly message: string;
}

/** Options of {@link DomainError}. */
export interface DomainErrorOptions {
  /** The offending field (shortcut for a single {@link FieldError}). */
  readonly field?: string;
  /** Every offending value (validation). */
  readonly errors?: readonly FieldError[];
  /** Extra members of the problem body (e.g. `filters` of NO_VALID_HOST, `current_etag`). */
  readonly extensions?: Readonly<Record<string, unknown>>;
  /** Response headers that go with the problem (`Retry-After`, `WWW-Authenticate`). */
  readonly headers?: Readonly<Record<string, string>>;
  readonly cause?: unknown;
}

/**
 * An error of the control plane's domain with a stable code: what services throw and what the
 * exception filter turns into RFC 9457 problem+json (and the gateway into a gRPC status), through
 * {@link ERROR_TABLE}. `message` is the problem's `detail`: written for the API's user, it must
 * never carry internals (SQL, stack traces, file paths of the server).
 */
export class DomainError extends Error {
  override readonly name = 'DomainError';
  readonly field: string | undefined;
  readonly errors: readonly FieldError[];
  readonly extensions: Readonly<Record<string, unknown>>;
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    readonly code: ErrorCode,
    detail: string,
    options: DomainErrorOptions = {},
  ) {
    super(detail, options.cause === undefined ? undefined : { cause: options.cause });
    this.errors = options.errors ?? [];
    this.field = options.field ?? this.errors[0]?.field;
    this.extensions = options.extensions ?? {};
    this.headers = options.headers ?? {};
  }

  /** HTTP status of this error's code. */
  get status(): number {
    return ERROR_TABLE[this.code].http;
  }

  /** `<Resource> <id> not found` with the resource's own NOT_FOUND code. */
  static notFound(code: Extract<ErrorCode, `${string}NOT_FOUND`>, what: string, id: string): DomainError {
    return new DomainError(code, `${what} ${id} not found`);
  }

  /** A single offending field. */
  static invalid(field: string, location: FieldLocation, message: string, reason = 'invalid'): DomainError {
    return new DomainError('VALIDATION_FAILED', `${field}: ${message}`, {
      errors: [{ field, in: location, reason, message }],
    });
  }

  /** The caller's role does not allow the action. */
  static forbidden(detail: string): DomainError {
    return new DomainError('FORBIDDEN', detail);
  }
}
