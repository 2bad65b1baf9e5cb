import { API_PREFIX } from './endpoint.decorator.js';

/** Options of an {@link HttpResult}. */
export interface HttpResultOptions {
  /** Only when it differs from the endpoint's declared status (an idempotent replay). */
  readonly status?: number;
  readonly headers?: Readonly<Record<string, string>>;
  /** The operation this response started: recorded with the request's Idempotency-Key. */
  readonly operationId?: string;
}

/**
 * A handler's answer with response headers (and, rarely, a status other than the endpoint's).
 * Handlers return it instead of a bare body; {@link HttpResultInterceptor} unwraps it.
 */
export class HttpResult<T = unknown> {
  constructor(
    readonly body: T,
    readonly options: HttpResultOptions = {},
  ) {}
}

/** A resource with its entity tag, as every resource representation carries one. */
export interface Tagged {
  /** The entity tag without quotes; the `ETag` header carries it quoted. */
  readonly etag: string;
}

/** `"<etag>"`: the header form of a representation's `etag`. */
export function quoteEtag(etag: string): string {
  return `"${etag}"`;
}

/** Answers a single resource with its `ETag` header. */
export function withEtag<T extends Tagged>(
  resource: T,
  headers: Readonly<Record<string, string>> = {},
): HttpResult<T> {
  return new HttpResult(resource, { headers: { ...headers, ETag: quoteEtag(resource.etag) } });
}

/** `/v1/operations/{id}`: where an accepted action's progress is read. */
export function operationLocation(operationId: string): string {
  return `${API_PREFIX}/operations/${operationId}`;
}

/**
 * The answer to an action that runs as an operation: `202 Accepted` (declare `status: 202` on the
 * endpoint), `Location: /v1/operations/{id}`, and the body (the operation, or the resource with
 * its operation). The operation id is also recorded with the request's Idempotency-Key.
 */
export function accepted<T>(body: T, operationId: string): HttpResult<T> {
  return new HttpResult(body, { headers: { Location: operationLocation(operationId) }, operationId });
}

/** Answers a newly created resource: its `ETag` and `Location: <path of the new resource>`. */
export function created<T extends Tagged>(resource: T, location: string): HttpResult<T> {
  return withEtag(resource, { Location: location });
}
