import { type CallHandler, type ExecutionContext, Injectable, type NestInterceptor } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { map, type Observable } from 'rxjs';
import { endpointOf } from './endpoint.decorator.js';
import { HttpResult } from './http-result.js';
import { validateRequestInput } from './request-input.js';

/**
 * Unwraps {@link HttpResult}: sets its headers on the reply and answers its body. A status other
 * than the endpoint's (only idempotent replays have one) is sent as a web `Response`, which Nest
 * sends as it is. Registered first, so it sees what every other interceptor returned.
 */
@Injectable()
export class HttpResultInterceptor implements NestInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const reply = context.switchToHttp().getResponse<FastifyReply>();
    return next.handle().pipe(
      map((result: unknown) => {
        if (!(result instanceof HttpResult)) return result;
        const { status, headers = {} } = result.options;
        if (status !== undefined && status !== reply.statusCode) {
          const empty = status === 204 || result.body === undefined || result.body === null;
          return new Response(empty ? null : JSON.stringify(result.body), {
            status,
            headers: { ...headers, ...(empty ? {} : { 'content-type': 'application/json; charset=utf-8' }) },
          });
        }
        for (const [name, value] of Object.entries(headers)) reply.header(name, value);
        return result.body;
      }),
    );
  }
}

/**
 * Validates the path parameters, query and body of every `@Endpoint` before its handler runs
 * (after authentication: an anonymous caller learns nothing about the input rules).
 */
@Injectable()
export class InputValidationInterceptor implements NestInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const endpoint = endpointOf(context.getClass(), context.getHandler());
    if (endpoint) validateRequestInput(endpoint, context.switchToHttp().getRequest<FastifyRequest>());
    return next.handle();
  }
}
