import { z } from 'zod';
import { DomainError, type FieldError } from './domain-error.js';
import { ERROR_CODES, ERROR_TABLE, type ErrorCode, resolveErrorCode } from './error-codes.js';

/** Media type of every error response (RFC 9457). */
export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/** One offending value, as it appears in a problem's `errors`. */
export const FieldErrorSchema = z
  .strictObject({
    field: z.string().describe('Dotted path of the field, or the name of the header'),
    in: z.enum(['body', 'query', 'path', 'header']),
    reason: z.string().describe('Machine-readable reason, e.g. too_big, invalid_type, unrecognized_keys'),
    message: z.string(),
  })
  .meta({ id: 'FieldError' });

/**
 * The body of every error response: RFC 9457 members plus Hangar's stable `code`. Loose on
 * purpose: some codes add members (NO_VALID_HOST adds `filters`, PRECONDITION_FAILED
 * `current_etag`).
 */
export const ProblemSchema = z
  .looseObject({
    type: z.string().describe('URI naming the kind of problem: urn:hangar:problem:<code in kebab-case>'),
    title: z.string().describe('Short summary of the kind of problem; the same for every occurrence'),
    status: z.int().min(400).max(599),
    code: z.enum(ERROR_CODES as [ErrorCode, ...ErrorCode[]]).describe('Stable error code (UPPER_SNAKE)'),
    detail: z.string().describe('What went wrong in this occurrence, for humans'),
    instance: z.string().describe('The request path this problem is about'),
    request_id: z.string().describe('Also in the X-Request-Id response header and in the server logs'),
    field: z.string().optional().describe('The (first) offending field of a 4xx problem'),
    errors: z.array(FieldErrorSchema).optional().describe('Every offending value (validation problems)'),
  })
  .meta({ id: 'Problem' });

/** A problem+json body. */
export type Problem = z.infer<typeof ProblemSchema>;

/** A problem with the response headers that go with it. */
export interface ProblemResponse {
  readonly status: number;
  readonly body: Problem;
  readonly headers: Readonly<Record<string, string>>;
  /** The error was not a domain error: log it with its stack (the client saw nothing of it). */
  readonly unexpected: boolean;
}

/** What the filter knows about the request a problem answers. */
export interface ProblemRequest {
  /** Path of the request, without the query string. */
  readonly path: string;
  readonly requestId: string;
}

/** `VM_NOT_FOUND` → `urn:hangar:problem:vm-not-found`. */
export function problemType(code: ErrorCode): string {
  return `urn:hangar:problem:${code.toLowerCase().replaceAll('_', '-')}`;
}

/**
 * Turns anything thrown while serving a request into a problem. Domain errors and errors of
 * other layers that carry a code of the table (the data layer's `VmNotFoundError`, placement's
 * `NoValidHostError`) keep their code and message; HTTP-level errors of Nest and Fastify (bad
 * JSON, unsupported media type, body too large, unknown route) become their 4xx code; anything
 * else is `INTERNAL` with a detail that names only the request id.
 */
export function toProblem(error: unknown, request: ProblemRequest): ProblemResponse {
  const mapped = classify(error);
  const code = mapped.code;
  const status = ERROR_TABLE[code].http;
  const unexpected = mapped.unexpected ?? false;
  const body: Problem = {
    ...mapped.extensions,
    type: problemType(code),
    title: ERROR_TABLE[code].title,
    status,
    code,
    detail: unexpected ? `An internal error occurred (request ${request.requestId}).` : mapped.detail,
    instance: request.path,
    request_id: request.requestId,
    ...(mapped.field === undefined || status >= 500 ? {} : { field: mapped.field }),
    ...(mapped.errors && mapped.errors.length > 0 && status < 500 ? { errors: [...mapped.errors] } : {}),
  };
  return { status, body, headers: mapped.headers ?? {}, unexpected };
}

interface Classified {
  code: ErrorCode;
  detail: string;
  field?: string | undefined;
  errors?: readonly FieldError[];
  extensions?: Record<string, unknown>;
  headers?: Readonly<Record<string, string>>;
  unexpected?: boolean;
}

function classify(error: unknown): Classified {
  if (error instanceof DomainError) {
    return {
      code: error.code,
      detail: error.message,
      field: error.field,
      errors: error.errors,
      extensions: { ...error.extensions },
      headers: error.headers,
    };
  }
  if (!(error instanceof Error)) return { code: 'INTERNAL', detail: '', unexpected: true };
  const props = error as Error & { code?: unknown; statusCode?: unknown; status?: unknown };

  // Another layer's error with a code of the table (VmNotFoundError, NoValidHostError, …).
  const known = resolveErrorCode(props.code);
  if (known) return { code: known, detail: error.message, extensions: extensionsOf(error) };

  const prisma = classifyPrisma(props);
  if (prisma) return prisma;

  // Fastify's framework errors (content-type parser, body limit) and Nest's HttpExceptions.
  const status = httpStatusOfForeign(props);
  if (status !== undefined && status >= 400 && status < 500) {
    return { code: codeForClientStatus(status, props.code), detail: clientDetail(error, status) };
  }
  if (status === 503)
    return {
      code: 'SERVICE_UNAVAILABLE',
      detail: 'The server is shutting down or overloaded; retry later.',
      headers: { 'Retry-After': '1' },
    };
  if (isConnectionFailure(error)) {
    return {
      code: 'SERVICE_UNAVAILABLE',
      detail: 'The database is not reachable; retry later.',
      headers: { 'Retry-After': '1' },
    };
  }
  return { code: 'INTERNAL', detail: '', unexpected: true };
}

/** Members an error offers through `toJSON()` (NoValidHostError's `filters`), minus the basics. */
function extensionsOf(error: Error): Record<string, unknown> {
  const toJSON = (error as { toJSON?: unknown }).toJSON;
  if (typeof toJSON !== 'function') return {};
  const json: unknown = toJSON.call(error);
  if (json === null || typeof json !== 'object') return {};
  const {
    code: _code,
    detail: _detail,
    message: _message,
    status: _status,
    ...rest
  } = json as Record<string, unknown>;
  return rest;
}

/** Prisma's known request errors that a service did not translate (a safety net, not a design). */
function classifyPrisma(error: { name?: unknown; code?: unknown; meta?: unknown }): Classified | undefined {
  if (error.name !== 'PrismaClientKnownRequestError' || typeof error.code !== 'string') return undefined;
  switch (error.code) {
    case 'P2002':
      return { code: 'ALREADY_EXISTS', detail: 'A resource with the same unique value exists.' };
    case 'P2025':
      return { code: 'NOT_FOUND', detail: 'The resource was not found.' };
    case 'P2003':
      return { code: 'CONFLICT', detail: 'Other resources still refer to this one.' };
    case 'P1001':
    case 'P1002':
    case 'P1017':
      return {
        code: 'SERVICE_UNAVAILABLE',
        detail: 'The database is not reachable; retry later.',
        headers: { 'Retry-After': '1' },
      };
    default:
      return undefined;
  }
}

function httpStatusOfForeign(error: {
  statusCode?: unknown;
  status?: unknown;
  getStatus?: unknown;
}): number | undefined {
  if (typeof error.getStatus === 'function') {
    const status: unknown = (error.getStatus as () => unknown)();
    return typeof status === 'number' ? status : undefined;
  }
  if (typeof error.statusCode === 'number') return error.statusCode;
  return undefined;
}

function codeForClientStatus(status: number, fastifyCode: unknown): ErrorCode {
  switch (status) {
    case 401:
      return 'UNAUTHENTICATED';
    case 403:
      return 'FORBIDDEN';
    case 404:
    case 405:
      return 'NOT_FOUND';
    case 412:
      return 'PRECONDITION_FAILED';
    case 413:
      return 'PAYLOAD_TOO_LARGE';
    case 415:
      return 'UNSUPPORTED_MEDIA_TYPE';
    default:
      return fastifyCode === 'FST_ERR_VALIDATION' ? 'VALIDATION_FAILED' : 'MALFORMED_REQUEST';
  }
}

/** Fastify's and Nest's own messages are about the request, never about the server's internals. */
function clientDetail(error: Error, status: number): string {
  if (status === 413) return 'The request body is larger than the server accepts.';
  if (status === 415) return 'The request body must be JSON (Content-Type: application/json).';
  const message = error.message.trim();
  return message.length > 0 && message.length <= 500 ? message : 'The request is not valid.';
}

function isConnectionFailure(error: Error): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth += 1) {
    const code = (e as { code?: unknown }).code;
    if (code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'ETIMEDOUT' || code === '57P01')
      return true;
  }
  return false;
}
