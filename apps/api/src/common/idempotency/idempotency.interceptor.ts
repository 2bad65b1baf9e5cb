import {
  type CallHandler,
  type ExecutionContext,
  Injectable,
  Logger,
  type NestInterceptor,
} from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { catchError, from, mergeMap, type Observable, of, throwError } from 'rxjs';
import { DomainError } from '../../errors/domain-error.js';
import { endpointOf } from '../http/endpoint.decorator.js';
import { HttpResult } from '../http/http-result.js';
import { requestContextOf } from '../http/request-context.js';
import { canonicalHash } from '../util/canonical-json.js';
import { IdempotencyService, type StoredResponse } from './idempotency.service.js';

/** The request header (IETF draft-ietf-httpapi-idempotency-key-header). */
export const IDEMPOTENCY_KEY_HEADER = 'idempotency-key';
/** Set on a replayed response. */
export const IDEMPOTENT_REPLAYED_HEADER = 'Idempotent-Replayed';
/** Response headers worth replaying (the rest belongs to the transport). */
const REPLAYED_HEADERS = ['etag', 'location'];

const KEY_PATTERN = /^[\x21-\x7e]{1,255}$/;

/**
 * `Idempotency-Key` on the endpoints that honour it (every POST by default): the first request
 * with a key runs and its successful response is stored; the same key with the same request
 * replays that response (same status, body bytes, ETag/Location, plus `Idempotent-Replayed: true`);
 * with another request it is a 422; while the first still runs, a 409. A failed request releases
 * its key. Runs after authentication (keys are per project) and input validation.
 */
@Injectable()
export class IdempotencyInterceptor implements NestInterceptor {
  private readonly logger = new Logger(IdempotencyInterceptor.name);

  constructor(private readonly idempotency: IdempotencyService) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const endpoint = endpointOf(context.getClass(), context.getHandler());
    if (!endpoint?.idempotent) return next.handle();
    const http = context.switchToHttp();
    const request = http.getRequest<FastifyRequest>();
    const header = request.headers[IDEMPOTENCY_KEY_HEADER];
    if (header === undefined) return next.handle();
    const caller = requestContextOf(request);
    if (!caller) return next.handle(); // public routes have no project to scope keys to
    if (typeof header !== 'string' || !KEY_PATTERN.test(header)) {
      throw DomainError.invalid(
        'Idempotency-Key',
        'header',
        'must be 1 to 255 visible ASCII characters (a UUID is a good key)',
        'invalid_header',
      );
    }
    const path = request.url;
    const requestHash = canonicalHash({ method: request.method, path, body: request.body ?? null });
    const reply = http.getResponse<FastifyReply>();

    return from(
      this.idempotency.begin({
        projectId: caller.projectId,
        key: header,
        method: request.method,
        path,
        requestHash,
      }),
    ).pipe(
      mergeMap((outcome) => {
        if (outcome.kind === 'replay') {
          // A web Response is sent as it is: the first status, headers and body bytes.
          const { status, headers, body } = outcome.response;
          return of(
            new Response(body, {
              status,
              headers: {
                ...headers,
                ...(body === null ? {} : { 'content-type': 'application/json; charset=utf-8' }),
                [IDEMPOTENT_REPLAYED_HEADER]: 'true',
              },
            }),
          );
        }
        const { recordId } = outcome;
        return next.handle().pipe(
          mergeMap(async (result: unknown) => {
            const stored = storedResponseOf(result, reply.statusCode);
            const operationId = result instanceof HttpResult ? result.options.operationId : undefined;
            // The work is done and committed: a failure to record it must not turn success into an error.
            await this.idempotency.complete(recordId, stored, operationId).catch((error: unknown) => {
              this.logger.error(
                `recording the response of Idempotency-Key ${header} failed: ${String(error)}`,
              );
            });
            return result;
          }),
          catchError((error: unknown) =>
            from(this.idempotency.release(recordId).catch(() => undefined)).pipe(
              mergeMap(() => throwError(() => error)),
            ),
          ),
        );
      }),
    );
  }
}

function storedResponseOf(result: unknown, endpointStatus: number): StoredResponse {
  const isResult = result instanceof HttpResult;
  const body: unknown = isResult ? result.body : result;
  const headers: Record<string, string> = {};
  if (isResult) {
    for (const [name, value] of Object.entries(result.options.headers ?? {})) {
      if (REPLAYED_HEADERS.includes(name.toLowerCase())) headers[name] = value;
    }
  }
  return {
    status: (isResult ? result.options.status : undefined) ?? endpointStatus,
    headers,
    body: body === undefined || body === null ? null : JSON.stringify(body),
  };
}
